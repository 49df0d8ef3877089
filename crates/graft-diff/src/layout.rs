//! The layout of the kernel's special-section entries, read from the kernel
//! itself rather than written down by hand.
//!
//! graft compiles a small probe ([`PROBE`]) against the kernel tree with the
//! exact compiler command kbuild used there (`graft_kbuild::probe`). The probe
//! defines, for each table, `sizeof` and `_Alignof` of the type the *module
//! loader* reads the section as (`struct module`'s fields: that is how the
//! kernel will read the patch module's tables), and "masks": a value of the
//! entry type with one field set to all ones, so that the compiler itself
//! tells where a field such as `bug_entry.line` or the 18-bit
//! `_ddebug.lineno` bitfield lives. Options the config leaves out simply
//! produce no item; a section whose item is missing is refused, not guessed.

use std::collections::BTreeMap;

use graft_elf::Object;
use serde::{Deserialize, Serialize};

/// Entry layouts by item name (`bug_entry`, `jump_entry`…).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Layout {
    pub items: BTreeMap<String, Item>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Item {
    pub size: u64,
    pub align: u64,
    /// Field name → bytes of an entry with only that field set to all ones.
    pub masks: BTreeMap<String, Vec<u8>>,
}

impl Item {
    /// Offset and width in bytes of the bytes `field` occupies.
    pub fn field(&self, field: &str) -> Option<(u64, u64)> {
        let m = self.masks.get(field)?;
        let first = m.iter().position(|&b| b != 0)?;
        let last = m.iter().rposition(|&b| b != 0)?;
        Some((first as u64, (last - first + 1) as u64))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LayoutError {
    #[error("the layout probe object is unreadable: {0}")]
    Probe(String),
}

/// The probe source. Each `ITEM` names the type the module loader uses for
/// the section; `MASK` locates a field by setting it to all ones.
pub const PROBE: &str = r#"
#include <linux/module.h>
#include <linux/bug.h>
#include <linux/extable.h>
#include <linux/jump_label.h>
#include <linux/static_call.h>
#include <linux/dynamic_debug.h>
#include <linux/printk.h>
#include <linux/tracepoint-defs.h>
#include <linux/error-injection.h>
#include <asm/alternative.h>
#include <asm/extable.h>
#include <asm/orc_types.h>
#include <linux/version.h>
/* Paravirt patch sites became alternatives in 6.8 (no .parainstructions). */
#if defined(CONFIG_PARAVIRT) && LINUX_VERSION_CODE < KERNEL_VERSION(6, 8, 0)
#define GRAFT_PARAINSTRUCTIONS
#include <asm/paravirt_types.h>
#endif
#define ITEM(name, T) const unsigned long graft_layout__##name[2] __attribute__((used)) = { sizeof(T), __alignof__(T) };
#define MASK(name, T, field) const T graft_mask__##name##__##field __attribute__((used)) = { .field = ~0 };
#define MOD(field) __typeof__(*((struct module *)0)->field)
#ifdef CONFIG_GENERIC_BUG
ITEM(bug_entry, MOD(bug_table))
#ifdef CONFIG_DEBUG_BUGVERBOSE
MASK(bug_entry, struct bug_entry, line)
#endif
#endif
ITEM(exception_table_entry, MOD(extable))
#ifdef CONFIG_JUMP_LABEL
ITEM(jump_entry, MOD(jump_entries))
#endif
ITEM(alt_instr, struct alt_instr)
MASK(alt_instr, struct alt_instr, replacementlen)
#ifdef GRAFT_PARAINSTRUCTIONS
ITEM(paravirt_patch_site, struct paravirt_patch_site)
#endif
#ifdef CONFIG_HAVE_STATIC_CALL_INLINE
ITEM(static_call_site, MOD(static_call_sites))
#endif
#ifdef CONFIG_UNWINDER_ORC
ITEM(orc_unwind_ip, __typeof__(*((struct mod_arch_specific *)0)->orc_unwind_ip))
ITEM(orc_entry, __typeof__(*((struct mod_arch_specific *)0)->orc_unwind))
#endif
#ifdef CONFIG_FTRACE_MCOUNT_RECORD
ITEM(mcount_loc, MOD(ftrace_callsites))
#endif
#ifdef CONFIG_KPROBES
ITEM(kprobe_blacklist, MOD(kprobe_blacklist))
#endif
#ifdef CONFIG_FUNCTION_ERROR_INJECTION
ITEM(error_injection_entry, MOD(ei_funcs))
#endif
#ifdef CONFIG_PRINTK_INDEX
ITEM(printk_index, MOD(printk_index_start))
ITEM(pi_entry, struct pi_entry)
MASK(pi_entry, struct pi_entry, line)
MASK(pi_entry, struct pi_entry, func)
#endif
#ifdef CONFIG_DYNAMIC_DEBUG_CORE
ITEM(ddebug, struct _ddebug)
MASK(ddebug, struct _ddebug, lineno)
#endif
"#;

impl Layout {
    /// Reads the items and masks a compiled probe defines.
    pub fn from_probe(obj: &Object) -> Result<Layout, LayoutError> {
        let mut layout = Layout::default();
        for s in obj.data_objects() {
            let Some(section) = s.section.map(|id| obj.section(id)) else {
                continue;
            };
            let start = s.value as usize;
            let bytes = start
                .checked_add(s.size as usize)
                .and_then(|end| section.data.get(start..end))
                .ok_or_else(|| {
                    LayoutError::Probe(format!("{} lies outside its section", s.name))
                })?;
            if let Some(name) = s.name.strip_prefix("graft_layout__") {
                if bytes.len() != 16 {
                    return Err(LayoutError::Probe(format!(
                        "{} has size {}",
                        s.name,
                        bytes.len()
                    )));
                }
                let word = |i: usize| {
                    let mut w = [0u8; 8];
                    w.copy_from_slice(&bytes[i * 8..i * 8 + 8]);
                    u64::from_le_bytes(w)
                };
                let item = layout.items.entry(name.to_owned()).or_default();
                item.size = word(0);
                item.align = word(1);
            } else if let Some(rest) = s.name.strip_prefix("graft_mask__") {
                let (name, field) = rest
                    .split_once("__")
                    .ok_or_else(|| LayoutError::Probe(format!("bad mask name {}", s.name)))?;
                layout
                    .items
                    .entry(name.to_owned())
                    .or_default()
                    .masks
                    .insert(field.to_owned(), bytes.to_vec());
            }
        }
        if layout.items.values().any(|i| i.size == 0) {
            return Err(LayoutError::Probe("a mask without its item".into()));
        }
        Ok(layout)
    }

    pub fn item(&self, name: &str) -> Option<&Item> {
        self.items.get(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_from_masks() {
        let mut i = Item {
            size: 12,
            align: 4,
            ..Item::default()
        };
        i.masks.insert(
            "line".into(),
            vec![0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0, 0],
        );
        assert_eq!(i.field("line"), Some((8, 2)));
        assert_eq!(i.field("nope"), None);
    }
}
