//! Sections the assembler tied together with a short jump between two
//! functions cannot be cut into one section per function (no relocation
//! is one byte wide). An init section stays whole — init code is never
//! patched — and any other is refused, naming the section and the jump.
//! Compiled with the host's gcc at test time; no kernel needed.

use std::path::Path;
use std::process::Command;

use graft_elf::Object;

const SOURCE: &str = r#"
#define __init __attribute__((section(".init.text"), noinline))
#define __sched __attribute__((section(".sched.text"), noinline))
static __init int b(int x) { return x * 3 + 1; }
__init int a(int x) { if (x > 2) return b(x); return 0; }
static __sched int d(int x) { return x * 5 + 7; }
__sched int c(int x) { if (x > 2) return d(x); return 1; }
int e(int x) { return a(x) + c(x); }
"#;

/// The fixture, with the init and the sched functions in their explicit
/// sections or not (`init`, `sched`).
fn compile(dir: &Path, init: bool, sched: bool) -> Object {
    let mut src = SOURCE.to_owned();
    if !init {
        src = src.replace(
            "__attribute__((section(\".init.text\"), noinline))",
            "__attribute__((noinline))",
        );
    }
    if !sched {
        src = src.replace(
            "__attribute__((section(\".sched.text\"), noinline))",
            "__attribute__((noinline))",
        );
    }
    gcc(dir, &format!("f-{init}-{sched}"), &src)
}

/// `src` compiled as `<dir>/<name>.o`, the way the kernel's objects are
/// (one section per function, kernel code model).
fn gcc(dir: &Path, name: &str, src: &str) -> Object {
    let c = dir.join(format!("{name}.c"));
    let o = c.with_extension("o");
    std::fs::write(&c, src).unwrap();
    let st = Command::new("gcc")
        .args(["-O2", "-ffunction-sections", "-fno-pic", "-mcmodel=kernel"])
        .args(["-fno-asynchronous-unwind-tables", "-c", "-o"])
        .arg(&o)
        .arg(&c)
        .status()
        .expect("gcc runs");
    assert!(st.success());
    Object::read(&o).unwrap()
}

/// The short jump the test is about is there: `jmp` with a rel8 from the
/// second function of `section` to the first.
fn has_short_jump(o: &Object, section: &str) -> bool {
    let s = o.section_by_name(section).expect("the section");
    s.data.windows(2).any(|w| w[0] == 0xeb) && s.relocs.iter().all(|r| r.r_type != 2)
}

#[test]
fn an_init_section_tied_by_a_short_jump_stays_whole() {
    let dir = tempfile::tempdir().unwrap();
    let mut o = compile(dir.path(), true, false);
    assert!(has_short_jump(&o, ".init.text"));
    let n = graft_diff::split::split_shared_sections(&mut o).expect("init code is left whole");
    assert_eq!(n, 0);
    let init = o.section_by_name(".init.text").unwrap();
    assert_eq!(
        o.symbols_in(init.id)
            .filter(|s| s.kind == graft_elf::SymKind::Func)
            .count(),
        2,
        "both init functions stay in .init.text"
    );
}

#[test]
fn another_section_tied_by_a_short_jump_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut o = compile(dir.path(), false, true);
    assert!(has_short_jump(&o, ".sched.text"));
    let e = graft_diff::split::split_shared_sections(&mut o).unwrap_err();
    assert_eq!(e.section, ".sched.text");
    assert!(
        e.what.contains("1-byte jump") && e.what.contains("crosses from one function to the next"),
        "{e:?}"
    );
    // Both at once: the init section is left whole, the other refused.
    let mut both = compile(dir.path(), true, true);
    assert_eq!(
        graft_diff::split::split_shared_sections(&mut both)
            .unwrap_err()
            .section,
        ".sched.text"
    );
}

/// Both builds of one object: a section tied by a short jump that compiled
/// the same in both stays whole in both (the change is elsewhere); one
/// that differs is refused.
#[test]
fn a_tied_section_stays_whole_in_both_builds_when_it_did_not_change() {
    let dir = tempfile::tempdir().unwrap();
    let mut orig = compile(dir.path(), false, true);
    let mut patched = compile_with(dir.path(), "patched-e", |s| {
        s.replace("return a(x) + c(x);", "return a(x) + c(x) + 1;")
    });
    assert_eq!(
        graft_diff::split::split_pair(&mut orig, &mut patched),
        Ok(0)
    );
    for o in [&orig, &patched] {
        let sched = o.section_by_name(".sched.text").unwrap();
        assert_eq!(
            o.symbols_in(sched.id)
                .filter(|s| s.kind == graft_elf::SymKind::Func)
                .count(),
            2,
            "both sched functions stay in .sched.text"
        );
    }
    let mut orig = compile(dir.path(), false, true);
    let mut patched = compile_with(dir.path(), "patched-d", |s| {
        s.replace("return x * 5 + 7;", "return x * 5 + 9;")
    });
    let e = graft_diff::split::split_pair(&mut orig, &mut patched).unwrap_err();
    assert_eq!(e.section, ".sched.text");
}

/// The fixture with its sched functions in `.sched.text` and the init
/// ones in plain sections, after `edit`.
fn compile_with(dir: &Path, name: &str, edit: impl Fn(&str) -> String) -> Object {
    let src = edit(&SOURCE.replace(
        "__attribute__((section(\".init.text\"), noinline))",
        "__attribute__((noinline))",
    ));
    gcc(dir, name, &src)
}
