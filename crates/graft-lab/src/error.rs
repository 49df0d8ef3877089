//! Error type of the lab. Every variant carries what went wrong and a hint on what to do about it.

use std::path::PathBuf;
use std::time::Duration;

/// How many console lines an error message quotes; the full log stays available via [`LabError::console`].
const CONSOLE_TAIL_LINES: usize = 25;

#[derive(Debug, thiserror::Error)]
pub enum LabError {
    /// A file-system operation failed.
    #[error("{context}: {source} (hint: {hint})")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
        hint: String,
    },

    /// An external program could not be started or exited unsuccessfully.
    #[error("`{command}` failed: {status}{}\n(hint: {hint})", tail_block(.output_tail))]
    Command {
        command: String,
        status: String,
        /// The last lines the program printed (or of its log file).
        output_tail: String,
        hint: String,
    },

    /// apt metadata did not say what we need (no candidate, unexpected output, …).
    #[error("{what} (hint: {hint})")]
    Apt { what: String, hint: String },

    /// A lab directory is missing or incomplete.
    #[error("lab at {} is not set up: {missing} (hint: run `graft-lab setup`)", root.display())]
    NotSetUp { root: PathBuf, missing: String },

    /// Something produced by setup (tree, image, kallsyms) is not what it should be.
    #[error("{what} (hint: {hint})")]
    Invalid { what: String, hint: String },

    /// Fetching or preparing the kernel failed.
    #[error(transparent)]
    Debian(#[from] graft_debian::DebianError),

    /// The VM did not finish within its time budget; QEMU was killed.
    #[error(
        "scenario `{scenario}` timed out after {:.1}s; QEMU was killed{}\n(hint: raise the timeout \
         or look for a hang in the console log)",
        timeout.as_secs_f64(),
        tail_block(&console_tail(console))
    )]
    Timeout {
        scenario: String,
        timeout: Duration,
        console: String,
    },

    /// The guest ended without reporting the script's exit status (panic, crash, early power-off).
    #[error("scenario `{scenario}` failed in the guest: {reason}{}\n(hint: read the console log above)",
        tail_block(&console_tail(console)))]
    GuestFailed {
        scenario: String,
        reason: String,
        console: String,
    },
}

impl LabError {
    /// The guest console log, for the VM errors that have one.
    pub fn console(&self) -> Option<&str> {
        match self {
            LabError::Timeout { console, .. } | LabError::GuestFailed { console, .. } => {
                Some(console)
            }
            _ => None,
        }
    }

    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        LabError::Io {
            context: context.into(),
            source,
            hint: "check permissions and free space of the lab directory ($GRAFT_LAB_DIR)".into(),
        }
    }

    pub(crate) fn invalid(what: impl Into<String>, hint: impl Into<String>) -> Self {
        LabError::Invalid {
            what: what.into(),
            hint: hint.into(),
        }
    }
}

fn tail_block(tail: &str) -> String {
    if tail.trim().is_empty() {
        String::new()
    } else {
        format!("\n--- last output ---\n{}\n---", tail.trim_end())
    }
}

/// Last lines of a log, so error messages stay readable.
pub(crate) fn tail_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let start = lines.len().saturating_sub(n);
    lines[start..].join("\n")
}

fn console_tail(console: &str) -> String {
    tail_lines(console, CONSOLE_TAIL_LINES)
}
