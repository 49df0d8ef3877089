//! `graft-lab demo`: the whole product in one go. A one-line fix to the
//! Debian kernel's `/proc/cmdline` becomes a live patch with `graft build`,
//! and a VM running that exact kernel shows the file before, during and
//! after the patch.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use graft_lab::{run_scenario, Lab, Scenario};

const SCRIPT: &str = r#"
p=/sys/kernel/livepatch/livepatch_demo
up() { cut -d' ' -f1 /proc/uptime; }
say() { echo "DEMO: $*"; }
say "kernel $(uname -r), livepatch support: $([ -d /sys/kernel/livepatch ] && echo yes || echo no)"
say ""
say "before:  cat /proc/cmdline → $(cat /proc/cmdline)"
t0=$(up)
insmod /livepatch-demo.ko || { say "insmod failed"; exit 1; }
i=0; while [ "$(cat $p/transition)" != 0 ] && [ $i -lt 200 ]; do sleep 0.1; i=$((i+1)); done
say "loaded:  insmod livepatch-demo.ko; enabled=$(cat $p/enabled), transition complete after $(echo "$(up) $t0" | awk '{printf "%.1f", $1-$2}') s"
say "during:  cat /proc/cmdline → $(cat /proc/cmdline)"
echo 0 > $p/enabled
i=0; while [ -d $p ] && [ $i -lt 200 ]; do sleep 0.1; i=$((i+1)); done
rmmod livepatch_demo && say "removed: echo 0 > enabled; rmmod livepatch_demo"
say "after:   cat /proc/cmdline → $(cat /proc/cmdline)"
say ""
say "kernel log:"
dmesg | grep -E "livepatch|WARNING|Oops" | sed 's/^/DEMO:   /'
"#;

pub fn run(lab: &Lab, graft: &Path, patch: &Path) -> Result<()> {
    let text =
        std::fs::read_to_string(patch).with_context(|| format!("reading {}", patch.display()))?;
    println!("== the fix: {} ==\n{}", patch.display(), text.trim_end());

    println!(
        "\n== graft build (Debian {} kernel, {}) ==",
        lab.release, lab.debian_version
    );
    let out = tempfile::tempdir()?;
    let status = Command::new(graft)
        .arg("build")
        .arg(patch)
        .args(["--name", "demo"])
        .args(lab.graft_target_args())
        .arg("--output")
        .arg(out.path())
        .status()
        .with_context(|| format!("running {}", graft.display()))?;
    if !status.success() {
        bail!("graft build failed ({status})");
    }
    let ko = out.path().join("livepatch-demo.ko");

    println!("\n== in a VM booting that kernel (QEMU) ==");
    let run = run_scenario(
        lab,
        &Scenario::new("demo", SCRIPT)
            .with_file("/livepatch-demo.ko", &ko)
            .with_timeout(Duration::from_secs(180)),
    )?;
    for line in run.lines_with_prefix("DEMO:") {
        println!(
            "{}",
            line.trim_start_matches("DEMO:")
                .strip_prefix(' ')
                .unwrap_or("")
        );
    }
    if run.exit_code != 0 {
        bail!(
            "the demo script failed in the VM (exit {}); console:\n{}",
            run.exit_code,
            run.console
        );
    }
    Ok(())
}
