//! Shared output helpers: error rendering, exit codes, progress.

use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

use crate::exit;

/// Prints `error: …` with its cause chain on stderr.
pub fn error(e: &anyhow::Error) {
    let mut msg = format!("error: {e}");
    for cause in e.chain().skip(1) {
        msg.push_str(&format!(": {cause}"));
    }
    eprintln!("{msg}");
}

pub fn exit_code(e: &anyhow::Error) -> u8 {
    if let Some(c) = e.downcast_ref::<crate::opsui::Coded>() {
        return c.code;
    }
    // Refusals: what graft will not make into a live patch. Everything else
    // (missing files, a build that is not the target's…) is an error.
    let refused = |c: &(dyn std::error::Error + 'static)| {
        c.downcast_ref::<graft_diff::DiffError>().is_some()
            || c.downcast_ref::<graft_build::BuildError>()
                .is_some_and(graft_build::BuildError::is_refusal)
            || matches!(
                c.downcast_ref::<graft_klp::KlpError>(),
                Some(
                    graft_klp::KlpError::Unsupported { .. }
                        | graft_klp::KlpError::UnsupportedSpecialSection { .. }
                        | graft_klp::KlpError::Markers { .. }
                )
            )
    };
    if e.chain().any(refused) {
        exit::REFUSED
    } else {
        exit::ERROR
    }
}

/// Step-by-step progress on stderr: a spinner on a terminal, plain lines otherwise.
pub struct Steps {
    bar: ProgressBar,
    step_start: Instant,
    quiet: bool,
}

impl Steps {
    pub fn new(quiet: bool) -> Steps {
        let bar = ProgressBar::new_spinner();
        bar.set_style(
            ProgressStyle::with_template("{spinner} {msg} ({elapsed})").expect("static template"),
        );
        if !quiet {
            bar.enable_steady_tick(Duration::from_millis(120));
        }
        Steps {
            bar,
            step_start: Instant::now(),
            quiet,
        }
    }

    pub fn step(&mut self, what: &str) {
        self.step_start = Instant::now();
        if self.quiet {
            return;
        }
        if self.bar.is_hidden() {
            eprintln!("graft: {what}…");
        } else {
            self.bar.set_message(what.to_owned());
        }
    }

    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}
