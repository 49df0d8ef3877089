//! What the operation commands (load, unload, list, info, install) share:
//! resolving a patch name, Ctrl-C as "reverse and stop", live progress of a
//! transition, and errors that carry their own exit code.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use graft_ops::modinfo::ModuleInfo;
use graft_ops::tasks::Blocker;
use graft_ops::watch::{Event, WatchOptions};
use graft_ops::Host;
use indicatif::{ProgressBar, ProgressStyle};

/// An outcome that is not an error of input or environment but still not
/// what was asked (a reversed transition): printed like an error, with its
/// own exit code.
#[derive(Debug)]
pub struct Coded {
    pub code: u8,
    pub message: String,
}

impl std::fmt::Display for Coded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Coded {}

/// Options shared by load and unload.
#[derive(clap::Args, Debug, Clone)]
pub struct TransitionArgs {
    /// Seconds to wait for the transition before reversing it.
    #[arg(long, default_value_t = 60.0, value_name = "SECONDS")]
    pub timeout: f64,
    /// Seconds after which the tasks holding the transition up are named.
    #[arg(long, default_value_t = 2.0, value_name = "SECONDS")]
    pub grace: f64,
}

impl TransitionArgs {
    pub fn watch_options(&self) -> anyhow::Result<WatchOptions> {
        let secs = |v: f64, what: &str| {
            if v.is_finite() && v >= 0.0 {
                Ok(Duration::from_secs_f64(v))
            } else {
                anyhow::bail!("--{what} {v} is not a number of seconds; hint: e.g. --{what} 30")
            }
        };
        Ok(WatchOptions {
            timeout: secs(self.timeout, "timeout")?,
            grace: secs(self.grace, "grace")?,
            ..WatchOptions::default()
        })
    }

    /// The reverse transition gets at least this long: it is the way back.
    pub fn revert_timeout(&self) -> Duration {
        Duration::from_secs_f64(self.timeout.max(30.0))
    }
}

static CANCELLED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: nix::libc::c_int) {
    CANCELLED.store(true, Ordering::SeqCst);
}

/// Ctrl-C (and SIGTERM) during a transition reverse it instead of killing
/// graft halfway: the watcher sees the flag and takes the way back.
pub fn install_cancel_handler() {
    use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
    let act = SigAction::new(
        SigHandler::Handler(on_signal),
        SaFlags::SA_RESTART,
        SigSet::empty(),
    );
    for s in [Signal::SIGINT, Signal::SIGTERM] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        let _ = unsafe { sigaction(s, &act) };
    }
}

pub fn cancelled() -> bool {
    CANCELLED.load(Ordering::SeqCst)
}

/// A patch named by the user: a module file, `livepatch_x`, `livepatch-x`,
/// or just `x` when `livepatch_x` is loaded.
pub fn resolve_name(host: &Host, arg: &str) -> anyhow::Result<String> {
    let p = Path::new(arg);
    if arg.ends_with(".ko") && p.is_file() {
        return Ok(ModuleInfo::read(p)?.name);
    }
    let n = graft_ops::module_name(arg);
    if !n.starts_with("livepatch_") {
        let prefixed = format!("livepatch_{n}");
        if host.patch_dir(&prefixed).exists() || host.module_dir(&prefixed).exists() {
            return Ok(prefixed);
        }
    }
    Ok(n)
}

/// Where `graft load` keeps a copy of each loaded module, so that `graft
/// info NAME` can show its metadata. /run is emptied at boot, exactly when
/// the patches go away.
pub fn run_dir() -> PathBuf {
    PathBuf::from("/run/graft")
}

/// Live progress on stderr: a bar on a terminal, a line per change of
/// blockers (and every few seconds) otherwise; nothing with --json.
pub struct Progress {
    bar: Option<ProgressBar>,
    quiet: bool,
    last_line: Option<Instant>,
}

impl Progress {
    pub fn new(json: bool) -> Progress {
        // Length 1 until the first count: an empty bar would show as full.
        let bar = ProgressBar::new(1);
        let bar = (!json && !bar.is_hidden()).then(|| {
            bar.set_style(
                ProgressStyle::with_template(
                    "{spinner} {msg} [{bar:30}] {pos}/{len} tasks ({elapsed})",
                )
                .expect("static template")
                .progress_chars("=> "),
            );
            bar.enable_steady_tick(Duration::from_millis(120));
            bar
        });
        Progress {
            bar,
            quiet: json,
            last_line: None,
        }
    }

    pub fn event(&mut self, e: Event) {
        if self.quiet {
            return;
        }
        match e {
            Event::Progress {
                patch,
                direction,
                switched,
                total,
                seconds,
            } => {
                if let Some(b) = &self.bar {
                    b.set_length(total as u64);
                    b.set_position(switched as u64);
                    b.set_message(format!("{} {patch}", direction.as_str()));
                } else if self
                    .last_line
                    .is_none_or(|t| t.elapsed() >= Duration::from_secs(5))
                {
                    self.last_line = Some(Instant::now());
                    eprintln!(
                        "graft: {} {patch}: {switched}/{total} tasks switched ({seconds:.1}s)",
                        direction.as_str()
                    );
                }
            }
            Event::Blocked {
                patch,
                blockers,
                seconds,
                ..
            } => {
                let mut text = format!(
                    "graft: {patch}: after {seconds:.1}s, {} task{} not switched:",
                    blockers.len(),
                    plural(blockers.len())
                );
                for b in blockers.iter().take(10) {
                    text.push_str(&format!("\n  {}", b.describe()));
                }
                if blockers.len() > 10 {
                    text.push_str(&format!("\n  … and {} more", blockers.len() - 10));
                }
                text.push_str("\n  (the kernel retries every second and wakes stragglers with fake signals every 15 s; graft sends no signals)");
                self.println(&text);
            }
        }
    }

    pub fn println(&self, text: &str) {
        if self.quiet {
            return;
        }
        match &self.bar {
            Some(b) => b.println(text),
            None => eprintln!("{text}"),
        }
    }

    pub fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}

pub fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

/// `cat (pid 96) sleeps in ksys_read, …; kworker …` for a one-line error.
/// Why a transition was reversed, for the error line of load and unload.
pub fn why_reversed(cancelled: bool, seconds: f64) -> String {
    if cancelled {
        "was interrupted".to_owned()
    } else {
        format!("did not complete in time ({seconds:.1}s)")
    }
}

pub fn blockers_line(blockers: &[Blocker]) -> String {
    if blockers.is_empty() {
        return "no task was named".into();
    }
    let mut v: Vec<String> = blockers.iter().take(5).map(Blocker::describe).collect();
    if blockers.len() > 5 {
        v.push(format!("and {} more", blockers.len() - 5));
    }
    v.join("; ")
}

/// A Unix time as `2026-11-27 05:52:54 UTC` (civil-from-days, no time zone
/// database needed).
pub fn utc(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_dates() {
        assert_eq!(utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(utc(1_700_000_000), "2023-11-14 22:13:20 UTC");
        assert_eq!(utc(951_782_400), "2000-02-29 00:00:00 UTC");
    }
}
