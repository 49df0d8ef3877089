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

use crate::include::Plan;
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
