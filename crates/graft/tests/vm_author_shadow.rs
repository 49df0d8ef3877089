//! The patch author's toolbox in the Debian kernel under QEMU: a shadow
//! variable attached to each task born while the patch is loaded and shown
//! in /proc/<pid>/status, callbacks that run in order and free the shadow
//! variables on unload, and a pre-patch callback whose error aborts the
//! load cleanly.

mod common;

use std::time::Duration;

use common::*;
use graft_lab::{run_scenario, Scenario};

fn names(v: &serde_json::Value) -> Vec<String> {
    let mut n: Vec<String> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_str().unwrap().to_owned())
        .collect();
    n.sort();
    n
}

#[test]
fn shadow_variables_and_callbacks_work_and_a_failing_pre_patch_aborts_the_load() {
    let lab = lab();
    let out = tempfile::tempdir().unwrap();
    let tree_before = fingerprint(&lab.source_tree());
    let (shadow, summary) = build_ok(&lab, "author-shadow.patch", "shadow", out.path());
    let fork = &summary["files"][0];
    assert_eq!(fork["file"], "kernel/fork.c");
    assert_eq!(names(&fork["changed"]), vec!["kernel_clone"], "{summary}");
    assert_eq!(
        names(&summary["files"][1]["changed"]),
        vec!["proc_pid_status"]
    );
    let kinds: Vec<&str> = summary["callbacks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["kind"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        vec!["pre_patch", "post_patch", "pre_unpatch", "post_unpatch"],
        "{summary}"
    );
    // graft's records are read at build time, never carried.
    let module = graft_elf::Object::read(&shadow).unwrap();
    assert!(
        module.sections.iter().all(|s| !s.name.contains(".graft.")),
        "a .graft.* section reached the module"
    );
    let (fail, _) = build_ok(&lab, "author-callback-fail.patch", "cbfail", out.path());
    assert_eq!(
        fingerprint(&lab.source_tree()),
        tree_before,
        "the lab tree was modified (graft's headers belong in its private copy only)"
    );

    let script = format!(
        r#"{SH_PRELUDE}
L=/sys/kernel/livepatch
p=$L/livepatch_shadow
echo "CMDLINE-BEFORE: $(cat /proc/cmdline)"
insmod /cbfail.ko && echo "STEP: a refused patch loaded"
echo "FAIL-SYSFS: $(ls $L | wc -l)"
echo "FAIL-MODULE: $(grep -c livepatch_cbfail /proc/modules)"
echo "CMDLINE-AFTER-FAIL: $(cat /proc/cmdline)"
sleep 1000 & old=$!
insmod /shadow.ko || echo "STEP: insmod shadow failed"
wait_for '[ "$(cat $p/transition)" = 0 ]' || echo "STEP: shadow transition stuck"
sleep 1000 & new=$!
echo "OLD-TASK: $(grep -c GraftBirth: /proc/$old/status)"
echo "NEW-TASK: $(grep GraftBirth: /proc/$new/status | cut -f2)"
echo "NEXT-TASK: $(grep GraftBirth: /proc/self/status | cut -f2)"
echo 0 > $p/enabled
wait_for '[ ! -d $p ]' || echo "STEP: shadow not unpatched"
echo "NEW-TASK-AFTER: $(grep -c GraftBirth: /proc/$new/status)"
rmmod livepatch_shadow || echo "STEP: rmmod shadow failed"
kill $old $new
dmesg | grep -E "graft-test:|pre-patch callback failed" | sed 's/^\[[ 0-9.]*\] /KLOG: /'
# (the refused load's "failed" lines are expected: not problems here)
dmesg | grep -E "WARNING|Oops|BUG:|Call Trace" | sed 's/^/KERNEL-PROBLEM: /'
"#
    );
    let run = run_scenario(
        &lab,
        &Scenario::new("author-shadow", script)
            .with_file("/shadow.ko", &shadow)
            .with_file("/cbfail.ko", &fail)
            .with_timeout(Duration::from_secs(180)),
    )
    .unwrap_or_else(|e| panic!("VM run failed: {e}"));
    let c = &run.console;
    let get = |p: &str| line_value(&run, p);
    assert_eq!(run.lines_with_prefix("STEP:"), Vec::<&str>::new(), "{c}");

    // The pre-patch callback's -ENODEV: no module, no sysfs, no change.
    assert_eq!(get("FAIL-SYSFS:"), "0", "{c}");
    assert_eq!(get("FAIL-MODULE:"), "0", "{c}");
    assert_eq!(get("CMDLINE-AFTER-FAIL:"), get("CMDLINE-BEFORE:"), "{c}");
    let klog: Vec<&str> = run
        .lines_with_prefix("KLOG:")
        .into_iter()
        .map(|l| l["KLOG:".len()..].trim())
        .collect();
    assert!(
        klog.contains(&"graft-test: pre-patch refuses")
            && klog.contains(&"livepatch: pre-patch callback failed for object 'vmlinux'"),
        "{c}"
    );

    // Only tasks born while the patch is loaded carry the shadow field.
    assert_eq!(get("OLD-TASK:"), "0", "{c}");
    let new: u64 = get("NEW-TASK:").parse().unwrap_or_else(|_| panic!("{c}"));
    let next: u64 = get("NEXT-TASK:").parse().unwrap_or_else(|_| panic!("{c}"));
    assert!(new >= 1 && next > new, "birth numbers {new}, {next}\n{c}");
    assert_eq!(get("NEW-TASK-AFTER:"), "0", "{c}");

    // The callbacks, in the kernel's order; post-unpatch freed them all.
    let ours: Vec<&str> = klog
        .iter()
        .copied()
        .filter(|l| l.starts_with("graft-test:") && !l.contains("refuses"))
        .collect();
    assert_eq!(ours.len(), 4, "{c}");
    assert_eq!(ours[0], "graft-test: pre-patch");
    assert_eq!(ours[1], "graft-test: post-patch");
    let live: u64 = ours[2]
        .strip_prefix("graft-test: pre-unpatch, ")
        .and_then(|r| r.strip_suffix(" shadow variables"))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{c}"));
    // At least the sleep born after the load (tasks that exited may have
    // had theirs freed when a new task took their address).
    assert!(live >= 1, "no shadow variable alive: {live}\n{c}");
    assert_eq!(
        ours[3],
        format!("graft-test: post-unpatch freed {live} shadow variables, 0 left"),
        "{c}"
    );
    assert!(run.lines_with_prefix("KERNEL-PROBLEM:").is_empty(), "{c}");
}

