//! Owned model of a relocatable ELF object.

use std::path::{Path, PathBuf};

use object::elf;
use object::read::elf::{FileHeader, Rela, SectionHeader, Sym};
use object::Endianness;

/// Index of a section in its object's section header table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SectionId(pub usize);

/// Index of a symbol in its object's `.symtab`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SymbolId(pub usize);

#[derive(Debug, thiserror::Error)]
pub enum ElfError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: not an ELF file")]
    NotElf { path: PathBuf },
    #[error("{path}: unsupported ELF ({what}); graft handles 64-bit little-endian x86-64 relocatable objects")]
    Unsupported { path: PathBuf, what: String },
    #[error("{path}: malformed ELF: {what}")]
    Malformed { path: PathBuf, what: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SymKind {
    NoType,
    Object,
    Func,
    Section,
    File,
    Other(u8),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Binding {
    Local,
    Global,
    Weak,
    Other(u8),
}

#[derive(Debug, Clone)]
pub struct Symbol {
    pub id: SymbolId,
    pub name: String,
    pub kind: SymKind,
    pub binding: Binding,
    /// The defining section; `None` for undefined, absolute and special symbols.
    pub section: Option<SectionId>,
    /// Raw `st_shndx`, for the special values (`SHN_UNDEF`, `SHN_ABS`, `SHN_LIVEPATCH`).
    pub shndx: u16,
    pub value: u64,
    pub size: u64,
    pub other: u8,
}

impl Symbol {
    pub fn is_undefined(&self) -> bool {
        self.shndx == 0 && self.kind != SymKind::File
    }
    pub fn is_global(&self) -> bool {
        matches!(self.binding, Binding::Global | Binding::Weak)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reloc {
    pub offset: u64,
    pub r_type: u32,
    pub symbol: SymbolId,
    pub addend: i64,
}

#[derive(Debug, Clone)]
pub struct Section {
    pub id: SectionId,
    pub name: String,
    pub sh_type: u32,
    pub flags: u64,
    pub align: u64,
    pub entsize: u64,
    pub size: u64,
    /// File contents; empty for `SHT_NOBITS`.
    pub data: Vec<u8>,
    /// Relocations applied to this section (from its `.rela` section), sorted by offset.
    pub relocs: Vec<Reloc>,
    /// The `.rela` section holding `relocs`, if any.
    pub rela: Option<SectionId>,
}

impl Section {
    pub fn is_alloc(&self) -> bool {
        self.flags & elf::SHF_ALLOC.0 != 0
    }
    pub fn is_exec(&self) -> bool {
        self.flags & elf::SHF_EXECINSTR.0 != 0
    }
    pub fn is_nobits(&self) -> bool {
        self.sh_type == elf::SHT_NOBITS.0
    }
    pub fn is_rela(&self) -> bool {
        self.sh_type == elf::SHT_RELA.0
    }
    /// Relocations whose field starts in `[start, end)`.
    pub fn relocs_in(&self, start: u64, end: u64) -> &[Reloc] {
        let lo = self.relocs.partition_point(|r| r.offset < start);
        // An empty range when `end <= start` (a symbol past its section's
        // end in a malformed object), never a panic.
        let hi = self.relocs.partition_point(|r| r.offset < end).max(lo);
        &self.relocs[lo..hi]
    }
}

/// Where a relocation really points.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelocTarget {
    /// A named symbol (function, object, or undefined external).
    Symbol(SymbolId),
    /// An offset inside a section, reached through its section symbol.
    SectionOffset(SectionId, i64),
}

/// A parsed relocatable object.
#[derive(Debug, Clone)]
pub struct Object {
    pub path: PathBuf,
    /// Indexed by `SectionId`; index 0 is the null section.
    pub sections: Vec<Section>,
    /// Indexed by `SymbolId`; index 0 is the null symbol.
    pub symbols: Vec<Symbol>,
}

impl Object {
    pub fn read(path: &Path) -> Result<Object, ElfError> {
        let data = std::fs::read(path).map_err(|source| ElfError::Io {
            path: path.to_owned(),
            source,
        })?;
        Object::parse(&data, path)
    }

    pub fn parse(data: &[u8], path: &Path) -> Result<Object, ElfError> {
        let malformed = |what: &dyn std::fmt::Display| ElfError::Malformed {
            path: path.to_owned(),
            what: what.to_string(),
        };
        let (header, endian) = parse_header(data, path)?;
        let table = header.sections(endian, data).map_err(|e| malformed(&e))?;
        let mut sections = read_sections(&table, endian, data, path)?;
        let symbols = read_symbols(&table, endian, data, path, &sections)?;
        read_relocations(&table, endian, data, path, &mut sections, symbols.len())?;
        Ok(Object {
            path: path.to_owned(),
            sections,
            symbols,
        })
    }

    pub fn section(&self, id: SectionId) -> &Section {
        &self.sections[id.0]
    }

    pub fn symbol(&self, id: SymbolId) -> &Symbol {
        &self.symbols[id.0]
    }

    pub fn section_by_name(&self, name: &str) -> Option<&Section> {
        self.sections.iter().find(|s| s.name == name)
    }

    /// Named symbols (functions, objects, untyped labels) defined in `section`.
    pub fn symbols_in(&self, section: SectionId) -> impl Iterator<Item = &Symbol> {
        self.symbols.iter().filter(move |s| {
            s.section == Some(section) && !matches!(s.kind, SymKind::Section | SymKind::File)
        })
    }

    /// Function symbols defined in this object.
    pub fn functions(&self) -> impl Iterator<Item = &Symbol> {
        self.symbols
            .iter()
            .filter(|s| s.kind == SymKind::Func && s.section.is_some())
    }

    /// Data object symbols defined in this object.
    pub fn data_objects(&self) -> impl Iterator<Item = &Symbol> {
        self.symbols
            .iter()
            .filter(|s| s.kind == SymKind::Object && s.section.is_some())
    }

    /// Where `reloc` points: a symbol, or a section offset for references
    /// made through section symbols (gas turns most references to local
    /// symbols into those).
    pub fn reloc_target(&self, reloc: &Reloc) -> RelocTarget {
        let sym = self.symbol(reloc.symbol);
        match (sym.kind, sym.section) {
            (SymKind::Section, Some(sec)) => {
                RelocTarget::SectionOffset(sec, (sym.value as i64).wrapping_add(reloc.addend))
            }
            _ => RelocTarget::Symbol(reloc.symbol),
        }
    }

    /// The named symbol of `section` that covers `offset`, or the only one
    /// the section has (one symbol per section under -ffunction-sections
    /// -fdata-sections).
    pub fn symbol_covering(&self, section: SectionId, offset: i64) -> Option<&Symbol> {
        let mut only = None;
        let mut count = 0;
        for s in self.symbols_in(section) {
            count += 1;
            only = Some(s);
            let start = s.value as i64;
            if offset >= start && offset < start.saturating_add(s.size.max(1) as i64) {
                return Some(s);
            }
        }
        if count == 1 {
            only
        } else {
            None
        }
    }
}

type Elf64 = elf::FileHeader64<Endianness>;
type SectionTable<'d> = object::read::elf::SectionTable<'d, Elf64>;

fn malformed_at(path: &Path) -> impl Fn(&dyn std::fmt::Display) -> ElfError + '_ {
    move |what| ElfError::Malformed {
        path: path.to_owned(),
        what: what.to_string(),
    }
}

/// The ELF header of a 64-bit little-endian x86-64 relocatable object.
fn parse_header<'d>(data: &'d [u8], path: &Path) -> Result<(&'d Elf64, Endianness), ElfError> {
    let malformed = malformed_at(path);
    if data.len() < 16 || &data[..4] != b"\x7fELF" {
        return Err(ElfError::NotElf {
            path: path.to_owned(),
        });
    }
    if data[4] != elf::ELFCLASS64.0 || data[5] != elf::ELFDATA2LSB.0 {
        return Err(ElfError::Unsupported {
            path: path.to_owned(),
            what: "not 64-bit little-endian".into(),
        });
    }
    let header = elf::FileHeader64::<Endianness>::parse(data).map_err(|e| malformed(&e))?;
    let endian = header.endian().map_err(|e| malformed(&e))?;
    if header.e_machine(endian) != elf::EM_X86_64 {
        return Err(ElfError::Unsupported {
            path: path.to_owned(),
            what: format!("machine {}", header.e_machine(endian).0),
        });
    }
    if header.e_type(endian) != elf::ET_REL {
        return Err(ElfError::Unsupported {
            path: path.to_owned(),
            what: "not a relocatable object".into(),
        });
    }
    Ok((header, endian))
}

fn read_sections(
    table: &SectionTable<'_>,
    endian: Endianness,
    data: &[u8],
    path: &Path,
) -> Result<Vec<Section>, ElfError> {
    let malformed = malformed_at(path);
    let mut sections = Vec::with_capacity(table.len());
    for (index, sh) in table.enumerate() {
        let name = table.section_name(endian, sh).map_err(|e| malformed(&e))?;
        let nobits = sh.sh_type(endian) == elf::SHT_NOBITS;
        let bytes = if nobits || index.0 == 0 {
            &[][..]
        } else {
            sh.data(endian, data).map_err(|e| {
                malformed(&format_args!(
                    "section {}: {e}",
                    String::from_utf8_lossy(name)
                ))
            })?
        };
        sections.push(Section {
            id: SectionId(index.0),
            name: String::from_utf8_lossy(name).into_owned(),
            sh_type: sh.sh_type(endian).0,
            flags: sh.sh_flags(endian).0,
            align: sh.sh_addralign(endian),
            entsize: sh.sh_entsize(endian),
            size: sh.sh_size(endian),
            data: bytes.to_vec(),
            relocs: Vec::new(),
            rela: None,
        });
    }

    Ok(sections)
}

fn read_symbols(
    table: &SectionTable<'_>,
    endian: Endianness,
    data: &[u8],
    path: &Path,
    sections: &[Section],
) -> Result<Vec<Symbol>, ElfError> {
    let malformed = malformed_at(path);
    let symtab = table
        .symbols(endian, data, elf::SHT_SYMTAB)
        .map_err(|e| malformed(&e))?;
    let mut symbols = Vec::with_capacity(symtab.len());
    for (index, sym) in symtab.enumerate() {
        let name = symtab.symbol_name(endian, sym).map_err(|e| malformed(&e))?;
        let section = symtab
            .symbol_section(endian, sym, index)
            .map_err(|e| malformed(&e))?
            .map(|s| SectionId(s.0));
        if let Some(s) = section {
            if s.0 >= sections.len() {
                return Err(malformed(&format_args!(
                    "symbol {index} names section {} of {}",
                    s.0,
                    sections.len()
                )));
            }
        }
        let kind = match sym.st_type() {
            elf::STT_NOTYPE => SymKind::NoType,
            elf::STT_OBJECT => SymKind::Object,
            elf::STT_FUNC => SymKind::Func,
            elf::STT_SECTION => SymKind::Section,
            elf::STT_FILE => SymKind::File,
            other => SymKind::Other(other.0),
        };
        let binding = match sym.st_bind() {
            elf::STB_LOCAL => Binding::Local,
            elf::STB_GLOBAL => Binding::Global,
            elf::STB_WEAK => Binding::Weak,
            other => Binding::Other(other.0),
        };
        let mut name = String::from_utf8_lossy(name).into_owned();
        if kind == SymKind::Section {
            if let Some(s) = section {
                name = sections[s.0].name.clone();
            }
        }
        symbols.push(Symbol {
            id: SymbolId(index.0),
            name,
            kind,
            binding,
            section,
            shndx: sym.st_shndx(endian).0,
            value: sym.st_value(endian),
            size: sym.st_size(endian),
            other: sym.st_other().0,
        });
    }

    Ok(symbols)
}

/// Each section's relocations, from its `.rela` sections (but livepatch's).
fn read_relocations(
    table: &SectionTable<'_>,
    endian: Endianness,
    data: &[u8],
    path: &Path,
    sections: &mut [Section],
    nsymbols: usize,
) -> Result<(), ElfError> {
    let malformed = malformed_at(path);
    for (index, sh) in table.enumerate() {
        // livepatch's own relocation sections are not the linker's or the
        // loader's: they are applied later, by livepatch, and are read as
        // sections (graft-elf's klp module), not as the target's relocations.
        if sh.sh_type(endian) != elf::SHT_RELA
            || sh.sh_flags(endian).0 & crate::klp::SHF_RELA_LIVEPATCH != 0
        {
            continue;
        }
        let target = sh.sh_info(endian) as usize;
        if target == 0 || target >= sections.len() {
            return Err(malformed(&format_args!(
                "relocation section {} targets section {target}",
                sections[index.0].name
            )));
        }
        let relas = sh
            .data_as_array::<elf::Rela64<Endianness>, _>(endian, data)
            .map_err(|e| malformed(&e))?;
        let mut relocs = Vec::with_capacity(relas.len());
        for rela in relas {
            let sym = rela.r_sym(endian, false) as usize;
            if sym >= nsymbols {
                return Err(malformed(&format_args!(
                    "relocation in {} names symbol {sym} of {}",
                    sections[index.0].name, nsymbols
                )));
            }
            relocs.push(Reloc {
                offset: rela.r_offset(endian),
                r_type: rela.r_type(endian, false).0,
                symbol: SymbolId(sym),
                addend: rela.r_addend(endian),
            });
        }
        let t = &mut sections[target];
        // A target may have more than one relocation section.
        t.relocs.extend(relocs);
        t.relocs.sort_by_key(|r| r.offset);
        t.rela = Some(SectionId(index.0));
    }

    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An object with `.text` holding relocations at `offsets` against its
    /// section symbol, the way gas writes references to local symbols.
    fn with_relocs(offsets: &[u64]) -> Object {
        use object::write;
        let mut o = write::Object::new(
            object::BinaryFormat::Elf,
            object::Architecture::X86_64,
            object::Endianness::Little,
        );
        let text = o.add_section(Vec::new(), b".text".to_vec(), object::SectionKind::Text);
        o.append_section_data(text, &[0x90; 32], 16);
        let sym = o.section_symbol(text);
        for &offset in offsets {
            o.add_relocation(
                text,
                write::Relocation {
                    offset,
                    symbol: sym,
                    addend: 0,
                    flags: object::RelocationFlags::Elf {
                        r_type: elf::R_X86_64_64,
                    },
                },
            )
            .unwrap();
        }
        Object::parse(&o.write().unwrap(), Path::new("r.o")).unwrap()
    }

    /// Found by fuzzing (4b2203f): a malformed symbol past its section's end
    /// asks for the relocations of `[start, end)` with `end < start`.
    #[test]
    fn relocs_in_an_inverted_range_is_empty() {
        let o = with_relocs(&[0, 5, 9]);
        let text = o.section_by_name(".text").unwrap();
        assert_eq!(text.relocs_in(0, 32).len(), 3);
        assert!(text.relocs_in(8, 4).is_empty());
        assert!(text.relocs_in(u64::MAX, 0).is_empty());
    }

    /// Found by fuzzing (bde5857): a section symbol's value plus the addend
    /// wraps (the overflow-checked test pass would panic otherwise).
    #[test]
    fn section_offset_of_a_huge_value_wraps() {
        let mut o = with_relocs(&[0]);
        let text = o.section_by_name(".text").unwrap();
        let r = text.relocs[0];
        o.symbols[r.symbol.0].value = i64::MAX as u64;
        let r = Reloc { addend: 2, ..r };
        let RelocTarget::SectionOffset(_, off) = o.reloc_target(&r) else {
            panic!("not a section offset")
        };
        assert_eq!(off, i64::MIN + 1);
    }

    /// A symbol at the top of the offset range: its end saturates.
    #[test]
    fn covering_symbol_at_the_top_of_the_range() {
        let mut o = with_relocs(&[]);
        let text = o.section_by_name(".text").unwrap().id;
        let id = SymbolId(o.symbols.len());
        o.symbols.push(Symbol {
            id,
            name: "f".into(),
            kind: SymKind::Func,
            binding: Binding::Local,
            section: Some(text),
            shndx: text.0 as u16,
            value: i64::MAX as u64 - 1,
            size: 16,
            other: 0,
        });
        let s = o.symbol_covering(text, i64::MAX - 1).map(|s| s.id);
        assert_eq!(s, Some(id));
    }

    #[test]
    fn rejects_non_elf_and_truncated_input() {
        let p = Path::new("x.o");
        assert!(matches!(
            Object::parse(b"hello", p),
            Err(ElfError::NotElf { .. })
        ));
        let mut hdr = b"\x7fELF\x02\x01\x01".to_vec();
        hdr.resize(40, 0);
        assert!(matches!(
            Object::parse(&hdr, p),
            Err(ElfError::Malformed { .. })
        ));
        let mut be = b"\x7fELF\x02\x02\x01".to_vec();
        be.resize(64, 0);
        assert!(matches!(
            Object::parse(&be, p),
            Err(ElfError::Unsupported { .. })
        ));
    }
}
