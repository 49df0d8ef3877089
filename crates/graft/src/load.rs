//! `graft load X.ko`: checks, insmod, the transition watched live; a stall
//! past `--timeout` is reversed and the module removed. `graft load
//! --installed` is what the boot unit runs.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use graft_ops::install::{boot_plan, InstallRoot};
use graft_ops::kmod::Kernel;
use graft_ops::ops::{self, LoadOptions, LoadOutcome, LoadReport, OnStall};
use graft_ops::{precheck, Host};
use serde::Serialize;

use crate::exit;
use crate::opsui::{self, Coded, Progress, TransitionArgs};

#[derive(clap::Args)]
pub struct Args {
    /// The live patch module, as written by `graft build` (livepatch-NAME.ko).
    #[arg(required_unless_present = "installed", conflicts_with = "installed")]
    module: Option<PathBuf>,
    /// Load the patches installed for the running kernel (what the boot unit runs).
    #[arg(long)]
    installed: bool,
    #[command(flatten)]
    transition: TransitionArgs,
    /// If the transition stalls, force it instead of reversing it. The
    /// modules of the patches it replaces can then never be removed, and a
    /// task still in the old code may misbehave; the kernel's docs ask for the patch
    /// author's clearance first.
    #[arg(long)]
    force: bool,
    /// Do not ask before --force.
    #[arg(long)]
    yes: bool,
}

pub fn run(a: Args, json: bool) -> Result<()> {
    precheck::require_root(
        "load",
        "inserts a kernel module and reads every task's patch state",
    )?;
    let on_stall = if a.force {
        confirm_force(a.yes)?;
        OnStall::Force
    } else {
        OnStall::Revert
    };
    let opts = LoadOptions {
        watch: a.transition.watch_options()?,
        on_stall,
        revert_timeout: a.transition.revert_timeout(),
    };
    opsui::install_cancel_handler();
    let host = Host::default();
    match &a.module {
        Some(ko) => {
            let report = load_one(&host, ko, &opts, json)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            }
            outcome_result(&report.outcome)
        }
        None => load_installed(&host, &opts, json),
    }
}

fn confirm_force(yes: bool) -> Result<()> {
    let warning = "--force: if the transition stalls, graft forces every remaining task to the patched code without the stack check: a task still inside a changed function may misbehave, and the modules of the patches this one replaces can never be removed (rmmod is refused until reboot).";
    if yes {
        eprintln!("graft: warning: {warning}");
        return Ok(());
    }
    if !std::io::stdin().is_terminal() {
        bail!("{warning} Confirmation is needed; hint: pass --yes to confirm");
    }
    eprint!("graft: {warning}\nContinue? [y/N] ");
    let mut answer = String::new();
    std::io::stdin().read_line(&mut answer)?;
    if !matches!(answer.trim(), "y" | "Y" | "yes") {
        bail!("not confirmed; nothing was loaded");
    }
    Ok(())
}

fn load_one(host: &Host, ko: &Path, opts: &LoadOptions, json: bool) -> Result<LoadReport> {
    let mut progress = Progress::new(json);
    let report = ops::load(host, &Kernel, ko, opts, &opsui::cancelled, &mut |e| {
        progress.event(e)
    });
    progress.finish();
    let report = report?;
    if !json {
        for w in &report.findings.warnings {
            eprintln!("graft: warning: {w}");
        }
    }
    if let LoadOutcome::Loaded { name, replaced, .. } = &report.outcome {
        remember(ko, name, replaced);
    }
    if !json {
        print_outcome(&report.outcome);
    }
    Ok(report)
}

/// Keeps a copy of the loaded module under /run/graft for `graft info NAME`.
/// Best effort: the patch is loaded either way.
fn remember(ko: &Path, name: &str, replaced: &[String]) {
    let dir = opsui::run_dir();
    if std::fs::create_dir_all(&dir).is_ok() {
        let _ = std::fs::copy(ko, dir.join(format!("{name}.ko")));
        for r in replaced {
            let _ = std::fs::remove_file(dir.join(format!("{r}.ko")));
        }
    }
}

