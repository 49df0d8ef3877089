//! Writes the patch object: the carried sections, the cut-down special
//! sections, their symbols and relocations, as a relocatable ELF that kbuild
//! links with the stub into the module.

use std::collections::HashMap;

use object::build::elf::{
    Builder, Relocation, SectionData, SectionId as OutSection, SymbolId as OutSymbol,
};
use object::elf;
use object::Endianness;

use graft_elf::{SectionId, SymKind, SymbolId};

use crate::include::{Plan, Target};
use crate::special::Filtered;
use crate::KlpError;

/// The patch object's bytes.
pub fn write(plan: &Plan<'_>, specials: &[Filtered]) -> Result<Vec<u8>, KlpError> {
    let obj = plan.patched;
    let mut b = Builder::new(Endianness::Little, true);
    b.header.e_type = elf::ET_REL;
    b.header.e_machine = elf::EM_X86_64;

    let strtab = add_meta(&mut b, ".strtab", elf::SHT_STRTAB, SectionData::String);
    let symtab = add_meta(&mut b, ".symtab", elf::SHT_SYMTAB, SectionData::Symbol);
    {
        let s = b.sections.get_mut(symtab);
        s.sh_link_section = Some(strtab);
        s.sh_addralign = 8;
        s.sh_entsize = 24;
    }
    add_meta(
        &mut b,
        ".shstrtab",
        elf::SHT_STRTAB,
        SectionData::SectionString,
    );

    // Carried sections, each with its section symbol.
    let mut out_sec: HashMap<SectionId, OutSection> = HashMap::new();
    let mut sec_sym: HashMap<SectionId, OutSymbol> = HashMap::new();
    for &id in &plan.sections {
        let s = obj.section(id);
        let data = if s.is_nobits() {
            SectionData::UninitializedData(s.size)
        } else {
            SectionData::Data(s.data.clone().into())
        };
        let o = add_section(&mut b, s, data);
        out_sec.insert(id, o);
        sec_sym.insert(id, add_section_symbol(&mut b, o));
    }

    // Named symbols of carried sections, plus the stub's aliases.
    let mut out_sym: HashMap<SymbolId, OutSymbol> = HashMap::new();
    for s in &obj.symbols {
        let Some(home) = s.section else { continue };
        if !plan.sections.contains(&home) || matches!(s.kind, SymKind::Section | SymKind::File) {
            continue;
        }
        // A function's padding is named by the module link's objtool.
        if graft_diff::prefix::is_padding_symbol(&s.name) && s.kind != SymKind::Func {
            continue;
        }
        let o = b.symbols.add();
        o.name = s.name.clone().into_bytes().into();
        o.section = Some(out_sec[&home]);
        // Local in the module: nothing links to carried code by name (the
        // stub uses the aliases), and a local name sorts before the global
        // alias, so stack traces and oopses show the kernel's name. A global
        // the patch adds stays global: another file of the patch may use it.
        let bind = if s.is_global() && plan.new_globals.contains(&s.id) {
            elf::STB_GLOBAL
        } else {
            elf::STB_LOCAL
        };
        o.st_info = object::elf::SymbolInfo((bind.0 << 4) | type_of(s.kind));
        o.st_other = elf::SymbolOther(s.other);
        o.st_value = s.value;
        o.st_size = s.size;
        out_sym.insert(s.id, o.id());
    }
    for (sym, alias) in &plan.aliases {
        let s = obj.symbol(*sym);
        let o = b.symbols.add();
        o.name = alias.clone().into_bytes().into();
        o.section = Some(out_sec[&s.section.expect("carried")]);
        let kind = if plan.objtool_at_link {
            elf::STT_NOTYPE
        } else {
            elf::STT_FUNC
        };
        o.set_st_info(elf::STB_GLOBAL, kind);
        o.st_value = s.value;
        // objtool takes a sized untyped symbol for code without a function.
        o.st_size = if plan.objtool_at_link { 0 } else { s.size };
    }

    // Relocations of carried sections.
    let mut externals: HashMap<String, OutSymbol> = HashMap::new();
    let mut rela: Vec<(OutSection, Vec<Relocation>)> = Vec::new();
    for &id in &plan.sections {
        let s = obj.section(id);
        let mut out = Vec::with_capacity(s.relocs.len());
        for r in &s.relocs {
            // Relocations without a target lie in pieces nothing carried uses.
            let Some(target) = plan.targets.get(&(id, r.offset)) else {
                continue;
            };
            let (symbol, addend) = match target {
                Target::Symbol(sym, a)
                    if plan.objtool_at_link && obj.symbol(r.symbol).kind == SymKind::Section =>
                {
                    let s = obj.symbol(*sym);
                    let home = s.section.expect("carried symbols are defined");
                    (sec_sym[&home], a.wrapping_add(s.value as i64))
                }
                _ => resolve(&mut b, target, &out_sym, &sec_sym, &mut externals),
            };
            out.push(Relocation {
                r_offset: r.offset,
                symbol: Some(symbol),
                r_type: elf::RelocationType(r.r_type),
                r_addend: addend,
            });
        }
        if !out.is_empty() {
            rela.push((out_sec[&id], out));
        }
    }

    // Special sections: their entries point into carried sections only.
    for f in specials {
        let s = obj.section(f.source);
        let o = add_section(&mut b, s, SectionData::Data(f.data.clone().into()));
        let mut out = Vec::with_capacity(f.relocs.len());
        for &(offset, orig) in &f.relocs {
            let Some(&r) = s.relocs_in(orig, orig + 1).first() else {
                continue;
            };
            let Some(target) = plan.targets.get(&(f.source, orig)) else {
                continue;
            };
            let (symbol, addend) = resolve(&mut b, target, &out_sym, &sec_sym, &mut externals);
            out.push(Relocation {
                r_offset: offset,
                symbol: Some(symbol),
                r_type: elf::RelocationType(r.r_type),
                r_addend: addend,
            });
        }
        if !out.is_empty() {
            rela.push((o, out));
        }
    }

    for (target, relocs) in rela {
        let name = format!(
            ".rela{}",
            String::from_utf8_lossy(b.sections.get(target).name.as_slice())
        );
        let s = b.sections.add();
        s.name = name.into_bytes().into();
        s.sh_type = elf::SHT_RELA;
        s.sh_flags = elf::SHF_INFO_LINK;
        s.sh_addralign = 8;
        s.sh_entsize = 24;
        s.sh_link_section = Some(symtab);
        s.sh_info_section = Some(target);
        s.data = SectionData::Relocation(relocs);
    }

    let mut bytes = Vec::new();
    b.write(&mut bytes)
        .map_err(|e| KlpError::Write(e.to_string()))?;
    Ok(bytes)
}

