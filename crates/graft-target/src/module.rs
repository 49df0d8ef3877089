//! Loadable-module targets: the patched file is built into a module, whose
//! `.ko` in the target's `/lib/modules/<release>` tells its name, its code
//! and its symbols (kallsyms only lists modules that are loaded).

use std::io::Read;
use std::path::{Path, PathBuf};

use graft_elf::{Object, SymKind};

use crate::{KallsymsEntry, SymbolTable};

#[derive(Debug, thiserror::Error)]
pub enum ModuleError {
    #[error("{object} is built into a module, but no module under {dir} defines its functions; hint: pass the target's module directory (/lib/modules/<release>) with --modules")]
    NotFound { object: String, dir: PathBuf },
    #[error("cannot read the module {path}: {what}")]
    Unreadable { path: PathBuf, what: String },
}

/// A target module, read from its `.ko`.
pub struct ModuleFile {
    /// The module's name as the kernel knows it (`binfmt_misc`).
    pub name: String,
    pub path: PathBuf,
    pub object: Object,
}

impl ModuleFile {
    pub fn read(path: &Path) -> Result<ModuleFile, ModuleError> {
        let unreadable = |what: String| ModuleError::Unreadable {
            path: path.to_owned(),
            what,
        };
        let raw = std::fs::read(path).map_err(|e| unreadable(e.to_string()))?;
        ModuleFile::parse(path, raw)
    }

    /// The module in `raw`, the contents of the file at `path` (whose name,
    /// `.ko` or `.ko.xz`, says how to read it and gives the module's name).
    pub fn parse(path: &Path, raw: Vec<u8>) -> Result<ModuleFile, ModuleError> {
        let unreadable = |what: String| ModuleError::Unreadable {
            path: path.to_owned(),
            what,
        };
        let file_name = path
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        let (stem, bytes) = if let Some(stem) = file_name.strip_suffix(".ko.xz") {
            let mut out = Vec::new();
            liblzma::read::XzDecoder::new(&raw[..])
                .read_to_end(&mut out)
                .map_err(|e| unreadable(e.to_string()))?;
            (stem.to_owned(), out)
        } else if let Some(stem) = file_name.strip_suffix(".ko") {
            (stem.to_owned(), raw)
        } else {
            return Err(unreadable("not a .ko or .ko.xz file".into()));
        };
        let object = Object::parse(&bytes, path).map_err(|e| unreadable(e.to_string()))?;
        Ok(ModuleFile {
            name: stem.replace('-', "_"),
            path: path.to_owned(),
            object,
        })
    }

    /// Symbols as the kernel's kallsyms lists them for this module once it is
    /// loaded: named, defined in allocated sections other than init code, in
    /// symbol table order (which is what `sympos` counts in).
    pub fn kallsyms(&self) -> Vec<KallsymsEntry> {
        let o = &self.object;
        o.symbols
            .iter()
            .filter(|s| !s.name.is_empty() && !matches!(s.kind, SymKind::Section | SymKind::File))
            .filter_map(|s| {
                let sec = o.section(s.section?);
                if !sec.is_alloc() || sec.name.starts_with(".init") {
                    return None;
                }
                let kind = match (s.kind, sec.is_exec(), s.is_global()) {
                    (_, true, true) => 'T',
                    (_, true, false) => 't',
                    (_, false, true) => 'D',
                    (_, false, false) => 'd',
                };
                Some(KallsymsEntry {
                    address: s.value,
                    kind,
                    name: s.name.clone(),
                    module: Some(self.name.clone()),
                })
            })
            .collect()
    }
}

impl SymbolTable {
    /// Adds (or replaces) a module's symbols, as kallsyms would list them.
    pub fn add_module(&mut self, module: &ModuleFile) {
        self.remove_module(&module.name);
        for e in module.kallsyms() {
            self.push_entry(e);
        }
    }
}

/// Finds the module that `object_path` (`fs/binfmt_misc.o`) is built into:
/// modules live in the directory of their objects, or above it; the one
/// defining most of the object's functions is it.
pub fn find_module(
    modules_dir: &Path,
    object_path: &str,
    orig: &Object,
) -> Result<ModuleFile, ModuleError> {
    let names: Vec<&str> = orig
        .functions()
        .filter(|f| {
            !orig
                .section(f.section.expect("defined"))
                .name
                .starts_with(".init")
        })
        .map(|f| f.name.as_str())
        .collect();
    let mut dir = Path::new(object_path).parent().map(Path::to_path_buf);
    while let Some(d) = dir {
        let here = modules_dir.join("kernel").join(&d);
        let mut best: Option<(usize, ModuleFile)> = None;
        for path in ko_files(&here) {
            let Ok(m) = ModuleFile::read(&path) else {
                continue;
            };
            let score = m
                .object
                .functions()
                .filter(|f| names.contains(&f.name.as_str()))
                .count();
            if score > 0 && best.as_ref().is_none_or(|(b, _)| score > *b) {
                best = Some((score, m));
            }
        }
        if let Some((_, m)) = best {
            return Ok(m);
        }
        dir = d
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .map(Path::to_path_buf);
    }
    Err(ModuleError::NotFound {
        object: object_path.to_owned(),
        dir: modules_dir.to_owned(),
    })
}

/// `.ko`/`.ko.xz` files directly in `dir`.
fn ko_files(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            let n = p.to_string_lossy();
            n.ends_with(".ko") || n.ends_with(".ko.xz")
        })
        .collect();
    out.sort();
    out
}
