//! How a patch to a module is built for reloads of that module depends on
//! the target kernel (the VM test `vm_module_reload` runs the Debian 6.1
//! case): a kernel that clears a patch's relocations itself
//! (`clear_relocate_add`, 6.3+) gets nothing from graft; one that offers
//! neither that nor `text_poke` gets a module that says so, and a warning.

mod common;

use common::*;
use graft_elf::Object;

/// The lab's symbol table changed by `edit`, written into `dir`.
fn symbols(
    lab: &graft_lab::Lab,
    dir: &std::path::Path,
    edit: impl Fn(String) -> String,
) -> std::path::PathBuf {
    let p = dir.join("kallsyms");
    std::fs::write(&p, edit(std::fs::read_to_string(lab.kallsyms()).unwrap())).unwrap();
    p
}

/// The module's `graft_reload` key; it must have relocations for binfmt_misc.
fn reload_key(ko: &std::path::Path) -> Option<String> {
    let m = graft_ops::modinfo::ModuleInfo::read(ko).unwrap();
    assert_eq!(m.klp_modules, ["binfmt_misc"]);
    m.graft.unwrap().reload
}

#[test]
fn reload_support_follows_the_target_kernel() {
    let lab = lab();
    let patch = repo_file("tests/patches/binfmt-misc.patch");

    // A kernel that clears them itself.
    let dir = tempfile::tempdir().unwrap();
    let table = symbols(&lab, dir.path(), |t| {
        assert!(
            !t.contains(" clear_relocate_add\n"),
            "the lab kernel clears them itself: this test needs a 6.1 kernel"
        );
        t + "ffffffff8107b3e0 T clear_relocate_add\n"
    });
    let mut args = build_args(&lab, &patch, "rk", dir.path());
    set_arg(&mut args, "--symbols", &table);
    args.insert(0, "--json".into());
    let o = graft(&args);
    assert!(o.status.success(), "{}", stderr(&o));
    let s: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(s["warnings"], serde_json::json!([]), "{s}");
    let ko = dir.path().join("livepatch-rk.ko");
    let m = Object::read(&ko).unwrap();
    assert!(
        !m.symbols
            .iter()
            .any(|s| s.name.starts_with(".klp.sym.vmlinux.text_poke")),
        "graft added its clearing on a kernel that clears by itself"
    );
    assert_eq!(reload_key(&ko).as_deref(), Some("kernel"));

    // A kernel with neither: the build says so, and so does the module.
    let dir = tempfile::tempdir().unwrap();
    let table = symbols(&lab, dir.path(), |t| {
        let kept: Vec<&str> = t.lines().filter(|l| !l.ends_with(" text_poke")).collect();
        assert_eq!(
            kept.len() + 1,
            t.lines().count(),
            "one text_poke in the table"
        );
        kept.join("\n") + "\n"
    });
    let mut args = build_args(&lab, &patch, "ru", dir.path());
    set_arg(&mut args, "--symbols", &table);
    let o = graft(&args);
    assert!(o.status.success(), "{}", stderr(&o));
    let err = stderr(&o);
    let warning = err
        .lines()
        .find(|l| l.starts_with("graft: warning:"))
        .unwrap_or_else(|| panic!("no warning:\n{err}"));
    assert!(
        warning.contains("binfmt_misc cannot be unloaded and loaded again")
            && warning.contains("symbol text_poke is not in vmlinux's symbol table")
            && warning.contains("hint: unload the patch before reloading the module"),
        "{warning}"
    );
    let ko = dir.path().join("livepatch-ru.ko");
    assert_eq!(reload_key(&ko).as_deref(), Some("unsupported"));
    let info = graft(&["info".into(), ko.into()]);
    assert!(
        stdout(&info).contains(
            "relocations for modules: binfmt_misc (nothing clears them: the module cannot be reloaded while the patch is loaded)"
        ),
        "{}",
        stdout(&info)
    );
}
