//! Operating patches in the VM, one boot: load → transition completes →
//! `info` shows the functions; cumulative B replaces A (A's module removed,
//! the functions change hands); stacking C (`--no-replace`) stacks on B;
//! unload restores the behaviour and `list` is empty. Then install for boot:
//! `load --installed` loads what is installed for this kernel, from the
//! newest cumulative patch on, and skips another kernel's patch loudly.

mod common;
mod ops;

use std::time::Duration;

use common::*;
use graft_lab::{run_scenario, Scenario};
use ops::*;
use serde_json::json;

#[test]
fn load_replace_stack_unload_install() {
    let lab = lab();
    let out = tempfile::tempdir().unwrap();
    let a = build_module(&lab, "ops-a.patch", "ops-a", out.path(), &[]);
    let b = build_module(&lab, "ops-b.patch", "ops-b", out.path(), &[]);
    let c = build_module(&lab, "ops-c.patch", "ops-c", out.path(), &["--no-replace"]);
    let other_dir = tempfile::tempdir().unwrap();
    let other = other_release(&lab.release);
    let z = for_other_release(&a, &lab.release, &other, other_dir.path());
    let z_guest = "/z/livepatch-ops-a.ko";

    let script = format!(
        r#"{PRELUDE}
echo "CMDLINE0: $(cat /proc/cmdline)"
echo "VERSION0: $(cat /proc/version)"
run list0 graft list
run loadA graft --json load /m/livepatch-ops-a.ko
echo "CMDLINE-A: $(cat /proc/cmdline)"
echo "VERSION-A: $(cat /proc/version)"
run infoA graft --json info livepatch_ops_a
run infoA-human graft info ops-a
run loadB graft --json load /m/livepatch-ops-b.ko
echo "CMDLINE-B: $(cat /proc/cmdline)"
echo "VERSION-B: $(cat /proc/version)"
state B
run loadC graft --json load /m/livepatch-ops-c.ko
echo "CMDLINE-C: $(cat /proc/cmdline)"
echo "VERSION-C: $(cat /proc/version)"
run listC graft --json list
run listC-human graft list
run unloadC graft unload livepatch_ops_c
run unloadB graft --json unload ops-b
echo "CMDLINE-END: $(cat /proc/cmdline)"
echo "VERSION-END: $(cat /proc/version)"
run listEnd graft list
state End
# Install for boot: A, then cumulative B, then stacking C, and another kernel's patch.
# No pause between them: the order is recorded, not read from file times.
run installA graft install /m/livepatch-ops-a.ko
run installB graft install /m/livepatch-ops-b.ko
run installC graft install /m/livepatch-ops-c.ko
run installZ graft install {z_guest}
echo "UNIT: $(grep ExecStart /etc/systemd/system/graft.service)"
echo "WANTS: $(readlink /etc/systemd/system/multi-user.target.wants/graft.service)"
echo "FILES: $(cd /var/lib/graft && ls */ | tr '\n' ' ')"
run listInstalled graft list --installed
run boot graft load --installed
echo "CMDLINE-BOOT: $(cat /proc/cmdline)"
echo "VERSION-BOOT: $(cat /proc/version)"
state Boot
run bootAgain graft load --installed
run unloadC2 graft unload ops-c
run unloadB2 graft unload ops-b
# Without --release an uninstall covers every release: keep the other kernel's A.
run un-ops-a graft uninstall ops-a --release $(uname -r)
for n in ops-b ops-c; do run un-$n graft uninstall $n; done
echo "UNIT-LEFT: $(ls /etc/systemd/system/graft.service 2>&1)"
run unZ graft uninstall ops-a --release {other}
echo "UNIT-GONE: $(ls /etc/systemd/system/graft.service 2>&1)"
state Final
problems
"#
    );
    let sc = Scenario::new("ops-lifecycle", script)
        .with_file(z_guest, &z)
        .with_timeout(Duration::from_secs(300));
    let sc = with_modules(with_graft(sc), &[&a, &b, &c]);
    let run = run_scenario(&lab, &sc).unwrap_or_else(|e| panic!("VM run failed: {e}"));
    let r = Report::new(&run);
    let dump = r.dump();

    let cmdline0 = r.value("CMDLINE0");
    let version0 = r.value("VERSION0");
    assert_eq!(r.rc("list0"), 0);
    assert_eq!(r.out("list0"), "no live patches loaded");

    // A: both functions, both behaviours.
    assert_eq!(r.rc("loadA"), 0, "{dump}");
    let la = r.json("loadA");
    assert_eq!(la["outcome"]["result"], "loaded", "{la}");
    assert_eq!(la["outcome"]["replaced"], json!([]));
    assert_eq!(r.value("CMDLINE-A"), format!("{cmdline0} graft_A"));
    assert!(
        r.value("VERSION-A").starts_with("graft_A Linux version"),
        "{dump}"
    );
    let info = r.json("infoA");
    let funcs: Vec<&str> = info["module"]["graft"]["functions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["name"].as_str().unwrap())
        .collect();
    assert_eq!(funcs, ["cmdline_proc_show", "version_proc_show"]);
    assert_eq!(info["module"]["graft"]["kernel"], lab.release.as_str());
    assert_eq!(info["module"]["graft"]["replace"], true);
    assert_eq!(info["loaded"]["enabled"], true);
    assert_eq!(info["loaded"]["transition"], false);
    let live: Vec<String> = info["loaded"]["objects"][0]["functions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| format!("{},{}", f["name"].as_str().unwrap(), f["sympos"]))
        .collect();
    // The kernel names a unique symbol's directory with sympos 1.
    assert_eq!(live, ["cmdline_proc_show,1", "version_proc_show,1"]);
    assert_eq!(info["loaded"]["objects"][0]["patched"], true);
    let human = r.out("infoA-human");
    assert!(
        human.contains("functions: vmlinux:cmdline_proc_show,0 vmlinux:version_proc_show,0"),
        "{human}"
    );
    let sha = info["module"]["graft"]["patch_sha256"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        sha,
        sha256_hex(&std::fs::read(repo_file("tests/patches/ops-a.patch")).unwrap())
    );

    // B replaces A: cmdline A→B, version back to the original; A's module gone.
    assert_eq!(r.rc("loadB"), 0, "{dump}");
    let lb = r.json("loadB");
    assert_eq!(
        lb["outcome"]["replaced"],
        json!(["livepatch_ops_a"]),
        "{lb}"
    );
    let hand: Vec<String> = lb["outcome"]["handover"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| {
            format!(
                "{} {} {}",
                h["function"]["name"].as_str().unwrap(),
                h["from"],
                h["to"]
            )
        })
        .collect();
    assert_eq!(
        hand,
        [
            "cmdline_proc_show \"livepatch_ops_a\" \"livepatch_ops_b\"",
            "version_proc_show \"livepatch_ops_a\" null",
        ]
    );
    assert_eq!(r.value("CMDLINE-B"), format!("{cmdline0} graft_B"));
    assert_eq!(r.value("VERSION-B"), version0);
    let state_b = r.value("STATE B");
    assert!(state_b.starts_with("livepatch_ops_b |"), "{state_b}");
    assert!(
        !state_b.contains("livepatch_ops_a"),
        "A's module is still loaded: {state_b}"
    );

    // C stacks on B.
    assert_eq!(r.rc("loadC"), 0, "{dump}");
    let lc = r.json("loadC");
    assert_eq!(lc["outcome"]["replaced"], json!([]));
    assert_eq!(
        lc["outcome"]["handover"][0]["from"],
        serde_json::Value::Null
    );
    assert_eq!(r.value("CMDLINE-C"), format!("{cmdline0} graft_B"));
    assert!(
        r.value("VERSION-C").starts_with("graft_C Linux version"),
        "{dump}"
    );
    let list = r.json("listC");
    let names: Vec<&str> = list["patches"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["livepatch_ops_b", "livepatch_ops_c"], "load order");
    assert!(r.out("listC-human").contains("livepatch_ops_c: enabled"));

    // Unload both: behaviour restored, nothing listed.
    assert_eq!(r.rc("unloadC"), 0, "{dump}");
    assert!(r.out("unloadC").contains("livepatch_ops_c: unpatched in"));
    assert_eq!(r.rc("unloadB"), 0, "{dump}");
    assert_eq!(r.json("unloadB")["result"], "unloaded");
    assert_eq!(r.value("CMDLINE-END"), cmdline0);
    assert_eq!(r.value("VERSION-END"), version0);
    assert_eq!(r.out("listEnd"), "no live patches loaded");
    assert_eq!(r.value("STATE End"), "|");

    // Install and boot.
    for t in ["installA", "installB", "installC", "installZ"] {
        assert_eq!(r.rc(t), 0, "{t}: {dump}");
    }
    assert!(r
        .out("installZ")
        .contains(&format!("not for the running kernel ({})", lab.release)));
    assert_eq!(
        r.value("UNIT"),
        "ExecStart=/usr/local/bin/graft load --installed"
    );
    assert_eq!(r.value("WANTS"), "/etc/systemd/system/graft.service");
    let listed = r.out("listInstalled");
    assert!(
        listed.contains(&format!(
            "livepatch_ops_a for {other} (cumulative) — not the running kernel"
        )),
        "{listed}"
    );
    assert_eq!(r.rc("boot"), 0, "{dump}");
    let boot_err = r.err("boot").join("\n");
    assert!(
        boot_err.contains(&format!("SKIPPING livepatch_ops_a ({other}): built for kernel {other}, the running kernel is {}", lab.release)),
        "{boot_err}"
    );
    assert!(
        boot_err.contains(&format!(
            "SKIPPING livepatch_ops_a ({}): superseded by the cumulative patch livepatch_ops_b",
            lab.release
        )),
        "{boot_err}"
    );
    assert_eq!(r.value("CMDLINE-BOOT"), format!("{cmdline0} graft_B"));
    assert!(r.value("VERSION-BOOT").starts_with("graft_C Linux version"));
    assert!(
        r.value("STATE Boot")
            .starts_with("livepatch_ops_b livepatch_ops_c |"),
        "{dump}"
    );
    assert_eq!(r.rc("bootAgain"), 0, "{dump}");
    assert!(r
        .err("bootAgain")
        .join("\n")
        .contains("livepatch_ops_b is already loaded"));
    assert_eq!(r.rc("unloadC2"), 0, "{dump}");
    assert_eq!(r.rc("unloadB2"), 0, "{dump}");
    for n in ["ops-a", "ops-b", "ops-c"] {
        assert_eq!(r.rc(&format!("un-{n}")), 0, "{dump}");
    }
    // Another kernel's patch is still installed: the unit stays until it goes.
    assert_eq!(r.value("UNIT-LEFT"), "/etc/systemd/system/graft.service");
    assert_eq!(r.rc("unZ"), 0, "{dump}");
    assert!(r.value("UNIT-GONE").contains("No such file"), "{dump}");
    assert_eq!(r.value("STATE Final"), "|");
    r.assert_no_kernel_problems();
}

fn sha256_hex(data: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}
