//! Jump labels in patched module code whose keys live in that module: the
//! tracepoints of a module's functions (`trace_xfs_…` is a static key of
//! xfs), its `static_branch_*` keys.
//!
//! The kernel sets up a module's jump labels when the module loads
//! (`jump_label_module_notify`, MODULE_STATE_COMING), reading each entry's
//! key. A patch module's entry whose key is in the target module reaches it
//! only through a klp relocation, which livepatch applies later (when the
//! target module is there), so the kernel would read an unrelocated key.
//! graft therefore keeps those entries out of `__jump_table`: they go into
//! a writable table of their own, and the stub registers that table the way
//! the kernel registers a module's, by calling `jump_label_module_notify`
//! (not exported; a klp relocation to vmlinux reaches it) with `struct
//! module`s of its own that hold only the table's entries, one each (the
//! kernel sorts a module's table in place, but livepatch rewrites this
//! table's keys at their original places whenever the module comes back).
//!
//! When: after livepatch has applied the object's relocations and before
//! the new code runs, and after the kernel has set up the module's own jump
//! labels (registering earlier links the key, and the module's own set-up
//! then overwrites the link). For a module already loaded, that is the
//! object's pre-patch callback. For a module that loads later, livepatch
//! runs that callback before the module notifiers, so the callback only
//! marks the table wanted and graft's own module notifier, called after
//! the kernel's jump-label one, registers it. It goes from the post-unpatch
//! callback (the patch is disabled) or from the notifier when the module
//! goes away (before livepatch's callbacks, which clear the relocations
//! the entries' keys are read through).
//! The kernel then keeps the sites in step with the keys as for any module
//! that uses another module's key: the entries are linked into each key's
//! list, and the sites are patched now and at every later toggle.
//!
//! Static calls keyed in the module (a tracepoint's `__SCK__tp_func_*`)
//! need no such care: their entries are left out, so the kernel never
//! rewrites those call sites, which keep calling the module's trampoline —
//! and the kernel keeps the trampoline pointing at the current function.

use std::fmt::Write;

use graft_target::SymbolTable;

use crate::DeferredJumps;

/// The kernel's handler of module jump labels, reached through a klp relocation.
pub const NOTIFY: &str = "jump_label_module_notify";

/// The symbol at the start of file `unit`'s deferred table.
pub fn table_symbol(unit: usize) -> String {
    format!("__graft_jump_{unit}")
}

/// The section the table is written to (writable: the kernel sorts it).
pub fn table_section(unit: usize) -> String {
    format!(".data.graft_jump_{unit}")
}

/// The `sympos` of [`NOTIFY`] in the target kernel, or why it cannot be used.
pub fn support(symbols: &SymbolTable) -> Result<u32, String> {
    symbols
        .unique_sympos(graft_elf::klp::VMLINUX, NOTIFY)
        .map_err(|e| format!("the target kernel's {NOTIFY} cannot be reached ({e})"))
}

/// The C the stub needs for `tables` (of the klp objects `objects`, by
/// name): the kernel's handler, for table `k` a `graft_jumps_want_k()`
/// (pre-patch: register now, or when the module's notifier says it came)
/// and `graft_jumps_del_k()`, and the module notifier itself.
pub(crate) fn c_helpers(tables: &[&DeferredJumps], sympos: u32) -> String {
    let mut c = String::new();
    c.push_str("\n/* Jump labels keyed in a patched module: see graft-klp's jumps.rs. */\n#include <linux/jump_label.h>\n#include <linux/notifier.h>\n#include <linux/string.h>\n\n");
    let _ = writeln!(
        c,
        "extern int graft_jump_label_module_notify(struct notifier_block *nb, unsigned long val, void *data) __asm__(\"\\\"{}\\\"\");",
        graft_elf::klp::sym_name(graft_elf::klp::VMLINUX, NOTIFY, sympos)
    );
    for (k, t) in tables.iter().enumerate() {
        let _ = write!(
            c,
            r#"
extern struct jump_entry {sym}[{n}];
/* One per entry, each holding only its entry: the kernel sorts a module's
 * table in place, and livepatch writes this table's keys again at their
 * original places each time the module comes back, so its order must never
 * change. within_module() of such a module is false for every address. */
static struct module graft_jump_mod_{k}[{n}];
static bool graft_jump_on_{k}, graft_jump_wanted_{k};

static void graft_jumps_del_{k}(void)
{{
	unsigned int i;

	graft_jump_wanted_{k} = false;
	if (!graft_jump_on_{k})
		return;
	for (i = 0; i < {n}; i++)
		if (graft_jump_mod_{k}[i].jump_entries)
			graft_jump_label_module_notify(NULL, MODULE_STATE_GOING, &graft_jump_mod_{k}[i]);
	memset(graft_jump_mod_{k}, 0, sizeof(graft_jump_mod_{k}));
	graft_jump_on_{k} = false;
}}

static int graft_jumps_add_{k}(void)
{{
	unsigned int i;
	int ret;

	if (graft_jump_on_{k})
		return 0;
	graft_jump_on_{k} = true;
	for (i = 0; i < {n}; i++) {{
		graft_jump_mod_{k}[i].jump_entries = &{sym}[i];
		graft_jump_mod_{k}[i].num_jump_entries = 1;
		ret = notifier_to_errno(graft_jump_label_module_notify(NULL, MODULE_STATE_COMING, &graft_jump_mod_{k}[i]));
		if (ret) {{
			/* The kernel has undone this one; the others go too. */
			graft_jump_mod_{k}[i].jump_entries = NULL;
			graft_jumps_del_{k}();
			return ret;
		}}
	}}
	return 0;
}}

/* Pre-patch: the object's relocations are applied. A module still coming
 * has not had its own jump labels set up yet: graft_jump_nb registers the
 * table once it has. */
static int graft_jumps_want_{k}(struct klp_object *obj)
{{
	graft_jump_wanted_{k} = true;
	if (obj->mod && obj->mod->state == MODULE_STATE_COMING)
		return 0;
	return graft_jumps_add_{k}();
}}
"#,
            sym = t.symbol,
            n = t.count,
        );
    }
    c.push_str("\nstatic int graft_jump_module_notify(struct notifier_block *nb, unsigned long val, void *data)\n{\n\tstruct module *mod = data;\n\tint ret = 0;\n\n");
    for (k, t) in tables.iter().enumerate() {
        let _ = write!(
            c,
            "\tif (!strcmp(mod->name, \"{obj}\")) {{\n\t\tif (val == MODULE_STATE_COMING && graft_jump_wanted_{k})\n\t\t\tret = graft_jumps_add_{k}();\n\t\telse if (val == MODULE_STATE_GOING) {{\n\t\t\tgraft_jumps_del_{k}();\n\t\t\tgraft_jump_wanted_{k} = false;\n\t\t}}\n\t}}\n",
            obj = t.object
        );
    }
    c.push_str("\treturn notifier_from_errno(ret);\n}\n\n/* After the kernel's jump-label notifier (priority 1). */\nstatic struct notifier_block graft_jump_nb = {\n\t.notifier_call = graft_jump_module_notify,\n\t.priority = 0,\n};\n");
    c
}
