//! Livepatch ELF constants and names, as defined by the kernel in
//! `Documentation/livepatch/module-elf-format.rst` and `include/uapi/linux/elf.h`.
//! Data only: the `object` crate does not know them.

/// `st_shndx` of a symbol that livepatch resolves at patch load time.
pub const SHN_LIVEPATCH: u16 = 0xff20;
/// `sh_flags` bit of a relocation section applied by livepatch, not the module loader.
pub const SHF_RELA_LIVEPATCH: u64 = 0x0010_0000;

/// Prefix of klp relocation section names: `.klp.rela.<object>.<section>`.
pub const RELA_PREFIX: &str = ".klp.rela.";
/// Prefix of klp symbol names: `.klp.sym.<object>.<symbol>,<sympos>`.
pub const SYM_PREFIX: &str = ".klp.sym.";

/// The klp name of the kernel image itself.
pub const VMLINUX: &str = "vmlinux";

/// `.klp.sym.<object>.<name>,<sympos>`; `sympos` is 1-based among same-named
/// symbols of `object` in kallsyms order, 0 when the name is unique.
pub fn sym_name(object: &str, name: &str, sympos: u32) -> String {
    format!("{SYM_PREFIX}{object}.{name},{sympos}")
}

/// Prefix of the global aliases graft gives the new functions of a patch,
/// which the stub's `klp_func`s name (`__graft_new_<unit>_<n>`); stack
/// traces of patched code show them, and graft-ops maps them back.
pub const NEW_ALIAS_PREFIX: &str = "__graft_new_";

/// The alias of the `n`-th carried function of the patch's `unit`-th file.
pub fn new_alias(unit: usize, n: usize) -> String {
    format!("{NEW_ALIAS_PREFIX}{unit}_{n}")
}

/// Splits a klp symbol name into (object, name, sympos).
pub fn parse_sym_name(full: &str) -> Option<(&str, &str, u32)> {
    let rest = full.strip_prefix(SYM_PREFIX)?;
    let (object, rest) = rest.split_once('.')?;
    let (name, pos) = rest.rsplit_once(',')?;
    Some((object, name, pos.parse().ok()?))
}

/// `.klp.rela.<object>.<section>`.
pub fn rela_name(object: &str, section: &str) -> String {
    format!("{RELA_PREFIX}{object}.{section}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sym_name_round_trips() {
        let n = sym_name(VMLINUX, "saved_command_line", 0);
        assert_eq!(n, ".klp.sym.vmlinux.saved_command_line,0");
        assert_eq!(
            parse_sym_name(&n),
            Some(("vmlinux", "saved_command_line", 0))
        );
        assert_eq!(
            parse_sym_name(".klp.sym.ext4.foo.isra.0,2"),
            Some(("ext4", "foo.isra.0", 2))
        );
        assert_eq!(parse_sym_name(".klp.sym.vmlinux.nopos"), None);
    }
}
