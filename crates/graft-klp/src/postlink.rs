//! After kbuild links the module: every relocation against a `.klp.sym.*`
//! symbol moves into a `.klp.rela.<object>.<section>` section that livepatch
//! applies itself, and those symbols get `SHN_LIVEPATCH`, so that the module
//! loader leaves them alone (see the kernel's module-elf-format.rst).

use std::collections::{BTreeMap, HashMap};

use object::build::elf::{Builder, Relocation, SectionData, SectionId};
use object::build::Id;
use object::elf;

use graft_elf::klp;

use crate::KlpError;

/// Converts the linked module in `ko`; returns the new bytes and how many
/// relocations became klp relocations.
/// `objects` names the klp object of each carried section whose code is a
/// module's: a reference from there to another module's symbol (an export
/// of a module the patched one depends on) is applied with that module's
/// relocations, so it goes in a `.klp.rela.<patched module>.*` section.
pub fn convert(
    ko: &[u8],
    label: &str,
    objects: &HashMap<String, String>,
) -> Result<(Vec<u8>, usize), KlpError> {
    let err = |what: String| KlpError::PostLink {
        path: label.to_owned(),
        what,
    };
    let mut b = Builder::read(ko).map_err(|e| err(e.to_string()))?;

    // Symbol index → the klp object it belongs to.
    let mut object_of: HashMap<usize, String> = HashMap::new();
    for s in &mut b.symbols {
        let name = String::from_utf8_lossy(s.name.as_slice()).into_owned();
        if let Some((object, _, _)) = klp::parse_sym_name(&name) {
            if s.section.is_some() || s.st_shndx != elf::SHN_UNDEF {
                return Err(err(format!("{name} is defined in the module")));
            }
            s.st_shndx = elf::SymbolSection(klp::SHN_LIVEPATCH);
            object_of.insert(s.id().index(), object.to_owned());
        } else if name.starts_with(klp::SYM_PREFIX) {
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
            let home = names.get(&target.index()).and_then(|n| objects.get(n));
            relocs.retain(
                |r| match r.symbol.and_then(|id| object_of.get(&id.index())) {
                    Some(object) => {
                        // vmlinux's symbols are applied with vmlinux; a
                        // module's own with that module; another module's
                        // with the module whose code refers to it.
                        let rela_object = match home {
                            Some(h) if object != klp::VMLINUX && object != h => h.clone(),
                            _ => object.clone(),
                        };
                        if home.is_none()
                            && object != klp::VMLINUX
                            && !objects.values().any(|o| o == object)
                        {
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
        s.name = klp::rela_name(&object, &target_name).into_bytes().into();
        s.sh_type = elf::SHT_RELA;
        s.sh_flags =
            elf::SectionFlags(elf::SHF_ALLOC.0 | elf::SHF_INFO_LINK.0 | klp::SHF_RELA_LIVEPATCH);
        s.sh_addralign = 8;
        s.sh_entsize = 24;
        s.sh_link_section = symtab;
        s.sh_info_section = Some(target);
        s.data = SectionData::Relocation(relocs);
    }
    // Empty .rela sections left behind are dropped.
    for s in &mut b.sections {
        if let SectionData::Relocation(r) = &s.data {
            if r.is_empty() && s.sh_flags.0 & klp::SHF_RELA_LIVEPATCH == 0 {
                s.delete = true;
            }
        }
    }
    let mut out = Vec::new();
    b.write(&mut out).map_err(|e| err(e.to_string()))?;
    Ok((out, count))
}

/// The modules (klp objects other than vmlinux) that a converted module has
/// klp relocations for, sorted: the ones livepatch writes into the patch
/// each time that module loads.
pub fn module_objects(ko: &[u8]) -> Vec<String> {
    use object::{Object, ObjectSection};
    let Ok(file) = object::File::parse(ko) else {
        return Vec::new();
    };
    let mut v: Vec<String> = file
        .sections()
        .filter_map(|s| {
            let name = s.name().ok()?;
            let (object, _) = name.strip_prefix(klp::RELA_PREFIX)?.split_once('.')?;
            (object != klp::VMLINUX).then(|| object.to_owned())
        })
        .collect();
    v.sort();
    v.dedup();
    v
}
