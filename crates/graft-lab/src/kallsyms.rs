//! Capturing the running kernel's symbol table.
//!
//! Debian's image ships a one-line `System.map` stub; the real table is only in the 858 MB `-dbg`
//! package. Booting the image with `nokaslr` and reading `/proc/kallsyms` as root gives the same
//! addresses the distro kernel has on any machine booted without KASLR. The table is sent over the
//! guest's second serial port so console messages cannot interleave with it, and is terminated by
//! a marker carrying the line count the guest saw, so a truncated transfer is detected.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::error::LabError;
use crate::vm::{self, Scenario, VmOptions};

const END_MARKER: &str = "#GRAFT-KALLSYMS-END";
/// Below this the table cannot be a whole kernel's (6.1 has ~94,000 symbols without modules).
pub const MIN_SYMBOLS: usize = 20_000;
/// Where x86-64 kernels put `_text` when KASLR is off.
pub const NOKASLR_TEXT: u64 = 0xffff_ffff_8100_0000;

/// Summary of a validated table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KallsymsStats {
    pub lines: usize,
    pub text_address: u64,
}

/// Guest script: print the table to `/dev/ttyS1`, then the marker with the guest-side line count.
/// `kptr_restrict=0` because otherwise addresses may read as zero; the tty goes raw so no `\r` is
/// inserted; closing the tty after the redirection waits until the UART has drained.
pub(crate) const CAPTURE_SCRIPT: &str = r##"echo 0 > /proc/sys/kernel/kptr_restrict
n=$(wc -l < /proc/kallsyms)
echo "KALLSYMS-LINES: $n"
stty -F /dev/ttyS1 raw -echo
{ cat /proc/kallsyms; echo "#GRAFT-KALLSYMS-END $n"; } > /dev/ttyS1
"##;

/// Checks a captured stream and returns the table without the end marker.
pub fn extract_table(raw: &str) -> Result<(String, KallsymsStats), LabError> {
    let raw = raw.replace('\r', "");
    let Some(pos) = raw.rfind(END_MARKER) else {
        return Err(LabError::invalid(
            "kallsyms capture has no end marker: the transfer was cut short",
            "re-run `graft-lab kallsyms`; if it repeats, raise the capture timeout",
        ));
    };
    let expected: usize = raw[pos + END_MARKER.len()..]
        .trim()
        .lines()
        .next()
        .and_then(|l| l.trim().parse().ok())
        .ok_or_else(|| {
            LabError::invalid(
                "kallsyms end marker carries no line count",
                "re-run `graft-lab kallsyms`",
            )
        })?;
    let table = raw[..pos].to_string();
    let stats = validate(&table)?;
    if stats.lines != expected {
        return Err(LabError::invalid(
            format!(
                "kallsyms capture has {} lines but the guest counted {expected}",
                stats.lines
            ),
            "serial output was lost; re-run `graft-lab kallsyms`",
        ));
    }
    Ok((table, stats))
}

/// Checks that `table` looks like a complete `/proc/kallsyms` of a kernel booted without KASLR
/// (read with graft-target's parser, the product's).
pub fn validate(table: &str) -> Result<KallsymsStats, LabError> {
    let parsed = graft_target::SymbolTable::parse(table).map_err(|(line, text)| {
        LabError::invalid(
            format!("kallsyms line {line} is malformed: `{text}`"),
            "re-run `graft-lab kallsyms`",
        )
    })?;
    let lines = parsed.len();
    let zero = parsed.entries().iter().filter(|e| e.address == 0).count();
    if lines < MIN_SYMBOLS {
        return Err(LabError::invalid(
            format!("kallsyms has only {lines} symbols (expected at least {MIN_SYMBOLS})"),
            "re-run `graft-lab kallsyms`",
        ));
    }
    // A few per-CPU symbols are legitimately 0; a mostly-zero table means kptr_restrict hid them.
    if zero * 2 > lines {
        return Err(LabError::invalid(
            format!("{zero} of {lines} kallsyms addresses are zero"),
            "the guest hid addresses (kptr_restrict); re-run `graft-lab kallsyms`",
        ));
    }
    let text_address = parsed
        .lookup("vmlinux", "_text")
        .first()
        .map(|e| e.address)
        .ok_or_else(|| {
            LabError::invalid(
                "kallsyms has no `_text` symbol",
                "re-run `graft-lab kallsyms`",
            )
        })?;
    if text_address != NOKASLR_TEXT {
        return Err(LabError::invalid(
            format!("`_text` is at {text_address:#x}, not {NOKASLR_TEXT:#x}: KASLR was active"),
            "the capture VM must boot with `nokaslr`",
        ));
    }
    Ok(KallsymsStats {
        lines,
        text_address,
    })
}