fn print_outcome(o: &LoadOutcome) {
    if let LoadOutcome::Loaded {
        name,
        seconds,
        replaced,
        handover,
        forced,
        leftovers,
    } = o
    {
        println!(
            "{name}: patched in {seconds:.2}s{}",
            if *forced { " (forced)" } else { "" }
        );
        let who = |o: &Option<String>| o.clone().unwrap_or_else(|| "original".into());
        for h in handover {
            println!("  {}: {} → {}", h.function, who(&h.from), who(&h.to));
        }
        for r in replaced {
            if leftovers.contains(r) {
                println!(
                    "  replaced {r}; its module is still loaded (graft unload {r} removes it)"
                );
            } else {
                println!("  replaced {r} (module removed)");
            }
        }
        if *forced {
            eprintln!(
                "graft: warning: {name} was forced: tasks still in the old code were switched without the stack check{}; plan a reboot",
                if replaced.is_empty() {
                    String::new()
                } else {
                    format!(
                        ", and the modules of the patches it replaced ({}) can never be removed",
                        replaced.join(", ")
                    )
                }
            );
        }
    }
}

fn outcome_result(o: &LoadOutcome) -> Result<()> {
    match o {
        LoadOutcome::Loaded { .. } => Ok(()),
        LoadOutcome::Reverted {
            name,
            seconds,
            cancelled,
            blockers,
        } => {
            let why = opsui::why_reversed(*cancelled, *seconds);
            Err(Coded {
                code: exit::REVERTED,
                message: format!(
                    "{name}: the patching transition {why}: {}; graft reversed it and removed the module, the system is as before; hint: retry when those tasks have left the function (a longer --timeout lets the kernel's fake signals free them), or --force",
                    opsui::blockers_line(blockers)
                ),
            }
            .into())
        }
        LoadOutcome::Stuck {
            name,
            seconds,
            blockers,
        } => Err(Coded {
            code: exit::STUCK,
            message: format!(
                "{name}: the transition stalled and so did its reversal ({seconds:.1}s): {}; the kernel keeps trying; hint: watch `graft list`, then `graft unload {name}`; force only with the patch author's clearance",
                opsui::blockers_line(blockers)
            ),
        }
        .into()),
    }
}

#[derive(Serialize)]
struct Installed {
    loaded: Vec<LoadReport>,
    skipped: Vec<Skipped>,
}

#[derive(Serialize)]
struct Skipped {
    name: String,
    release: String,
    reason: String,
}

/// The boot path: every patch installed for this kernel, in install order
/// from the newest cumulative one; the others are named on stderr.
fn load_installed(host: &Host, opts: &LoadOptions, json: bool) -> Result<()> {
    let running = host.release()?;
    let plan = boot_plan(&InstallRoot::default(), &running)?;
    let mut skipped = Vec::new();
    for i in &plan.other_release {
        skipped.push(Skipped {
            name: i.name.clone(),
            release: i.release.clone(),
            reason: format!(
                "built for kernel {}, the running kernel is {running}",
                i.release
            ),
        });
    }
    let newest = plan
        .load
        .first()
        .map(|i| i.name.clone())
        .unwrap_or_default();
    for i in &plan.superseded {
        skipped.push(Skipped {
            name: i.name.clone(),
            release: i.release.clone(),
            reason: format!("superseded by the cumulative patch {newest}"),
        });
    }
    for s in &skipped {
        eprintln!("graft: SKIPPING {} ({}): {}", s.name, s.release, s.reason);
    }
    let mut loaded = Vec::new();
    let mut first_err: Option<anyhow::Error> = None;
    for i in &plan.load {
        if graft_ops::state::read_patch(host, &i.name)?.is_some() {
            eprintln!("graft: {} is already loaded", i.name);
            continue;
        }
        match load_one(host, &i.path, opts, json) {
            Ok(r) => {
                if let Err(e) = outcome_result(&r.outcome) {
                    crate::output::error(&e);
                    first_err.get_or_insert(e);
                }
                loaded.push(r);
            }
            Err(e) => {
                crate::output::error(&e);
                first_err.get_or_insert(e);
            }
        }
    }
    if plan.load.is_empty() && !json {
        println!("no patches installed for {running}");
    }
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&Installed { loaded, skipped })?
        );
    }
    match first_err {
        // Already printed above; the code still tells the caller.
        Some(e) => Err(Coded {
            code: crate::output::exit_code(&e),
            message: "some installed patches did not load (see above)".into(),
        }
        .into()),
        None => Ok(()),
    }
}
