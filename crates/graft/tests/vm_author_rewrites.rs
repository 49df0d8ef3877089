//! Hidden state and the guide's rewrites, built from the real Debian 6.1
//! source and checked in the kernel under QEMU: a changed function using
//! pr_warn_once shares the running kernel's once flag (found through the
//! verified original's code), the rewrite with a flag of its own warns once
//! more, and a changed initial value is done by callbacks instead (rule
//! data-changed).

mod common;

use std::time::Duration;

use common::*;
use graft_lab::{run_scenario, Scenario};

#[test]
fn hidden_state_is_shared_and_the_guides_rewrites_work() {
    let lab = lab();
    let out = tempfile::tempdir().unwrap();

    // As written, the fix to __set_oom_adj shares the kernel's once flag:
    // the copy its verified original reaches, among hundreds of that name.
    let (shared, s) = build_ok(&lab, "author-printk-once.patch", "shared", out.path());
    assert_eq!(
        s["files"][0]["changed"][0]
            .as_str()
            .map(|n| n.starts_with("__set_oom_adj")),
        Some(true),
        "{s}"
    );
    let syms = std::process::Command::new("readelf")
        .arg("-sW")
        .arg(&shared)
        .output()
        .unwrap();
    let syms = String::from_utf8_lossy(&syms.stdout);
    assert!(
        syms.lines()
            .any(|l| l.contains(".klp.sym.vmlinux.__already_done.") && !l.ends_with(",0")),
        "the once flag is not a klp symbol with its position:\n{syms}"
    );
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
mkdir -p /etc; echo 'nobody:x:65534:65534::/:/bin/sh' >> /etc/passwd
# Lowering oom_adj without CAP_SYS_RESOURCE: EACCES, EPERM once patched.
lower() {{ su nobody -s /bin/sh -c 'echo -5 > /proc/self/oom_adj' 2>&1 | grep -o -E "Permission denied|Operation not permitted"; }}
echo 0 > /proc/self/oom_adj; echo 0 > /proc/self/oom_adj
echo "WARNED-BEFORE: $(warned)"
echo "LOWER-BEFORE: $(lower)"
load shared
echo "LOWER-SHARED: $(lower)"
echo 0 > /proc/self/oom_adj; echo 0 > /proc/self/oom_adj
echo "WARNED-SHARED: $(warned)"
unload shared
echo "LOWER-AFTER: $(lower)"
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
            .with_file("/shared.ko", &shared)
            .with_file("/once.ko", &once)
            .with_file("/uid.ko", &init)
            .with_timeout(Duration::from_secs(180)),
    )
    .unwrap_or_else(|e| panic!("VM run failed: {e}"));
    let c = &run.console;
    let get = |p: &str| line_value(&run, p);
    assert_eq!(run.lines_with_prefix("STEP:"), Vec::<&str>::new(), "{c}");
    // The patched code ran (EPERM), and the kernel's flag, already set,
    // kept it quiet: a wrong copy would be clear and warn again.
    assert_eq!(get("LOWER-BEFORE:"), "Permission denied", "{c}");
    assert_eq!(get("LOWER-SHARED:"), "Operation not permitted", "{c}");
    assert_eq!(get("LOWER-AFTER:"), "Permission denied", "{c}");
    assert_eq!(get("WARNED-BEFORE:"), "1", "{c}");
    assert_eq!(get("WARNED-SHARED:"), "1", "{c}");
    // Once by the kernel's flag, once more by the patch's own, never twice.
    assert_eq!(get("WARNED-PATCHED:"), "2", "{c}");
    assert_eq!(get("UID-BEFORE:"), "65534", "{c}");
    assert_eq!(get("UID-DURING:"), "65533", "{c}");
    assert_eq!(get("UID-AFTER:"), "65534", "{c}");
    assert!(run.lines_with_prefix("KERNEL-PROBLEM:").is_empty(), "{c}");
}
