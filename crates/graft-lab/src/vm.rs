//! Booting the lab kernel in QEMU with a throw-away busybox initramfs that runs one shell script.
//!
//! The guest's `/init` mounts proc, sysfs, devtmpfs (plus debugfs/tracefs when present), installs the
//! busybox applets, runs `/scenario.sh` with `sh` and prints an end marker carrying a per-run nonce
//! and the script's exit status before `poweroff -f`. The host treats the run as successful only
//! when that marker shows up on the serial console: anything else (panic, triple fault, early
//! power-off) is [`LabError::GuestFailed`], and a run past its budget is [`LabError::Timeout`].

use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use flate2::write::GzEncoder;
use flate2::Compression;

use crate::cpio::{normalize, CpioWriter};
use crate::error::LabError;
use crate::lab::Lab;

/// Static busybox from Debian's `busybox-static`.
pub const BUSYBOX: &str = "/bin/busybox";
/// QEMU binary from `qemu-system-x86`.
pub const QEMU: &str = "qemu-system-x86_64";
/// Timeout of [`Scenario::new`]: TCG boots in ~7 s, leave room for real work on a loaded host.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(120);

const MARK_START: &str = "GRAFT-LAB-START";
const MARK_END: &str = "GRAFT-LAB-END";
/// Guest paths the runner owns.
const RESERVED: &[&str] = &["init", "scenario.sh", "bin/busybox"];

/// A VM run: busybox initramfs + extra files + a shell script run as the guest's PID-1 child.
#[derive(Debug, Clone)]
pub struct Scenario {
    pub name: String,
    /// `(guest path, host file)`: copied into the initramfs with the host file's permission bits.
    pub files: Vec<(String, PathBuf)>,
    /// Shell script (busybox `sh`) run as root with PATH set; its exit status is reported back.
    pub script: String,
    /// Hard limit for the whole VM run, boot included.
    pub timeout: Duration,
}

impl Scenario {
    pub fn new(name: impl Into<String>, script: impl Into<String>) -> Self {
        Scenario {
            name: name.into(),
            files: Vec::new(),
            script: script.into(),
            timeout: DEFAULT_TIMEOUT,
        }
    }

    /// Adds a host file at `guest` path.
    pub fn with_file(mut self, guest: impl Into<String>, host: impl Into<PathBuf>) -> Self {
        self.files.push((guest.into(), host.into()));
        self
    }

    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }
}

/// What a finished run left behind.
#[derive(Debug, Clone)]
pub struct ScenarioOutput {
    /// The whole serial console (kernel messages and the script's stdout/stderr), `\r` removed.
    pub console: String,
    /// The script's exit status.
    pub exit_code: i32,
    /// Wall time of the VM run, boot included.
    pub duration: Duration,
}

impl ScenarioOutput {
    /// Console lines that start with `prefix` (whole lines, prefix included). Lets scripts tag the
    /// lines a test cares about (`echo "RESULT: …"`) among kernel messages.
    pub fn lines_with_prefix(&self, prefix: &str) -> Vec<&str> {
        self.console
            .lines()
            .filter(|l| l.starts_with(prefix))
            .collect()
    }

    /// The part of the console between the runner's start and end markers: what the script printed
    /// (and kernel messages interleaved with it), without boot noise.
    pub fn script_output(&self) -> &str {
        let start = self
            .console
            .find(MARK_START)
            .and_then(|i| self.console[i..].find('\n').map(|j| i + j + 1))
            .unwrap_or(0);
        let end = self.console[start..]
            .find(MARK_END)
            .map_or(self.console.len(), |j| start + j);
        &self.console[start..end]
    }
}

/// Knobs beyond what a [`Scenario`] says; [`run_scenario`] uses the defaults.
#[derive(Debug, Clone)]
pub struct VmOptions {
    /// Arguments appended to the kernel command line.
    pub extra_cmdline: Vec<String>,
    pub memory_mb: u32,
    pub smp: u32,
    /// QEMU accelerator. TCG by default: on the lab host KVM hangs at "Booting from ROM".
    pub accel: String,
    /// Host file that receives the guest's second serial port (`/dev/ttyS1`), for bulk output that
    /// must not mix with console messages.
    pub second_serial: Option<PathBuf>,
}

