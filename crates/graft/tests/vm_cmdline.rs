//! The first end-to-end check: a one-line fix to `fs/proc/cmdline.c` that
//! uses the unexported `saved_command_line` (so it needs a klp relocation)
//! becomes a module that changes `/proc/cmdline` live in the Debian kernel,
//! and goes away cleanly.

mod common;

use std::time::Duration;

use common::*;
use graft_lab::{run_scenario, Scenario};

const WORD: &str = "graft_was_here";

#[test]
fn cmdline_patch_loads_changes_behaviour_and_unloads() {
    let lab = lab();
    let out = tempfile::tempdir().unwrap();
    let tree_before = fingerprint(&lab.source_tree());
    let mut args = build_args(
        &lab,
        &repo_file("tests/patches/cmdline.patch"),
        "cmdline",
        out.path(),
    );
    args.insert(0, "--json".into());
    let built = graft(&args);
    assert!(
        built.status.success(),
        "graft build failed:\n{}",
        stderr(&built)
    );
    assert_eq!(
        fingerprint(&lab.source_tree()),
        tree_before,
        "the kernel tree was modified"
    );
    let summary: serde_json::Value = serde_json::from_slice(&built.stdout).expect("JSON summary");
    assert_eq!(summary["files"][0]["file"], "fs/proc/cmdline.c");
    assert_eq!(
        summary["files"][0]["changed"],
        serde_json::json!(["cmdline_proc_show"])
    );
    assert_eq!(
        summary["klp_relocations"], 1,
        "saved_command_line needs exactly one klp relocation"
    );
    let ko = out.path().join("livepatch-cmdline.ko");
    assert!(ko.is_file());

    let script = r#"
p=/sys/kernel/livepatch/livepatch_cmdline
wait_for() { i=0; while [ $i -lt 120 ]; do eval "$1" && return 0; sleep 0.25; i=$((i+1)); done; return 1; }
echo "BEFORE: $(cat /proc/cmdline)"
insmod /livepatch-cmdline.ko || echo "STEP: insmod failed"
wait_for '[ "$(cat $p/transition 2>/dev/null)" = 0 ]' && echo "STEP: transition done"
echo "ENABLED: $(cat $p/enabled)"
echo "DURING: $(cat /proc/cmdline)"
echo 0 > $p/enabled
wait_for '[ ! -d $p ]' && echo "STEP: unpatched"
echo "AFTER: $(cat /proc/cmdline)"
rmmod livepatch_cmdline && echo "STEP: rmmod ok"
dmesg | grep -E "WARNING|Oops|BUG:|Call Trace" | sed 's/^/KERNEL-PROBLEM: /'
dmesg | grep "livepatch:" | sed 's/^/KLOG: /'
true
"#;
    let run = run_scenario(
        &lab,
        &Scenario::new("cmdline", script)
            .with_file("/livepatch-cmdline.ko", &ko)
            .with_timeout(Duration::from_secs(180)),
    )
    .unwrap_or_else(|e| panic!("VM run failed: {e}"));
    let console = &run.console;
    let one = |prefix: &str| line_value(&run, prefix);
    let before = one("BEFORE:");
    let during = one("DURING:");
    let after = one("AFTER:");
    assert!(!before.contains(WORD), "{before}");
    assert_eq!(during, format!("{before} {WORD}"), "console:\n{console}");
    assert_eq!(after, before, "console:\n{console}");
    assert_eq!(one("ENABLED:"), "1");
    let steps = run.lines_with_prefix("STEP:");
    assert_eq!(
        steps,
        vec!["STEP: transition done", "STEP: unpatched", "STEP: rmmod ok"],
        "console:\n{console}"
    );
    assert!(
        run.lines_with_prefix("KERNEL-PROBLEM:").is_empty(),
        "kernel warnings:\n{console}"
    );
    let klog = run.lines_with_prefix("KLOG:").join("\n");
    for event in ["patching complete", "unpatching complete"] {
        assert!(
            klog.contains(&format!("'livepatch_cmdline': {event}")),
            "no {event:?} in the kernel log:\n{klog}"
        );
    }
}
