//! What the module carries of one changed file ([`graft_klp::include`]) and
//! the patch object written from it ([`graft_klp::emit`]), on a fixture pair
//! compiled at test time (`tests/fixtures/plan_emit`): `target_fn` changes
//! and calls the new static `clamp_new`, logs two strings through the
//! exported `exported_log`, counts in the unexported global `hidden_count`,
//! and still calls the unchanged static `helper`, which the unchanged
//! `other_user` calls too. The target kernel is a symbol table and exports
//! written here.

mod common;

use std::collections::{BTreeMap, BTreeSet};

use graft_diff::{ObjectDiff, Verdict};
use graft_elf::{Binding, Object, Reloc, SectionId, SymKind};
use graft_klp::include::{Plan, Resolver, Target};
use graft_klp::{KlpError, KlpFunc};
use graft_target::{Exports, SymbolTable};

const FIXTURE: &str = "plan_emit";

/// vmlinux exports `__fentry__` and `exported_log`, not `hidden_count`.
const SYMVERS: &str = "\
0x11111111\t__fentry__\tvmlinux\tEXPORT_SYMBOL\t
0x22222222\texported_log\tvmlinux\tEXPORT_SYMBOL\t
";

/// The running kernel: the fixture's functions once each, `hidden_count` in
/// vmlinux and, same-named, in a module (which must not make it ambiguous).
const KALLSYMS: &str = "\
ffffffff81000000 T _text
ffffffff81000100 T __fentry__
ffffffff81001000 t helper
ffffffff81001100 T other_user
ffffffff81001200 T target_fn
ffffffff81002000 T exported_log
ffffffff82000000 D hidden_count
ffffffffc0000000 d hidden_count\t[other_mod]
";

/// As [`KALLSYMS`], with a second `helper` and a second `target_fn` (statics
/// of other files, or the same name in two files): `sympos` decides.
const KALLSYMS_TWICE: &str = "\
ffffffff81000000 T _text
ffffffff81000100 T __fentry__
ffffffff81000800 t helper
ffffffff81000900 t target_fn
ffffffff81001000 t helper
ffffffff81001100 T other_user
ffffffff81001200 T target_fn
ffffffff81002000 T exported_log
ffffffff82000000 D hidden_count
";

fn diff(pair: &common::Pair) -> ObjectDiff {
    graft_diff::diff(&pair.orig, &pair.patched).expect("the differ accepts the fixture")
}

fn plan<'a>(
    patched: &'a Object,
    diff: &ObjectDiff,
    symbols: &SymbolTable,
    exports: &Exports,
    known: &BTreeMap<String, u32>,
) -> Result<Plan<'a>, KlpError> {
    let defines = BTreeSet::new();
    let resolver = Resolver {
        symbols,
        exports,
        object: graft_elf::klp::VMLINUX,
        known,
        patch_defines: &defines,
    };
    graft_klp::include::plan(patched, diff, &resolver, 0)
}

/// The plan against the fake kernel (`KALLSYMS`, `SYMVERS`), with no
/// positions proven by verification.
fn plan_for_the_kernel<'a>(pair: &'a common::Pair, d: &ObjectDiff) -> Plan<'a> {
    plan(
        &pair.patched,
        d,
        &common::symbols(KALLSYMS),
        &common::exports(SYMVERS),
        &BTreeMap::new(),
    )
    .expect("plan")
}

fn section_id(obj: &Object, name: &str) -> SectionId {
    obj.section_by_name(name)
        .unwrap_or_else(|| panic!("{} has no section {name}", obj.path.display()))
        .id
}

/// The section holding the string `needle`.
fn string_section(obj: &Object, needle: &str) -> SectionId {
    obj.sections
        .iter()
        .find(|s| {
            s.is_alloc()
                && !s.is_exec()
                && s.data.windows(needle.len()).any(|w| w == needle.as_bytes())
        })
        .unwrap_or_else(|| panic!("no section of {} holds {needle:?}", obj.path.display()))
        .id
}

/// The relocation of `section` that reaches `what`: a symbol by name, or a
/// section through its section symbol.
fn reloc_to<'o>(obj: &'o Object, section: &str, what: &str) -> &'o Reloc {
    let sec = obj.section(section_id(obj, section));
    sec.relocs
        .iter()
        .find(|r| {
            let s = obj.symbol(r.symbol);
            s.name == what
                || (s.kind == SymKind::Section
                    && s.section.is_some_and(|h| obj.section(h).name == what))
        })
        .unwrap_or_else(|| panic!("no relocation of {section} reaches {what}"))
}

