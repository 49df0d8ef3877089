//! `graft unload NAME`: disable, watch the unpatching transition, rmmod. A
//! stall past `--timeout` is reversed: the patch stays active, as before.

use anyhow::Result;
use graft_ops::kmod::Kernel;
use graft_ops::ops::{self, LoadOptions, OnStall, UnloadOutcome};
use graft_ops::{precheck, Host};

use crate::exit;
use crate::opsui::{self, Coded, Progress, TransitionArgs};

#[derive(clap::Args)]
pub struct Args {
    /// The patch: its name (livepatch_x, livepatch-x or x) or its module file.
    patch: String,
    #[command(flatten)]
    transition: TransitionArgs,
}

pub fn run(a: Args, json: bool) -> Result<()> {
    precheck::require_root(
        "unload",
        "disables a live patch, removes a kernel module and reads every task's patch state",
    )?;
    let host = Host::default();
    let name = opsui::resolve_name(&host, &a.patch)?;
    let opts = LoadOptions {
        watch: a.transition.watch_options()?,
        on_stall: OnStall::Revert,
        revert_timeout: a.transition.revert_timeout(),
    };
    opsui::install_cancel_handler();
    let mut progress = Progress::new(json);
    // The copy `graft load` kept: it names the new functions on stacks.
    let kept = opsui::run_dir().join(format!("{name}.ko"));
    let outcome = ops::unload(
        &host,
        &Kernel,
        &name,
        kept.is_file().then_some(kept.as_path()),
        &opts,
        &opsui::cancelled,
        &mut |e| progress.event(e),
    );
    progress.finish();
    let outcome = outcome?;
    if matches!(
        outcome,
        UnloadOutcome::Unloaded { .. } | UnloadOutcome::Removed { .. }
    ) {
        let _ = std::fs::remove_file(opsui::run_dir().join(format!("{name}.ko")));
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&outcome)?);
    }
    match outcome {
        UnloadOutcome::Unloaded { name, seconds } => {
            if !json {
                println!("{name}: unpatched in {seconds:.2}s, module removed");
            }
            Ok(())
        }
        UnloadOutcome::Removed { name } => {
            if !json {
                println!("{name}: its patch was already replaced or disabled; module removed");
            }
            Ok(())
        }
        UnloadOutcome::Reverted {
            name,
            seconds,
            cancelled,
            blockers,
        } => {
            let why = opsui::why_reversed(cancelled, seconds);
            Err(Coded {
                code: exit::REVERTED,
                message: format!(
                    "{name}: the unpatching transition {why}: {}; graft reversed it, the patch is still active as before; hint: retry later, or with a longer --timeout",
                    opsui::blockers_line(&blockers)
                ),
            }
            .into())
        }
        UnloadOutcome::Stuck {
            name,
            seconds,
            blockers,
        } => Err(Coded {
            code: exit::STUCK,
            message: format!(
                "{name}: the unpatching transition stalled and so did its reversal ({seconds:.1}s): {}; the kernel keeps trying; hint: watch `graft list` and retry",
                opsui::blockers_line(&blockers)
            ),
        }
        .into()),
    }
}
