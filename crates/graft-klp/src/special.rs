//! Special sections: tables the kernel reads about code (ftrace call sites,
//! bug sites, exception fixups, jump labels, alternatives, return thunk
//! sites, ORC unwind data…). The module needs the entries that describe the
//! code it carries, and nothing else. Which sections are tables, and how
//! big their entries are, the differ knows ([`graft_diff::special`], sizes
//! from the kernel's own layout); it also refuses sections it does not
//! understand. This pass cuts each table down to the kept entries.

use graft_diff::special::{role, Role};
use graft_diff::ObjectDiff;
use graft_elf::SectionId;

use crate::include::{Plan, Target};
use crate::KlpError;

/// A special section cut down to the entries of carried code.
#[derive(Debug, Clone)]
pub struct Filtered {
    pub source: SectionId,
    pub data: Vec<u8>,
    /// (new offset, original relocation offset) of each kept relocation;
    /// its target is in the plan's `targets` under the original offset.
    pub relocs: Vec<(u64, u64)>,
    /// Written as this writable data section with a global symbol at its
    /// start, instead of under the source's name (jump-label entries keyed
    /// in the target module, which the stub registers itself).
    pub deferred: Option<crate::DeferredJumps>,
}

/// Whether a kept jump-label entry's key is a module's symbol reached
/// through a klp relocation: the kernel sets up a module's jump labels when
/// it loads, before livepatch applies such relocations, so these entries
/// must stay out of `__jump_table` (see [`crate::jumps`]).
fn keyed_in_module(plan: &Plan<'_>, table: SectionId, relocs: &[graft_elf::Reloc]) -> bool {
    relocs.iter().any(|r| {
        matches!(
            plan.targets.get(&(table, r.offset)),
            Some(crate::include::Target::External(name, _))
                if graft_elf::klp::parse_sym_name(name)
                    .is_some_and(|(o, _, _)| o != graft_elf::klp::VMLINUX)
        )
    })
}

/// The cut-down tables of a plan (computed while planning, because the kept
/// entries' own references belong to the closure).
pub fn filter(plan: &Plan<'_>) -> Result<Vec<Filtered>, KlpError> {
    Ok(plan.specials.clone())
}

/// Builds the cut-down tables from the kept (table, entry) indexes.
pub(crate) fn cut(
    plan: &Plan<'_>,
    diff: &ObjectDiff,
    kept: &[(usize, usize)],
) -> Result<Vec<Filtered>, KlpError> {
    let obj = plan.patched;
    let mut out: Vec<Filtered> = Vec::new();
    for (ti, t) in diff.tables.iter().enumerate() {
        let idx: Vec<usize> = kept
            .iter()
            .filter(|(k, _)| *k == ti)
            .map(|(_, e)| *e)
            .collect();
        if idx.is_empty() {
            continue;
        }
        let s = obj.section(t.id);
        let mut f = Filtered {
            source: t.id,
            data: Vec::new(),
            relocs: Vec::new(),
            deferred: None,
        };
        let mut deferred = Filtered {
            source: t.id,
            data: Vec::new(),
            relocs: Vec::new(),
            deferred: Some(crate::DeferredJumps {
                object: plan.object.clone(),
                symbol: crate::jumps::table_symbol(plan.unit),
                count: 0,
            }),
        };
        for &ei in &idx {
            let e = &t.entries[ei];
            let (lo, hi) = (e.offset, e.offset + e.size);
            let in_module = keyed_in_module(plan, t.id, s.relocs_in(lo, hi));
            if s.name == ".static_call_sites" && in_module {
                // Left calling the module's trampoline, which the kernel
                // keeps pointing at the current function: always right,
                // one jump slower (see jumps.rs).
                continue;
            }
            let f = if s.name == "__jump_table" && in_module {
                if let Some(d) = deferred.deferred.as_mut() {
                    d.count += 1;
                }
                &mut deferred
            } else {
                &mut f
            };
            copy_entry(plan, s, lo, hi, f)?;
        }
        // ORC: `.orc_unwind` holds one record per `.orc_unwind_ip` entry, by index.
        if s.name == ".orc_unwind_ip" {
            let orc = orc_records(plan, diff, t.entries.len(), &idx)?;
            out.push(f);
            out.push(orc);
            continue;
        }
        if !f.data.is_empty() {
            out.push(f);
        }
        if !deferred.data.is_empty() {
            out.push(deferred);
        }
    }
    Ok(out)
}

/// Appends the entry `[lo, hi)` of table `s` to `f`, with the relocations
/// the plan resolved for it.
fn copy_entry(
    plan: &Plan<'_>,
    s: &graft_elf::Section,
    lo: u64,
    hi: u64,
    f: &mut Filtered,
) -> Result<(), KlpError> {
    let bytes = s.data.get(lo as usize..hi as usize).ok_or_else(|| {
        KlpError::UnsupportedSpecialSection {
            object: plan.object_name(),
            section: s.name.clone(),
        }
    })?;
    let base = f.data.len() as u64;
    f.data.extend_from_slice(bytes);
    for r in s.relocs_in(lo, hi) {
        if plan.targets.contains_key(&(s.id, r.offset)) {
            f.relocs.push((base + r.offset - lo, r.offset));
        }
    }
    Ok(())
}

