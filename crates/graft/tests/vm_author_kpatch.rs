//! Patches written for kpatch build unchanged and work in the Debian kernel
//! under QEMU (callbacks from `kpatch-macros.h` for vmlinux and for a module
//! loaded later; a syscall changed with `KPATCH_SYSCALL_DEFINE1`), a plain
//! `SYSCALL_DEFINE1` change works through callee promotion, and a function
//! marked `GRAFT_IGNORE_FUNCTION` stays out of the module although it
//! changed.

mod common;

use std::time::Duration;

use common::*;
use graft_elf::Object;
use graft_lab::{run_scenario, Scenario};

fn strings(v: &serde_json::Value) -> Vec<String> {
    let mut n: Vec<String> = v
        .as_array()
        .unwrap_or_else(|| panic!("not a list: {v}"))
        .iter()
        .map(|x| x.as_str().unwrap().to_owned())
        .collect();
    n.sort();
    n
}

fn has_symbol(ko: &std::path::Path, name: &str) -> bool {
    Object::read(ko)
        .unwrap()
        .symbols
        .iter()
        .any(|s| s.name == name)
}

#[test]
fn kpatch_patches_syscalls_and_ignored_functions() {
    let lab = lab();
    let out = tempfile::tempdir().unwrap();

    // Callbacks written for kpatch, with a KPATCH_FORCE_UNSAFE that graft
    // accepts with a warning (the kernel has no per-function force).
    let mut args = build_args(
        &lab,
        &repo_file("tests/patches/author-kpatch-callbacks.patch"),
        "kcb",
        out.path(),
    );
    args.insert(0, "--json".into());
    let built = graft(&args);
    assert!(built.status.success(), "{}", stderr(&built));
    assert!(
        stderr(&built).contains(
            "warning: fs/proc/uptime.c: KPATCH_FORCE_UNSAFE(uptime_proc_show) has no effect"
        ),
        "{}",
        stderr(&built)
    );
    let kcb_summary: serde_json::Value = serde_json::from_slice(&built.stdout).unwrap();
    let objects: Vec<String> = kcb_summary["callbacks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            format!(
                "{}:{}",
                c["object"].as_str().unwrap_or("vmlinux"),
                c["kind"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(
        objects,
        vec![
            "vmlinux:pre_patch",
            "vmlinux:post_patch",
            "vmlinux:pre_unpatch",
            "vmlinux:post_unpatch",
            "binfmt_misc:pre_patch",
            "binfmt_misc:post_patch",
            "binfmt_misc:pre_unpatch",
            "binfmt_misc:post_unpatch",
        ],
        "{kcb_summary}"
    );
    let kcb = out.path().join("livepatch-kcb.ko");

    // The same syscall change, with kpatch's macro and with the kernel's:
    // __do_sys_newuname has no __fentry__; it is carried as a new function
    // and the syscall table's entries are patched instead.
    let mut syscall_kos = Vec::new();
    for (patch, name) in [
        ("author-kpatch-syscall.patch", "ksys"),
        ("author-syscall.patch", "sys"),
    ] {
        let (ko, s) = build_ok(&lab, patch, name, out.path());
        let f = &s["files"][0];
        assert_eq!(
            strings(&f["changed"]),
            vec!["__ia32_sys_newuname", "__x64_sys_newuname"],
            "{patch}: {s}"
        );
        assert_eq!(
            strings(&f["new"]),
            vec!["__do_sys_newuname"],
            "{patch}: {s}"
        );
        assert!(has_symbol(&ko, "__do_sys_newuname"), "{patch}");
        syscall_kos.push(ko);
    }

    // version_proc_show changed but is marked ignored: not in the module.
    let (ignore, s) = build_ok(&lab, "author-ignore.patch", "ignore", out.path());
    let files = s["files"].as_array().unwrap();
    assert_eq!(
        strings(&files[0]["changed"]),
        vec!["cmdline_proc_show"],
        "{s}"
    );
    assert_eq!(files[1]["file"], "fs/proc/version.c");
    assert_eq!(strings(&files[1]["changed"]), Vec::<String>::new(), "{s}");
    assert_eq!(
        strings(&files[1]["ignored"]),
        vec!["version_proc_show"],
        "{s}"
    );
    assert!(has_symbol(&ignore, "cmdline_proc_show"));
    assert!(
        !has_symbol(&ignore, "version_proc_show"),
        "an ignored function is in the module"
    );

    let binfmt = lab.modules_dir().join("kernel/fs/binfmt_misc.ko");
    let script = format!(
        r#"{SH_PRELUDE}
L=/sys/kernel/livepatch
load() {{ insmod /$1.ko || echo "STEP: insmod $1 failed"; wait_for "[ \"\$(cat $L/livepatch_$1/transition)\" = 0 ]" || echo "STEP: $1 stuck"; }}
unload() {{ echo 0 > $L/livepatch_$1/enabled; wait_for "[ ! -d $L/livepatch_$1 ]" || echo "STEP: $1 not unpatched"; rmmod livepatch_$1 || echo "STEP: rmmod $1 failed"; }}
load kcb
insmod /binfmt_misc.ko || echo "STEP: binfmt_misc did not load"
unload kcb
echo "UNAME-BEFORE: $(uname -s)"
load ksys
echo "UNAME-KPATCH: $(uname -s)"
unload ksys
echo "UNAME-BETWEEN: $(uname -s)"
load sys
echo "UNAME-PLAIN: $(uname -s)"
unload sys
echo "UNAME-AFTER: $(uname -s)"
load ignore
echo "CMDLINE-IGNORE: $(grep -c graft_ignore_test /proc/cmdline)"
echo "VERSION-IGNORE: $(grep -c graft-ignored /proc/version)"
unload ignore
dmesg | grep "kgraft-test:" | sed 's/^\[[ 0-9.]*\] /KLOG: /'
problems
"#
    );
    let run = run_scenario(
        &lab,
        &Scenario::new("author-kpatch", script)
            .with_file("/kcb.ko", &kcb)
            .with_file("/binfmt_misc.ko", &binfmt)
            .with_file("/ksys.ko", &syscall_kos[0])
            .with_file("/sys.ko", &syscall_kos[1])
            .with_file("/ignore.ko", &ignore)
            .with_timeout(Duration::from_secs(240)),
    )
    .unwrap_or_else(|e| panic!("VM run failed: {e}"));
    let c = &run.console;
    let get = |p: &str| line_value(&run, p);
    assert_eq!(run.lines_with_prefix("STEP:"), Vec::<&str>::new(), "{c}");

    // kpatch's callbacks, each with its object; the module's run when it
    // loads after the patch.
    let klog: Vec<&str> = run
        .lines_with_prefix("KLOG:")
        .into_iter()
        .map(|l| l["KLOG:".len()..].trim())
        .collect();
    assert_eq!(
        klog,
        vec![
            "kgraft-test: pre-patch vmlinux",
            "kgraft-test: post-patch vmlinux",
            "kgraft-test: pre-patch binfmt_misc coming",
            "kgraft-test: post-patch binfmt_misc coming",
            "kgraft-test: pre-unpatch vmlinux",
            "kgraft-test: pre-unpatch binfmt_misc live",
            "kgraft-test: post-unpatch vmlinux",
            "kgraft-test: post-unpatch binfmt_misc live",
        ],
        "{c}"
    );

    assert_eq!(get("UNAME-BEFORE:"), "Linux", "{c}");
    assert_eq!(get("UNAME-KPATCH:"), "Linux.kgraft", "{c}");
    assert_eq!(get("UNAME-BETWEEN:"), "Linux", "{c}");
    assert_eq!(get("UNAME-PLAIN:"), "Linux.graft", "{c}");
    assert_eq!(get("UNAME-AFTER:"), "Linux", "{c}");

    assert_eq!(get("CMDLINE-IGNORE:"), "1", "{c}");
    assert_eq!(
        get("VERSION-IGNORE:"),
        "0",
        "the ignored change is live\n{c}"
    );
    assert!(run.lines_with_prefix("KERNEL-PROBLEM:").is_empty(), "{c}");
}