/// A klp_object holds one callback of each kind: two files of vmlinux that
/// both declare a post-patch callback are refused (exit 3) with the way out.
#[test]
fn two_callbacks_of_one_kind_for_one_object_are_refused() {
    let lab = lab();
    let out = tempfile::tempdir().unwrap();
    let callback = |file: &str, line: usize, context: &str, name: &str| {
        format!(
            "--- a/{file}\n+++ b/{file}\n@@ -{line},1 +{line},4 @@\n {context}\n+#include <graft/livepatch.h>\n+static void {name}(struct klp_object *obj) {{ pr_info(\"{name}\\n\"); }}\n+GRAFT_POST_PATCH_CALLBACK({name});\n"
        )
    };
    let text = callback(
        "fs/proc/cmdline.c",
        5,
        "#include <linux/seq_file.h>",
        "graft_a",
    ) + &callback("fs/proc/version.c", 8, "#include \"internal.h\"", "graft_b");
    let patch = patch_file(out.path(), "two.patch", &text);
    let o = graft(&build_args(&lab, &patch, "two", out.path()));
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(3), "{err}");
    assert!(
        err.contains("two post_patch callbacks for vmlinux: graft_a (fs/proc/cmdline.o) and graft_b (fs/proc/version.o)"),
        "{err}"
    );
    assert!(
        err.contains("[rule: marker]; hint: keep one and call the other from it"),
        "{err}"
    );
}