/// The second of target_fn's two strings.
const STRING: &str = "graft fixture: clamped";

/// The offset of [`STRING`] in its section.
fn string_offset(obj: &Object) -> i64 {
    let data = &obj.section(string_section(obj, STRING)).data;
    let at = data
        .windows(STRING.len())
        .position(|w| w == STRING.as_bytes())
        .unwrap() as i64;
    assert!(
        at > 0,
        "the fixture's string is at the start of its section"
    );
    at
}

/// target_fn's relocation that reaches [`STRING`], as the compiler wrote it.
fn string_reloc(obj: &Object) -> Reloc {
    let strings = string_section(obj, STRING);
    let want = graft_elf::RelocTarget::SectionOffset(strings, string_offset(obj));
    *obj.section(section_id(obj, ".text.target_fn"))
        .relocs
        .iter()
        .find(|r| obj.reloc_target(r) == want)
        .expect("target_fn references the string")
}

#[test]
fn plan_carries_the_changed_function_and_only_what_it_alone_needs() {
    let pair = common::pair(FIXTURE);
    let d = diff(&pair);
    let verdict = |name: &str| {
        d.functions
            .iter()
            .find(|c| c.name == name)
            .unwrap_or_else(|| panic!("the diff does not list {name}"))
            .verdict
    };
    // The fixture is what this test says it is.
    assert!(matches!(verdict("target_fn"), Verdict::Changed { .. }));
    assert_eq!(verdict("clamp_new"), Verdict::New);
    assert_eq!(verdict("helper"), Verdict::Same);
    assert_eq!(verdict("other_user"), Verdict::Same);

    let p = plan_for_the_kernel(&pair, &d);
    let obj = &pair.patched;
    let strings = string_section(obj, STRING);
    let carried: BTreeSet<&str> = p
        .sections
        .iter()
        .map(|&s| obj.section(s).name.as_str())
        .collect();
    let expected: BTreeSet<&str> = [
        ".text.target_fn",
        ".text.clamp_new",
        obj.section(strings).name.as_str(),
    ]
    .into();
    // The changed function, the new static it alone calls, its string; not
    // helper (unchanged, the kernel's own) nor other_user.
    assert_eq!(carried, expected);

    // Only the changed function is registered, under its name in the
    // running kernel; the new one gets an alias (for the stub) but no
    // klp_func: the kernel has nothing to redirect to it.
    let alias_of = |name: &str| {
        p.aliases
            .iter()
            .find(|(s, _)| obj.symbol(*s).name == name)
            .map(|(_, a)| a.clone())
            .unwrap_or_else(|| panic!("{name} has no alias"))
    };
    assert_eq!(
        p.funcs,
        vec![KlpFunc {
            object: None,
            old_name: "target_fn".into(),
            old_sympos: 0,
            new_symbol: alias_of("target_fn"),
        }]
    );
    let clamp_alias = alias_of("clamp_new");
    assert_eq!(p.aliases.len(), 2);
    for (_, a) in &p.aliases {
        assert!(a.starts_with(graft_elf::klp::NEW_ALIAS_PREFIX), "{a}");
    }
    assert_ne!(clamp_alias, alias_of("target_fn"));
}

