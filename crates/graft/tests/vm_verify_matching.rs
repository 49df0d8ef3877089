//! The patches of `verify_matching.rs`, built (their verification needs the
//! instruction-level matching, the choice among identical copies, or the
//! full `sympos` count) and loaded in the lab kernel: each transition
//! completes, and fs/aio.c's patched limit shows in io_setup(2).

mod common;

use std::time::Duration;

use common::*;
use graft_lab::{run_scenario, Scenario};

#[test]
fn verified_builds_load_and_take_effect() {
    let lab = lab();
    let out = tempfile::tempdir().unwrap();
    let mut files = Vec::new();
    for (patch, name) in [
        ("verify-reboot-cad", "reboot-cad"),
        ("verify-audit-key", "audit-key"),
        ("verify-namei-set-root", "set-root"),
    ] {
        let (ko, _) = build_ok(&lab, &format!("{patch}.patch"), name, out.path());
        files.push((format!("/{name}.ko"), ko));
    }
    // The aio patch in graft's plain output: the choice is said there too.
    let args = build_args(
        &lab,
        &repo_file("tests/patches/verify-aio-limit.patch"),
        "aio-limit",
        out.path(),
    );
    let built = graft(&args);
    assert!(built.status.success(), "{}", stderr(&built));
    let text = stdout(&built);
    assert!(
        text.lines()
            .any(|l| l.starts_with("cpumask_weight.constprop.0: ") && l.contains("is fs/aio.o's")),
        "{text}"
    );
    files.push((
        "/aio-limit.ko".into(),
        out.path().join("livepatch-aio-limit.ko"),
    ));

    let io_setup = out.path().join("io-setup");
    let o = std::process::Command::new("gcc")
        .args(["-static", "-O2", "-o"])
        .arg(&io_setup)
        .arg(repo_file("tests/vm/io-setup.c"))
        .output()
        .expect("run gcc");
    assert!(
        o.status.success(),
        "gcc -static failed (libc6-dev provides libc.a):\n{}",
        String::from_utf8_lossy(&o.stderr)
    );

    // 3,000,000 events, doubled, pass the original limit (2^28 bytes of
    // events) and fail the patched one (2^27): EAGAIN (over aio-max-nr)
    // before and after, EINVAL while patched.
    let script = format!(
        r#"{SH_PRELUDE}
load() {{ p=/sys/kernel/livepatch/livepatch_$(echo $1 | tr - _); insmod /$1.ko || echo "STEP: insmod $1 failed"; wait_for "[ \"\$(cat $p/transition 2>/dev/null)\" = 0 ]" || echo "STEP: $1 transition stuck"; }}
unload() {{ p=/sys/kernel/livepatch/livepatch_$(echo $1 | tr - _); echo 0 > $p/enabled; wait_for "[ ! -d $p ]" || echo "STEP: $1 not unpatched"; rmmod livepatch_$(echo $1 | tr - _) || echo "STEP: rmmod $1 failed"; }}
for m in reboot-cad audit-key set-root; do load $m; echo "LOADED: $m $(cat /sys/kernel/livepatch/livepatch_$(echo $m | tr - _)/enabled)"; unload $m; done
echo "AIO-BEFORE: $(io-setup 3000000)"
load aio-limit
echo "AIO-DURING: $(io-setup 3000000)"
echo "AIO-SMALL: $(io-setup 128)"
unload aio-limit
echo "AIO-AFTER: $(io-setup 3000000)"
problems
"#
    );
    let mut sc = Scenario::new("verify-matching", script)
        .with_file("/usr/bin/io-setup", &io_setup)
        .with_timeout(Duration::from_secs(300));
    for (guest, host) in &files {
        sc = sc.with_file(guest.clone(), host);
    }
    let run = run_scenario(&lab, &sc).unwrap_or_else(|e| panic!("VM run failed: {e}"));
    let c = &run.console;
    assert_eq!(run.lines_with_prefix("STEP:"), Vec::<&str>::new(), "{c}");
    assert_eq!(
        run.lines_with_prefix("LOADED:"),
        vec![
            "LOADED: reboot-cad 1",
            "LOADED: audit-key 1",
            "LOADED: set-root 1"
        ],
        "{c}"
    );
    assert_eq!(line_value(&run, "AIO-BEFORE:"), "EAGAIN", "{c}");
    assert_eq!(line_value(&run, "AIO-DURING:"), "EINVAL", "{c}");
    assert_eq!(line_value(&run, "AIO-SMALL:"), "ok", "{c}");
    assert_eq!(line_value(&run, "AIO-AFTER:"), "EAGAIN", "{c}");
    assert!(run.lines_with_prefix("KERNEL-PROBLEM:").is_empty(), "{c}");
}
