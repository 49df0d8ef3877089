//! Writing relocatable x86-64 objects: sections, symbols and relocations
//! in, ELF bytes out (the patch objects graft links into a module, and the
//! small objects tests make). Built on the `object` crate's builder, which
//! only this crate uses.

use object::build::elf::{Builder, Relocation, SectionData, SectionId, SymbolId};
use object::elf;
use object::Endianness;

use crate::model::{Binding, ElfError, SymKind};

/// A section of the object being written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutSection(SectionId);

/// A symbol of the object being written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutSymbol(SymbolId);

/// What a new section holds.
#[derive(Debug, Clone)]
pub enum Contents {
    Bytes(Vec<u8>),
    /// `SHT_NOBITS` of this size (`.bss`).
    Nobits(u64),
}

/// A section's header fields.
#[derive(Debug, Clone)]
pub struct SectionSpec {
    pub name: String,
    pub sh_type: u32,
    pub flags: u64,
    pub align: u64,
    pub entsize: u64,
}

impl SectionSpec {
    /// A `PROGBITS` section with `flags` (`SHF_ALLOC`, `SHF_EXECINSTR`…).
    pub fn progbits(name: &str, flags: u64, align: u64) -> SectionSpec {
        SectionSpec {
            name: name.to_owned(),
            sh_type: elf::SHT_PROGBITS.0,
            flags,
            align,
            entsize: 0,
        }
    }
}

/// One relocation to write: at `offset` of its section, against `symbol`.
#[derive(Debug, Clone, Copy)]
pub struct OutReloc {
    pub offset: u64,
    pub r_type: u32,
    pub symbol: OutSymbol,
    pub addend: i64,
}

pub struct Writer {
    b: Builder<'static>,
    symtab: SectionId,
}

impl Default for Writer {
    fn default() -> Self {
        Self::new()
    }
}

impl Writer {
    /// An empty x86-64 relocatable object.
    pub fn new() -> Writer {
        let mut b = Builder::new(Endianness::Little, true);
        b.header.e_type = elf::ET_REL;
        b.header.e_machine = elf::EM_X86_64;
        let strtab = meta(&mut b, ".strtab", elf::SHT_STRTAB, SectionData::String);
        let symtab = meta(&mut b, ".symtab", elf::SHT_SYMTAB, SectionData::Symbol);
        {
            let s = b.sections.get_mut(symtab);
            s.sh_link_section = Some(strtab);
            s.sh_addralign = 8;
            s.sh_entsize = 24;
        }
        meta(
            &mut b,
            ".shstrtab",
            elf::SHT_STRTAB,
            SectionData::SectionString,
        );
        Writer { b, symtab }
    }

    pub fn add_section(&mut self, spec: &SectionSpec, contents: Contents) -> OutSection {
        let o = self.b.sections.add();
        o.name = spec.name.clone().into_bytes().into();
        o.sh_type = elf::SectionType(spec.sh_type);
        o.sh_flags = elf::SectionFlags(spec.flags);
        o.sh_addralign = spec.align.max(1);
        o.sh_entsize = spec.entsize;
        o.data = match contents {
            Contents::Bytes(d) => SectionData::Data(d.into()),
            Contents::Nobits(n) => SectionData::UninitializedData(n),
        };
        OutSection(o.id())
    }

    /// The section's name, as written.
    pub fn section_name(&self, s: OutSection) -> String {
        String::from_utf8_lossy(self.b.sections.get(s.0).name.as_slice()).into_owned()
    }

    /// The local `STT_SECTION` symbol of `s`.
    pub fn section_symbol(&mut self, s: OutSection) -> OutSymbol {
        let o = self.b.symbols.add();
        o.section = Some(s.0);
        o.set_st_info(elf::STB_LOCAL, elf::STT_SECTION);
        OutSymbol(o.id())
    }

    /// A symbol defined in `section` at `value` (absent: undefined).
    #[allow(clippy::too_many_arguments)]
    pub fn add_symbol(
        &mut self,
        name: &str,
        section: Option<OutSection>,
        value: u64,
        size: u64,
        binding: Binding,
        kind: SymKind,
        other: u8,
    ) -> OutSymbol {
        let o = self.b.symbols.add();
        o.name = name.as_bytes().to_vec().into();
        o.section = section.map(|s| s.0);
        o.st_info = elf::SymbolInfo((bind_of(binding) << 4) | type_of(kind));
        o.st_other = elf::SymbolOther(other);
        o.st_value = value;
        o.st_size = size;
        OutSymbol(o.id())
    }

