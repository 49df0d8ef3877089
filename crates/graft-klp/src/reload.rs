//! A patched module can be unloaded and loaded again.
//!
//! Livepatch writes a patch's `.klp.rela.<module>.*` relocations into the
//! patch module each time `<module>` loads, and x86 refuses to write a field
//! that is not zero ("existing value is nonzero"). Kernels since 6.3 clear
//! the fields when the module goes away (`clear_relocate_add`, "livepatch,x86:
//! Clear relocation targets on a module removal"); older ones, Debian's 6.1
//! among them, do not, so the second load of the module fails and the module
//! is refused while the patch stays loaded.
//!
//! On those kernels graft's stub does what the newer kernel does, from the
//! callbacks livepatch runs for the object: the post-unpatch callback, which
//! `klp_module_going()` runs when the module goes away (and
//! `klp_module_coming()` when patching it failed), zeroes the patch's fields
//! for that object with the kernel's `text_poke()` under `text_mutex`, which
//! the stub reaches through klp relocations to vmlinux (neither is
//! exported). The fields are found at run time the way livepatch itself finds
//! them, from the section headers it keeps (`THIS_MODULE->klp_info`), so the
//! stub and the relocations cannot disagree. The author's own callbacks still
//! run, before the fields go (they may use the module's symbols).
//!
//! Nothing is cleared when the patch is only disabled or replaced while the
//! module stays: livepatch then forgets the patch, nothing writes its fields
//! again, and after a forced transition a task may still run its code.

use std::fmt::Write;

use graft_target::SymbolTable;
use serde::Serialize;

/// The kernel function whose presence means the kernel clears a patch's
/// relocations to a module itself.
pub const KERNEL_CLEARS: &str = "clear_relocate_add";

/// The unexported kernel symbols the stub's clearing needs.
pub const NEEDED: [&str; 3] = ["text_poke", "text_poke_sync", "text_mutex"];

/// Who returns a patch's relocation fields for a module to zero when that
/// module goes away.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "by")]
pub enum Reload {
    /// The target kernel does (6.3+): graft adds nothing.
    Kernel,
    /// graft's stub does, with these kernel symbols at these `sympos`.
    Stub { sympos: [u32; 3] },
    /// Nobody: the target kernel lacks what the stub would need.
    Unsupported { why: String },
}

impl Reload {
    /// The value of graft's `graft_reload` modinfo key.
    pub fn modinfo(&self) -> &'static str {
        match self {
            Reload::Kernel => "kernel",
            Reload::Stub { .. } => "graft",
            Reload::Unsupported { .. } => "unsupported",
        }
    }
}

/// What the target kernel offers, from its symbol table.
pub fn support(symbols: &SymbolTable) -> Reload {
    if !symbols
        .lookup(graft_elf::klp::VMLINUX, KERNEL_CLEARS)
        .is_empty()
    {
        return Reload::Kernel;
    }
    let mut sympos = [0; 3];
    for (i, name) in NEEDED.iter().enumerate() {
        match symbols.unique_sympos(graft_elf::klp::VMLINUX, name) {
            Ok(p) => sympos[i] = p,
            Err(e) => {
                return Reload::Unsupported {
                    why: format!(
                        "the target kernel neither clears a patch's relocations to a module that goes away (it has no {KERNEL_CLEARS}) nor lets graft do it: {e}"
                    ),
                }
            }
        }
    }
    Reload::Stub { sympos }
}

/// The build's warning when `modules` cannot be reloaded while the patch is
/// loaded, for the patch's summary.
pub fn warning(reload: &Reload, modules: &[String]) -> Option<String> {
    let Reload::Unsupported { why } = reload else {
        return None;
    };
    if modules.is_empty() {
        return None;
    }
    Some(format!(
        "while this patch is loaded, {} cannot be unloaded and loaded again: the kernel would refuse the second load (\"existing value is nonzero\"): {why}; hint: unload the patch before reloading the module",
        modules.join(", ")
    ))
}

/// The C the stub needs for [`Reload::Stub`]: the kernel symbols and
/// `graft_reload_clear(obj, always)`.
pub(crate) fn c_helpers(sympos: [u32; 3]) -> String {
    let sym = |i: usize| graft_elf::klp::sym_name(graft_elf::klp::VMLINUX, NEEDED[i], sympos[i]);
    let mut c = String::new();
    c.push_str("\n/* Module reload: see graft-klp's reload.rs. */\n#include <linux/elf.h>\n#include <linux/mutex.h>\n#include <linux/string.h>\n\n");
    // Quoted assembler names: a klp symbol's name holds a comma.
    let _ = writeln!(
        c,
        "extern void *graft_text_poke(void *addr, const void *opcode, size_t len) __asm__(\"\\\"{}\\\"\");",
        sym(0)
    );
    let _ = writeln!(
        c,
        "extern void graft_text_poke_sync(void) __asm__(\"\\\"{}\\\"\");",
        sym(1)
    );
    let _ = writeln!(
        c,
        "extern struct mutex graft_text_mutex __asm__(\"\\\"{}\\\"\");",
        sym(2)
    );
    c.push_str(CLEAR_C);
    c
}

