//! The shapes real fixes take, built from the lab's Debian source and
//! checked live in its kernel under QEMU:
//! - a two-line change to `s_show` in kernel/kallsyms.c, whose `__init`
//!   neighbour references a `BTF_ID` symbol renamed by the line shift;
//! - a header-only fix: a `static inline` in fs/proc/internal.h, reaching
//!   every function of the 24 units that inline it (found by the unit index);
//! - a fix in two files where one calls a global function the other adds;
//! - a header change that adds a field: refused (layout-changed) after one
//!   unit, naming the structure;
//! - a change to `text_poke_queue`, which shares `.ref.text` with other
//!   `__ref` functions of arch/x86/kernel/alternative.c: only it is carried.

mod common;

use std::time::Duration;

use common::*;
use graft_lab::{run_scenario, Scenario};

#[test]
fn real_fix_shapes_build_and_work_live() {
    let lab = lab();
    let out = tempfile::tempdir().unwrap();
    let tree_before = fingerprint(&lab.source_tree());

    let (s_show, _) = build_ok(&lab, "fix-kallsyms-s-show.patch", "sshow", out.path());

    let (header, h) = build_ok(&lab, "header-inline.patch", "header", out.path());
    let units = h["headers"][0]["units"].as_array().expect("header units");
    assert_eq!(h["headers"][0]["header"], "fs/proc/internal.h", "{h}");
    assert!(
        units.iter().any(|u| u == "fs/proc/base.o") && units.len() >= 10,
        "the includers of fs/proc/internal.h: {units:?}"
    );
    let changed: Vec<&str> = h["files"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|f| f["changed"].as_array().unwrap())
        .filter_map(|c| c.as_str())
        .collect();
    // comm_write and proc_pid_status's path inline get_proc_task.
    assert!(changed.contains(&"comm_show"), "{changed:?}");
    assert!(changed.contains(&"proc_pid_cmdline_read"), "{changed:?}");

    let (poke, p) = build_ok(&lab, "explicit-section.patch", "poke", out.path());
    assert_eq!(
        p["files"][0]["changed"],
        serde_json::json!(["text_poke_queue"]),
        "{p}"
    );
    let m = graft_elf::Object::read(&poke).unwrap();
    let carried: Vec<&str> = m
        .symbols
        .iter()
        .filter(|y| y.kind == graft_elf::SymKind::Func && y.name.starts_with("text_poke"))
        .map(|y| y.name.as_str())
        .collect();
    assert_eq!(
        carried,
        vec!["text_poke_queue"],
        "only the changed function is carried"
    );

    let (two, t) = build_ok(
        &lab,
        "fix-two-files-new-global.patch",
        "twofiles",
        out.path(),
    );
    let files = t["files"].as_array().unwrap();
    assert!(
        files
            .iter()
            .any(|f| f["new"] == serde_json::json!(["graft_fix_tag"])),
        "{t}"
    );

    // A field added in a header: refused after the first unit, by name.
    let o = graft(&build_args(
        &lab,
        &repo_file("tests/patches/header-layout.patch"),
        "layout",
        out.path(),
    ));
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    assert!(
        stderr(&o)
            .contains("the layout of struct proc_dir_entry changed (member graft_flags added")
            && stderr(&o).contains("[rule: layout-changed]"),
        "{}",
        stderr(&o)
    );
    assert_eq!(
        fingerprint(&lab.source_tree()),
        tree_before,
        "the kernel tree was modified"
    );

    let script = format!(
        r#"{SH_PRELUDE}
L=/sys/kernel/livepatch
load() {{ insmod /$1.ko || echo "STEP: insmod $1 failed"; wait_for "[ \"\$(cat $L/livepatch_$1/transition)\" = 0 ]" || echo "STEP: $1 stuck"; }}
unload() {{ echo 0 > $L/livepatch_$1/enabled; wait_for "[ ! -d $L/livepatch_$1 ]" || echo "STEP: $1 not unpatched"; rmmod livepatch_$1 || echo "STEP: rmmod $1 failed"; }}
ks() {{ grep -c ' cmdline_proc_show (graft)$' /proc/kallsyms; }}
echo "KALLSYMS-BEFORE: $(ks)"
load sshow
echo "KALLSYMS-DURING: $(ks)"
unload sshow
echo "KALLSYMS-AFTER: $(ks)"
sh -c 'echo -n graft-hidden > /proc/self/comm; while :; do sleep 1; done' &
pid=$!
sleep 1
name() {{ head -1 /proc/$pid/status 2>&1 | sed 's/^Name:[[:space:]]*//'; }}
echo "HIDDEN-BEFORE: $(name)"
load header
echo "HIDDEN-DURING: $(name)"
echo "SELF-DURING: $(head -1 /proc/self/status)"
unload header
echo "HIDDEN-AFTER: $(name)"
kill $pid
poked() {{ dmesg | grep -c "graft: text_poke_queue"; }}
load poke
echo 1 > /proc/sys/kernel/sched_schedstats; echo 0 > /proc/sys/kernel/sched_schedstats
echo "POKED-DURING: $(poked)"
unload poke
n=$(poked)
echo 1 > /proc/sys/kernel/sched_schedstats; echo 0 > /proc/sys/kernel/sched_schedstats
echo "POKED-AFTER-MORE: $(( $(poked) - n ))"
load twofiles
echo "CMDLINE-DURING: $(cat /proc/cmdline)"
unload twofiles
echo "CMDLINE-AFTER: $(cat /proc/cmdline)"
problems
"#
    );
    let run = run_scenario(
        &lab,
        &Scenario::new("fix-shapes", script)
            .with_file("/sshow.ko", &s_show)
            .with_file("/header.ko", &header)
            .with_file("/twofiles.ko", &two)
            .with_file("/poke.ko", &poke)
            .with_timeout(Duration::from_secs(240)),
    )
    .unwrap_or_else(|e| panic!("VM run failed: {e}"));
    let c = &run.console;
    let get = |p: &str| line_value(&run, p);
    assert_eq!(run.lines_with_prefix("STEP:"), Vec::<&str>::new(), "{c}");
    assert_eq!(get("KALLSYMS-BEFORE:"), "0", "{c}");
    assert_eq!(get("KALLSYMS-DURING:"), "1", "{c}");
    assert_eq!(get("KALLSYMS-AFTER:"), "0", "{c}");
    assert_eq!(get("HIDDEN-BEFORE:"), "graft-hidden", "{c}");
    assert!(
        get("HIDDEN-DURING:").contains("No such process"),
        "the inline change did not reach /proc/<pid>/status: {c}"
    );
    assert_eq!(get("SELF-DURING:"), "Name:\thead", "{c}");
    assert_eq!(get("HIDDEN-AFTER:"), "graft-hidden", "{c}");
    assert!(
        get("POKED-DURING:").parse::<u32>().unwrap() > 0,
        "the patched text_poke_queue did not run: {c}"
    );
    assert_eq!(get("POKED-AFTER-MORE:"), "0", "{c}");
    assert!(get("CMDLINE-DURING:").ends_with(" graft_shared_tag"), "{c}");
    assert!(!get("CMDLINE-AFTER:").contains("graft_shared_tag"), "{c}");
    assert!(run.lines_with_prefix("KERNEL-PROBLEM:").is_empty(), "{c}");
}