/// The `.orc_unwind` records of the kept `.orc_unwind_ip` entries `idx`
/// (of `n` in all): one record per entry, by index.
fn orc_records(
    plan: &Plan<'_>,
    diff: &ObjectDiff,
    n: usize,
    idx: &[usize],
) -> Result<Filtered, KlpError> {
    let obj = plan.patched;
    let data = obj
        .sections
        .iter()
        .find(|x| matches!(role(x), Some(Role::OrcData)))
        .ok_or_else(|| KlpError::UnsupportedSpecialSection {
            object: plan.object_name(),
            section: ".orc_unwind".into(),
        })?;
    let size = diff.layout.item("orc_entry").map(|i| i.size).unwrap_or(0);
    if size == 0 || data.size != n as u64 * size {
        return Err(KlpError::UnsupportedSpecialSection {
            object: plan.object_name(),
            section: data.name.clone(),
        });
    }
    let mut orc = Filtered {
        source: data.id,
        data: Vec::new(),
        relocs: Vec::new(),
        deferred: None,
    };
    for &ei in idx {
        let lo = ei as u64 * size;
        if let Some(b) = data.data.get(lo as usize..(lo + size) as usize) {
            orc.data.extend_from_slice(b);
        }
    }
    Ok(orc)
}

/// Tables objtool writes about the code it checks.
pub const OBJTOOL_TABLES: &[&str] = &[
    ".orc_unwind",
    ".orc_unwind_ip",
    ".return_sites",
    ".retpoline_sites",
    ".call_sites",
    ".static_call_sites",
    ".ibt_endbr_seal",
    ".cfi_sites",
];

/// Annotations objtool reads (`ANNOTATE_REACHABLE` after a WARN's `ud2`,
/// `ANNOTATE_RETPOLINE_SAFE`, unwind hints, `STACK_FRAME_NON_STANDARD`…):
/// one entry per annotated place, its relocation first.
pub const OBJTOOL_ANNOTATIONS: &[&str] = &[
    ".discard.reachable",
    ".discard.unreachable",
    ".discard.retpoline_safe",
    ".discard.noendbr",
    ".discard.intra_function_calls",
    ".discard.ignore_alts",
    ".discard.instr_begin",
    ".discard.instr_end",
    ".discard.validate_unret",
    ".discard.unwind_hints",
    ".discard.func_stack_frame_non_standard",
];

/// For kernels whose build runs objtool on each module at its link
/// (`--link`: IBT or clang LTO, as Debian's 6.12), kbuild runs it on the
/// patch module too, over the patch objects and the stub together: it
/// writes the ORC data, return and call sites, static call sites and ENDBR
/// seals of the whole module, and it refuses to add a table an object
/// already has. So the patch objects carry none of objtool's tables (a
/// module's own objects may have them: kbuild runs objtool on a module of
/// one file), and carry instead the annotations objtool reads, cut down to
/// the carried code's.
pub fn objtool_at_link(plan: &mut Plan<'_>) -> Result<(), KlpError> {
    let obj = plan.patched;
    plan.objtool_at_link = true;
    plan.specials
        .retain(|f| !OBJTOOL_TABLES.contains(&obj.section(f.source).name.as_str()));
    for s in &obj.sections {
        if !OBJTOOL_ANNOTATIONS.contains(&s.name.as_str()) || s.relocs.is_empty() {
            continue;
        }
        // A dense array: one relocation at the start of each entry.
        let n = s.relocs.len() as u64;
        let size = s.size / n;
        let dense = size > 0
            && s.size == size * n
            && s.relocs
                .iter()
                .enumerate()
                .all(|(i, r)| r.offset == i as u64 * size);
        if !dense {
            return Err(KlpError::UnsupportedSpecialSection {
                object: plan.object_name(),
                section: s.name.clone(),
            });
        }
        let mut f = Filtered {
            source: s.id,
            data: Vec::new(),
            relocs: Vec::new(),
            deferred: None,
        };
        for r in &s.relocs {
            let Some((home, off)) = graft_diff::special::data_target(obj, r) else {
                continue;
            };
            if !plan.sections.contains(&home) {
                continue;
            }
            let (lo, hi) = (r.offset as usize, (r.offset + size) as usize);
            let Some(bytes) = s.data.get(lo..hi) else {
                continue;
            };
            f.relocs.push((f.data.len() as u64, r.offset));
            f.data.extend_from_slice(bytes);
            plan.targets
                .insert((s.id, r.offset), Target::Section(home, off));
        }
        if !f.data.is_empty() {
            plan.specials.push(f);
        }
    }
    Ok(())
}
