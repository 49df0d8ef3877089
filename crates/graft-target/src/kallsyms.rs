//! `/proc/kallsyms` format: `<address> <type> <name>[\t[<module>]]`.

use std::collections::HashMap;
use std::path::Path;

use crate::TargetError;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KallsymsEntry {
    pub address: u64,
    /// nm-style type letter: `t`/`T` text, `d`/`D` data, `b`/`B` bss, `r`/`R` rodata…
    pub kind: char,
    pub name: String,
    /// `None` for vmlinux, else the module name.
    pub module: Option<String>,
}

impl KallsymsEntry {
    pub fn is_text(&self) -> bool {
        matches!(self.kind, 't' | 'T' | 'w' | 'W')
    }
}

/// A kernel's symbol table, in kallsyms order (the order that defines sympos).
#[derive(Debug, Clone, Default)]
pub struct SymbolTable {
    entries: Vec<KallsymsEntry>,
    /// (object, name) → indexes into `entries`, in table order.
    by_name: HashMap<(String, String), Vec<usize>>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SymposError {
    #[error("symbol {name} is not in {object}'s symbol table")]
    Missing { object: String, name: String },
    #[error("symbol {name} occurs {} times in {object} (at {}); graft cannot tell which one is meant", addresses.len(), addresses.iter().map(|a| format!("{a:#x}")).collect::<Vec<_>>().join(", "))]
    Ambiguous {
        object: String,
        name: String,
        addresses: Vec<u64>,
    },
}

impl SymbolTable {
    /// Reads a symbol table: a kallsyms dump, a full `System.map`, a
    /// vmlinux ELF with its symbols, or a kernel image (`vmlinuz`, or a
    /// stripped vmlinux), from the kallsyms tables it carries.
    pub fn read(path: &Path) -> Result<SymbolTable, TargetError> {
        let bytes = std::fs::read(path).map_err(|source| TargetError::Io {
            path: path.to_owned(),
            source,
        })?;
        if bytes.starts_with(b"\x7fELF") {
            return match SymbolTable::from_vmlinux(path, &bytes) {
                // A stripped vmlinux still carries kallsyms.
                Err(TargetError::Empty { .. }) => Ok(crate::KernelImage::read(path)?.symbols()?),
                other => other,
            };
        }
        // A boot image: x86's bzImage has its `HdrS` setup header at 0x202.
        if bytes.get(0x202..0x206) == Some(b"HdrS") {
            return Ok(crate::KernelImage::read(path)?.symbols()?);
        }
        let text = String::from_utf8_lossy(&bytes);
        if text.lines().count() <= 2 && text.contains("System.map") {
            return Err(TargetError::StubSystemMap {
                path: path.to_owned(),
            });
        }
        let table = SymbolTable::parse(&text).map_err(|(line, text)| TargetError::Parse {
            path: path.to_owned(),
            line,
            format: "kallsyms",
            text,
        })?;
        if table.entries.is_empty() || table.entries.iter().all(|e| e.address == 0) {
            return Err(TargetError::Empty {
                path: path.to_owned(),
            });
        }
        Ok(table)
    }

    /// The symbols of a vmlinux with a symbol table, in address order (the
    /// order kallsyms lists them in).
    fn from_vmlinux(path: &Path, bytes: &[u8]) -> Result<SymbolTable, TargetError> {
        use graft_elf::SymKind;
        let bad = |what: String| TargetError::Parse {
            path: path.to_owned(),
            line: 0,
            format: "vmlinux",
            text: what,
        };
        let file =
            graft_elf::exec::Executable::parse(bytes, path).map_err(|e| bad(e.to_string()))?;
        let mut entries: Vec<KallsymsEntry> = file
            .symbols
            .iter()
            .filter(|s| {
                matches!(s.kind, SymKind::Func | SymKind::Object | SymKind::NoType)
                    && s.address != 0
            })
            .filter_map(|s| {
                if s.name.is_empty() || s.name.starts_with("__key") {
                    return None;
                }
                let section = s.section.map(|i| &file.sections[i]);
                // The letter nm and kallsyms give by the section's kind.
                let letter = match section {
                    Some(sec) if sec.file_range.is_none() => 'b',
                    Some(sec) if sec.is_exec() => 't',
                    Some(sec) if !sec.is_writable() => 'r',
                    _ => 'd',
                };
                let global = matches!(
                    s.binding,
                    graft_elf::Binding::Global | graft_elf::Binding::Weak
                );
                Some(KallsymsEntry {
                    address: s.address,
                    kind: if global {
                        letter.to_ascii_uppercase()
                    } else {
                        letter
                    },
                    name: s.name.clone(),
                    module: None,
                })
            })
            .collect();
        if entries.is_empty() {
            return Err(TargetError::Empty {
                path: path.to_owned(),
            });
        }
        entries.sort_by_key(|e| e.address);
        let mut table = SymbolTable::default();
        for e in entries {
            table.push(e);
        }
        Ok(table)
    }

