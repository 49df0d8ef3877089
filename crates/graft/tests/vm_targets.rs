//! Symbols resolved by code matching, and patches to loadable modules, in
//! the Debian kernel under QEMU.

mod common;

use std::time::Duration;

use common::*;
use graft_elf::Object;
use graft_lab::{run_scenario, Scenario};

/// kernel/cpu.c's `control_show` has a namesake in drivers/base (the
/// runtime-PM `control` attribute). The patched `active_show` calls it, so
/// `smt/active` must print what `smt/control` prints; the other one would
/// print "auto" or "on" for the PM state.
#[test]
fn call_to_a_static_function_with_a_namesake_reaches_the_right_one() {
    let lab = lab();
    let out = tempfile::tempdir().unwrap();
    let (ko, summary) = build_ok(&lab, "smt-active-calls-control.patch", "smt", out.path());
    assert_eq!(
        summary["files"][0]["changed"],
        serde_json::json!(["active_show"])
    );
    let verified: Vec<&str> = summary["verified"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["function"].as_str().unwrap())
        .collect();
    assert_eq!(verified, vec!["active_show", "control_show"], "{summary}");

    // The klp symbol names the namesake graft proved by code: position 1 of 2.
    let module = Object::read(&ko).unwrap();
    let candidates = lab_symbols(&lab, "control_show");
    assert_eq!(candidates.len(), 2, "the scenario needs a duplicated name");
    let klp: Vec<&str> = module
        .symbols
        .iter()
        .map(|s| s.name.as_str())
        .filter(|n| n.starts_with(".klp.sym.vmlinux.control_show,"))
        .collect();
    assert_eq!(klp, vec![".klp.sym.vmlinux.control_show,1"]);

    let script = format!(
        r#"{SH_PRELUDE}
s=/sys/devices/system/cpu/smt
echo "CONTROL: $(cat $s/control)"
echo "ACTIVE-BEFORE: $(cat $s/active)"
insmod /livepatch-smt.ko
wait_for '[ "$(cat /sys/kernel/livepatch/livepatch_smt/transition)" = 0 ]' && echo "STEP: patched"
echo "ACTIVE-DURING: $(cat $s/active)"
echo 0 > /sys/kernel/livepatch/livepatch_smt/enabled
wait_for '[ ! -d /sys/kernel/livepatch/livepatch_smt ]' && echo "STEP: unpatched"
echo "ACTIVE-AFTER: $(cat $s/active)"
problems
"#
    );
    let run = run_scenario(
        &lab,
        &Scenario::new("smt", script)
            .with_file("/livepatch-smt.ko", &ko)
            .with_timeout(Duration::from_secs(180)),
    )
    .unwrap_or_else(|e| panic!("VM run failed: {e}"));
    let c = &run.console;
    let get = |p: &str| line_value(&run, p);
    let control = get("CONTROL:");
    assert!(!control.is_empty() && control != "auto", "{c}");
    let before = get("ACTIVE-BEFORE:");
    assert!(before == "0" || before == "1", "{c}");
    assert_eq!(get("ACTIVE-DURING:"), control, "{c}");
    assert_eq!(get("ACTIVE-AFTER:"), before, "{c}");
    assert_eq!(
        run.lines_with_prefix("STEP:"),
        vec!["STEP: patched", "STEP: unpatched"],
        "{c}"
    );
    assert!(run.lines_with_prefix("KERNEL-PROBLEM:").is_empty(), "{c}");
}

/// fs/binfmt_misc.c is built as a module: the patch targets the klp object
/// `binfmt_misc` and must work whether the module loads after the patch or
/// was loaded before it.
#[test]
fn patch_to_a_module_works_loaded_after_and_before() {
    let lab = lab();
    let out = tempfile::tempdir().unwrap();
    let (ko, summary) = build_ok(&lab, "binfmt-misc.patch", "binfmt", out.path());
    // The cold part travels with its parent.
    assert_eq!(
        summary["files"][0]["changed"],
        serde_json::json!(["bm_status_read", "bm_status_read.cold"])
    );
    let module = Object::read(&ko).unwrap();
    assert!(
        module
            .sections
            .iter()
            .any(|s| s.name == ".klp.rela.binfmt_misc..text.bm_status_read"),
        "no module-specific klp relocations"
    );
    let target = lab.modules_dir().join("kernel/fs/binfmt_misc.ko");
    let script = format!(
        r#"{SH_PRELUDE}
p=/sys/kernel/livepatch/livepatch_binfmt
m=/proc/sys/fs/binfmt_misc
insmod /livepatch-binfmt.ko
wait_for '[ "$(cat $p/transition)" = 0 ]' && echo "STEP: patch loaded first"
echo "OBJ-PATCHED-BEFORE-LOAD: $(cat $p/binfmt_misc/patched)"
insmod /binfmt_misc.ko && mount -t binfmt_misc none $m
echo "OBJ-PATCHED-AFTER-LOAD: $(cat $p/binfmt_misc/patched)"
echo "STATUS-LOADED-AFTER: $(cat $m/status)"
echo 0 > $p/enabled
wait_for '[ ! -d $p ]' && rmmod livepatch_binfmt && echo "STEP: patch removed"
echo "STATUS-UNPATCHED: $(cat $m/status)"
insmod /livepatch-binfmt.ko
wait_for '[ "$(cat $p/transition)" = 0 ]' && echo "STEP: patch loaded second"
echo "STATUS-LOADED-BEFORE: $(cat $m/status)"
echo 0 > $p/enabled
wait_for '[ ! -d $p ]' && echo "STEP: patch disabled"
echo "STATUS-END: $(cat $m/status)"
problems
"#
    );
    let run = run_scenario(
        &lab,
        &Scenario::new("binfmt", script)
            .with_file("/livepatch-binfmt.ko", &ko)
            .with_file("/binfmt_misc.ko", &target)
            .with_timeout(Duration::from_secs(180)),
    )
    .unwrap_or_else(|e| panic!("VM run failed: {e}"));
    let c = &run.console;
    let get = |p: &str| line_value(&run, p);
    assert_eq!(get("OBJ-PATCHED-BEFORE-LOAD:"), "0", "{c}");
    assert_eq!(get("OBJ-PATCHED-AFTER-LOAD:"), "1", "{c}");
    assert_eq!(get("STATUS-LOADED-AFTER:"), "enabled (graft)", "{c}");
    assert_eq!(get("STATUS-UNPATCHED:"), "enabled", "{c}");
    assert_eq!(get("STATUS-LOADED-BEFORE:"), "enabled (graft)", "{c}");
    assert_eq!(get("STATUS-END:"), "enabled", "{c}");
    assert_eq!(
        run.lines_with_prefix("STEP:"),
        vec![
            "STEP: patch loaded first",
            "STEP: patch removed",
            "STEP: patch loaded second",
            "STEP: patch disabled"
        ],
        "{c}"
    );
    assert!(run.lines_with_prefix("KERNEL-PROBLEM:").is_empty(), "{c}");
}

fn lab_symbols(lab: &graft_lab::Lab, name: &str) -> Vec<u64> {
    let t = graft_target::SymbolTable::read(&lab.kallsyms()).unwrap();
    t.lookup("vmlinux", name)
        .iter()
        .map(|e| e.address)
        .collect()
}