impl Default for VmOptions {
    fn default() -> Self {
        VmOptions {
            extra_cmdline: Vec::new(),
            memory_mb: 512,
            smp: 2,
            accel: "tcg".into(),
            second_serial: None,
        }
    }
}

/// Base kernel command line. `nokaslr` makes addresses match the captured kallsyms; `panic=-1`
/// with QEMU's `-no-reboot` turns a panic into a prompt exit; `loglevel=5` hides boot chatter but
/// keeps warnings (WARN, oops, taint) on the console. Oopses deliberately do not panic so a
/// script can inspect `dmesg` afterwards.
pub const BASE_CMDLINE: &[&str] = &["console=ttyS0", "nokaslr", "panic=-1", "loglevel=5"];

/// Runs `sc` in a fresh VM of the lab's kernel.
pub fn run_scenario(lab: &Lab, sc: &Scenario) -> Result<ScenarioOutput, LabError> {
    run_scenario_with(lab, sc, &VmOptions::default())
}

/// [`run_scenario`] with explicit VM options.
pub fn run_scenario_with(
    lab: &Lab,
    sc: &Scenario,
    opts: &VmOptions,
) -> Result<ScenarioOutput, LabError> {
    run_kernel(&lab.vmlinuz(), sc, opts)
}

/// Unique-enough token so a script that prints marker-like text cannot fake the end of a run.
fn nonce() -> String {
    let t = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    format!("{:x}{:x}", std::process::id(), t & 0xffff_ffff_ffff)
}

fn init_script(nonce: &str) -> String {
    format!(
        r#"#!/bin/busybox sh
/bin/busybox mkdir -p /bin /sbin /usr/bin /usr/sbin /proc /sys /dev /tmp /root
/bin/busybox --install -s
export PATH=/sbin:/bin:/usr/sbin:/usr/bin HOME=/root
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mount -t debugfs debugfs /sys/kernel/debug 2>/dev/null
mount -t tracefs tracefs /sys/kernel/tracing 2>/dev/null
echo "{MARK_START} {nonce}"
sh /scenario.sh </dev/null
rc=$?
echo "{MARK_END} {nonce} rc=$rc"
# Re-applying the current tty settings uses TCSADRAIN: the marker is on the wire before power-off.
stty -F /dev/console "$(stty -F /dev/console -g)" 2>/dev/null
poweroff -f
"#
    )
}

/// Exit status from the end marker of run `nonce`, if the console has it.
pub(crate) fn parse_end_marker(console: &str, nonce: &str) -> Option<i32> {
    let needle = format!("{MARK_END} {nonce} rc=");
    let i = console.rfind(&needle)?;
    let rest = &console[i + needle.len()..];
    let digits: String = rest
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '-')
        .collect();
    digits.parse().ok()
}

