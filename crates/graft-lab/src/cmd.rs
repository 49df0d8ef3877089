//! Running host programs with errors that say which command failed and what it printed.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use crate::error::{tail_lines, LabError};

const OUTPUT_TAIL_LINES: usize = 30;

pub(crate) fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

fn spawn_error(cmd: &Command, e: std::io::Error, hint: &str) -> LabError {
    LabError::Command {
        command: describe(cmd),
        status: format!("could not start it: {e}"),
        output_tail: String::new(),
        hint: hint.to_string(),
    }
}

/// Runs `cmd` with stdout and stderr appended to `log` (long builds would flood memory and the
/// terminal); on failure the error quotes the end of the log and names it.
pub(crate) fn logged(cmd: &mut Command, log: &Path, hint: &str) -> Result<(), LabError> {
    let mut f = OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(|e| LabError::io(format!("opening log {}", log.display()), e))?;
    // A header per command makes the shared stage log readable afterwards.
    let _ = writeln!(f, "\n$ {}", describe(cmd));
    let f2: File = f
        .try_clone()
        .map_err(|e| LabError::io(format!("duplicating log handle {}", log.display()), e))?;
    let status = cmd
        .stdin(Stdio::null())
        .stdout(f)
        .stderr(f2)
        .status()
        .map_err(|e| spawn_error(cmd, e, hint))?;
    if !status.success() {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        return Err(LabError::Command {
            command: describe(cmd),
            status: format!("{status} (full log: {})", log.display()),
            output_tail: tail_lines(&text, OUTPUT_TAIL_LINES),
            hint: hint.to_string(),
        });
    }
    Ok(())
}
