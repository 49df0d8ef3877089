//! The differ's acceptance cases, end to end: live patches built from the
//! real Debian 6.1 source load in the Debian kernel and show their effect
//! (a changed /proc/meminfo string; a new static function with a static
//! counter; a function with `__ex_table` entries; a function with a
//! `__bug_table` entry; a change that only shifts another function's
//! `__LINE__`, which must stay out of the module), and the patches a live
//! patch cannot carry are refused with the rule and a hint.

mod common;

use std::time::Duration;

use common::*;
use graft_lab::{run_scenario, Scenario};

struct Case {
    patch: &'static str,
    /// Functions the summary must list as changed.
    changed: &'static [&'static str],
    /// Extra `graft build` arguments.
    extra: &'static [&'static str],
}

const CASES: &[Case] = &[
    Case {
        patch: "differ-meminfo-string",
        changed: &["meminfo_proc_show"],
        // meminfo.o's weak arch_report_meminfo is overridden by x86's in the
        // kernel: verification must not hold the weak copy against it.
        extra: &[],
    },
    Case {
        patch: "differ-new-function",
        changed: &["version_proc_show"],
        extra: &[],
    },
    Case {
        patch: "differ-readdir",
        changed: &["filldir64"],
        extra: &[],
    },
    Case {
        patch: "differ-bug-table",
        changed: &["proc_pid_cmdline_read", "proc_pid_cmdline_read.cold"],
        extra: &[],
    },
    Case {
        patch: "differ-line-shift",
        changed: &["proc_readdir_de"],
        extra: &[],
    },
];

