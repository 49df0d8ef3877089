//! Stalled transitions, one boot. A reader blocked on a FIFO sleeps inside
//! `ksys_read` (its stack: pipe_read ← vfs_read ← ksys_read), which the
//! patch changes:
//! - `graft load --timeout 5` names the task and the function, reverses the
//!   transition and removes the module; the behaviour is unchanged; exit 4;
//! - Ctrl-C (SIGINT to graft) during the stall does the same;
//! - with the reader gone the same module loads, and the patched behaviour
//!   (a read of exactly 7777 bytes fails with EXDEV) shows: the checks above
//!   would have seen it;
//! - a reader blocked in the *new* ksys_read stalls `graft unload`: reversed,
//!   the patch stays active; once the reader is gone, unload works;
//! - stuck: a load stalls on a reader in the old ksys_read, and meanwhile a
//!   task enters the new one and stays (a 7778-byte read sleeps there
//!   uninterruptibly until SIGKILL, out of reach of the kernel's fake
//!   signals): the reversal stalls too, graft exits 5 naming it, and once it
//!   is killed the kernel completes the reversal and `graft unload` removes
//!   the module left behind;
//! - `--force` on the same stall, over a loaded cumulative patch: the patch
//!   completes, and the replaced patch's module can never be removed (a
//!   task may still run its code; the kernel refuses `rmmod` until reboot),
//!   while the forced patch itself unloads.

mod common;
mod ops;

use std::time::Duration;

use common::*;
use graft_lab::{run_scenario, Scenario};
use ops::*;