/// Boots `vmlinuz`, captures its table into `out` (written atomically) and returns its stats and
/// how long the VM ran.
pub(crate) fn capture(
    vmlinuz: &Path,
    out: &Path,
    timeout: Duration,
) -> Result<(KallsymsStats, Duration), LabError> {
    let tmp = tempfile::Builder::new()
        .prefix("graft-lab-kallsyms-")
        .tempdir()
        .map_err(|e| LabError::io("creating a temporary directory", e))?;
    let raw_path = tmp.path().join("ttyS1.raw");
    let opts = VmOptions {
        second_serial: Some(raw_path.clone()),
        ..VmOptions::default()
    };
    let sc = Scenario::new("kallsyms-capture", CAPTURE_SCRIPT).with_timeout(timeout);
    let started = Instant::now();
    let run = vm::run_kernel(vmlinuz, &sc, &opts)?;
    if run.exit_code != 0 {
        return Err(LabError::GuestFailed {
            scenario: sc.name,
            reason: format!("capture script exited with {}", run.exit_code),
            console: run.console,
        });
    }
    let raw = std::fs::read(&raw_path)
        .map_err(|e| LabError::io(format!("reading {}", raw_path.display()), e))?;
    let (table, stats) = extract_table(&String::from_utf8_lossy(&raw))?;
    crate::lab::write_atomic(out, table.as_bytes())?;
    Ok((stats, started.elapsed()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_table(n: usize) -> String {
        let mut s = String::from("ffffffff81000000 T _text\n");
        for i in 1..n {
            s.push_str(&format!("ffffffff81{i:06x} t sym_{i}\n"));
        }
        s
    }

    #[test]
    fn extracts_and_counts() {
        let t = fake_table(MIN_SYMBOLS + 5);
        let raw = format!("{t}#GRAFT-KALLSYMS-END {}\n", MIN_SYMBOLS + 5).replace('\n', "\r\n");
        let (table, stats) = extract_table(&raw).unwrap();
        assert_eq!(stats.lines, MIN_SYMBOLS + 5);
        assert_eq!(stats.text_address, NOKASLR_TEXT);
        assert_eq!(table, t);
    }

    #[test]
    fn detects_truncation() {
        let t = fake_table(MIN_SYMBOLS + 5);
        assert!(extract_table(&t).is_err());
        let raw = format!("{t}#GRAFT-KALLSYMS-END {}\n", MIN_SYMBOLS + 6);
        let e = extract_table(&raw).unwrap_err().to_string();
        assert!(e.contains("guest counted"), "{e}");
    }

    #[test]
    fn rejects_hidden_or_randomized() {
        let hidden: String = fake_table(MIN_SYMBOLS)
            .lines()
            .map(|l| format!("0000000000000000{}\n", &l[16..]))
            .collect();
        assert!(validate(&hidden).unwrap_err().to_string().contains("zero"));
        let kaslr =
            fake_table(MIN_SYMBOLS).replace("ffffffff81000000 T _text", "ffffffff9a000000 T _text");
        assert!(validate(&kaslr).unwrap_err().to_string().contains("KASLR"));
        assert!(validate("garbage\n").is_err());
        assert!(validate(&fake_table(10)).is_err());
    }
}