fn build_initramfs(sc: &Scenario, nonce: &str, out: &Path) -> Result<(), LabError> {
    let io = |what: String| move |e| LabError::io(what, e);
    let busybox = fs::read(BUSYBOX).map_err(|e| LabError::Io {
        context: format!("reading {BUSYBOX}"),
        source: e,
        hint: "install busybox-static (`graft-lab setup` does)".into(),
    })?;
    let file = fs::File::create(out).map_err(io(format!("creating {}", out.display())))?;
    let gz = GzEncoder::new(std::io::BufWriter::new(file), Compression::fast());
    let mut w = CpioWriter::new(gz);
    let werr = io(format!("writing {}", out.display()));
    (|| -> std::io::Result<()> {
        for d in [
            "bin", "sbin", "usr/bin", "usr/sbin", "proc", "sys", "dev", "tmp", "root",
        ] {
            w.dir_all(d)?;
        }
        w.file("bin/busybox", 0o755, &busybox)?;
        w.symlink("bin/sh", "busybox")?;
        w.file("init", 0o755, init_script(nonce).as_bytes())?;
        w.file("scenario.sh", 0o755, sc.script.as_bytes())?;
        Ok(())
    })()
    .map_err(werr)?;
    for (guest, host) in &sc.files {
        let norm = normalize(guest).ok_or_else(|| {
            LabError::invalid(
                format!(
                    "scenario `{}`: guest path `{guest}` is empty or leaves /",
                    sc.name
                ),
                "use an absolute guest path such as /root/patch.ko",
            )
        })?;
        if RESERVED.contains(&norm.as_str()) {
            return Err(LabError::invalid(
                format!(
                    "scenario `{}`: guest path `{guest}` is used by the runner",
                    sc.name
                ),
                "pick another guest path; the script itself goes in Scenario::script",
            ));
        }
        let meta = fs::metadata(host).map_err(|e| LabError::Io {
            context: format!(
                "scenario `{}`: host file {} (for guest {guest})",
                sc.name,
                host.display()
            ),
            source: e,
            hint: "check the host path of the --file / Scenario::files entry".into(),
        })?;
        if meta.is_dir() {
            return Err(LabError::invalid(
                format!("scenario `{}`: {} is a directory", sc.name, host.display()),
                "list the directory's files one by one",
            ));
        }
        let data = fs::read(host).map_err(io(format!("reading {}", host.display())))?;
        w.file(&norm, meta.permissions().mode(), &data)
            .map_err(io(format!("adding {} to the initramfs", host.display())))?;
    }
    let gz = w
        .finish()
        .map_err(io(format!("writing {}", out.display())))?;
    let mut buf = gz
        .finish()
        .map_err(io(format!("compressing {}", out.display())))?;
    buf.flush()
        .map_err(io(format!("writing {}", out.display())))?;
    Ok(())
}

/// Kills and reaps QEMU if it is still running when the guard goes away (error paths, panics in
/// callers' threads), so a VM never outlives the call that started it.
struct ChildGuard(Child);

impl ChildGuard {
    fn kill(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        self.kill();
    }
}

/// QEMU's `-chardev` option syntax treats `,` as a separator; doubling escapes it.
fn chardev_path(p: &Path) -> String {
    p.display().to_string().replace(',', ",,")
}

fn read_console(path: &Path) -> String {
    let bytes = fs::read(path).unwrap_or_default();
    String::from_utf8_lossy(&bytes).replace('\r', "")
}

