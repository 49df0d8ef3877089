//! Debian's 6.12 kernels (IBT, call padding, call depth tracking, objtool
//! at the link): the core scenarios built with graft and operated live with
//! `graft load`/`graft unload` in one VM boot. Shared by the test of each
//! 6.12 kernel (`vm_kernel612_backports`, `vm_kernel612_trixie`).

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use graft_debian::OtherSuite;
use graft_lab::{run_scenario, Lab, Scenario};

use crate::ops::*;

/// The lab's kernel of `suite`, set up by `./run` (`graft-lab setup
/// --release backports|trixie`).
pub fn suite_lab(suite: OtherSuite) -> Lab {
    Lab::open_suite(&Lab::default_root(), suite).unwrap_or_else(|e| {
        panic!(
            "the {} kernel is not in the lab: {e}\nrun `graft-lab setup --release {}`",
            suite.name(),
            suite.name()
        )
    })
}

/// `.klp.sym.*` symbol names of a module.
pub fn klp_symbols(ko: &Path) -> Vec<String> {
    graft_elf::Object::read(ko)
        .unwrap()
        .symbols
        .iter()
        .filter(|s| s.name.starts_with(".klp.sym."))
        .map(|s| s.name.clone())
        .collect()
}

/// A module of the target's modules directory, decompressed (6.12 ships
/// `.ko.xz`; busybox's insmod takes plain modules).
pub fn plain_module(lab: &Lab, rel: &str, out: &Path) -> PathBuf {
    let xz = lab.modules_dir().join(format!("{rel}.xz"));
    let name = Path::new(rel).file_name().unwrap();
    let dst = out.join(name);
    let o = std::process::Command::new("xz")
        .arg("-dc")
        .arg(&xz)
        .output()
        .expect("run xz");
    assert!(o.status.success(), "xz -dc {}", xz.display());
    std::fs::write(&dst, o.stdout).unwrap();
    dst
}

