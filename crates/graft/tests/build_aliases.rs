//! Aliases are one function: `SYSCALL_DEFINE0(getpid)` defines
//! `__do_sys_getpid` with `__x64_sys_getpid` and `__ia32_sys_getpid` as
//! aliases. All three change; the module must register one `klp_func` for
//! their one address (two would stack two ftrace redirections on it), and
//! the carried code must carry the kernel's names, not only graft's alias.

mod common;

use common::*;
use graft_elf::{Binding, Object, SymKind};

#[test]
fn aliases_are_registered_once() {
    let lab = lab();
    let out = tempfile::tempdir().unwrap();
    let (ko, summary) = build_ok(&lab, "ops-getpid.patch", "aliases", out.path());
    let mut changed: Vec<&str> = summary["files"][0]["changed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    changed.sort();
    assert_eq!(
        changed,
        vec!["__do_sys_getpid", "__ia32_sys_getpid", "__x64_sys_getpid"]
    );
    let m = Object::read(&ko).unwrap();
    let entries: Vec<&str> = m
        .symbols
        .iter()
        .filter(|s| s.name.starts_with("__graft_new_"))
        .map(|s| s.name.as_str())
        .collect();
    assert_eq!(
        entries.len(),
        1,
        "one klp_func entry point, got {entries:?}"
    );
    // The kernel's names stay in the module, local, ahead of the alias.
    for name in ["__do_sys_getpid", "__x64_sys_getpid"] {
        let s = m
            .symbols
            .iter()
            .find(|s| s.name == name && s.kind == SymKind::Func)
            .unwrap_or_else(|| panic!("{name} missing from the module"));
        assert_eq!(s.binding, Binding::Local, "{name}");
    }
}
