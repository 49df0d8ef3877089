//! A module file's `.modinfo`, read offline: the kernel's own keys
//! (`name`, `vermagic`, `livepatch`) and the metadata graft embeds.

use std::path::{Path, PathBuf};

use object::{Object, ObjectSection, ObjectSymbol, SymbolKind};
use serde::Serialize;

use crate::error::io;
use crate::{FuncRef, OpsError};

/// The `.modinfo` keys graft writes (`MODULE_INFO(<key>, "…")` in the stub).
pub mod keys {
    /// graft's version.
    pub const VERSION: &str = "graft_version";
    /// The kernel release the module was built for (`uname -r` of the target).
    pub const KERNEL: &str = "graft_kernel";
    /// sha256 of the source patch, hex.
    pub const PATCH_SHA256: &str = "graft_patch_sha256";
    /// Space-separated `object:function,sympos`.
    pub const FUNCTIONS: &str = "graft_functions";
    /// Build time, seconds since the epoch (`SOURCE_DATE_EPOCH` when set).
    pub const BUILT: &str = "graft_built";
    /// `1` for a cumulative (atomic replace) patch, `0` for a stacking one.
    pub const REPLACE: &str = "graft_replace";
}

/// The marker `scripts/sign-file` appends after the signature.
const SIGNATURE_MARKER: &[u8] = b"~Module signature appended~\n";

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ModuleInfo {
    pub path: PathBuf,
    /// The module's name in the kernel (`livepatch_cmdline`).
    pub name: String,
    pub vermagic: Option<String>,
    pub livepatch: bool,
    pub description: Option<String>,
    /// The modules it needs loaded first (`depends=`, kernel names).
    pub depends: Vec<String>,
    pub signed: bool,
    /// Present in modules built by graft.
    pub graft: Option<GraftInfo>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GraftInfo {
    pub version: String,
    pub kernel: Option<String>,
    pub patch_sha256: Option<String>,
    pub functions: Vec<FuncRef>,
    pub built: Option<u64>,
    pub replace: Option<bool>,
}

impl ModuleInfo {
    pub fn read(path: &Path) -> Result<ModuleInfo, OpsError> {
        let data = std::fs::read(path).map_err(io(path))?;
        Self::parse(path, &data)
    }

    pub fn parse(path: &Path, data: &[u8]) -> Result<ModuleInfo, OpsError> {
        let not = |what: String| OpsError::NotAModule {
            path: path.to_owned(),
            what,
        };
        let file = object::File::parse(data).map_err(|e| not(format!("not an ELF object: {e}")))?;
        if file.kind() != object::ObjectKind::Relocatable {
            return Err(not("not a relocatable ELF object".into()));
        }
        let sec = file
            .section_by_name(".modinfo")
            .ok_or_else(|| not("it has no .modinfo section".into()))?;
        let raw = sec
            .data()
            .map_err(|e| not(format!("unreadable .modinfo: {e}")))?;
        let pairs = parse_pairs(raw);
        let get = |k: &str| {
            pairs
                .iter()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.clone())
        };
        let name = get("name").unwrap_or_else(|| {
            let stem = path
                .file_name()
                .map(|f| f.to_string_lossy().into_owned())
                .unwrap_or_default();
            crate::module_name(stem.trim_end_matches(".ko"))
        });
        let graft = get(keys::VERSION).map(|version| GraftInfo {
            version,
            kernel: get(keys::KERNEL),
            patch_sha256: get(keys::PATCH_SHA256),
            functions: get(keys::FUNCTIONS)
                .map(|s| parse_functions(&s))
                .unwrap_or_default(),
            built: get(keys::BUILT).and_then(|s| s.parse().ok()),
            replace: get(keys::REPLACE).map(|s| s == "1"),
        });
        Ok(ModuleInfo {
            path: path.to_owned(),
            name,
            vermagic: get("vermagic"),
            livepatch: get("livepatch").as_deref() == Some("Y"),
            description: get("description"),
            depends: get("depends")
                .map(|d| {
                    d.split(',')
                        .filter(|n| !n.is_empty())
                        .map(str::to_owned)
                        .collect()
                })
                .unwrap_or_default(),
            signed: data.ends_with(SIGNATURE_MARKER),
            graft,
        })
    }

    /// The kernel release the module was built for: the first word of its
    /// vermagic, which is what the kernel itself compares.
    pub fn release(&self) -> Option<&str> {
        self.vermagic.as_deref()?.split_whitespace().next()
    }
}

