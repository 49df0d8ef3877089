//! Livepatch ELF constants and names, as defined by the kernel in
//! `Documentation/livepatch/module-elf-format.rst` and `include/uapi/linux/elf.h`.
//! Data only: the `object` crate does not know them.

use crate::model::ElfError;

/// `st_shndx` of a symbol that livepatch resolves at patch load time.
pub const SHN_LIVEPATCH: u16 = 0xff20;
/// `sh_flags` bit of a relocation section applied by livepatch, not the module loader.
pub const SHF_RELA_LIVEPATCH: u64 = 0x0010_0000;

/// Prefix of klp relocation section names: `.klp.rela.<object>.<section>`.
pub const RELA_PREFIX: &str = ".klp.rela.";
/// Prefix of klp symbol names: `.klp.sym.<object>.<symbol>,<sympos>`.
pub const SYM_PREFIX: &str = ".klp.sym.";

/// The klp name of the kernel image itself.
pub const VMLINUX: &str = "vmlinux";

/// `.klp.sym.<object>.<name>,<sympos>`; `sympos` is 1-based among same-named
/// symbols of `object` in kallsyms order, 0 when the name is unique.
pub fn sym_name(object: &str, name: &str, sympos: u32) -> String {
    format!("{SYM_PREFIX}{object}.{name},{sympos}")
}

/// Prefix of the global aliases graft gives the new functions of a patch,
/// which the stub's `klp_func`s name (`__graft_new_<unit>_<n>`); stack
/// traces of patched code show them, and graft-ops maps them back.
pub const NEW_ALIAS_PREFIX: &str = "__graft_new_";

/// The alias of the `n`-th carried function of the patch's `unit`-th file.
pub fn new_alias(unit: usize, n: usize) -> String {
    format!("{NEW_ALIAS_PREFIX}{unit}_{n}")
}

/// Splits a klp symbol name into (object, name, sympos).
pub fn parse_sym_name(full: &str) -> Option<(&str, &str, u32)> {
    let rest = full.strip_prefix(SYM_PREFIX)?;
    let (object, rest) = rest.split_once('.')?;
    let (name, pos) = rest.rsplit_once(',')?;
    Some((object, name, pos.parse().ok()?))
}

/// `.klp.rela.<object>.<section>`.
pub fn rela_name(object: &str, section: &str) -> String {
    format!("{RELA_PREFIX}{object}.{section}")
}

