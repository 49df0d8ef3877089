//! Reading a linked kernel (`vmlinux`, as decompressed from a boot image):
//! its sections by address and file range, and its symbols, when it still
//! has a symbol table.

use std::path::Path;

use object::read::elf::{ElfFile64, SectionHeader as _};
use object::{Endianness, Object, ObjectSection, ObjectSymbol};

use crate::model::{Binding, ElfError, SymKind};

/// A section of a linked ELF file.
#[derive(Debug, Clone)]
pub struct ExecSection {
    pub name: String,
    pub address: u64,
    /// Offset and size of its bytes in the file; `None` for `SHT_NOBITS`.
    pub file_range: Option<(u64, u64)>,
    pub flags: u64,
}

impl ExecSection {
    pub fn is_exec(&self) -> bool {
        self.flags & 0x4 != 0
    }
    pub fn is_writable(&self) -> bool {
        self.flags & 0x1 != 0
    }
}

/// A symbol of a linked ELF file.
#[derive(Debug, Clone)]
pub struct ExecSymbol {
    pub name: String,
    pub address: u64,
    pub size: u64,
    pub kind: SymKind,
    pub binding: Binding,
    /// Index into [`Executable::sections`].
    pub section: Option<usize>,
}

#[derive(Debug, Clone)]
pub struct Executable {
    pub sections: Vec<ExecSection>,
    pub symbols: Vec<ExecSymbol>,
}

impl Executable {
    /// Parses the 64-bit ELF `data` (from `path`, for errors).
    pub fn parse(data: &[u8], path: &Path) -> Result<Executable, ElfError> {
        let bad = |what: String| ElfError::Malformed {
            path: path.to_owned(),
            what,
        };
        if !data.starts_with(b"\x7fELF") {
            return Err(ElfError::NotElf {
                path: path.to_owned(),
            });
        }
        let file = ElfFile64::<Endianness>::parse(data).map_err(|e| bad(e.to_string()))?;
        let mut sections = Vec::new();
        let mut index_of = std::collections::HashMap::new();
        for s in file.sections() {
            let header = s.elf_section_header();
            let nobits = header.sh_type(file.endian()) == object::elf::SHT_NOBITS;
            let file_range = if nobits {
                None
            } else {
                match s.file_range() {
                    Some((off, size)) => {
                        if off
                            .checked_add(size)
                            .is_none_or(|end| end > data.len() as u64)
                        {
                            return Err(bad(format!(
                                "section {} lies outside the file",
                                s.name().unwrap_or("?")
                            )));
                        }
                        Some((off, size))
                    }
                    None => None,
                }
            };
            index_of.insert(s.index().0, sections.len());
            sections.push(ExecSection {
                name: s.name().unwrap_or_default().to_owned(),
                address: s.address(),
                file_range,
                flags: header.sh_flags(file.endian()).0,
            });
        }
        let symbols = file
            .symbols()
            .filter_map(|s| {
                let raw = s.elf_symbol();
                let kind = match raw.st_type() {
                    object::elf::STT_NOTYPE => SymKind::NoType,
                    object::elf::STT_OBJECT => SymKind::Object,
                    object::elf::STT_FUNC => SymKind::Func,
                    object::elf::STT_SECTION => SymKind::Section,
                    object::elf::STT_FILE => SymKind::File,
                    t => SymKind::Other(t.0),
                };
                let binding = match raw.st_bind() {
                    object::elf::STB_LOCAL => Binding::Local,
                    object::elf::STB_GLOBAL => Binding::Global,
                    object::elf::STB_WEAK => Binding::Weak,
                    b => Binding::Other(b.0),
                };
                Some(ExecSymbol {
                    name: s.name().ok()?.to_owned(),
                    address: s.address(),
                    size: s.size(),
                    kind,
                    binding,
                    section: s.section_index().and_then(|i| index_of.get(&i.0).copied()),
                })
            })
            .collect();
        Ok(Executable { sections, symbols })
    }
}