pub(crate) fn run_kernel(
    vmlinuz: &Path,
    sc: &Scenario,
    opts: &VmOptions,
) -> Result<ScenarioOutput, LabError> {
    if !vmlinuz.is_file() {
        return Err(LabError::invalid(
            format!("kernel image {} is missing", vmlinuz.display()),
            "run `graft-lab setup`",
        ));
    }
    let tmp = tempfile::Builder::new()
        .prefix("graft-lab-vm-")
        .tempdir()
        .map_err(|e| LabError::io("creating a temporary directory for the VM", e))?;
    let nonce = nonce();
    let initrd = tmp.path().join("initrd.gz");
    build_initramfs(sc, &nonce, &initrd)?;
    let console_path = tmp.path().join("console.log");
    let qemu_err = tmp.path().join("qemu.stderr");

    let mut cmdline: Vec<String> = BASE_CMDLINE.iter().map(|s| s.to_string()).collect();
    cmdline.extend(opts.extra_cmdline.iter().cloned());

    let mut cmd = Command::new(QEMU);
    cmd.args(["-accel", &opts.accel, "-cpu", "max"])
        .args([
            "-smp",
            &opts.smp.to_string(),
            "-m",
            &opts.memory_mb.to_string(),
        ])
        .args([
            "-nographic",
            "-no-reboot",
            "-monitor",
            "none",
            "-nic",
            "none",
        ])
        .arg("-chardev")
        .arg(format!("file,id=con0,path={}", chardev_path(&console_path)))
        .args(["-serial", "chardev:con0"]);
    if let Some(second) = &opts.second_serial {
        cmd.arg("-chardev")
            .arg(format!("file,id=ser1,path={}", chardev_path(second)))
            .args(["-serial", "chardev:ser1"]);
    }
    cmd.arg("-kernel")
        .arg(vmlinuz)
        .arg("-initrd")
        .arg(&initrd)
        .arg("-append")
        .arg(cmdline.join(" "));
    let err_file = fs::File::create(&qemu_err)
        .map_err(|e| LabError::io(format!("creating {}", qemu_err.display()), e))?;
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(err_file);
    // SAFETY: prctl is async-signal-safe and touches no memory of the parent. It makes the kernel
    // kill QEMU if this thread dies (e.g. the test harness is killed), where Drop cannot run.
    unsafe {
        cmd.pre_exec(|| {
            nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
                .map_err(std::io::Error::from)
        });
    }

    let started = Instant::now();
    let child = cmd.spawn().map_err(|e| LabError::Command {
        command: crate::cmd::describe(&cmd),
        status: format!("could not start it: {e}"),
        output_tail: String::new(),
        hint: "install qemu-system-x86 (`graft-lab setup` does)".into(),
    })?;
    let mut guard = ChildGuard(child);
    let status = loop {
        match guard.0.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) => {}
            Err(e) => return Err(LabError::io("waiting for QEMU", e)),
        }
        if started.elapsed() >= sc.timeout {
            guard.kill();
            return Err(LabError::Timeout {
                scenario: sc.name.clone(),
                timeout: sc.timeout,
                console: read_console(&console_path),
            });
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let duration = started.elapsed();
    let console = read_console(&console_path);
    match parse_end_marker(&console, &nonce) {
        Some(exit_code) => Ok(ScenarioOutput {
            console,
            exit_code,
            duration,
        }),
        None => {
            let stderr = fs::read_to_string(&qemu_err).unwrap_or_default();
            let reason = if !status.success() {
                format!("QEMU exited with {status}: {}", stderr.trim())
            } else if console.contains("Kernel panic") {
                "the kernel panicked before the script finished".to_string()
            } else if !console.contains(&format!("{MARK_START} {nonce}")) {
                "the guest never reached /init".to_string()
            } else {
                "the guest stopped before the script reported its exit status".to_string()
            };
            Err(LabError::GuestFailed {
                scenario: sc.name.clone(),
                reason,
                console,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONSOLE: &str = "[    0.000000] Linux version 6.1.0-56-amd64\n\
[    1.2] Run /init as init process\n\
GRAFT-LAB-START abc123\n\
RESULT: uname 6.1.0-56-amd64\n\
hello\n\
RESULT: livepatch yes\n\
GRAFT-LAB-END abc123 rc=3\n\
[    7.1] reboot: Power down\n";

    fn out() -> ScenarioOutput {
        ScenarioOutput {
            console: CONSOLE.to_string(),
            exit_code: 3,
            duration: Duration::from_secs(7),
        }
    }

    #[test]
    fn end_marker() {
        assert_eq!(parse_end_marker(CONSOLE, "abc123"), Some(3));
        // Another run's nonce must not count.
        assert_eq!(parse_end_marker(CONSOLE, "zzz"), None);
        assert_eq!(parse_end_marker("GRAFT-LAB-END n rc=", "n"), None);
        assert_eq!(parse_end_marker("GRAFT-LAB-END n rc=0\n", "n"), Some(0));
        assert_eq!(parse_end_marker("GRAFT-LAB-END n rc=127", "n"), Some(127));
    }

    #[test]
    fn prefixed_lines() {
        let o = out();
        assert_eq!(
            o.lines_with_prefix("RESULT: "),
            vec!["RESULT: uname 6.1.0-56-amd64", "RESULT: livepatch yes"]
        );
        assert!(o.lines_with_prefix("nothing").is_empty());
    }

    #[test]
    fn script_output_is_between_markers() {
        let o = out();
        assert_eq!(
            o.script_output(),
            "RESULT: uname 6.1.0-56-amd64\nhello\nRESULT: livepatch yes\n"
        );
        let partial = ScenarioOutput {
            console: "boot\nGRAFT-LAB-START x\nhalf".into(),
            exit_code: 0,
            duration: Duration::ZERO,
        };
        assert_eq!(partial.script_output(), "half");
    }

    #[test]
    fn init_script_reports_status() {
        let s = init_script("n1");
        assert!(s.contains("GRAFT-LAB-END n1 rc=$rc"));
        assert!(s.contains("sh /scenario.sh"));
        assert!(s.contains("poweroff -f"));
    }

    #[test]
    fn chardev_escaping() {
        assert_eq!(chardev_path(Path::new("/a,b/c")), "/a,,b/c");
    }
}