/// A fix to a module function that calls another module's export
/// (algif_skcipher → af_alg): the reference is a klp relocation applied when
/// algif_skcipher loads, so the patch loads with neither module present and
/// does not depend on af_alg.
#[test]
fn module_fix_reaches_another_modules_export_without_depending_on_it() {
    let lab = lab();
    let out = tempfile::tempdir().unwrap();
    let (ko, s) = build_ok(&lab, "module-other-export.patch", "skc", out.path());
    assert!(
        s["files"][0]["changed"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c == "skcipher_sendmsg"),
        "{s}"
    );
    let m = graft_elf::Object::read(&ko).unwrap();
    assert!(
        m.symbols
            .iter()
            .any(|x| x.name == ".klp.sym.af_alg.af_alg_sendmsg,0"),
        "af_alg_sendmsg is not a klp symbol of af_alg"
    );
    let modinfo = m
        .section_by_name(".modinfo")
        .map(|s| String::from_utf8_lossy(&s.data).into_owned())
        .unwrap_or_default();
    assert!(
        modinfo.contains("depends=\0") || !modinfo.contains("depends=af_alg"),
        "the patch depends on af_alg: {modinfo:?}"
    );
    let client = out.path().join("af-alg-send");
    let cc = std::process::Command::new("gcc")
        .args(["-static", "-O2", "-o"])
        .arg(&client)
        .arg(repo_file("tests/vm/af-alg-send.c"))
        .output()
        .unwrap();
    assert!(
        cc.status.success(),
        "{}",
        String::from_utf8_lossy(&cc.stderr)
    );
    let mods = lab.modules_dir().join("kernel/crypto");
    let script = format!(
        r#"{SH_PRELUDE}
p=/sys/kernel/livepatch/livepatch_skc
insmod /skc.ko || echo "STEP: patch insmod failed"
wait_for '[ "$(cat $p/transition)" = 0 ]' || echo "STEP: patch stuck"
echo "LSMOD-AFTER-PATCH: $(grep -c -E '^(af_alg|algif_skcipher) ' /proc/modules)"
insmod /af_alg.ko && insmod /algif_skcipher.ko || echo "STEP: module insmod failed"
echo "OBJ-PATCHED: $(cat $p/algif_skcipher/patched)"
echo "SEND7-DURING: $(/af-alg-send 7)"
echo "SEND16-DURING: $(/af-alg-send 16)"
echo 0 > $p/enabled
wait_for '[ ! -d $p ]' || echo "STEP: not unpatched"
rmmod livepatch_skc || echo "STEP: rmmod failed"
echo "SEND7-AFTER: $(/af-alg-send 7)"
problems
"#
    );
    let run = run_scenario(
        &lab,
        &Scenario::new("module-export", script)
            .with_file("/skc.ko", &ko)
            .with_file("/af_alg.ko", mods.join("af_alg.ko"))
            .with_file("/algif_skcipher.ko", mods.join("algif_skcipher.ko"))
            .with_file("/af-alg-send", &client)
            .with_timeout(Duration::from_secs(180)),
    )
    .unwrap_or_else(|e| panic!("VM run failed: {e}"));
    let c = &run.console;
    let get = |p: &str| line_value(&run, p);
    assert_eq!(run.lines_with_prefix("STEP:"), Vec::<&str>::new(), "{c}");
    assert_eq!(get("LSMOD-AFTER-PATCH:"), "0", "{c}");
    assert_eq!(get("OBJ-PATCHED:"), "1", "{c}");
    assert_eq!(
        get("SEND7-DURING:"),
        "-90",
        "EMSGSIZE from the patched code: {c}"
    );
    assert_eq!(get("SEND16-DURING:"), "16", "{c}");
    assert_eq!(get("SEND7-AFTER:"), "7", "{c}");
    assert!(run.lines_with_prefix("KERNEL-PROBLEM:").is_empty(), "{c}");
}