fn sections_of(ko: &std::path::Path) -> String {
    let out = std::process::Command::new("readelf")
        .args(["-SW"])
        .arg(ko)
        .output()
        .expect("readelf");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn symbols_of(ko: &std::path::Path) -> String {
    let out = std::process::Command::new("readelf")
        .args(["-sW"])
        .arg(ko)
        .output()
        .expect("readelf");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn differ_cases_load_and_show_their_effect() {
    let lab = lab();
    let out = tempfile::tempdir().unwrap();
    let tree_before = fingerprint(&lab.source_tree());
    let mut scenario_files = Vec::new();
    for c in CASES {
        let name = c.patch.trim_start_matches("differ-");
        let mut args = build_args(
            &lab,
            &repo_file(&format!("tests/patches/{}.patch", c.patch)),
            name,
            out.path(),
        );
        args.insert(0, "--json".into());
        args.extend(c.extra.iter().map(Into::into));
        let built = graft(&args);
        assert!(built.status.success(), "{}: {}", c.patch, stderr(&built));
        let summary: serde_json::Value = serde_json::from_slice(&built.stdout).unwrap();
        let mut changed: Vec<String> = summary["files"][0]["changed"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap().to_owned())
            .collect();
        changed.sort();
        assert_eq!(changed, c.changed, "{}", c.patch);
        let ko = out.path().join(format!("livepatch-{name}.ko"));
        scenario_files.push((format!("/{name}.ko"), ko));
    }
    assert_eq!(
        fingerprint(&lab.source_tree()),
        tree_before,
        "the lab tree was modified"
    );

    // What the modules carry.
    let ko = |n: &str| out.path().join(format!("livepatch-{n}.ko"));
    assert!(sections_of(&ko("readdir")).contains("__ex_table"));
    assert!(sections_of(&ko("bug-table")).contains("__bug_table"));
    let line = symbols_of(&ko("line-shift"));
    assert!(line.contains("proc_readdir_de"));
    assert!(
        !line.contains("proc_create_reg"),
        "a function whose only difference is __LINE__ is in the module"
    );
    assert!(symbols_of(&ko("new-function")).contains("graft_count_calls"));

    let script = r#"
wait_for() { i=0; while [ $i -lt 120 ]; do eval "$1" && return 0; sleep 0.25; i=$((i+1)); done; return 1; }
load() { insmod /$1.ko || echo "STEP: insmod $1 failed"; p=/sys/kernel/livepatch/livepatch_$(echo $1 | tr - _); wait_for "[ \"\$(cat $p/transition 2>/dev/null)\" = 0 ]" || echo "STEP: $1 transition stuck"; }
unload() { p=/sys/kernel/livepatch/livepatch_$(echo $1 | tr - _); echo 0 > $p/enabled; wait_for "[ ! -d $p ]" || echo "STEP: $1 not unpatched"; rmmod livepatch_$(echo $1 | tr - _) || echo "STEP: rmmod $1 failed"; }
mkdir -p /d && touch /d/graft_hidden /d/visible
echo "MEMINFO-BEFORE: $(grep -c '^GraftMemTotal:' /proc/meminfo)"
load meminfo-string
echo "MEMINFO-DURING: $(grep -c '^GraftMemTotal:' /proc/meminfo)"
unload meminfo-string
echo "MEMINFO-AFTER: $(grep -c '^GraftMemTotal:' /proc/meminfo)"
load new-function
echo "VERSION-1: $(grep -c graft-calls /proc/version)"
echo "VERSION-2: $(cat /proc/version | grep graft-calls)"
echo "VERSION-3: $(cat /proc/version | grep graft-calls)"
unload new-function
echo "VERSION-AFTER: $(grep -c graft-calls /proc/version)"
echo "READDIR-BEFORE: $(ls /d | tr '\n' ' ')"
load readdir
echo "READDIR-DURING: $(ls /d | tr '\n' ' ')"
unload readdir
echo "READDIR-AFTER: $(ls /d | tr '\n' ' ')"
echo "CMDLINE-BEFORE: $(cat /proc/self/cmdline | wc -c)"
load bug-table
echo "CMDLINE-DURING: $(cat /proc/self/cmdline | wc -c)"
unload bug-table
echo "CMDLINE-AFTER: $(cat /proc/self/cmdline | wc -c)"
echo "LISTED-BEFORE: $(ls /proc | grep -c '^version$')"
load line-shift
echo "LISTED-DURING: $(ls /proc | grep -c '^version$')"
unload line-shift
echo "LISTED-AFTER: $(ls /proc | grep -c '^version$')"
dmesg | grep -E "WARNING|Oops|BUG:|Call Trace" | sed 's/^/KERNEL-PROBLEM: /'
true
"#;
    let mut sc = Scenario::new("differ-cases", script).with_timeout(Duration::from_secs(400));
    for (guest, host) in &scenario_files {
        sc = sc.with_file(guest.clone(), host);
    }
    let run = run_scenario(&lab, &sc).unwrap_or_else(|e| panic!("VM run failed: {e}"));
    let console = &run.console;
    let one = |prefix: &str| -> String {
        let l = run.lines_with_prefix(prefix);
        assert_eq!(
            l.len(),
            1,
            "expected one {prefix} line; console:\n{console}"
        );
        l[0][prefix.len()..].trim().to_owned()
    };
    assert_eq!(
        run.lines_with_prefix("STEP:"),
        Vec::<&str>::new(),
        "{console}"
    );
    assert_eq!(one("MEMINFO-BEFORE:"), "0");
    assert_eq!(one("MEMINFO-DURING:"), "1", "{console}");
    assert_eq!(one("MEMINFO-AFTER:"), "0");
    assert_eq!(one("VERSION-1:"), "1", "{console}");
    assert_eq!(
        one("VERSION-2:"),
        "graft-calls 2",
        "the static counter keeps its state"
    );
    assert_eq!(one("VERSION-3:"), "graft-calls 3");
    assert_eq!(one("VERSION-AFTER:"), "0");
    assert_eq!(one("READDIR-BEFORE:"), "graft_hidden visible");
    assert_eq!(one("READDIR-DURING:"), "visible", "{console}");
    assert_eq!(one("READDIR-AFTER:"), "graft_hidden visible");
    let before: u32 = one("CMDLINE-BEFORE:").parse().unwrap();
    assert!(before > 0);
    assert_eq!(one("CMDLINE-DURING:"), "0", "{console}");
    assert_eq!(one("CMDLINE-AFTER:"), before.to_string());
    assert_eq!(one("LISTED-BEFORE:"), "1");
    assert_eq!(one("LISTED-DURING:"), "0", "{console}");
    assert_eq!(one("LISTED-AFTER:"), "1");
    assert!(
        run.lines_with_prefix("KERNEL-PROBLEM:").is_empty(),
        "{console}"
    );
}

#[test]
fn differ_refusals_name_the_rule_and_the_way_out() {
    let lab = lab();
    let out = tempfile::tempdir().unwrap();
    for (patch, needles) in [
        (
            "differ-init-change",
            &[
                "proc_meminfo_init",
                "rule: init-code",
                "post-patch callback",
            ][..],
        ),
        (
            "differ-global-init",
            &["overflowuid", "rule: data-changed", "shadow variable"][..],
        ),
        (
            "differ-struct-field",
            &[
                "dentry_stat",
                "rule: data-changed",
                "48 to 56 bytes",
                "shadow variable",
            ][..],
        ),
    ] {
        let args = build_args(
            &lab,
            &repo_file(&format!("tests/patches/{patch}.patch")),
            "refused",
            out.path(),
        );
        let o = graft(&args);
        assert_eq!(o.status.code(), Some(3), "{patch}: {}", stderr(&o));
        let err = stderr(&o);
        for n in needles {
            assert!(err.contains(n), "{patch}: no {n:?} in:\n{err}");
        }
    }
}
