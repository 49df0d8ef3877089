//! Hidden state (a once flag) that carried code must share is found
//! through any original function that uses it, verified against the running
//! kernel on purpose when no carried function's original uses it: here the
//! patch renames batman-adv's `__batadv_get_real_netdev` (whose
//! `ASSERT_RTNL` keeps an `__already_done` flag) to a new static function,
//! so only the original's verification tells which flag is the running one.

mod common;

use common::*;

#[test]
fn a_renamed_function_shares_the_running_once_flag() {
    let lab = lab();
    let out = tempfile::tempdir().unwrap();
    let (ko, r) = build_ok(&lab, "hidden-state-renamed.patch", "hsr", out.path());
    let verified: Vec<&str> = r["verified"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["function"].as_str().unwrap())
        .collect();
    assert!(
        verified.contains(&"__batadv_get_real_netdev"),
        "{verified:?}"
    );
    assert!(
        r["files"][0]["new"]
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n == "batadv_get_real_netdevice"),
        "{r}"
    );
    // The new function reaches the module's own flag through a klp
    // relocation, not a copy of its own.
    let m = graft_elf::Object::read(&ko).unwrap();
    let flags: Vec<&str> = m
        .symbols
        .iter()
        .map(|s| s.name.as_str())
        .filter(|n| n.starts_with(".klp.sym.batman_adv.__already_done."))
        .collect();
    assert_eq!(flags.len(), 1, "{flags:?}");
    assert!(
        !m.symbols
            .iter()
            .any(|s| s.name.starts_with("__already_done")),
        "the module carries a flag of its own"
    );
}