/// The output symbol and addend of a planned relocation target.
fn resolve(
    b: &mut Builder<'_>,
    target: &Target,
    out_sym: &HashMap<SymbolId, OutSymbol>,
    sec_sym: &HashMap<SectionId, OutSymbol>,
    externals: &mut HashMap<String, OutSymbol>,
) -> (OutSymbol, i64) {
    match target {
        Target::Symbol(sym, addend) => (out_sym[sym], *addend),
        Target::Section(sec, addend) => (sec_sym[sec], *addend),
        Target::External(name, addend) => {
            let sym = *externals
                .entry(name.clone())
                .or_insert_with(|| add_undefined(b, name));
            (sym, *addend)
        }
    }
}

fn add_meta(
    b: &mut Builder<'_>,
    name: &str,
    sh_type: elf::SectionType,
    data: SectionData<'static>,
) -> OutSection {
    let s = b.sections.add();
    s.name = name.as_bytes().to_vec().into();
    s.sh_type = sh_type;
    s.sh_addralign = 1;
    s.data = data;
    s.id()
}

fn add_section(
    b: &mut Builder<'_>,
    s: &graft_elf::Section,
    data: SectionData<'static>,
) -> OutSection {
    let o = b.sections.add();
    o.name = s.name.clone().into_bytes().into();
    o.sh_type = elf::SectionType(s.sh_type);
    o.sh_flags = elf::SectionFlags(s.flags);
    o.sh_addralign = s.align.max(1);
    o.sh_entsize = s.entsize;
    o.data = data;
    o.id()
}

fn add_section_symbol(b: &mut Builder<'_>, section: OutSection) -> OutSymbol {
    let o = b.symbols.add();
    o.section = Some(section);
    o.set_st_info(elf::STB_LOCAL, elf::STT_SECTION);
    o.id()
}

fn add_undefined(b: &mut Builder<'_>, name: &str) -> OutSymbol {
    let o = b.symbols.add();
    o.name = name.as_bytes().to_vec().into();
    o.set_st_info(elf::STB_GLOBAL, elf::STT_NOTYPE);
    o.id()
}

fn type_of(k: SymKind) -> u8 {
    match k {
        SymKind::NoType => elf::STT_NOTYPE.0,
        SymKind::Object => elf::STT_OBJECT.0,
        SymKind::Func => elf::STT_FUNC.0,
        SymKind::Section => elf::STT_SECTION.0,
        SymKind::File => elf::STT_FILE.0,
        SymKind::Other(t) => t,
    }
}