    /// Parses kallsyms text; on error returns the 1-based line number and text.
    pub fn parse(text: &str) -> Result<SymbolTable, (usize, String)> {
        let mut table = SymbolTable::default();
        for (n, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let bad = || (n + 1, line.to_owned());
            let (main, module) = match line.split_once('\t') {
                Some((m, rest)) => {
                    let module = rest
                        .trim()
                        .strip_prefix('[')
                        .and_then(|r| r.strip_suffix(']'))
                        .ok_or_else(bad)?;
                    (m, Some(module.to_owned()))
                }
                None => (line, None),
            };
            let mut fields = main.split_whitespace();
            let (Some(addr), Some(kind), Some(name), None) =
                (fields.next(), fields.next(), fields.next(), fields.next())
            else {
                return Err(bad());
            };
            let address = u64::from_str_radix(addr, 16).map_err(|_| bad())?;
            let mut kind_chars = kind.chars();
            let (Some(kind), None) = (kind_chars.next(), kind_chars.next()) else {
                return Err(bad());
            };
            table.push(KallsymsEntry {
                address,
                kind,
                name: name.to_owned(),
                module,
            });
        }
        Ok(table)
    }

    /// A table of `entries`, in the order given (the table order).
    pub fn from_entries(entries: impl IntoIterator<Item = KallsymsEntry>) -> SymbolTable {
        let mut table = SymbolTable::default();
        for e in entries {
            table.push(e);
        }
        table
    }

    pub(crate) fn push_entry(&mut self, entry: KallsymsEntry) {
        self.push(entry);
    }

    /// Forgets every symbol of `module`.
    pub(crate) fn remove_module(&mut self, module: &str) {
        if !self
            .entries
            .iter()
            .any(|e| e.module.as_deref() == Some(module))
        {
            return;
        }
        let kept: Vec<KallsymsEntry> = std::mem::take(&mut self.entries)
            .into_iter()
            .filter(|e| e.module.as_deref() != Some(module))
            .collect();
        self.by_name.clear();
        for e in kept {
            self.push(e);
        }
    }

    fn push(&mut self, entry: KallsymsEntry) {
        let object = entry.module.clone().unwrap_or_else(|| "vmlinux".into());
        self.by_name
            .entry((object, entry.name.clone()))
            .or_default()
            .push(self.entries.len());
        self.entries.push(entry);
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// All entries named `name` in `object` ("vmlinux" or a module), in table order.
    pub fn lookup(&self, object: &str, name: &str) -> Vec<&KallsymsEntry> {
        self.by_name
            .get(&(object.to_owned(), name.to_owned()))
            .map(|v| v.iter().map(|&i| &self.entries[i]).collect())
            .unwrap_or_default()
    }

    /// Every entry, in table order (kallsyms lists vmlinux by address, then
    /// each module's symbols).
    pub fn entries(&self) -> &[KallsymsEntry] {
        &self.entries
    }

    /// Positions in [`SymbolTable::entries`] of the entries named `name` in
    /// `object`, in table order.
    pub fn positions(&self, object: &str, name: &str) -> &[usize] {
        self.by_name
            .get(&(object.to_owned(), name.to_owned()))
            .map_or(&[], Vec::as_slice)
    }

    /// The last symbol of `object` at or below `addr`.
    pub fn nearest(&self, object: &str, addr: u64) -> Option<&KallsymsEntry> {
        self.entries
            .iter()
            .filter(|e| e.module.as_deref().unwrap_or("vmlinux") == object && e.address <= addr)
            .max_by_key(|e| e.address)
    }

    /// The livepatch `sympos` of a uniquely named symbol: 0. Duplicated names
    /// need code matching to decide, so they are an error here.
    pub fn unique_sympos(&self, object: &str, name: &str) -> Result<u32, SymposError> {
        let found = self.lookup(object, name);
        match found.len() {
            0 => Err(SymposError::Missing {
                object: object.into(),
                name: name.into(),
            }),
            1 => Ok(0),
            _ => Err(SymposError::Ambiguous {
                object: object.into(),
                name: name.into(),
                addresses: found.iter().map(|e| e.address).collect(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
ffffffff81000000 T _text
ffffffff81001000 t cmdline_proc_show
ffffffff81002000 t show_map
ffffffff81003000 t show_map
ffffffff82000000 D saved_command_line
ffffffffc0000000 t show_map\t[ext4]
";

    #[test]
    fn parses_and_computes_sympos() {
        let t = SymbolTable::parse(SAMPLE).unwrap();
        assert_eq!(t.len(), 6);
        assert_eq!(t.unique_sympos("vmlinux", "saved_command_line"), Ok(0));
        assert_eq!(t.unique_sympos("ext4", "show_map"), Ok(0));
        assert!(matches!(
            t.unique_sympos("vmlinux", "show_map"),
            Err(SymposError::Ambiguous { ref addresses, .. }) if addresses == &[0xffffffff81002000, 0xffffffff81003000]
        ));
        assert!(matches!(
            t.unique_sympos("vmlinux", "nope"),
            Err(SymposError::Missing { .. })
        ));
        assert_eq!(t.lookup("vmlinux", "cmdline_proc_show")[0].kind, 't');
    }

    #[test]
    fn rejects_garbage_with_line_number() {
        let err = SymbolTable::parse("ffffffff81000000 T _text\nnot a line\n").unwrap_err();
        assert_eq!(err.0, 2);
        assert!(SymbolTable::parse("zz T x\n").is_err());
    }
}
