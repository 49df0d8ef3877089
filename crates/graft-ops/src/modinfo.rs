//! A module file's `.modinfo`, read offline: the kernel's own keys
//! (`name`, `vermagic`, `livepatch`) and the metadata graft embeds.

use std::path::{Path, PathBuf};

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
    /// Who clears the patch's relocations to a module that goes away, so
    /// that the module can be loaded again: `kernel` (6.3+), `graft` (the
    /// stub's callbacks) or `unsupported`.
    pub const RELOAD: &str = "graft_reload";
}

/// What [`keys::RELOAD`] says when the patch's module objects can be reloaded.
pub const RELOAD_SAFE: [&str; 2] = ["kernel", "graft"];

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
    /// The modules the patch has klp relocations for (`.klp.rela.<module>.*`
    /// sections): livepatch writes them into the patch each time that module
    /// loads.
    pub klp_modules: Vec<String>,
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
    /// [`keys::RELOAD`]; absent in modules of graft versions before it.
    pub reload: Option<String>,
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
        let file = graft_elf::Object::parse(data, path).map_err(|e| not(elf_problem(&e)))?;
        let raw = &file
            .section_by_name(".modinfo")
            .ok_or_else(|| not("it has no .modinfo section".into()))?
            .data;
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
            reload: get(keys::RELOAD),
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
            klp_modules: klp_modules(&file),
            graft,
        })
    }

    /// The kernel release the module was built for: the first word of its
    /// vermagic, which is what the kernel itself compares.
    pub fn release(&self) -> Option<&str> {
        self.vermagic.as_deref()?.split_whitespace().next()
    }
}

/// Modules named by `.klp.rela.<object>.<section>` sections, sorted.
fn klp_modules(file: &graft_elf::Object) -> Vec<String> {
    let mut v: Vec<String> = file
        .sections
        .iter()
        .filter_map(|s| {
            let (object, _) = s.name.strip_prefix(".klp.rela.")?.split_once('.')?;
            (object != "vmlinux").then(|| object.to_owned())
        })
        .collect();
    v.sort();
    v.dedup();
    v
}

/// What is wrong with a file that is not a (relocatable ELF) module.
fn elf_problem(e: &graft_elf::ElfError) -> String {
    match e {
        graft_elf::ElfError::NotElf { .. } => "not an ELF object".into(),
        graft_elf::ElfError::Unsupported { what, .. } => {
            format!("not a relocatable x86-64 ELF object ({what})")
        }
        e => format!("not an ELF object: {e}"),
    }
}

/// Names a module's functions go by in stack traces, mapped to the function
/// they replace. The kernel's module kallsyms reports the first symbol at an
/// address, which for a graft module can be the stub's alias of a new
/// function (`__graft_new_0_0`) rather than its own name (`ksys_read`).
pub fn stack_names(path: &Path) -> Result<Vec<(String, String)>, OpsError> {
    let data = std::fs::read(path).map_err(io(path))?;
    stack_names_of(path, &data)
}

/// [`stack_names`] of the module file contents `data` (from `path`).
pub fn stack_names_of(path: &Path, data: &[u8]) -> Result<Vec<(String, String)>, OpsError> {
    let file = graft_elf::Object::parse(data, path).map_err(|e| OpsError::NotAModule {
        path: path.to_owned(),
        what: elf_problem(&e),
    })?;
    let mut at: std::collections::BTreeMap<(usize, u64), Vec<String>> = Default::default();
    for sym in file.functions() {
        let Some(sec) = sym.section else { continue };
        if !sym.name.is_empty() {
            at.entry((sec.0, sym.value))
                .or_default()
                .push(sym.name.clone());
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
const ALIAS_PREFIX: &str = graft_elf::klp::NEW_ALIAS_PREFIX;

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
    use graft_elf::write::{Contents, SectionSpec, Writer};

    /// A relocatable ELF with `.modinfo` holding `entries`, like a module.
    pub fn module_bytes(entries: &[&str], signed: bool) -> Vec<u8> {
        module_bytes_with(entries, signed, &[])
    }

    /// The same, with empty sections named `sections` too.
    pub fn module_bytes_with(entries: &[&str], signed: bool, sections: &[&str]) -> Vec<u8> {
        let mut w = Writer::new();
        for name in sections {
            w.add_section(
                &SectionSpec::progbits(name, 0x2, 1),
                Contents::Bytes(Vec::new()),
            );
        }
        let mut data = Vec::new();
        for e in entries {
            data.extend_from_slice(e.as_bytes());
            data.push(0);
        }
        w.add_section(
            &SectionSpec::progbits(".modinfo", 0x2, 1),
            Contents::Bytes(data),
        );
        let mut bytes = w.write().unwrap();
        if signed {
            bytes.extend_from_slice(b"SIGNATURE");
            bytes.extend_from_slice(SIGNATURE_MARKER);
        }
        bytes
    }

    #[test]
    fn reads_kernel_and_graft_keys() {
        let b = module_bytes_with(
            &[
                "description=graft live patch x",
                "livepatch=Y",
                "graft_version=0.1.0",
                "graft_kernel=6.1.0-56-amd64",
                "graft_patch_sha256=abcd",
                "graft_functions=vmlinux:cmdline_proc_show,0 vmlinux:foo,2",
                "graft_built=1700000000",
                "graft_replace=1",
                "graft_reload=graft",
                "name=livepatch_x",
                "vermagic=6.1.0-56-amd64 SMP preempt mod_unload modversions ",
                "depends=libcrc32c,af_alg",
            ],
            false,
            &[
                ".klp.rela.vmlinux..text.a",
                ".klp.rela.ext4..text.b",
                ".klp.rela.binfmt_misc..text.c",
                ".klp.rela.ext4..rodata",
            ],
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
        assert_eq!(g.reload.as_deref(), Some("graft"));
        assert_eq!(m.klp_modules, ["binfmt_misc", "ext4"]);
        assert_eq!(
            format_functions(&g.functions),
            "vmlinux:cmdline_proc_show,0 vmlinux:foo,2"
        );
    }

    #[test]
    fn stack_names_map_aliases_to_functions() {
        let mut w = Writer::new();
        let text = w.add_section(
            &SectionSpec::progbits(".text.ksys_read", 0x6, 16),
            Contents::Bytes(vec![0xc3; 16]),
        );
        for name in ["__graft_new_0_0", "ksys_read"] {
            w.add_symbol(
                name,
                Some(text),
                0,
                16,
                graft_elf::Binding::Global,
                graft_elf::SymKind::Func,
                0,
            );
        }
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("m.ko");
        std::fs::write(&p, w.write().unwrap()).unwrap();
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
        let mut w = Writer::new();
        w.add_section(
            &SectionSpec::progbits(".text", 0x6, 16),
            Contents::Bytes(Vec::new()),
        );
        let e = ModuleInfo::parse(Path::new("x.o"), &w.write().unwrap()).unwrap_err();
        assert!(e.to_string().contains("no .modinfo"), "{e}");
    }
}