#[test]
fn plan_links_the_running_kernels_symbols() {
    let pair = common::pair(FIXTURE);
    let d = diff(&pair);
    let p = plan_for_the_kernel(&pair, &d);
    let obj = &pair.patched;
    let text = section_id(obj, ".text.target_fn");
    let target = |what: &str| {
        let r = reloc_to(obj, ".text.target_fn", what);
        p.targets
            .get(&(text, r.offset))
            .unwrap_or_else(|| panic!("the plan has no target for target_fn's reference to {what}"))
            .clone()
    };
    let ext = |name: &str, what: &str| {
        Target::External(name.into(), reloc_to(obj, ".text.target_fn", what).addend)
    };
    // An export links by name.
    assert_eq!(target("exported_log"), ext("exported_log", "exported_log"));
    assert_eq!(target("__fentry__"), ext("__fentry__", "__fentry__"));
    // An unexported global: a klp symbol, sympos 0 as vmlinux has it once
    // (the module's same-named symbol is another object's).
    assert_eq!(
        target("hidden_count"),
        ext(".klp.sym.vmlinux.hidden_count,0", "hidden_count")
    );
    // The unchanged static of the same file is the running kernel's.
    assert_eq!(
        target(".text.helper"),
        ext(".klp.sym.vmlinux.helper,0", ".text.helper")
    );
    // The new static is carried: a reference to its symbol.
    let clamp = obj
        .functions()
        .find(|f| f.name == "clamp_new")
        .expect("clamp_new")
        .id;
    assert_eq!(
        target(".text.clamp_new"),
        Target::Symbol(
            clamp,
            reloc_to(obj, ".text.target_fn", ".text.clamp_new").addend
        )
    );
    // The string: its offset in the carried string section (not the
    // section's start: "entering" comes first).
    let strings = string_section(obj, STRING);
    let r = string_reloc(obj);
    assert_eq!(
        p.targets.get(&(text, r.offset)),
        Some(&Target::Section(strings, string_offset(obj)))
    );
    // Every relocation of the carried code is resolved, and none of the
    // uncarried code is.
    assert_eq!(
        obj.section(text).relocs.len(),
        p.targets.keys().filter(|(s, _)| *s == text).count()
    );
    for name in [".text.helper", ".text.other_user"] {
        let s = section_id(obj, name);
        assert!(
            p.targets.keys().all(|(t, _)| *t != s),
            "the plan resolves relocations of {name}, which it does not carry"
        );
    }
}

#[test]
fn plan_takes_sympos_of_duplicated_names_from_verification() {
    let pair = common::pair(FIXTURE);
    let d = diff(&pair);
    let symbols = common::symbols(KALLSYMS_TWICE);
    let exports = common::exports(SYMVERS);
    // Without run-pre's word, a name the kernel has twice cannot be resolved.
    let err = match plan(&pair.patched, &d, &symbols, &exports, &BTreeMap::new()) {
        Ok(_) => panic!("planned with two helpers in vmlinux and no sympos"),
        Err(e) => e,
    };
    assert!(
        matches!(&err, KlpError::AmbiguousSymbol { symbol, .. } if symbol == "helper"),
        "{err}"
    );
    // With it, the klp symbol and the klp_func carry the verified position.
    let known: BTreeMap<String, u32> = [("helper".into(), 2), ("target_fn".into(), 2)].into();
    let p = plan(&pair.patched, &d, &symbols, &exports, &known).expect("plan");
    let obj = &pair.patched;
    let text = section_id(obj, ".text.target_fn");
    let r = reloc_to(obj, ".text.target_fn", ".text.helper");
    assert_eq!(
        p.targets.get(&(text, r.offset)),
        Some(&Target::External(
            ".klp.sym.vmlinux.helper,2".into(),
            r.addend
        ))
    );
    assert_eq!(p.funcs.len(), 1);
    assert_eq!(p.funcs[0].old_name, "target_fn");
    assert_eq!(p.funcs[0].old_sympos, 2);
}

#[test]
fn plan_refuses_a_symbol_the_kernel_lacks() {
    let pair = common::pair(FIXTURE);
    let d = diff(&pair);
    let without: String = KALLSYMS
        .lines()
        .filter(|l| !l.ends_with(" hidden_count"))
        .map(|l| format!("{l}\n"))
        .collect();
    let err = match plan(
        &pair.patched,
        &d,
        &common::symbols(&without),
        &common::exports(SYMVERS),
        &BTreeMap::new(),
    ) {
        Ok(_) => panic!("planned a reference to hidden_count, which vmlinux lacks"),
        Err(e) => e,
    };
    assert!(
        matches!(&err, KlpError::MissingSymbol { function, symbol, .. }
            if function == "target_fn" && symbol == "hidden_count"),
        "{err}"
    );
}

