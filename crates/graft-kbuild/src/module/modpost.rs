//! What modpost writes for an external module: its `.mod.c` (vermagic,
//! `__this_module`, the `__versions` CRCs of the exports it uses, the
//! modules it depends on), and the checks it makes on the way. Written the
//! way `scripts/mod/modpost.c` of 6.1 writes it (`write_mod_c_file`), so
//! that the module graft links is the one kbuild links; graft checks that
//! on each kernel's headers before using it ([`super::commands`]).

use std::path::Path;

use graft_elf::{Binding, Object, SymKind};

/// `st_shndx` of a common symbol (modpost warns about it, writes nothing).
const SHN_COMMON: u16 = 0xfff2;

/// One export of the kernel or of a module (`Module.symvers`).
pub use graft_target::Export;

/// How modpost is run for the module (from the headers' config).
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// `CONFIG_MODVERSIONS`: CRCs in `__versions`.
    pub modversions: bool,
    /// `CONFIG_MODULE_ALLOW_MISSING_NAMESPACE_IMPORTS`.
    pub allow_missing_ns: bool,
}

/// The outcome of modpost's work on one module.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModC {
    /// The `.mod.c` source.
    Source(String),
    /// Something graft does not write the way modpost does (the module
    /// exports symbols, has device tables or a version): kbuild links it.
    Unsupported(String),
}

/// modpost's limit on module and symbol names (`MODULE_NAME_LEN`, x86-64).
const MODULE_NAME_LEN: usize = 64 - 8;

/// What modpost reads of the module's linked object.
struct Scan {
    /// Symbols the module uses and does not define, in symbol-table order
    /// (weak ones too: modpost only spares them its warning).
    unresolved: Vec<String>,
    has_init: bool,
    has_cleanup: bool,
    licenses: Vec<String>,
    imported: Vec<String>,
}

/// Writes the `.mod.c` of module `name` whose parts are linked in
/// `object` (the `ld -r` of all its objects), or names the check that
/// kbuild's modpost would fail it on.
pub fn write(
    name: &str,
    object: &[u8],
    exports: &dyn Fn(&str) -> Option<Export>,
    opts: Options,
) -> Result<ModC, String> {
    let mut scan = match scan(name, object)? {
        Ok(scan) => scan,
        Err(why) => return Ok(ModC::Unsupported(why)),
    };
    if opts.modversions {
        // modpost's "trick to get versioning for module struct etc.".
        scan.unresolved.push("module_layout".into());
    }
    let base = name.rsplit('/').next().unwrap_or(name);
    if base.len() >= MODULE_NAME_LEN {
        return Err(format!("module name is too long [{name}.ko]"));
    }
    let resolved = check_exports(base, &scan, exports, opts)?;
    render(name, &scan, &resolved, opts).map(ModC::Source)
}

/// The module's symbols and `.modinfo`; `Ok(Err(why))` when graft does not
/// write this module's `.mod.c` the way modpost does.
fn scan(name: &str, object: &[u8]) -> Result<Result<Scan, String>, String> {
    let elf = Object::parse(object, Path::new(&format!("{name}.o")))
        .map_err(|e| format!("{name}.o is not an ELF object: {e}"))?;
    let mut unresolved = Vec::new();
    let (mut has_init, mut has_cleanup) = (false, false);
    for sym in elf.symbols.iter().skip(1) {
        let symname = remove_dot(&sym.name).to_owned();
        if sym.shndx == SHN_COMMON {
            continue;
        }
        if sym.shndx == 0 {
            let skip = !matches!(sym.binding, Binding::Global | Binding::Weak)
                || symname == "__this_module"
                || symname == "_GLOBAL_OFFSET_TABLE_";
            if !skip {
                unresolved.push(symname);
            }
            continue;
        }
        if let Some(export) = symname.strip_prefix("__ksymtab_") {
            return Ok(Err(format!("the module exports {export}")));
        }
        if symname.starts_with("__mod_")
            && symname.ends_with("_device_table")
            && sym.kind == SymKind::Object
        {
            return Ok(Err(format!("the module has a device table ({symname})")));
        }
        has_init |= symname == "init_module";
        has_cleanup |= symname == "cleanup_module";
    }
    let modinfo: &[u8] = elf
        .section_by_name(".modinfo")
        .map(|s| s.data.as_slice())
        .unwrap_or_default();
    let info = |tag: &str| -> Vec<String> {
        modinfo
            .split(|&b| b == 0)
            .filter_map(|s| {
                let s = String::from_utf8_lossy(s);
                s.strip_prefix(tag)?.strip_prefix('=').map(str::to_owned)
            })
            .collect()
    };
    if !info("version").is_empty() {
        return Ok(Err(
            "the module has a version (modpost adds its srcversion)".into(),
        ));
    }
    let licenses = info("license");
    if licenses.is_empty() {
        return Err(format!("missing MODULE_LICENSE() in {name}.o"));
    }
    Ok(Ok(Scan {
        unresolved,
        has_init,
        has_cleanup,
        licenses,
        imported: info("import_ns"),
    }))
}