/// Names a module's functions go by in stack traces, mapped to the function
/// they replace. The kernel's module kallsyms reports the first symbol at an
/// address, which for a graft module can be the stub's alias of a new
/// function (`__graft_new_0_0`) rather than its own name (`ksys_read`).
pub fn stack_names(path: &Path) -> Result<Vec<(String, String)>, OpsError> {
    let data = std::fs::read(path).map_err(io(path))?;
    let file = object::File::parse(&*data).map_err(|e| OpsError::NotAModule {
        path: path.to_owned(),
        what: format!("not an ELF object: {e}"),
    })?;
    let mut at: std::collections::BTreeMap<(usize, u64), Vec<String>> = Default::default();
    for sym in file.symbols() {
        let (Some(sec), Ok(name)) = (sym.section_index(), sym.name()) else {
            continue;
        };
        if sym.kind() == SymbolKind::Text && !name.is_empty() {
            at.entry((sec.0, sym.address()))
                .or_default()
                .push(name.to_owned());
        }
    }
    let mut v = Vec::new();
    for names in at.values() {
        let Some(own) = names.iter().find(|n| !n.starts_with(ALIAS_PREFIX)) else {
            continue;
        };
        for n in names {
            v.push((n.clone(), own.clone()));
        }
    }
    Ok(v)
}

/// The prefix of the stub's aliases of new functions (graft-klp).
const ALIAS_PREFIX: &str = "__graft_new_";

/// `.modinfo` is a sequence of NUL-terminated `key=value` strings, padded
/// with NULs between the entries of different objects.
fn parse_pairs(raw: &[u8]) -> Vec<(String, String)> {
    raw.split(|b| *b == 0)
        .filter(|s| !s.is_empty())
        .filter_map(|s| {
            let s = String::from_utf8_lossy(s);
            let (k, v) = s.split_once('=')?;
            Some((k.to_owned(), v.to_owned()))
        })
        .collect()
}

/// `vmlinux:cmdline_proc_show,0 ext4:ext4_fill_super,0`.
pub fn format_functions(funcs: &[FuncRef]) -> String {
    funcs
        .iter()
        .map(|f| format!("{}:{},{}", f.object, f.name, f.sympos))
        .collect::<Vec<_>>()
        .join(" ")
}