/// Builds the scenarios for `lab`'s kernel, boots it once, and checks each.
pub fn core_scenarios_live(lab: &Lab) {
    let out = tempfile::tempdir().unwrap();
    let o = out.path();
    let a = build_module(lab, "ops-a.patch", "ops-a", o, &[]);
    let b = build_module(lab, "ops-b.patch", "ops-b", o, &[]);
    let work = |n: &str| o.join(format!("work-{n}")).display().to_string();
    let binfmt = build_module(
        lab,
        "6.12/binfmt-misc.patch",
        "binfmt",
        o,
        &["--keep-work", &work("binfmt")],
    );
    let smt = build_module(lab, "6.12/smt-active-calls-control.patch", "smt", o, &[]);
    let setroot = build_module(lab, "verify-namei-set-root.patch", "setroot", o, &[]);
    let shadow = build_module(
        lab,
        "6.12/author-shadow.patch",
        "shadow",
        o,
        &["--keep-work", &work("shadow")],
    );
    let bm = plain_module(lab, "kernel/fs/binfmt_misc.ko", o);

    // A klp relocation to a symbol the kernel does not export.
    let exports = graft_target::Exports::read(&lab.headers().join("Module.symvers")).unwrap();
    assert!(exports.get("saved_command_line").is_none());
    assert!(
        klp_symbols(&a).contains(&".klp.sym.vmlinux.saved_command_line,0".to_string()),
        "{:?}",
        klp_symbols(&a)
    );
    // A duplicated local name: control_show is kernel/cpu.c's and a
    // namesake's; set_root is one function and data namesakes. sympos
    // counts every kallsyms entry of the name (livepatch's rule).
    let table = graft_target::SymbolTable::read(&lab.kallsyms()).unwrap();
    assert_eq!(table.lookup("vmlinux", "control_show").len(), 2);
    assert!(
        klp_symbols(&smt)
            .iter()
            .any(|s| s.starts_with(".klp.sym.vmlinux.control_show,") && !s.ends_with(",0")),
        "{:?}",
        klp_symbols(&smt)
    );
    assert!(table.lookup("vmlinux", "set_root").len() > 1);
    assert!(
        klp_symbols(&setroot)
            .iter()
            .any(|s| s.starts_with(".klp.sym.vmlinux.set_root,") && !s.ends_with(",0")),
        "{:?}",
        klp_symbols(&setroot)
    );
    // objtool ran on each patch module at its link, cleanly: the patch
    // objects leave it the tables it writes (binfmt_misc.o, a module of
    // one file, has them from its own objtool run) and give it the
    // annotations it reads. Its return sites and ORC are in the module.
    for (n, ko) in [("binfmt", &binfmt), ("shadow", &shadow)] {
        // graft's replay of kbuild's commands logs each command (`$ …`)
        // and its output in module/link.log; where graft leaves the link to
        // kbuild (6.12's modules carry BTF), module-kbuild/make.log.
        let w = Path::new(&work(n)).to_owned();
        let log = std::fs::read_to_string(w.join("module/link.log"))
            .or_else(|_| std::fs::read_to_string(w.join("module-kbuild/make.log")))
            .unwrap_or_else(|e| panic!("{n}: no module link log in {}: {e}", w.display()));
        let objtool: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("objtool") && !l.starts_with("$ "))
            .collect();
        assert!(
            objtool.is_empty(),
            "{n}: objtool at the module link: {objtool:#?}"
        );
        let m = graft_elf::Object::read(ko).unwrap();
        for s in [".return_sites", ".orc_unwind_ip", ".call_sites"] {
            assert!(
                m.sections.iter().any(|x| x.name == s),
                "{n}: no {s} in the module"
            );
        }
    }

    let script = format!(
        r#"{PRELUDE}
s=/sys/devices/system/cpu/smt
echo "CMDLINE0: $(cat /proc/cmdline)"
echo "VERSION0: $(cat /proc/version)"
echo "CONTROL: $(cat $s/control)"
echo "ACTIVE0: $(cat $s/active)"
run loadA graft --json load /m/livepatch-ops-a.ko
echo "CMDLINE-A: $(cat /proc/cmdline)"
echo "VERSION-A: $(cat /proc/version)"
run loadB graft --json load /m/livepatch-ops-b.ko
echo "CMDLINE-B: $(cat /proc/cmdline)"
echo "VERSION-B: $(cat /proc/version)"
run unloadB graft unload ops-b
echo "CMDLINE-END: $(cat /proc/cmdline)"
insmod /binfmt_misc.ko && mount -t binfmt_misc none /proc/sys/fs/binfmt_misc
echo "BM0: $(cat /proc/sys/fs/binfmt_misc/status)"
run loadBinfmt graft load /m/livepatch-binfmt.ko
echo "BM-PATCHED: $(cat /proc/sys/fs/binfmt_misc/status)"
run unloadBinfmt graft unload binfmt
echo "BM-END: $(cat /proc/sys/fs/binfmt_misc/status)"
run loadSmt graft load /m/livepatch-smt.ko
echo "ACTIVE-SMT: $(cat $s/active)"
run unloadSmt graft unload smt
echo "ACTIVE-END: $(cat $s/active)"
run loadSetroot graft load /m/livepatch-setroot.ko
echo "SETROOT-LS: $(ls / | wc -l)"
run unloadSetroot graft unload setroot
sleep 1000 & old=$!
run loadShadow graft load /m/livepatch-shadow.ko
sleep 1000 & new=$!
echo "OLD-TASK: $(grep -c GraftBirth: /proc/$old/status)"
echo "NEW-TASK: $(grep GraftBirth: /proc/$new/status | cut -f2)"
run unloadShadow graft unload shadow
echo "NEW-TASK-AFTER: $(grep -c GraftBirth: /proc/$new/status)"
kill $old $new
dmesg | grep -E "graft-test:" | sed 's/^\[[ 0-9.]*\] /KLOG: /'
run list graft list
dmesg | grep -E "WARNING|Oops|BUG:|Call Trace|stalled|Missing ENDBR|Unpatched return thunk|Invalid padding|livepatch: .*(failed|error)" | sed 's/^/KERNEL-PROBLEM: /'
"#
    );
    let sc = Scenario::new(format!("kernel612-{}", lab.release), script)
        .with_file("/binfmt_misc.ko", &bm)
        .with_timeout(Duration::from_secs(300));
    let sc = with_modules(with_graft(sc), &[&a, &b, &binfmt, &smt, &setroot, &shadow]);
    let run = run_scenario(lab, &sc).unwrap_or_else(|e| panic!("VM run failed: {e}"));
    let r = Report::new(&run);
    let dump = r.dump();

    for tag in [
        "loadA",
        "loadB",
        "unloadB",
        "loadBinfmt",
        "unloadBinfmt",
        "loadSmt",
        "unloadSmt",
        "loadSetroot",
        "unloadSetroot",
        "loadShadow",
        "unloadShadow",
    ] {
        assert_eq!(r.rc(tag), 0, "{tag}: {dump}");
    }
    // The cmdline fix, then a cumulative replacement that hands
    // version_proc_show back to the kernel.
    let cmdline0 = r.value("CMDLINE0");
    let version0 = r.value("VERSION0");
    assert_eq!(
        r.value("CMDLINE-A"),
        format!("{cmdline0} graft_A"),
        "{dump}"
    );
    assert!(
        r.value("VERSION-A").starts_with("graft_A Linux version"),
        "{dump}"
    );
    let lb = r.json("loadB");
    assert_eq!(
        lb["outcome"]["replaced"],
        serde_json::json!(["livepatch_ops_a"]),
        "{dump}"
    );
    assert_eq!(
        r.value("CMDLINE-B"),
        format!("{cmdline0} graft_B"),
        "{dump}"
    );
    assert_eq!(r.value("VERSION-B"), version0, "{dump}");
    assert_eq!(r.value("CMDLINE-END"), cmdline0, "{dump}");
    // A module target.
    assert_eq!(r.value("BM0"), "enabled", "{dump}");
    assert_eq!(r.value("BM-PATCHED"), "enabled (graft)", "{dump}");
    assert_eq!(r.value("BM-END"), "enabled", "{dump}");
    // The namesake graft proved by code is the one called.
    let control = r.value("CONTROL");
    assert!(!control.is_empty() && control != "auto", "{dump}");
    assert_eq!(r.value("ACTIVE-SMT"), control, "{dump}");
    assert_eq!(r.value("ACTIVE-END"), r.value("ACTIVE0"), "{dump}");
    assert!(
        r.value("SETROOT-LS").parse::<u32>().unwrap_or(0) > 0,
        "{dump}"
    );
    // Shadow variables: only tasks born while the patch is loaded.
    assert_eq!(r.value("OLD-TASK"), "0", "{dump}");
    let new: u64 = r
        .value("NEW-TASK")
        .parse()
        .unwrap_or_else(|_| panic!("{dump}"));
    assert!(new >= 1, "{dump}");
    assert_eq!(r.value("NEW-TASK-AFTER"), "0", "{dump}");
    let klog = run.lines_with_prefix("KLOG:").join("\n");
    assert!(
        klog.contains("graft-test: post-unpatch freed"),
        "the shadow patch's callbacks ran: {dump}"
    );
    assert_eq!(r.out("list"), "no live patches loaded", "{dump}");
    assert!(
        run.lines_with_prefix("KERNEL-PROBLEM:").is_empty(),
        "{}",
        run.console
    );
}
