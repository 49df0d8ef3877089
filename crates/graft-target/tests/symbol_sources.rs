//! The symbol table can come from a kallsyms dump, a System.map or an ELF
//! with symbols; Debian's stub System.map is recognized and refused.

use std::process::Command;

use graft_target::{SymbolTable, TargetError};

#[test]
fn reads_symbols_from_an_elf_built_now() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("k.c");
    std::fs::write(
        &src,
        "static int helper(int x) { return x * 3; }\nint (*keep)(int) = helper;\nint entry(int x) { return helper(x) + 1; }\nint main(void) { return entry(2); }\n",
    )
    .unwrap();
    let exe = dir.path().join("vmlinux");
    let st = Command::new("gcc")
        .args(["-O1", "-fno-inline", "-o"])
        .arg(&exe)
        .arg(&src)
        .status()
        .unwrap();
    assert!(st.success());
    let t = SymbolTable::read(&exe).unwrap();
    assert_eq!(t.unique_sympos("vmlinux", "entry"), Ok(0));
    assert_eq!(t.unique_sympos("vmlinux", "helper"), Ok(0));
    assert!(t.lookup("vmlinux", "entry")[0].is_text());
    assert_eq!(t.lookup("vmlinux", "entry")[0].kind, 'T');
    assert_eq!(t.lookup("vmlinux", "helper")[0].kind, 't');
}

#[test]
fn reads_a_system_map_and_refuses_the_debian_stub() {
    let dir = tempfile::tempdir().unwrap();
    let map = dir.path().join("System.map");
    std::fs::write(
        &map,
        "ffffffff81000000 T _text\nffffffff81001000 t show_map\nffffffff81002000 t show_map\n",
    )
    .unwrap();
    let t = SymbolTable::read(&map).unwrap();
    assert_eq!(t.lookup("vmlinux", "show_map").len(), 2);
    std::fs::write(
        &map,
        "ffffffffffffffff B The real System.map is in the linux-image-<version>-dbg package\n",
    )
    .unwrap();
    assert!(matches!(
        SymbolTable::read(&map),
        Err(TargetError::StubSystemMap { .. })
    ));
}