/// Turns a linked livepatch module's relocations against `.klp.sym.*`
/// symbols into `.klp.rela.<object>.<section>` sections (`SHF_RELA_LIVEPATCH`)
/// and gives those symbols `SHN_LIVEPATCH`, as the kernel's
/// module-elf-format.rst describes. A relocation goes with the object whose
/// symbol it reaches, except that a module's code reaching another
/// module's symbol goes with the module `home_of(section)` names (the
/// patched module whose code holds it); `is_patched(object)` tells the
/// patch's own module objects. Returns the new bytes and how many
/// relocations moved. `label` names the file in errors.
pub fn convert_module(
    ko: &[u8],
    label: &str,
    home_of: &dyn Fn(&str) -> Option<String>,
    is_patched: &dyn Fn(&str) -> bool,
) -> Result<(Vec<u8>, usize), ElfError> {
    use object::build::elf::{Builder, Relocation, SectionData, SectionId};
    use object::build::Id;
    use object::elf;
    use std::collections::{BTreeMap, HashMap};
    let err = |what: String| ElfError::Malformed {
        path: label.into(),
        what,
    };
    let mut b = Builder::read(ko).map_err(|e| err(e.to_string()))?;

    // Symbol index → the klp object it belongs to.
    let mut object_of: HashMap<usize, String> = HashMap::new();
    for s in &mut b.symbols {
        let name = String::from_utf8_lossy(s.name.as_slice()).into_owned();
        if let Some((object, _, _)) = parse_sym_name(&name) {
            if s.section.is_some() || s.st_shndx != elf::SHN_UNDEF {
                return Err(err(format!("{name} is defined in the module")));
            }
            s.st_shndx = elf::SymbolSection(SHN_LIVEPATCH);
            object_of.insert(s.id().index(), object.to_owned());
        } else if name.starts_with(SYM_PREFIX) {
            return Err(err(format!("malformed klp symbol name {name}")));
        }
    }

    // (object, target section) → relocations moved out of the normal .rela.
    let names: HashMap<usize, String> = b
        .sections
        .iter()
        .map(|s| {
            (
                s.id().index(),
                String::from_utf8_lossy(s.name.as_slice()).into_owned(),
            )
        })
        .collect();
    let mut moved: BTreeMap<(String, usize), (SectionId, Vec<Relocation>)> = BTreeMap::new();
    let mut symtab = None;
    let mut misplaced: Option<String> = None;
    for s in &mut b.sections {
        let target = s.sh_info_section;
        if let SectionData::Relocation(relocs) = &mut s.data {
            symtab = symtab.or(s.sh_link_section);
            let Some(target) = target else { continue };
            let home = names.get(&target.index()).and_then(|n| home_of(n));
            relocs.retain(
                |r| match r.symbol.and_then(|id| object_of.get(&id.index())) {
                    Some(object) => {
                        // vmlinux's symbols are applied with vmlinux; a
                        // module's own with that module; another module's
                        // with the module whose code refers to it.
                        let rela_object = match &home {
                            Some(h) if object != VMLINUX && object != h => h.clone(),
                            _ => object.clone(),
                        };
                        if home.is_none() && object != VMLINUX && !is_patched(object) {
                            misplaced.get_or_insert_with(|| object.clone());
                        }
                        moved
                            .entry((rela_object, target.index()))
                            .or_insert_with(|| (target, Vec::new()))
                            .1
                            .push(*r);
                        false
                    }
                    None => true,
                },
            );
        }
    }
    if let Some(object) = misplaced {
        return Err(err(format!(
            "a reference to {object}'s symbols from a section graft cannot attribute to a patched module"
        )));
    }
    let count = moved.values().map(|(_, r)| r.len()).sum();
    for ((object, _), (target, relocs)) in moved {
        let target_name =
            String::from_utf8_lossy(b.sections.get(target).name.as_slice()).into_owned();
        let s = b.sections.add();
        s.name = rela_name(&object, &target_name).into_bytes().into();
        s.sh_type = elf::SHT_RELA;
        s.sh_flags =
            elf::SectionFlags(elf::SHF_ALLOC.0 | elf::SHF_INFO_LINK.0 | SHF_RELA_LIVEPATCH);
        s.sh_addralign = 8;
        s.sh_entsize = 24;
        s.sh_link_section = symtab;
        s.sh_info_section = Some(target);
        s.data = SectionData::Relocation(relocs);
    }
    // Empty .rela sections left behind are dropped.
    for s in &mut b.sections {
        if let SectionData::Relocation(r) = &s.data {
            if r.is_empty() && s.sh_flags.0 & SHF_RELA_LIVEPATCH == 0 {
                s.delete = true;
            }
        }
    }
    let mut out = Vec::new();
    b.write(&mut out).map_err(|e| err(e.to_string()))?;
    Ok((out, count))
}

