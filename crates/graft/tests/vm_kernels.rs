//! One fix, several Debian kernels: `graft build --kernel A --kernel B`
//! builds a module per kernel, each verified against and loaded live in its
//! own kernel; a fix that does not apply to one kernel is reported for that
//! one while the other is built (exit 6).
//!
//! The kernels are the lab's (current and an older ABI, `graft-lab setup
//! --release previous`), which graft finds fetched and prepared in its cache.

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;
use graft_lab::{run_scenario, Lab, Scenario};

/// A line of `a`'s copy of `rel` that `b`'s copy lacks, fit to carry a
/// trailing comment: code ending in `;`, no string, no continuation.
fn line_only_in(a: &Path, b: &Path, rel: &str) -> Option<(usize, String)> {
    let (ta, tb) = (
        std::fs::read_to_string(a.join(rel)).ok()?,
        std::fs::read_to_string(b.join(rel)).ok()?,
    );
    let in_b: std::collections::HashSet<&str> = tb.lines().map(str::trim).collect();
    let count = |l: &str| ta.lines().filter(|x| x.trim() == l.trim()).count();
    ta.lines().enumerate().find_map(|(i, l)| {
        let t = l.trim();
        let fit = t.ends_with(';')
            && t.len() > 12
            && !t.contains('"')
            && !t.starts_with('#')
            && !t.starts_with('*')
            && !in_b.contains(t)
            && count(l) == 1;
        fit.then(|| (i + 1, l.to_string()))
    })
}

/// The cmdline fix plus a comment appended to a line that only kernel `a`'s
/// source has (a core file the two kernels' sources differ in): it applies
/// to `a` and not to `b`, and changes no code beyond the cmdline fix.
fn fix_for_one(a: &Lab, b: &Lab) -> String {
    let (ta, tb) = (a.source_tree(), b.source_tree());
    for dir in ["kernel", "mm", "fs"] {
        let mut files: Vec<String> = std::fs::read_dir(ta.join(dir))
            .unwrap()
            .flatten()
            .map(|e| format!("{dir}/{}", e.file_name().to_string_lossy()))
            .filter(|f| f.ends_with(".c"))
            .collect();
        files.sort();
        for rel in files {
            if let Some((n, line)) = line_only_in(&ta, &tb, &rel) {
                let cmdline =
                    std::fs::read_to_string(repo_file("tests/patches/cmdline.patch")).unwrap();
                return format!(
                    "{cmdline}--- a/{rel}\n+++ b/{rel}\n@@ -{n} +{n} @@\n-{line}\n+{line} // graft test: only in {}\n",
                    a.release
                );
            }
        }
    }
    panic!(
        "the sources of {} and {} differ in no core .c file (kernel/, mm/, fs/)",
        a.release, b.release
    );
}

const SCRIPT: &str = r#"
p=/sys/kernel/livepatch/livepatch_kernels
wait_for() { i=0; while [ $i -lt 120 ]; do eval "$1" && return 0; sleep 0.25; i=$((i+1)); done; return 1; }
echo "RELEASE: $(uname -r)"
insmod /livepatch-kernels.ko || echo "STEP: insmod failed"
wait_for '[ "$(cat $p/transition 2>/dev/null)" = 0 ]' && echo "STEP: transition done"
echo "DURING: $(cat /proc/cmdline)"
"#;

#[test]
fn one_fix_built_for_two_kernels_each_live_in_its_own() {
    let labs = lab_kernels();
    assert!(
        labs.len() >= 2,
        "the lab holds one kernel; run `graft-lab setup --release previous`"
    );
    let (a, b) = (&labs[0], &labs[1]);
    let cache = kernel_cache(&[a.clone(), b.clone()]);
    let out = tempfile::tempdir().unwrap();
    let args = |patch: &Path, out: &Path| -> Vec<std::ffi::OsString> {
        vec![
            "--json".into(),
            "build".into(),
            patch.into(),
            "--name".into(),
            "kernels".into(),
            "--kernel".into(),
            a.release.clone().into(),
            "--kernel".into(),
            b.release.clone().into(),
            "--cache-dir".into(),
            cache.clone().into(),
            "--output".into(),
            out.into(),
        ]
    };

    // The cmdline fix applies to both: two modules, one per kernel.
    let built = graft(&args(&repo_file("tests/patches/cmdline.patch"), out.path()));
    assert!(
        built.status.success(),
        "graft build failed:\n{}",
        stderr(&built)
    );
    let report: serde_json::Value = serde_json::from_slice(&built.stdout).expect("JSON");
    for (i, l) in [a, b].iter().enumerate() {
        assert_eq!(report[i]["release"], l.release.as_str());
        assert_eq!(report[i]["built"], true, "{report:#}");
        let verified = &report[i]["summary"]["verified"];
        assert_eq!(verified[0]["function"], "cmdline_proc_show", "{report:#}");
    }

    // Each module is live in a VM booting its own kernel.
    for l in [a, b] {
        let ko = out.path().join(&l.release).join("livepatch-kernels.ko");
        assert!(ko.is_file(), "{} missing", ko.display());
        let run = run_scenario(
            l,
            &Scenario::new(format!("kernels-{}", l.release), SCRIPT)
                .with_file("/livepatch-kernels.ko", &ko)
                .with_timeout(Duration::from_secs(180)),
        )
        .unwrap();
        assert_eq!(line_value(&run, "RELEASE:"), l.release);
        assert!(
            run.lines_with_prefix("STEP:")
                .contains(&"STEP: transition done"),
            "{}: console:\n{}",
            l.release,
            run.console
        );
        assert!(
            line_value(&run, "DURING:").ends_with("graft_was_here"),
            "{}: console:\n{}",
            l.release,
            run.console
        );
    }

    // A fix that applies to one kernel only: that one is built, the other
    // reported with the reason, and the exit code says "partial".
    let dir = tempfile::tempdir().unwrap();
    let patch = patch_file(dir.path(), "one.patch", &fix_for_one(a, b));
    let out2 = tempfile::tempdir().unwrap();
    let partial = graft(&args(&patch, out2.path()));
    assert_eq!(partial.status.code(), Some(6), "{}", stderr(&partial));
    let report: serde_json::Value = serde_json::from_slice(&partial.stdout).expect("JSON");
    assert_eq!(report[0]["built"], true, "{report:#}");
    assert!(out2
        .path()
        .join(&a.release)
        .join("livepatch-kernels.ko")
        .is_file());
    assert_eq!(report[1]["built"], false, "{report:#}");
    let why = report[1]["error"].as_str().unwrap();
    assert!(why.contains("does not apply"), "{why}");
    assert!(!out2
        .path()
        .join(&b.release)
        .join("livepatch-kernels.ko")
        .exists());
}