/// modpost's `check_exports`: the exports that resolve the module's
/// unresolved symbols, with the namespace and licence rules applied.
fn check_exports<'s>(
    base: &str,
    scan: &'s Scan,
    exports: &dyn Fn(&str) -> Option<Export>,
    opts: Options,
) -> Result<Vec<(&'s str, Export)>, String> {
    let gpl = scan.licenses.iter().all(|l| gpl_compatible(l));
    let mut resolved = Vec::new();
    for s in &scan.unresolved {
        let Some(exp) = exports(s) else {
            continue; // undefined: livepatch resolves it (klp relocations)
        };
        if let Some(ns) = &exp.namespace {
            if !scan.imported.contains(ns) && !opts.allow_missing_ns {
                return Err(format!(
                    "module {base} uses symbol {s} from namespace {ns}, but does not import it"
                ));
            }
        }
        if !gpl && exp.gpl_only {
            return Err(format!(
                "GPL-incompatible module {base}.ko uses GPL-only symbol '{s}'"
            ));
        }
        resolved.push((s.as_str(), exp));
    }
    Ok(resolved)
}

/// The `.mod.c` text, as 6.1's `write_mod_c_file` writes it.
fn render(
    name: &str,
    scan: &Scan,
    resolved: &[(&str, Export)],
    opts: Options,
) -> Result<String, String> {
    let mut b = String::new();
    // add_header
    b.push_str("#include <linux/module.h>\n");
    b.push_str("#define INCLUDE_VERMAGIC\n");
    b.push_str("#include <linux/build-salt.h>\n");
    b.push_str("#include <linux/elfnote-lto.h>\n");
    b.push_str("#include <linux/export-internal.h>\n");
    b.push_str("#include <linux/vermagic.h>\n");
    b.push_str("#include <linux/compiler.h>\n");
    b.push('\n');
    b.push_str("BUILD_SALT;\n");
    b.push_str("BUILD_LTO_INFO;\n");
    b.push('\n');
    b.push_str("MODULE_INFO(vermagic, VERMAGIC_STRING);\n");
    b.push_str("MODULE_INFO(name, KBUILD_MODNAME);\n");
    b.push('\n');
    b.push_str("__visible struct module __this_module\n");
    b.push_str("__section(\".gnu.linkonce.this_module\") = {\n");
    b.push_str("\t.name = KBUILD_MODNAME,\n");
    if scan.has_init {
        b.push_str("\t.init = init_module,\n");
    }
    if scan.has_cleanup {
        b.push_str("#ifdef CONFIG_MODULE_UNLOAD\n\t.exit = cleanup_module,\n#endif\n");
    }
    b.push_str("\t.arch = MODULE_ARCH_INIT,\n");
    b.push_str("};\n");
    // An external module: no `intree`; graft's are never staging or tests.
    b.push_str("\n#ifdef CONFIG_RETPOLINE\nMODULE_INFO(retpoline, \"Y\");\n#endif\n");
    // add_exported_symbols: none (a module that exports is kbuild's).
    if opts.modversions {
        b.push('\n');
        // add_versions
        b.push('\n');
        b.push_str("static const struct modversion_info ____versions[]\n");
        b.push_str("__used __section(\"__versions\") = {\n");
        for (s, exp) in resolved {
            if s.len() >= MODULE_NAME_LEN {
                return Err(format!("too long symbol \"{s}\" [{name}.ko]"));
            }
            b.push_str(&format!("\t{{ {}, \"{s}\" }},\n", hex8(exp.crc)));
        }
        b.push_str("};\n");
    }
    // add_depends: the exporting modules, in the order first used.
    let mut depends: Vec<&str> = Vec::new();
    for (_, exp) in resolved {
        if exp.module == "vmlinux" {
            continue;
        }
        let m = exp.module.rsplit('/').next().unwrap_or(&exp.module);
        if !depends.contains(&m) {
            depends.push(m);
        }
    }
    b.push('\n');
    b.push_str(&format!(
        "MODULE_INFO(depends, \"{}\");\n",
        depends.join(",")
    ));
    // add_moddevtable: no table.
    b.push('\n');
    Ok(b)
}