/// The modules (klp objects other than vmlinux) a livepatch module has
/// `.klp.rela.*` sections for, sorted.
pub fn relocated_objects(ko: &[u8]) -> Vec<String> {
    let Ok(o) = crate::Object::parse(ko, std::path::Path::new("module")) else {
        return Vec::new();
    };
    let mut v: Vec<String> = o
        .sections
        .iter()
        .filter_map(|s| {
            let (object, _) = s.name.strip_prefix(RELA_PREFIX)?.split_once('.')?;
            (object != VMLINUX).then(|| object.to_owned())
        })
        .collect();
    v.sort();
    v.dedup();
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sym_name_round_trips() {
        let n = sym_name(VMLINUX, "saved_command_line", 0);
        assert_eq!(n, ".klp.sym.vmlinux.saved_command_line,0");
        assert_eq!(
            parse_sym_name(&n),
            Some(("vmlinux", "saved_command_line", 0))
        );
        assert_eq!(
            parse_sym_name(".klp.sym.ext4.foo.isra.0,2"),
            Some(("ext4", "foo.isra.0", 2))
        );
        assert_eq!(parse_sym_name(".klp.sym.vmlinux.nopos"), None);
    }

    /// A "linked module": code calling a vmlinux symbol, a module symbol
    /// and another module's, each through a klp symbol, plus an ordinary
    /// undefined one.
    fn linked_module() -> Vec<u8> {
        use crate::write::{Contents, OutReloc, SectionSpec, Writer};
        use crate::{Binding, SymKind};
        let mut w = Writer::new();
        let text = w.add_section(
            &SectionSpec::progbits(".text.f", 0x6, 16),
            Contents::Bytes(vec![
                0xe8, 0, 0, 0, 0, 0xe8, 0, 0, 0, 0, 0xe8, 0, 0, 0, 0, 0xe8, 0, 0, 0, 0, 0xc3,
            ]),
        );
        w.add_symbol("f", Some(text), 0, 21, Binding::Local, SymKind::Func, 0);
        let targets = [
            w.add_undefined(".klp.sym.vmlinux.saved_command_line,0"),
            w.add_undefined(".klp.sym.binfmt_misc.bm_entry,2"),
            w.add_undefined(".klp.sym.af_alg.af_alg_sendmsg,0"),
            w.add_undefined("printk"),
        ];
        let relocs: Vec<OutReloc> = targets
            .iter()
            .enumerate()
            .map(|(i, &symbol)| OutReloc {
                offset: 1 + 5 * i as u64,
                r_type: 4,
                symbol,
                addend: -4,
            })
            .collect();
        w.add_relocations(text, &relocs);
        w.write().unwrap()
    }

    #[test]
    fn klp_relocations_go_to_the_object_that_applies_them() {
        let ko = linked_module();
        let (out, moved) = convert_module(
            &ko,
            "t.ko",
            &|sec: &str| (sec == ".text.f").then(|| "binfmt_misc".to_owned()),
            &|o: &str| o == "binfmt_misc",
        )
        .unwrap();
        assert_eq!(moved, 3);
        let o = crate::Object::parse(&out, std::path::Path::new("t.ko")).unwrap();
        let names: Vec<&str> = o
            .sections
            .iter()
            .filter(|s| s.flags & SHF_RELA_LIVEPATCH != 0)
            .map(|s| s.name.as_str())
            .collect();
        // vmlinux's with vmlinux; the module's own and af_alg's (which the
        // patched module depends on) with binfmt_misc.
        assert_eq!(
            names,
            vec![".klp.rela.binfmt_misc..text.f", ".klp.rela.vmlinux..text.f"]
        );
        for s in o
            .sections
            .iter()
            .filter(|s| s.flags & SHF_RELA_LIVEPATCH != 0)
        {
            assert!(s.flags & 0x2 != 0, "{} is not SHF_ALLOC", s.name);
        }
        for y in o.symbols.iter().filter(|y| y.name.starts_with(SYM_PREFIX)) {
            assert_eq!(y.shndx, SHN_LIVEPATCH, "{}", y.name);
        }
        // The ordinary reference stays an ordinary relocation.
        let text = o.section_by_name(".text.f").unwrap();
        assert_eq!(text.relocs.len(), 1);
        assert_eq!(o.symbol(text.relocs[0].symbol).name, "printk");
        assert_eq!(relocated_objects(&out), vec!["binfmt_misc"]);
    }

    #[test]
    fn a_defined_klp_symbol_or_an_unattributed_reference_is_an_error() {
        let ko = linked_module();
        // af_alg's symbol from a section no patched module owns.
        let e = convert_module(&ko, "t.ko", &|_| None, &|o: &str| o == "binfmt_misc").unwrap_err();
        assert!(e.to_string().contains("af_alg"), "{e}");
    }
}
