//! Cumulative patches with `klp_state` (GRAFT_STATE) in the Debian kernel
//! under QEMU: a second patch that carries the state in a version at least
//! the first's replaces it (and sees the state it replaces); a patch with a
//! lower version, or without the state, is refused by the kernel at load.

mod common;

use std::time::Duration;

use common::*;
use graft_lab::{run_scenario, Scenario};

#[test]
fn compatible_states_replace_and_incompatible_ones_are_refused() {
    let lab = lab();
    let out = tempfile::tempdir().unwrap();
    let (v1, s1) = build_ok(&lab, "author-state-v1.patch", "state-v1", out.path());
    let (v2, s2) = build_ok(&lab, "author-state-v2.patch", "state-v2", out.path());
    // A cumulative patch that knows nothing of the state.
    let (none, s0) = build_ok(&lab, "cmdline.patch", "nostate", out.path());
    let state = |s: &serde_json::Value| s["states"].clone();
    assert_eq!(
        state(&s1),
        serde_json::json!([{ "id": 0x6772_6166u64, "version": 1 }])
    );
    assert_eq!(
        state(&s2),
        serde_json::json!([{ "id": 0x6772_6166u64, "version": 2 }])
    );
    assert_eq!(state(&s0), serde_json::json!([]));
    assert_eq!(s2["callbacks"][0]["kind"], "pre_patch", "{s2}");

    let script = format!(
        r#"{SH_PRELUDE}
L=/sys/kernel/livepatch
load() {{ insmod /$1.ko; echo "LOAD-$1: $?"; }}
load state-v1
wait_for '[ "$(cat $L/livepatch_state_v1/transition)" = 0 ]' || echo "STEP: v1 stuck"
echo "VERSION-V1: $(grep -c graft-state-v1 /proc/version)"
load state-v2
wait_for '[ "$(cat $L/livepatch_state_v2/transition)" = 0 ]' || echo "STEP: v2 stuck"
echo "VERSION-V2: $(grep -c graft-state-v2 /proc/version) $(grep -c graft-state-v1 /proc/version)"
echo "PATCHES-V2: $(ls $L | tr '\n' ' ')"
rmmod livepatch_state_v1 || echo "STEP: the replaced v1 cannot be removed"
load state-v1
load nostate
echo "PATCHES-END: $(ls $L | tr '\n' ' ')"
echo "VERSION-END: $(grep -c graft-state-v2 /proc/version)"
echo "CMDLINE-END: $(grep -c graft_was_here /proc/cmdline)"
echo 0 > $L/livepatch_state_v2/enabled
wait_for '[ ! -d $L/livepatch_state_v2 ]' || echo "STEP: v2 not unpatched"
dmesg | grep -E "graft-test:|not compatible" | sed 's/^\[[ 0-9.]*\] /KLOG: /'
dmesg | grep -E "WARNING|Oops|BUG:|Call Trace" | sed 's/^/KERNEL-PROBLEM: /'
"#
    );
    let run = run_scenario(
        &lab,
        &Scenario::new("author-state", script)
            .with_file("/state-v1.ko", &v1)
            .with_file("/state-v2.ko", &v2)
            .with_file("/nostate.ko", &none)
            .with_timeout(Duration::from_secs(180)),
    )
    .unwrap_or_else(|e| panic!("VM run failed: {e}"));
    let c = &run.console;
    let all = |p: &str| -> Vec<String> {
        run.lines_with_prefix(p)
            .iter()
            .map(|l| l[p.len()..].trim().to_owned())
            .collect()
    };
    let get = |p: &str| {
        let l = all(p);
        assert_eq!(l.len(), 1, "{p}\n{c}");
        l[0].clone()
    };
    assert_eq!(run.lines_with_prefix("STEP:"), Vec::<&str>::new(), "{c}");
    assert_eq!(get("VERSION-V1:"), "1", "{c}");
    // v2 replaced v1 and saw the state it took over.
    assert_eq!(get("VERSION-V2:"), "1 0", "{c}");
    assert_eq!(get("PATCHES-V2:"), "livepatch_state_v2", "{c}");
    let klog = all("KLOG:");
    assert!(
        klog.iter().any(|l| l == "graft-test: state v2 replaces v1"),
        "{c}"
    );
    // A lower version and a missing state are refused at load (EINVAL).
    assert_eq!(all("LOAD-state-v1:"), vec!["0", "22"], "{c}");
    assert_eq!(get("LOAD-state-v2:"), "0", "{c}");
    assert_eq!(get("LOAD-nostate:"), "22", "{c}");
    for refused in ["livepatch_state_v1", "livepatch_nostate"] {
        assert!(
            klog.iter().any(|l| l
                == &format!("livepatch: Livepatch patch ({refused}) is not compatible with the already installed livepatches.")),
            "{refused}\n{c}"
        );
    }
    assert_eq!(get("PATCHES-END:"), "livepatch_state_v2", "{c}");
    assert_eq!(get("VERSION-END:"), "1", "{c}");
    assert_eq!(get("CMDLINE-END:"), "0", "{c}");
    assert!(run.lines_with_prefix("KERNEL-PROBLEM:").is_empty(), "{c}");
}