#[test]
fn stalled_transitions_are_reversed_and_named() {
    let lab = lab();
    let out = tempfile::tempdir().unwrap();
    let ko = build_module(
        &lab,
        "ops-stall-ksys-read.patch",
        "ops-stall",
        out.path(),
        &[],
    );
    let base = build_module(&lab, "ops-b.patch", "ops-force-base", out.path(), &[]);
    let script = format!(
        r#"{PRELUDE}
# 7777-byte reads: EXDEV under the patch, data without it.
probe() {{ echo "PROBE $1: $(dd if=/proc/version bs=7777 count=1 2>&1 >/dev/null | head -1)"; }}
mkfifo /tmp/fifo
sleep 1000 > /tmp/fifo &
writer=$!
cat /tmp/fifo > /dev/null &
reader=$!
sleep 1
echo "READER: $reader"
echo "READER-STACK: $(cat /proc/$reader/stack | tr '\n' ' ')"
state before
probe before
run stall graft --json load --timeout 5 --grace 1 /m/livepatch-ops-stall.ko
state stall
probe stall
run stall-human graft load --timeout 4 --grace 1 /m/livepatch-ops-stall.ko
graft load --timeout 60 --grace 1 /m/livepatch-ops-stall.ko >/tmp/int.out 2>/tmp/int.err &
g=$!
sleep 4
kill -INT $g
wait $g
echo "RC int: $?"
sed 's/^/ERR int: /' /tmp/int.err
state int
probe int
kill $reader
wait $reader 2>/dev/null
run load graft --json load --timeout 30 /m/livepatch-ops-stall.ko
probe loaded
# A reader now sleeps in the new ksys_read: unloading stalls.
cat /tmp/fifo > /dev/null &
reader2=$!
sleep 1
echo "READER2-STACK: $(cat /proc/$reader2/stack | tr '\n' ' ')"
run unload-stall graft --json unload --timeout 4 --grace 1 livepatch_ops_stall
state unload-stall
probe unload-stall
kill $reader2
wait $reader2 2>/dev/null
run unload graft unload livepatch_ops_stall
state end
probe end
# Stuck: the reversal stalls too.
cat /tmp/fifo > /dev/null &
reader3=$!
sleep 1
graft --json load --timeout 5 --grace 1 /m/livepatch-ops-stall.ko >/tmp/stuck.out 2>/tmp/stuck.err &
g=$!
# Once this shell runs the patched code, so do its new children.
i=0; while [ "$(cat /proc/$$/patch_state)" != 1 ] && [ $i -lt 40 ]; do sleep 0.1; i=$((i+1)); done
dd if=/proc/version of=/dev/null bs=7778 count=1 2>/dev/null &
holder=$!
echo "HOLDER: $holder"
wait $g
echo "RC stuck: $?"
echo "OUT stuck: $(tr '\n' ' ' </tmp/stuck.out)"
sed 's/^/ERR stuck: /' /tmp/stuck.err
echo "HOLDER-STACK: $(cat /proc/$holder/stack | tr '\n' ' ')"
state stuck
kill -9 $holder
i=0; while [ -d /sys/kernel/livepatch/livepatch_ops_stall ] && [ $i -lt 120 ]; do sleep 0.25; i=$((i+1)); done
run stuck-cleanup graft --json unload livepatch_ops_stall
state after-stuck
probe after-stuck
# Forced, over a cumulative patch it replaces: completes on the same kind
# of stall; the replaced module stays for good, the forced patch unloads.
run force-base graft load /m/livepatch-ops-force-base.ko
run force graft load --force --yes --timeout 4 --grace 1 /m/livepatch-ops-stall.ko
probe forced
rmmod livepatch_ops_force_base 2>/dev/null
echo "RMMOD-REPLACED: $?"
run force-unload graft unload livepatch_ops_stall
state forced
kill $reader3
kill $writer
problems
"#
    );
    let sc = Scenario::new("ops-stall", script).with_timeout(Duration::from_secs(360));
    let sc = with_modules(with_graft(sc), &[&ko, &base]);
    let run = run_scenario(&lab, &sc).unwrap_or_else(|e| panic!("VM run failed: {e}"));
    let r = Report::new(&run);
    let dump = r.dump();
    let reader: u32 = r.value("READER").parse().unwrap();
    assert!(r.value("READER-STACK").contains("ksys_read"), "{dump}");
    let before = r.value("STATE before");
    assert_eq!(before, "|");
    assert_eq!(r.value("PROBE before"), "0+1 records in");

    // The stall: exit 4, the reader and the function named, nothing left.
    assert_eq!(r.rc("stall"), 4, "{dump}");
    let j = r.json("stall");
    let o = &j["outcome"];
    assert_eq!(o["result"], "reverted", "{j}");
    assert_eq!(o["cancelled"], false);
    assert!(o["seconds"].as_f64().unwrap() >= 5.0);
    let blockers = o["blockers"].as_array().unwrap();
    assert_eq!(blockers.len(), 1, "{j}");
    assert_eq!(blockers[0]["pid"], reader);
    assert_eq!(blockers[0]["comm"], "cat");
    assert_eq!(blockers[0]["function"], "ksys_read");
    assert_eq!(blockers[0]["kthread"], false);
    let e = r.error_line("stall");
    assert!(
        e.contains(&format!("cat (pid {reader}) sleeps in ksys_read"))
            && e.contains("graft reversed it and removed the module"),
        "{e}"
    );
    assert_eq!(r.value("STATE stall"), before);
    assert_eq!(r.value("PROBE stall"), "0+1 records in");

    // Human output names the blocker while waiting.
    assert_eq!(r.rc("stall-human"), 4, "{dump}");
    let err = r.err("stall-human").join("\n");
    assert!(
        err.contains("after 1.")
            && err.contains(&format!(
                "cat (pid {reader}) sleeps in ksys_read, a function the patch changes"
            )),
        "{err}"
    );

    // Interrupted: reversed too.
    assert_eq!(r.rc("int"), 4, "{dump}");
    assert!(
        r.error_line("int")
            .contains("the patching transition was interrupted"),
        "{dump}"
    );
    assert_eq!(r.value("STATE int"), before);
    assert_eq!(r.value("PROBE int"), "0+1 records in");

    // Without the reader it loads, and the probe sees the patch.
    assert_eq!(r.rc("load"), 0, "{dump}");
    assert_eq!(r.json("load")["outcome"]["result"], "loaded");
    assert!(
        r.value("PROBE loaded")
            .contains("Invalid cross-device link"),
        "{dump}"
    );

    // Unload stalls on a reader in the new code: reversed, still patched.
    let stack2 = r.value("READER2-STACK");
    // The kernel may name the new code by the stub's alias (__graft_new_…):
    // graft maps it back to ksys_read through the module's symbols.
    assert!(stack2.contains("[livepatch_ops_stall]"), "{stack2}");
    assert_eq!(r.rc("unload-stall"), 4, "{dump}");
    let u = r.json("unload-stall");
    assert_eq!(u["result"], "reverted", "{u}");
    assert_eq!(u["blockers"][0]["function"], "ksys_read");
    assert!(r
        .value("STATE unload-stall")
        .starts_with("livepatch_ops_stall |"));
    assert!(r
        .value("PROBE unload-stall")
        .contains("Invalid cross-device link"));
    assert_eq!(r.rc("unload"), 0, "{dump}");
    assert_eq!(r.value("STATE end"), before);
    assert_eq!(r.value("PROBE end"), "0+1 records in");

    // Stuck: exit 5, the task in the new code named, the module left to
    // the operator; the kernel finishes once the task is gone.
    let holder: u32 = r.value("HOLDER").parse().unwrap();
    assert!(
        r.value("HOLDER-STACK").contains("[livepatch_ops_stall]"),
        "the holder is not in the new ksys_read: {dump}"
    );
    assert_eq!(r.rc("stuck"), 5, "{dump}");
    let j = r.json("stuck");
    let o = &j["outcome"];
    assert_eq!(o["result"], "stuck", "{j}");
    let held: Vec<(u64, &str)> = o["blockers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            (
                b["pid"].as_u64().unwrap(),
                b["function"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(held, [(u64::from(holder), "ksys_read")], "{j}");
    let e = r.error_line("stuck");
    assert!(
        e.contains("the transition stalled and so did its reversal")
            && e.contains(&format!("dd (pid {holder}) sleeps in ksys_read"))
            && e.contains("graft list"),
        "{e}"
    );
    assert!(
        r.value("STATE stuck").starts_with("livepatch_ops_stall |"),
        "the stuck patch is not left in place: {dump}"
    );
    assert_eq!(r.rc("stuck-cleanup"), 0, "{dump}");
    assert_eq!(r.json("stuck-cleanup")["result"], "removed", "{dump}");
    assert_eq!(r.value("STATE after-stuck"), before);
    assert_eq!(r.value("PROBE after-stuck"), "0+1 records in");

    // Forced: loaded and patched; the replaced module can never go, the
    // forced patch itself can.
    assert_eq!(r.rc("force-base"), 0, "{dump}");
    assert_eq!(r.rc("force"), 0, "{dump}");
    let out = r.out("force");
    assert!(
        out.starts_with("livepatch_ops_stall: patched in") && out.contains("(forced)"),
        "{dump}"
    );
    assert!(
        out.contains("replaced livepatch_ops_force_base; its module is still loaded"),
        "{out}"
    );
    assert!(
        r.err("force").iter().any(|l| l.contains(
            "was forced: tasks still in the old code were switched without the stack check, and the modules of the patches it replaced (livepatch_ops_force_base) can never be removed"
        )),
        "{dump}"
    );
    assert!(
        r.value("PROBE forced")
            .contains("Invalid cross-device link"),
        "{dump}"
    );
    assert_ne!(r.value("RMMOD-REPLACED"), "0", "{dump}");
    assert_eq!(r.rc("force-unload"), 0, "{dump}");
    assert_eq!(
        r.value("STATE forced"),
        "| livepatch_ops_force_base",
        "{dump}"
    );
    r.assert_no_kernel_problems();
}
