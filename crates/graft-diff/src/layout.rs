//! The layout of the kernel's special-section entries, read from the kernel
//! itself rather than written down by hand.
//!
//! graft compiles a small probe against the kernel tree with the exact
//! compiler command kbuild used there (kbuild records it for
//! `arch/x86/kernel/asm-offsets.s`, which every prepared tree has). The probe
//! defines, for each table, `sizeof` and `_Alignof` of the type the *module
//! loader* reads the section as (`struct module`'s fields: that is how the
//! kernel will read the patch module's tables), and "masks": a value of the
//! entry type with one field set to all ones, so that the compiler itself
//! tells where a field such as `bug_entry.line` or the 18-bit
//! `_ddebug.lineno` bitfield lives. Options the config leaves out simply
//! produce no item; a section whose item is missing is refused, not guessed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

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
    #[error("{path}: cannot read kbuild's record of the compiler command ({source}); hint: the tree must be prepared (`make prepare`)")]
    NoCommand {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: no compiler command in it; hint: run `make prepare` in the tree again")]
    BadCommand { path: PathBuf },
    #[error("cannot run the compiler {compiler}: {source}")]
    Run {
        compiler: String,
        source: std::io::Error,
    },
    #[error("compiling the layout probe against {tree} failed: {first_error}")]
    Compile { tree: PathBuf, first_error: String },
    #[error("the layout probe object is unreadable: {0}")]
    Probe(String),
    #[error("cannot create a scratch directory: {0}")]
    Scratch(std::io::Error),
}

/// The probe source. Each `ITEM` names the type the module loader uses for
/// the section; `MASK` locates a field by setting it to all ones.
const PROBE: &str = r#"
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

/// Where kbuild records the command it compiled `asm-offsets.c` with.
const COMMAND_RECORD: &str = "arch/x86/kernel/.asm-offsets.s.cmd";

impl Layout {
    /// Compiles the probe against the prepared kernel tree `tree` (which is
    /// only read) and reads the layout from the object.
    pub fn probe(tree: &Path) -> Result<Layout, LayoutError> {
        Layout::probe_with(tree, &|compiler, _scratch| {
            let mut c = Command::new(compiler);
            c.current_dir(tree);
            c
        })
    }

    /// [`Layout::probe`] with the compiler command made by `command`
    /// (compiler, scratch directory), to be run in `tree`: a tree built
    /// inside another Debian's root compiles there.
    pub fn probe_with(
        tree: &Path,
        command: &dyn Fn(&str, &Path) -> Command,
    ) -> Result<Layout, LayoutError> {
        let record = tree.join(COMMAND_RECORD);
        let text = std::fs::read_to_string(&record).map_err(|source| LayoutError::NoCommand {
            path: record.clone(),
            source,
        })?;
        let bad = || LayoutError::BadCommand {
            path: record.clone(),
        };
        let line = text.lines().next().ok_or_else(bad)?;
        let (_, cmd) = line.split_once(" := ").ok_or_else(bad)?;
        let words = shell_words(cmd).ok_or_else(bad)?;
        let mut args = Vec::new();
        let mut skip = false;
        for w in words.iter().skip(1) {
            if skip {
                skip = false;
                continue;
            }
            match w.as_str() {
                "-o" => skip = true,
                "-S" | "-c" | "-fverbose-asm" => {}
                w if w.starts_with("-Wp,") || w.ends_with(".c") => {}
                w => args.push(w.to_owned()),
            }
        }
        let compiler = words.first().ok_or_else(bad)?.clone();
        let scratch = tempfile::tempdir().map_err(LayoutError::Scratch)?;
        let src = scratch.path().join("graft-layout-probe.c");
        let out = scratch.path().join("graft-layout-probe.o");
        std::fs::write(&src, PROBE).map_err(LayoutError::Scratch)?;
        let run = command(&compiler, scratch.path())
            .args(&args)
            .arg("-w")
            .arg("-c")
            .arg("-o")
            .arg(&out)
            .arg(&src)
            .output()
            .map_err(|source| LayoutError::Run {
                compiler: compiler.clone(),
                source,
            })?;
        if !run.status.success() {
            let err = String::from_utf8_lossy(&run.stderr);
            return Err(LayoutError::Compile {
                tree: tree.to_owned(),
                first_error: err
                    .lines()
                    .find(|l| l.contains("error"))
                    .unwrap_or("no output")
                    .to_owned(),
            });
        }
        let obj = Object::read(&out).map_err(|e| LayoutError::Probe(e.to_string()))?;
        Layout::from_probe(&obj)
    }

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

/// Splits a command line the way `sh` would for the quoting kbuild uses
/// (`'…'`, `"…"` and backslashes); `None` on an unterminated quote.
pub fn shell_words(s: &str) -> Option<Vec<String>> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            '\'' => {
                in_word = true;
                loop {
                    match chars.next()? {
                        '\'' => break,
                        c => cur.push(c),
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next()? {
                        '"' => break,
                        '\\' => cur.push(chars.next()?),
                        c => cur.push(c),
                    }
                }
            }
            '\\' => {
                in_word = true;
                cur.push(chars.next()?);
            }
            ';' if !in_word || cur.is_empty() => break,
            c if c.is_whitespace() => {
                if in_word {
                    out.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            c => {
                in_word = true;
                cur.push(c);
            }
        }
    }
    if in_word {
        out.push(cur);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_kbuild_commands() {
        let w = shell_words(
            r#"gcc-12 -DKBUILD_MODFILE='"./asm-offsets"' -I./include -c x.c ; ./tools/objtool"#,
        )
        .unwrap();
        assert_eq!(
            w,
            vec![
                "gcc-12",
                "-DKBUILD_MODFILE=\"./asm-offsets\"",
                "-I./include",
                "-c",
                "x.c"
            ]
        );
        assert!(shell_words("'open").is_none());
    }

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