    /// An undefined global symbol, resolved by the linker or the loader.
    pub fn add_undefined(&mut self, name: &str) -> OutSymbol {
        self.add_symbol(name, None, 0, 0, Binding::Global, SymKind::NoType, 0)
    }

    /// The `.rela<name>` section of `target`.
    pub fn add_relocations(&mut self, target: OutSection, relocs: &[OutReloc]) {
        if relocs.is_empty() {
            return;
        }
        let name = format!(".rela{}", self.section_name(target));
        let s = self.b.sections.add();
        s.name = name.into_bytes().into();
        s.sh_type = elf::SHT_RELA;
        s.sh_flags = elf::SHF_INFO_LINK;
        s.sh_addralign = 8;
        s.sh_entsize = 24;
        s.sh_link_section = Some(self.symtab);
        s.sh_info_section = Some(target.0);
        s.data = SectionData::Relocation(
            relocs
                .iter()
                .map(|r| Relocation {
                    r_offset: r.offset,
                    symbol: Some(r.symbol.0),
                    r_type: elf::RelocationType(r.r_type),
                    r_addend: r.addend,
                })
                .collect(),
        );
    }

    pub fn write(self) -> Result<Vec<u8>, ElfError> {
        let mut bytes = Vec::new();
        self.b.write(&mut bytes).map_err(|e| ElfError::Malformed {
            path: "(written object)".into(),
            what: e.to_string(),
        })?;
        Ok(bytes)
    }
}

fn meta(
    b: &mut Builder<'_>,
    name: &str,
    sh_type: elf::SectionType,
    data: SectionData<'static>,
) -> SectionId {
    let s = b.sections.add();
    s.name = name.as_bytes().to_vec().into();
    s.sh_type = sh_type;
    s.sh_addralign = 1;
    s.data = data;
    s.id()
}

fn bind_of(b: Binding) -> u8 {
    match b {
        Binding::Local => elf::STB_LOCAL.0,
        Binding::Global => elf::STB_GLOBAL.0,
        Binding::Weak => elf::STB_WEAK.0,
        Binding::Other(x) => x,
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Object;

    #[test]
    fn round_trip_through_the_reader() {
        let mut w = Writer::new();
        let text = w.add_section(
            &SectionSpec::progbits(".text.f", 0x6, 16),
            Contents::Bytes(vec![0xe8, 0, 0, 0, 0, 0xc3]),
        );
        let bss = w.add_section(
            &SectionSpec {
                name: ".bss.x".into(),
                sh_type: 8,
                flags: 0x3,
                align: 8,
                entsize: 0,
            },
            Contents::Nobits(16),
        );
        let f = w.add_symbol("f", Some(text), 0, 6, Binding::Global, SymKind::Func, 0);
        w.add_symbol("x", Some(bss), 8, 8, Binding::Local, SymKind::Object, 0);
        let g = w.add_undefined("g");
        w.add_relocations(
            text,
            &[OutReloc {
                offset: 1,
                r_type: 4,
                symbol: g,
                addend: -4,
            }],
        );
        let _ = f;
        let bytes = w.write().unwrap();
        let o = Object::parse(&bytes, std::path::Path::new("t.o")).unwrap();
        let t = o.section_by_name(".text.f").unwrap();
        assert_eq!(t.data, vec![0xe8, 0, 0, 0, 0, 0xc3]);
        assert_eq!(t.relocs.len(), 1);
        assert_eq!(
            (t.relocs[0].offset, t.relocs[0].r_type, t.relocs[0].addend),
            (1, 4, -4)
        );
        assert_eq!(o.symbol(t.relocs[0].symbol).name, "g");
        assert!(o.symbol(t.relocs[0].symbol).is_undefined());
        let f = o.functions().find(|s| s.name == "f").unwrap();
        assert!(f.is_global() && f.size == 6);
        let x = o.data_objects().find(|s| s.name == "x").unwrap();
        assert_eq!((x.value, x.binding), (8, Binding::Local));
        assert!(o.section_by_name(".bss.x").unwrap().is_nobits());
    }
}