pub fn parse_functions(s: &str) -> Vec<FuncRef> {
    s.split_whitespace()
        .filter_map(|item| {
            let (object, rest) = item.split_once(':')?;
            let (name, pos) = rest.rsplit_once(',').unwrap_or((rest, "0"));
            Some(FuncRef {
                object: object.to_owned(),
                name: name.to_owned(),
                sympos: pos.parse().ok()?,
            })
        })
        .collect()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use object::write;

    /// A relocatable ELF with `.modinfo` holding `entries`, like a module.
    pub fn module_bytes(entries: &[&str], signed: bool) -> Vec<u8> {
        let mut obj = write::Object::new(
            object::BinaryFormat::Elf,
            object::Architecture::X86_64,
            object::Endianness::Little,
        );
        let sec = obj.add_section(Vec::new(), b".modinfo".to_vec(), object::SectionKind::Data);
        let mut data = Vec::new();
        for e in entries {
            data.extend_from_slice(e.as_bytes());
            data.push(0);
        }
        obj.append_section_data(sec, &data, 1);
        let mut bytes = obj.write().unwrap();
        if signed {
            bytes.extend_from_slice(b"SIGNATURE");
            bytes.extend_from_slice(SIGNATURE_MARKER);
        }
        bytes
    }

    #[test]
    fn reads_kernel_and_graft_keys() {
        let b = module_bytes(
            &[
                "description=graft live patch x",
                "livepatch=Y",
                "graft_version=0.1.0",
                "graft_kernel=6.1.0-56-amd64",
                "graft_patch_sha256=abcd",
                "graft_functions=vmlinux:cmdline_proc_show,0 vmlinux:foo,2",
                "graft_built=1700000000",
                "graft_replace=1",
                "name=livepatch_x",
                "vermagic=6.1.0-56-amd64 SMP preempt mod_unload modversions ",
                "depends=libcrc32c,af_alg",
            ],
            false,
        );
        let m = ModuleInfo::parse(Path::new("livepatch-x.ko"), &b).unwrap();
        assert_eq!(m.name, "livepatch_x");
        assert_eq!(m.depends, vec!["libcrc32c", "af_alg"]);
        assert!(m.livepatch && !m.signed);
        assert_eq!(m.release(), Some("6.1.0-56-amd64"));
        let g = m.graft.unwrap();
        assert_eq!(g.kernel.as_deref(), Some("6.1.0-56-amd64"));
        assert_eq!(g.built, Some(1_700_000_000));
        assert_eq!(g.replace, Some(true));
        assert_eq!(
            format_functions(&g.functions),
            "vmlinux:cmdline_proc_show,0 vmlinux:foo,2"
        );
    }

    #[test]
    fn stack_names_map_aliases_to_functions() {
        let mut obj = write::Object::new(
            object::BinaryFormat::Elf,
            object::Architecture::X86_64,
            object::Endianness::Little,
        );
        let text = obj.add_section(
            Vec::new(),
            b".text.ksys_read".to_vec(),
            object::SectionKind::Text,
        );
        obj.append_section_data(text, &[0xc3; 16], 16);
        for name in ["__graft_new_0_0", "ksys_read"] {
            obj.add_symbol(write::Symbol {
                name: name.as_bytes().to_vec(),
                value: 0,
                size: 16,
                kind: SymbolKind::Text,
                scope: object::SymbolScope::Linkage,
                weak: false,
                section: write::SymbolSection::Section(text),
                flags: object::SymbolFlags::None,
            });
        }
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("m.ko");
        std::fs::write(&p, obj.write().unwrap()).unwrap();
        let mut names = stack_names(&p).unwrap();
        names.sort();
        assert_eq!(
            names,
            [
                ("__graft_new_0_0".to_string(), "ksys_read".to_string()),
                ("ksys_read".to_string(), "ksys_read".to_string())
            ]
        );
    }

    #[test]
    fn plain_module_and_signature() {
        let b = module_bytes(&["license=GPL", "vermagic=6.1.0-56-amd64 SMP"], true);
        let m = ModuleInfo::parse(Path::new("/x/dummy.ko"), &b).unwrap();
        assert_eq!(m.name, "dummy");
        assert!(!m.livepatch && m.signed && m.graft.is_none());
    }

    #[test]
    fn non_modules_are_refused_clearly() {
        let e = ModuleInfo::parse(Path::new("x.ko"), b"hello").unwrap_err();
        assert!(e.to_string().contains("not an ELF object"), "{e}");
        let mut obj = write::Object::new(
            object::BinaryFormat::Elf,
            object::Architecture::X86_64,
            object::Endianness::Little,
        );
        obj.add_section(Vec::new(), b".text".to_vec(), object::SectionKind::Text);
        let e = ModuleInfo::parse(Path::new("x.o"), &obj.write().unwrap()).unwrap_err();
        assert!(e.to_string().contains("no .modinfo"), "{e}");
    }
}