#[test]
fn emit_writes_carried_code_and_links_the_rest() {
    let pair = common::pair(FIXTURE);
    let d = diff(&pair);
    let p = plan_for_the_kernel(&pair, &d);
    let specials = graft_klp::special::filter(&p).expect("special sections");
    let bytes = graft_klp::emit::write(&p, &specials).expect("patch object");
    let out = Object::parse(&bytes, std::path::Path::new("patch.o")).expect("graft-elf reads it");
    let obj = &pair.patched;

    // Sections: the carried ones, none of the uncarried functions'.
    let strings = obj.section(string_section(obj, STRING)).name.clone();
    for name in [".text.target_fn", ".text.clamp_new", strings.as_str()] {
        let o = out
            .section_by_name(name)
            .unwrap_or_else(|| panic!("the patch object lacks {name}"));
        let i = obj.section_by_name(name).unwrap();
        assert_eq!(o.data, i.data, "{name} is not carried as it is");
        assert_eq!((o.flags, o.sh_type), (i.flags, i.sh_type), "{name}");
    }
    for s in &obj.sections {
        if s.is_exec() && !p.sections.contains(&s.id) {
            assert!(
                out.section_by_name(&s.name).is_none(),
                "the patch object has {}, which the plan does not carry",
                s.name
            );
        }
    }

    // Carried functions are local under their own names; the stub's
    // aliases are global function symbols at the same place.
    let sym = |name: &str| {
        out.symbols
            .iter()
            .find(|s| s.name == name)
            .unwrap_or_else(|| panic!("the patch object has no symbol {name}"))
    };
    for f in ["target_fn", "clamp_new"] {
        let s = sym(f);
        assert_eq!(s.binding, Binding::Local, "{f} is not local");
        assert_eq!(s.kind, SymKind::Func, "{f}");
        assert_eq!(out.section(s.section.unwrap()).name, format!(".text.{f}"));
    }
    assert_eq!(p.aliases.len(), 2);
    for (f, alias) in &p.aliases {
        let f = obj.symbol(*f);
        let a = sym(alias);
        assert!(a.name.starts_with(graft_elf::klp::NEW_ALIAS_PREFIX));
        assert_eq!(a.binding, Binding::Global, "{alias} is not global");
        assert_eq!(a.kind, SymKind::Func, "{alias}");
        assert_eq!(
            (
                out.section(a.section.expect("defined")).name.as_str(),
                a.value,
                a.size
            ),
            (
                obj.section(f.section.unwrap()).name.as_str(),
                f.value,
                f.size
            ),
            "{alias} is not at {}",
            f.name
        );
    }
    assert!(p.funcs.iter().all(|f| out
        .symbols
        .iter()
        .any(|s| s.name == f.new_symbol && s.is_global())));
    // Nothing of helper or other_user is defined in the patch object.
    for f in ["helper", "other_user"] {
        assert!(
            out.symbols.iter().all(|s| s.name != f || s.is_undefined()),
            "the patch object defines {f}"
        );
    }

    // target_fn's relocations, offset for offset.
    let text = out.section_by_name(".text.target_fn").unwrap();
    let orig_text = obj.section_by_name(".text.target_fn").unwrap();
    assert_eq!(text.relocs.len(), orig_text.relocs.len());
    let at = |what: &str| {
        let r = reloc_to(obj, ".text.target_fn", what);
        let o = text
            .relocs
            .iter()
            .find(|o| o.offset == r.offset)
            .unwrap_or_else(|| panic!("no relocation at target_fn+{:#x} ({what})", r.offset));
        assert_eq!(o.r_type, r.r_type, "{what}");
        (o, out.symbol(o.symbol), r.addend)
    };
    let undefined = |what: &str, name: &str| {
        let (o, s, addend) = at(what);
        assert_eq!(s.name, name, "target_fn's reference to {what}");
        assert!(
            s.is_undefined() && s.is_global(),
            "{name} is not an undefined global"
        );
        assert_eq!(o.addend, addend, "{what}");
    };
    undefined("exported_log", "exported_log");
    undefined("__fentry__", "__fentry__");
    undefined("hidden_count", ".klp.sym.vmlinux.hidden_count,0");
    undefined(".text.helper", ".klp.sym.vmlinux.helper,0");
    // The new function: defined in the patch object, in its carried section.
    let (o, s, addend) = at(".text.clamp_new");
    assert!(!s.is_undefined());
    assert_eq!(out.section(s.section.unwrap()).name, ".text.clamp_new");
    assert_eq!(
        s.value as i64 + o.addend,
        addend,
        "the call to clamp_new lands elsewhere"
    );
    // The string: the carried string section, at the string.
    let r = string_reloc(obj);
    let o = text.relocs.iter().find(|o| o.offset == r.offset).unwrap();
    assert_eq!(o.r_type, r.r_type);
    let s = out.symbol(o.symbol);
    assert_eq!(s.kind, SymKind::Section);
    let home = out.section(s.section.expect("defined"));
    assert_eq!(home.name, strings);
    let off = (s.value as i64 + o.addend) as usize;
    assert!(
        home.data[off..].starts_with(STRING.as_bytes()),
        "target_fn's string reference lands at {off} of {strings}"
    );
}
