//! The rewrites docs/patch-author-guide.md gives for two refusals, built
//! from the real Debian 6.1 source and checked in the kernel under QEMU:
//! a changed initial value done by callbacks instead (rule data-changed),
//! and a changed function using pr_warn_once given a flag of its own
//! (rule hidden-state).

mod common;

use std::time::Duration;

use common::*;
use graft_lab::{run_scenario, Scenario};

#[test]
fn refused_patches_rewritten_as_the_guide_says_work() {
    let lab = lab();
    let out = tempfile::tempdir().unwrap();

    // As written, the fix to __set_oom_adj is refused, with the rewrite.
    let o = graft(&build_args(
        &lab,
        &repo_file("tests/patches/author-printk-once.patch"),
        "refused",
        out.path(),
    ));
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    for needle in [
        "__set_oom_adj",
        "uses __already_done",
        "[rule: hidden-state]",
        "static bool done; if (!done) { done = true; pr_warn(...); }",
    ] {
        assert!(
            stderr(&o).contains(needle),
            "no {needle:?} in {}",
            stderr(&o)
        );
    }
    let (once, _) = build_ok(&lab, "author-rewrite-printk-once.patch", "once", out.path());

    // The changed initial value, refused by vm_differ_cases, done by callbacks.
    let (init, s) = build_ok(&lab, "author-rewrite-global-init.patch", "uid", out.path());
    assert_eq!(s["files"][0]["changed"], serde_json::json!([]), "{s}");
    assert_eq!(s["callbacks"].as_array().unwrap().len(), 2, "{s}");

    let script = format!(
        r#"{SH_PRELUDE}
L=/sys/kernel/livepatch
load() {{ insmod /$1.ko || echo "STEP: insmod $1 failed"; wait_for "[ \"\$(cat $L/livepatch_$1/transition)\" = 0 ]" || echo "STEP: $1 stuck"; }}
unload() {{ echo 0 > $L/livepatch_$1/enabled; wait_for "[ ! -d $L/livepatch_$1 ]" || echo "STEP: $1 not unpatched"; rmmod livepatch_$1 || echo "STEP: rmmod $1 failed"; }}
warned() {{ dmesg | grep -c "oom_adj is deprecated"; }}
echo 0 > /proc/self/oom_adj; echo 0 > /proc/self/oom_adj
echo "WARNED-BEFORE: $(warned)"
load once
echo 0 > /proc/self/oom_adj; echo 0 > /proc/self/oom_adj
echo "WARNED-PATCHED: $(warned)"
unload once
echo "UID-BEFORE: $(cat /proc/sys/kernel/overflowuid)"
load uid
echo "UID-DURING: $(cat /proc/sys/kernel/overflowuid)"
unload uid
echo "UID-AFTER: $(cat /proc/sys/kernel/overflowuid)"
dmesg | grep -E "WARNING|Oops|BUG:|Call Trace|livepatch: .*(failed|error)" | sed 's/^/KERNEL-PROBLEM: /'
"#
    );
    let run = run_scenario(
        &lab,
        &Scenario::new("author-rewrites", script)
            .with_file("/once.ko", &once)
            .with_file("/uid.ko", &init)
            .with_timeout(Duration::from_secs(180)),
    )
    .unwrap_or_else(|e| panic!("VM run failed: {e}"));
    let c = &run.console;
    let get = |p: &str| line_value(&run, p);
    assert_eq!(run.lines_with_prefix("STEP:"), Vec::<&str>::new(), "{c}");
    // Once by the kernel's flag, once more by the patch's own, never twice.
    assert_eq!(get("WARNED-BEFORE:"), "1", "{c}");
    assert_eq!(get("WARNED-PATCHED:"), "2", "{c}");
    assert_eq!(get("UID-BEFORE:"), "65534", "{c}");
    assert_eq!(get("UID-DURING:"), "65533", "{c}");
    assert_eq!(get("UID-AFTER:"), "65534", "{c}");
    assert!(run.lines_with_prefix("KERNEL-PROBLEM:").is_empty(), "{c}");
}