/// Zeroes the fields of this module's `.klp.rela.<obj>.*` relocations, as
/// the 6.3+ kernel's `clear_relocate_add()` does, unless `always` is false
/// and the object is not going away.
const CLEAR_C: &str = r#"
extern struct klp_patch __graft_patch;

/* The module is going away, or patching it failed while it was coming:
 * nothing of this patch runs for it any more. A patch disabled while the
 * module stays is forgotten by livepatch, and a forced one may still run. */
static bool graft_object_leaving(const struct klp_object *obj)
{
	const struct module *mod = obj->mod;

	if (!mod)
		return false;
	if (!mod->klp_alive)
		return true;
	return mod->state == MODULE_STATE_COMING && !__graft_patch.forced;
}

static size_t graft_field_size(unsigned int type)
{
	switch (type) {
	case R_X86_64_64:
	case R_X86_64_PC64:
		return 8;
	case R_X86_64_32:
	case R_X86_64_32S:
	case R_X86_64_PC32:
	case R_X86_64_PLT32:
		return 4;
	default:
		return 0;
	}
}

static void graft_reload_clear(struct klp_object *obj, bool always)
{
	static const u64 zero;
	const struct klp_modinfo *info = THIS_MODULE->klp_info;
	size_t len;
	unsigned int i, j;

	if (!obj->name || !info || (!always && !graft_object_leaving(obj)))
		return;
	len = strlen(obj->name);
	mutex_lock(&graft_text_mutex);
	for (i = 1; i < info->hdr.e_shnum; i++) {
		const Elf_Shdr *rs = info->sechdrs + i;
		const char *name = info->secstrings + rs->sh_name;
		const Elf_Shdr *ts;
		const Elf_Rela *rela;

		if (!(rs->sh_flags & SHF_RELA_LIVEPATCH) ||
		    strncmp(name, ".klp.rela.", 10) ||
		    strncmp(name + 10, obj->name, len) || name[10 + len] != '.' ||
		    rs->sh_info >= info->hdr.e_shnum)
			continue;
		ts = info->sechdrs + rs->sh_info;
		rela = (const Elf_Rela *)rs->sh_addr;
		for (j = 0; j < rs->sh_size / sizeof(*rela); j++) {
			unsigned long loc = ts->sh_addr + rela[j].r_offset;
			size_t size = graft_field_size(ELF64_R_TYPE(rela[j].r_info));

			if (size && within_module_core(loc, THIS_MODULE))
				graft_text_poke((void *)loc, &zero, size);
		}
	}
	graft_text_poke_sync();
	mutex_unlock(&graft_text_mutex);
}
"#;

#[cfg(test)]
mod tests {
    use super::*;

    fn table(extra: &str) -> SymbolTable {
        SymbolTable::parse(&format!(
            "ffffffff81000000 T _text\nffffffff8103ca20 T text_poke\nffffffff8103cbc0 T text_poke_sync\nffffffff82a5b820 D text_mutex\n{extra}"
        ))
        .unwrap()
    }

    #[test]
    fn support_follows_the_target_kernel() {
        assert_eq!(support(&table("")), Reload::Stub { sympos: [0; 3] });
        assert_eq!(
            support(&table("ffffffff8107b3d0 T clear_relocate_add\n")),
            Reload::Kernel
        );
        let Reload::Unsupported { why } =
            support(&SymbolTable::parse("ffffffff81000000 T _text\n").unwrap())
        else {
            panic!()
        };
        assert!(
            why.contains("no clear_relocate_add") && why.contains("text_poke"),
            "{why}"
        );
        // Two text_mutex: no position is proven, so none is guessed.
        let Reload::Unsupported { why } = support(&table("ffffffff82a5b900 d text_mutex\n")) else {
            panic!()
        };
        assert!(why.contains("text_mutex occurs 2 times"), "{why}");
    }

    #[test]
    fn warning_names_the_modules_only_when_unsupported() {
        let u = Reload::Unsupported { why: "x".into() };
        let w = warning(&u, &["binfmt_misc".into()]).unwrap();
        assert!(
            w.contains("binfmt_misc cannot be unloaded and loaded again"),
            "{w}"
        );
        assert!(w.contains("hint: unload the patch"), "{w}");
        assert!(warning(&u, &[]).is_none());
        assert!(warning(&Reload::Kernel, &["m".into()]).is_none());
        assert!(warning(&Reload::Stub { sympos: [0; 3] }, &["m".into()]).is_none());
    }

    #[test]
    fn helpers_name_the_kernel_symbols_by_position() {
        let c = c_helpers([0, 0, 2]);
        assert!(
            c.contains("__asm__(\"\\\".klp.sym.vmlinux.text_poke,0\\\"\")"),
            "{c}"
        );
        assert!(c.contains("\".klp.sym.vmlinux.text_mutex,2\\\""), "{c}");
    }
}