/// C's `%#8x`: `0x` and the hex digits (`0` alone for zero), right-aligned
/// in 8 columns.
fn hex8(v: u32) -> String {
    let s = if v == 0 {
        "0".to_owned()
    } else {
        format!("{v:#x}")
    };
    format!("{s:>8}")
}

/// modpost's `remove_dot`: `foo.123` and `foo.123.bar` name `foo` (gcc's
/// numbered local copies); other dots stay.
fn remove_dot(s: &str) -> &str {
    let b = s.as_bytes();
    let n = b.iter().position(|&c| c == b'.').unwrap_or(b.len());
    if n > 0 && n < b.len() {
        let m = b[n + 1..].iter().take_while(|c| c.is_ascii_digit()).count();
        if m > 0 && (n + m + 1 == b.len() || b[n + m + 1] == b'.') {
            return &s[..n];
        }
    }
    s
}

/// The kernel's `license_is_gpl_compatible`.
fn gpl_compatible(l: &str) -> bool {
    matches!(
        l,
        "GPL"
            | "GPL v2"
            | "GPL and additional rights"
            | "Dual BSD/GPL"
            | "Dual MIT/GPL"
            | "Dual MPL/GPL"
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use graft_elf::write::{Contents, SectionSpec, Writer};

    /// A relocatable object with `defined` functions, `undefined` symbols
    /// (weak when their name ends in `?`) and `.modinfo` strings.
    fn object(defined: &[&str], undefined: &[&str], modinfo: &[&str]) -> Vec<u8> {
        let mut w = Writer::new();
        let text = w.add_section(
            &SectionSpec::progbits(".text", 0x6, 16),
            Contents::Bytes(vec![0xc3; 16]),
        );
        let mut bytes = Vec::new();
        for m in modinfo {
            bytes.extend_from_slice(m.as_bytes());
            bytes.push(0);
        }
        w.add_section(
            &SectionSpec::progbits(".modinfo", 0x2, 1),
            Contents::Bytes(bytes),
        );
        for (i, d) in defined.iter().enumerate() {
            let kind = if d.ends_with("_device_table") {
                SymKind::Object
            } else {
                SymKind::Func
            };
            w.add_symbol(d, Some(text), i as u64, 1, Binding::Global, kind, 0);
        }
        for u in undefined {
            let (n, binding) = match u.strip_suffix('?') {
                Some(n) => (n, Binding::Weak),
                None => (*u, Binding::Global),
            };
            w.add_symbol(n, None, 0, 0, binding, SymKind::NoType, 0);
        }
        w.write().unwrap()
    }

    fn exports(name: &str) -> Option<Export> {
        let e = |crc, module: &str, ns: Option<&str>| Export {
            crc,
            module: module.into(),
            gpl_only: name == "gpl_thing",
            namespace: ns.map(Into::into),
        };
        match name {
            "_printk" => Some(e(0x92997ed8, "vmlinux", None)),
            "module_layout" => Some(e(0xab7c5253, "vmlinux", None)),
            "small_crc" => Some(e(0x1234, "vmlinux", None)),
            "scsi_thing" => Some(e(0, "drivers/scsi/scsi_mod", None)),
            "gpl_thing" => Some(e(1, "vmlinux", None)),
            "dma_buf_get" => Some(e(0xabcdef01, "drivers/dma-buf/dma-buf", Some("DMA_BUF"))),
            _ => None,
        }
    }

    const OPTS: Options = Options {
        modversions: true,
        allow_missing_ns: false,
    };

    fn source(m: ModC) -> String {
        match m {
            ModC::Source(s) => s,
            ModC::Unsupported(why) => panic!("unsupported: {why}"),
        }
    }

    #[test]
    fn versions_follow_the_symbol_table_and_depends_name_modules_once() {
        let obj = object(
            &["init_module", "cleanup_module"],
            &[
                "_printk",
                ".klp.sym.vmlinux.linux_proc_banner,0",
                "scsi_thing",
                "small_crc",
                "__this_module",
            ],
            &["license=GPL"],
        );
        let text = source(write("/w/livepatch-x", &obj, &exports, OPTS).unwrap());
        let versions = "\nstatic const struct modversion_info ____versions[]\n__used __section(\"__versions\") = {\n\t{ 0x92997ed8, \"_printk\" },\n\t{        0, \"scsi_thing\" },\n\t{   0x1234, \"small_crc\" },\n\t{ 0xab7c5253, \"module_layout\" },\n};\n\nMODULE_INFO(depends, \"scsi_mod\");\n\n";
        assert!(text.ends_with(versions), "{text}");
        assert!(text.contains("\t.init = init_module,\n#ifdef CONFIG_MODULE_UNLOAD\n\t.exit = cleanup_module,\n#endif\n"));
        assert!(!text.contains("intree"));
    }

    #[test]
    fn modposts_checks_fail_the_module() {
        let no_license = object(&[], &["_printk"], &[]);
        assert!(write("m", &no_license, &exports, OPTS)
            .unwrap_err()
            .contains("MODULE_LICENSE"));
        let ns = object(&[], &["dma_buf_get"], &["license=GPL"]);
        assert!(write("m", &ns, &exports, OPTS)
            .unwrap_err()
            .contains("namespace DMA_BUF"));
        let ns_ok = object(&[], &["dma_buf_get"], &["license=GPL", "import_ns=DMA_BUF"]);
        let text = source(write("m", &ns_ok, &exports, OPTS).unwrap());
        assert!(
            text.contains("MODULE_INFO(depends, \"dma-buf\");"),
            "{text}"
        );
        let proprietary = object(&[], &["gpl_thing"], &["license=Proprietary"]);
        assert!(write("m", &proprietary, &exports, OPTS)
            .unwrap_err()
            .contains("GPL-only"));
    }

    #[test]
    fn what_graft_does_not_write_is_left_to_kbuild() {
        let exporting = object(&["__ksymtab_foo"], &[], &["license=GPL"]);
        assert!(matches!(
            write("m", &exporting, &exports, OPTS).unwrap(),
            ModC::Unsupported(_)
        ));
        let versioned = object(&[], &[], &["license=GPL", "version=1.0"]);
        assert!(matches!(
            write("m", &versioned, &exports, OPTS).unwrap(),
            ModC::Unsupported(_)
        ));
    }

    #[test]
    fn numbered_copies_are_their_functions() {
        assert_eq!(remove_dot("foo.123"), "foo");
        assert_eq!(remove_dot("foo.1.bar"), "foo");
        assert_eq!(remove_dot("foo.constprop.0"), "foo.constprop.0");
        assert_eq!(remove_dot(".klp.sym.x,0"), ".klp.sym.x,0");
        assert_eq!(hex8(0), "       0");
        assert_eq!(hex8(0xab), "    0xab");
        assert_eq!(hex8(0x92997ed8), "0x92997ed8");
    }
}
