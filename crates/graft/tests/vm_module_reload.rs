//! A patched module can be unloaded and loaded again, any number of times.
//!
//! Livepatch writes a patch's relocations for a module into the patch each
//! time that module loads, and x86 refuses to write a field that is not zero;
//! Debian's 6.1 does not clear them when the module goes away, so without
//! graft's post-unpatch callback the second `insmod` fails ("existing value
//! is nonzero") and the module is refused. One boot runs every case with
//! `binfmt_misc`:
//! - the module loaded before the patch, then reloaded three times;
//! - the patch disabled while the module stays: the module reloads unpatched;
//! - the module loaded after the patch, then reloaded three times;
//! - a cumulative patch replacing the first while the module is loaded, then
//!   the module reloaded three times; its own post-unpatch callback for the
//!   module still runs each time, before graft's clearing;
//! - that patch's pre-patch callback refusing one load of the module: the
//!   next load works (livepatch runs no post-unpatch callback then, so the
//!   stub's pre-patch wrapper clears).

mod common;

use std::time::Duration;

use common::*;
use graft_elf::Object;
use graft_lab::{run_scenario, Scenario};

const RELOADS: usize = 3;

#[test]
fn patched_module_reloads_before_after_and_replaced() {
    let lab = lab();
    let out = tempfile::tempdir().unwrap();
    let (ko1, s1) = build_ok(&lab, "binfmt-misc.patch", "bfr", out.path());
    let (ko2, s2) = build_ok(&lab, "binfmt-misc-v2.patch", "bfr2", out.path());
    for (ko, s) in [(&ko1, &s1), (&ko2, &s2)] {
        assert_eq!(s["warnings"], serde_json::json!([]), "{s}");
        let m = Object::read(ko).unwrap();
        assert!(
            m.sections
                .iter()
                .any(|s| s.name.starts_with(".klp.rela.binfmt_misc.")),
            "no relocations for the module: the scenario would prove nothing"
        );
        // The stub reaches the kernel's text_poke through a klp relocation.
        assert!(
            m.symbols
                .iter()
                .any(|s| s.name == ".klp.sym.vmlinux.text_poke,0"),
            "{} does not clear its relocations",
            ko.display()
        );
    }
    let target = lab.modules_dir().join("kernel/fs/binfmt_misc.ko");
    let script = format!(
        r#"{SH_PRELUDE}
p1=/sys/kernel/livepatch/livepatch_bfr
p2=/sys/kernel/livepatch/livepatch_bfr2
m=/proc/sys/fs/binfmt_misc
up() {{ insmod /binfmt_misc.ko "$@" && mount -t binfmt_misc none $m; }}
down() {{ umount $m; rmmod binfmt_misc; }}
reload() {{
  i=1
  while [ $i -le {RELOADS} ]; do
    down || echo "STEP: $1: rmmod $i failed"
    if up; then
      echo "RELOAD $1 $i: $(cat $m/status) patched=$(cat $2/binfmt_misc/patched)"
    else
      echo "RELOAD $1 $i: refused"
    fi
    i=$((i+1))
  done
}}
patch() {{ insmod /livepatch-$1.ko && wait_for "[ \"\$(cat /sys/kernel/livepatch/livepatch_$1/transition)\" = 0 ]" || echo "STEP: $1 did not load"; }}
unpatch() {{ echo 0 > /sys/kernel/livepatch/livepatch_$1/enabled; wait_for "[ ! -d /sys/kernel/livepatch/livepatch_$1 ]" && rmmod livepatch_$1 || echo "STEP: $1 not removed"; }}

up
patch bfr
echo "FIRST before: $(cat $m/status) patched=$(cat $p1/binfmt_misc/patched)"
reload before $p1
unpatch bfr
down && up && echo "UNPATCHED: $(cat $m/status)"
down
patch bfr
echo "OBJECT-BEFORE-MODULE: $(cat $p1/binfmt_misc/patched)"
up
echo "FIRST after: $(cat $m/status) patched=$(cat $p1/binfmt_misc/patched)"
reload after $p1
insmod /livepatch-bfr2.ko
wait_for '[ "$(cat $p2/transition)" = 0 ] && [ ! -d $p1 ]' || echo "STEP: bfr2 did not replace bfr"
rmmod livepatch_bfr || echo "STEP: the replaced bfr was not removed"
echo "FIRST replace: $(cat $m/status) patched=$(cat $p2/binfmt_misc/patched)"
reload replace $p2
down
up graft_refuse && echo "STEP: the refused load went through"
up && echo "AFTER-REFUSAL: $(cat $m/status) patched=$(cat $p2/binfmt_misc/patched)"
unpatch bfr2
down && up && echo "END: $(cat $m/status)"
dmesg | grep "graft-v2:" | sed 's/^\[[ 0-9.]*\] /KLOG: /'
dmesg | grep -iE "relocation|nonzero" | sed 's/^/RELOCATION-PROBLEM: /'
problems
"#
    );
    let run = run_scenario(
        &lab,
        &Scenario::new("module-reload", script)
            .with_file("/livepatch-bfr.ko", &ko1)
            .with_file("/livepatch-bfr2.ko", &ko2)
            .with_file("/binfmt_misc.ko", &target)
            .with_timeout(Duration::from_secs(240)),
    )
    .unwrap_or_else(|e| panic!("VM run failed: {e}"));
    let c = &run.console;
    let get = |p: &str| line_value(&run, p);
    assert_eq!(run.lines_with_prefix("STEP:"), Vec::<&str>::new(), "{c}");
    assert_eq!(
        run.lines_with_prefix("RELOCATION-PROBLEM:"),
        Vec::<&str>::new(),
        "{c}"
    );

    let v1 = "enabled (graft) patched=1";
    let v2 = "enabled (graft v2) patched=1";
    assert_eq!(get("FIRST before:"), v1, "{c}");
    assert_eq!(get("UNPATCHED:"), "enabled", "{c}");
    assert_eq!(get("OBJECT-BEFORE-MODULE:"), "0", "{c}");
    assert_eq!(get("FIRST after:"), v1, "{c}");
    assert_eq!(get("FIRST replace:"), v2, "{c}");
    for (case, want) in [("before", v1), ("after", v1), ("replace", v2)] {
        for i in 1..=RELOADS {
            assert_eq!(get(&format!("RELOAD {case} {i}:")), want, "{c}");
        }
    }
    assert_eq!(get("AFTER-REFUSAL:"), v2, "{c}");
    assert_eq!(get("END:"), "enabled", "{c}");

    // The author's callbacks of the module object: post-unpatch each time the
    // module went away (three reloads, then the unload before the refusal),
    // and once when the patch was disabled while the module stayed. (The
    // refusal may show twice: busybox's insmod retries with init_module.)
    let klog: Vec<&str> = run
        .lines_with_prefix("KLOG:")
        .into_iter()
        .map(|l| l["KLOG:".len()..].trim())
        .collect();
    let (refusals, callbacks): (Vec<&str>, Vec<&str>) = klog
        .iter()
        .partition(|l| l.contains("graft-v2: pre-patch refuses binfmt_misc"));
    let going = "binfmt_misc: graft-v2: post-unpatch binfmt_misc going";
    assert_eq!(
        callbacks,
        vec![
            going,
            going,
            going,
            going,
            "binfmt_misc: graft-v2: post-unpatch binfmt_misc staying",
        ],
        "{c}"
    );
    assert!(matches!(refusals.len(), 1 | 2), "{c}");
    let last_going = klog.iter().rposition(|l| *l == going).unwrap();
    assert!(
        klog.iter().position(|l| refusals.contains(l)).unwrap() > last_going,
        "{c}"
    );
    // The only kernel complaints are those of the deliberate refusal.
    let problems: Vec<&str> = run
        .lines_with_prefix("KERNEL-PROBLEM:")
        .into_iter()
        .filter(|l| {
            !l.contains("pre-patch callback failed for object 'binfmt_misc'")
                && !l.contains(
                    "patch 'livepatch_bfr2' failed for module 'binfmt_misc', refusing to load module 'binfmt_misc'",
                )
        })
        .collect();
    assert_eq!(problems, Vec::<&str>::new(), "{c}");
}
