//! Bad inputs to `graft load`, one boot: each gets one clear error line and
//! exit 1, and the loaded patches and modules are exactly as before.
//! - a module that is not a live patch (the kernel's own dummy.ko);
//! - a patch built for another kernel release;
//! - a patch already loaded;
//! - a non-root user;
//! - a file that is not a module at all, and one that does not exist;
//! - a kernel without livepatch: /sys/kernel/livepatch is how graft (like
//!   the kernel's docs) tells, so the test hides it under a tmpfs.

mod common;
mod ops;

use std::time::Duration;

use common::*;
use graft_lab::{run_scenario, Scenario};
use ops::*;

#[test]
fn bad_inputs_are_refused_and_change_nothing() {
    let lab = lab();
    let out = tempfile::tempdir().unwrap();
    let a = build_module(&lab, "ops-b.patch", "ops-bad", out.path(), &[]);
    let other_dir = tempfile::tempdir().unwrap();
    let other = other_release(&lab.release);
    let z = for_other_release(&a, &lab.release, &other, other_dir.path());
    let dummy = lab.modules_dir().join("kernel/drivers/net/dummy.ko");
    assert!(dummy.is_file(), "{} is missing", dummy.display());
    let junk = out.path().join("junk.ko");
    std::fs::write(&junk, "not an ELF file\n").unwrap();

    let script = format!(
        r#"{PRELUDE}
echo "CMDLINE0: $(cat /proc/cmdline)"
state 0
run notlp graft load /m/dummy.ko
state notlp
run release graft load /z/livepatch-ops-bad.ko
state release
run junk graft load /m/junk.ko
run missing graft load /m/nope.ko
state files
run first graft load /m/livepatch-ops-bad.ko
state first
run again graft load /m/livepatch-ops-bad.ko
state again
mkdir -p /etc
printf 'root:x:0:0:root:/root:/bin/sh\nop:x:1000:1000:op:/tmp:/bin/sh\n' > /etc/passwd
printf 'root:x:0:\nop:x:1000:\n' > /etc/group
run user su op -c 'graft load /m/livepatch-ops-bad.ko'
run user-unload su op -c 'graft unload livepatch_ops_bad'
state user
echo "CMDLINE1: $(cat /proc/cmdline)"
run unload graft unload livepatch_ops_bad
mount -t tmpfs none /sys/kernel
run nolp graft load /m/livepatch-ops-bad.ko
umount /sys/kernel
state nolp
run unknown graft unload livepatch_nope
problems
"#
    );
    let sc = Scenario::new("ops-bad-input", script)
        .with_file("/z/livepatch-ops-bad.ko", &z)
        .with_file("/m/dummy.ko", &dummy)
        .with_file("/m/junk.ko", &junk)
        .with_timeout(Duration::from_secs(180));
    let sc = with_modules(with_graft(sc), &[&a]);
    let run = run_scenario(&lab, &sc).unwrap_or_else(|e| panic!("VM run failed: {e}"));
    let r = Report::new(&run);
    let dump = r.dump();
    let empty = r.value("STATE 0");
    assert_eq!(empty, "|", "{dump}");

    let refused = |tag: &str, needles: &[&str]| {
        assert_eq!(r.rc(tag), 1, "{tag}: {dump}");
        let e = r.error_line(tag);
        for n in needles {
            assert!(e.contains(n), "{tag}: {n:?} not in {e:?}");
        }
        // One clear line is all: no panic message, backtrace or noise
        // around it (a panic in another thread would not change the exit
        // code).
        let all = r.err(tag);
        assert_eq!(
            all,
            std::slice::from_ref(&e),
            "{tag}: stderr holds more than the error line"
        );
    };
    refused(
        "notlp",
        &["dummy is a kernel module but not a live patch", "hint:"],
    );
    assert_eq!(r.value("STATE notlp"), empty);
    refused(
        "release",
        &[
            &format!(
                "built for kernel {other}, but the running kernel is {}",
                lab.release
            ),
            "hint:",
        ],
    );
    assert_eq!(r.value("STATE release"), empty);
    refused("junk", &["not a kernel module (not an ELF object"]);
    refused("missing", &["/m/nope.ko", "No such file"]);
    assert_eq!(r.value("STATE files"), empty);

    assert_eq!(r.rc("first"), 0, "{dump}");
    let loaded = r.value("STATE first");
    assert_eq!(loaded, "livepatch_ops_bad | livepatch_ops_bad");
    refused(
        "again",
        &[
            "live patch livepatch_ops_bad is already loaded",
            "hint: unload it first",
        ],
    );
    assert_eq!(r.value("STATE again"), loaded);
    refused("user", &["graft load needs root", "hint: run it with sudo"]);
    refused("user-unload", &["graft unload needs root"]);
    assert_eq!(r.value("STATE user"), loaded);
    assert!(
        r.value("CMDLINE1").ends_with(" graft_B"),
        "the patch stopped working: {dump}"
    );
    assert_eq!(r.rc("unload"), 0, "{dump}");

    refused(
        "nolp",
        &["this kernel has no livepatch support", "CONFIG_LIVEPATCH"],
    );
    assert_eq!(r.value("STATE nolp"), empty);
    refused("unknown", &["no live patch named livepatch_nope is loaded"]);
    r.assert_no_kernel_problems();
}
