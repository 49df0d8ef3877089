//! The crashes fuzzing found in the differ (see `git log --grep "found by
//! fuzzing"`), each rebuilt as a small malformed object pair. Arithmetic on
//! malformed input must wrap or saturate by design: these tests panic
//! without the fixes in the overflow-checked pass of `./run test`.

use std::path::Path;

use graft_elf::write::{Contents, OutReloc, OutSection, SectionSpec, Writer};
use graft_elf::{Binding, Object, SymKind};

/// A section: name, bytes, flags (`SHF_*`).
type Sec<'a> = (&'a str, &'a [u8], u64);
/// A function symbol: name, section index, value, size.
type Func<'a> = (&'a str, usize, u64, u64);

/// An object with `sections` and local function symbols `funcs`; values
/// need not lie inside their sections.
fn object(sections: &[Sec<'_>], funcs: &[Func<'_>]) -> (Writer, Vec<OutSection>) {
    let mut w = Writer::new();
    let ids: Vec<OutSection> = sections
        .iter()
        .map(|(name, data, flags)| {
            w.add_section(
                &SectionSpec::progbits(name, *flags, 1),
                Contents::Bytes(data.to_vec()),
            )
        })
        .collect();
    for &(name, sec, value, size) in funcs {
        w.add_symbol(
            name,
            Some(ids[sec]),
            value,
            size,
            Binding::Local,
            SymKind::Func,
            0,
        );
    }
    (w, ids)
}

fn parse(w: Writer, name: &str) -> Object {
    Object::parse(&w.write().unwrap(), Path::new(name)).unwrap()
}

fn diff(orig: &Object, patched: &Object) -> crate::ObjectDiff {
    let d = crate::analyze(orig, patched, &crate::Options::default());
    for r in &d.refusals {
        let _ = r.to_string();
    }
    d
}

/// SHF_ALLOC | SHF_EXECINSTR, and SHF_ALLOC | SHF_WRITE.
const TEXT: u64 = 0x6;
const DATA: u64 = 0x3;

/// Found by fuzzing (7f6c1df): a function whose symbol does not start on an
/// instruction boundary; its first differing instruction starts before it.
#[test]
fn changed_function_starting_inside_an_instruction() {
    // mov $imm,%eax; call __fentry__; ret — `f` starts one byte in, and the
    // difference is in the instruction it starts inside.
    let build = |imm: u8| {
        let code = [0xb8, imm, 0, 0, 0, 0xe8, 0, 0, 0, 0, 0xc3];
        let (mut o, ids) = object(&[(".text.f", &code, TEXT)], &[("f", 0, 1, 10)]);
        let fentry = o.add_undefined("__fentry__");
        o.add_relocations(
            ids[0],
            &[OutReloc {
                offset: 6,
                r_type: 4, // R_X86_64_PLT32
                symbol: fentry,
                addend: -4,
            }],
        );
        parse(o, "f.o")
    };
    let d = diff(&build(1), &build(2));
    let f = d.functions.iter().find(|c| c.name == "f").unwrap();
    assert!(matches!(f.verdict, crate::Verdict::Changed { .. }), "{f:?}");
    assert_eq!(f.first_insn.as_ref().map(|i| i.offset), Some(0), "{f:?}");
}

/// Found by fuzzing (7f6c1df): a changed function without `__fentry__`
/// whose symbol value is at the end of the address space; its callers are
/// looked for in `[value, value + size)`.
#[test]
fn hookless_function_at_the_end_of_the_address_space() {
    let code: &[u8] = &[0xb8, 1, 0, 0, 0, 0xc3];
    let (o, _) = object(&[(".text.f", code, TEXT)], &[("f", 0, 0, 6)]);
    let (p, _) = object(
        &[(".text.f", &[0xb8, 2, 0, 0, 0, 0xc3, 0xc3], TEXT)],
        &[("f", 0, 0, 7)],
    );
    let (mut o, mut p) = (parse(o, "o.o"), parse(p, "p.o"));
    for obj in [&mut o, &mut p] {
        let f = obj.symbols.iter().position(|s| s.name == "f").unwrap();
        obj.symbols[f].value = u64::MAX;
    }
    diff(&o, &p);
}

/// Found by fuzzing (3f636fe): a reference through a section symbol with an
/// addend that puts it far before the only object of the section it
/// reaches; its offset into that object is a subtraction that must wrap.
#[test]
fn reference_far_before_the_only_object_of_a_section() {
    let build = |imm: u8| {
        // movabs $x, %rax; ret — the 8-byte field relocated with R_X86_64_64.
        let code = [0x48, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0xb8, imm, 0, 0, 0, 0xc3];
        let (mut o, ids) = object(
            &[(".text.f", &code, TEXT), (".data.x", &[0; 8], DATA)],
            &[("f", 0, 0, 16)],
        );
        o.add_symbol("x", Some(ids[1]), 1, 4, Binding::Local, SymKind::Object, 0);
        let data = o.section_symbol(ids[1]);
        o.add_relocations(
            ids[0],
            &[OutReloc {
                offset: 2,
                r_type: 1, // R_X86_64_64
                symbol: data,
                addend: i64::MIN,
            }],
        );
        parse(o, "x.o")
    };
    diff(&build(1), &build(2));
    let o = build(1);
    let text = o.section_by_name(".text.f").unwrap();
    let n = crate::compare::normalize(&o, &text.relocs[0], 0);
    assert_eq!(n.key, crate::compare::RefKey::Symbol("x".into()));
    assert_eq!(n.addend, i64::MIN.wrapping_sub(1));
}