/// A fix to a module function with a tracepoint of that module
/// (drivers/scsi/scsi_lib.c's dispatch, keyed on scsi_mod's
/// `__tracepoint_scsi_dispatch_cmd_start`): the jump label is registered by
/// the patch once scsi_mod's klp relocations are applied, so the event fires
/// from the patched code when enabled after the patch, when enabled before
/// it, and again after scsi_mod is reloaded.
#[test]
fn module_tracepoint_in_patched_code_follows_its_key() {
    let lab = lab();
    let out = tempfile::tempdir().unwrap();
    let (ko, s) = build_ok(&lab, "module-tracepoint.patch", "tp", out.path());
    assert!(
        s["files"][0]["changed"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c == "scsi_queue_rq"),
        "{s}"
    );
    let m = graft_elf::Object::read(&ko).unwrap();
    assert!(
        m.sections
            .iter()
            .any(|x| x.name.starts_with(".data.graft_jump_")),
        "no deferred jump table"
    );
    let mods = lab.modules_dir().join("kernel");
    let deps = [
        ("crct10dif_common", "crypto/crct10dif_common.ko"),
        ("crct10dif_generic", "crypto/crct10dif_generic.ko"),
        ("crc-t10dif", "lib/crc-t10dif.ko"),
        ("scsi_common", "drivers/scsi/scsi_common.ko"),
        ("scsi_mod", "drivers/scsi/scsi_mod.ko"),
        ("scsi_debug", "drivers/scsi/scsi_debug.ko"),
    ];
    let script = format!(
        r#"{SH_PRELUDE}
L=/sys/kernel/livepatch
T=/sys/kernel/tracing
E=$T/events/scsi/scsi_dispatch_cmd_start/enable
load() {{ insmod /tp.ko || echo "STEP: insmod tp failed"; wait_for "[ \"\$(cat $L/livepatch_tp/transition)\" = 0 ]" || echo "STEP: tp stuck"; }}
unload() {{ echo 0 > $L/livepatch_tp/enabled; wait_for "[ ! -d $L/livepatch_tp ]" || echo "STEP: tp not unpatched"; rmmod livepatch_tp || echo "STEP: rmmod tp failed"; }}
rescan() {{ for h in /sys/class/scsi_host/host*/scan; do echo "- - -" > $h; done; for d in /sys/class/scsi_device/*/device/rescan; do echo 1 > $d; done; }}
events() {{ echo > $T/trace; rescan; sleep 1; grep -c scsi_dispatch_cmd_start $T/trace; }}
for m in crct10dif_common crct10dif_generic crc-t10dif scsi_common scsi_mod; do insmod /$m.ko || echo "STEP: insmod $m failed"; done
load
echo "OBJ-PATCHED: $(cat $L/livepatch_tp/scsi_mod/patched)"
insmod /scsi_debug.ko || echo "STEP: insmod scsi_debug failed"
sleep 2
echo "PATCHED-RAN: $(dmesg | grep -c 'graft: scsi_dispatch_cmd patched')"
echo 1 > $E
echo "EVENTS-ENABLED-AFTER: $(events)"
echo 0 > $E
echo "EVENTS-DISABLED: $(events)"
unload
echo 1 > $E
load
echo "EVENTS-ENABLED-BEFORE: $(events)"
echo 0 > $E
rmmod scsi_debug && rmmod scsi_mod || echo "STEP: rmmod scsi failed"
insmod /scsi_mod.ko && insmod /scsi_debug.ko || echo "STEP: reload scsi failed"
sleep 2
echo "OBJ-PATCHED-RELOADED: $(cat $L/livepatch_tp/scsi_mod/patched)"
echo 1 > $E
echo "EVENTS-RELOADED: $(events)"
echo 0 > $E
unload
echo "EVENTS-UNPATCHED-DISABLED: $(events)"
problems
"#
    );
    let mut sc = Scenario::new("module-tracepoint", script)
        .with_file("/tp.ko", &ko)
        .with_timeout(Duration::from_secs(300));
    for (name, rel) in deps {
        sc = sc.with_file(format!("/{name}.ko"), mods.join(rel));
    }
    let run = run_scenario(&lab, &sc).unwrap_or_else(|e| panic!("VM run failed: {e}"));
    let c = &run.console;
    let get = |p: &str| line_value(&run, p);
    let n = |p: &str| get(p).parse::<u32>().unwrap_or_else(|_| panic!("{p} {c}"));
    assert_eq!(run.lines_with_prefix("STEP:"), Vec::<&str>::new(), "{c}");
    assert_eq!(get("OBJ-PATCHED:"), "1", "{c}");
    assert_eq!(
        get("PATCHED-RAN:"),
        "1",
        "the patched dispatch did not run: {c}"
    );
    assert!(
        n("EVENTS-ENABLED-AFTER:") > 0,
        "no events from the patched code: {c}"
    );
    assert_eq!(n("EVENTS-DISABLED:"), 0, "{c}");
    assert!(n("EVENTS-ENABLED-BEFORE:") > 0, "{c}");
    assert_eq!(get("OBJ-PATCHED-RELOADED:"), "1", "{c}");
    assert!(n("EVENTS-RELOADED:") > 0, "{c}");
    assert_eq!(n("EVENTS-UNPATCHED-DISABLED:"), 0, "{c}");
    assert!(run.lines_with_prefix("KERNEL-PROBLEM:").is_empty(), "{c}");
}
