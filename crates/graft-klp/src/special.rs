//! Special sections: tables the kernel reads about code (ftrace call sites,
//! return thunk sites, ORC unwind data…). The module needs the entries that
//! describe the code it carries, and nothing else.

use graft_elf::{Object, RelocTarget, Section, SectionId};

use crate::include::Plan;
use crate::KlpError;

/// How graft treats a section of the patched object that it does not carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Tables of one-relocation entries about code: keep the entries of carried code.
    Entries,
    /// ORC: `.orc_unwind_ip` entries with parallel `.orc_unwind` records.
    OrcIp,
    /// Consumed by `.orc_unwind_ip`'s treatment.
    OrcData,
    /// Never needed by a patch module.
    Drop,
    /// Ordinary code or data: a reference from it to a carried function is a
    /// reference to the old copy, which livepatch redirects.
    Ordinary,
}

/// The rule table. Anything not listed that refers to carried code is refused.
fn kind(name: &str) -> Option<Kind> {
    const ENTRIES: &[&str] = &["__mcount_loc", ".return_sites", ".retpoline_sites"];
    const ORDINARY: &[&str] = &[
        ".text",
        ".data",
        ".rodata",
        ".bss",
        ".init.",
        ".exit.",
        ".ref.",
        ".meminit.",
    ];
    const DROP: &[&str] = &[
        ".discard.",
        ".debug_",
        ".note",
        ".comment",
        ".BTF",
        ".modinfo",
    ];
    if ENTRIES.contains(&name) {
        Some(Kind::Entries)
    } else if name == ".orc_unwind_ip" {
        Some(Kind::OrcIp)
    } else if name == ".orc_unwind" {
        Some(Kind::OrcData)
    } else if DROP.iter().any(|p| name.starts_with(p)) {
        Some(Kind::Drop)
    } else if ORDINARY.iter().any(|p| name.starts_with(p)) {
        Some(Kind::Ordinary)
    } else {
        None
    }
}

/// A special section cut down to the entries of carried code.
pub struct Filtered {
    pub source: SectionId,
    pub data: Vec<u8>,
    /// (new offset, original relocation offset) of each kept relocation.
    pub relocs: Vec<(u64, u64)>,
}

pub fn filter(plan: &Plan<'_>) -> Result<Vec<Filtered>, KlpError> {
    let obj = plan.patched;
    let unsupported = |s: &Section| KlpError::UnsupportedSpecialSection {
        object: plan.object_name(),
        section: s.name.clone(),
    };
    let mut out = Vec::new();
    for s in &obj.sections {
        if plan.sections.contains(&s.id) || s.relocs.is_empty() {
            continue;
        }
        let refers = s.relocs.iter().any(|r| carried(plan, obj, r));
        match kind(&s.name) {
            Some(Kind::Drop | Kind::Ordinary | Kind::OrcData) => {}
            _ if !refers => {}
            Some(Kind::Entries) => {
                let size = entry_size(s).ok_or_else(|| unsupported(s))?;
                out.push(keep_entries(plan, obj, s, size, None));
            }
            Some(Kind::OrcIp) => {
                let ip_size = entry_size(s).ok_or_else(|| unsupported(s))?;
                let data = obj
                    .section_by_name(".orc_unwind")
                    .ok_or_else(|| unsupported(s))?;
                let n = s.size / ip_size;
                if n == 0 || !data.size.is_multiple_of(n) {
                    return Err(unsupported(data));
                }
                let ip = keep_entries(plan, obj, s, ip_size, None);
                let kept: Vec<u64> = ip.relocs.iter().map(|&(_, orig)| orig / ip_size).collect();
                let orc = keep_entries(plan, obj, data, data.size / n, Some(&kept));
                out.push(ip);
                out.push(orc);
            }
            None => return Err(unsupported(s)),
        }
    }
    Ok(out)
}

fn carried(plan: &Plan<'_>, obj: &Object, r: &graft_elf::Reloc) -> bool {
    match obj.reloc_target(r) {
        RelocTarget::SectionOffset(sec, _) => plan.sections.contains(&sec),
        RelocTarget::Symbol(id) => obj
            .symbol(id)
            .section
            .is_some_and(|sec| plan.sections.contains(&sec)),
    }
}

/// Entries of tables with one relocation per entry, all at the same place in
/// the entry: the size follows from the table itself.
fn entry_size(s: &Section) -> Option<u64> {
    let n = s.relocs.len() as u64;
    if n == 0 || !s.size.is_multiple_of(n) {
        return None;
    }
    let size = s.size / n;
    let at = s.relocs[0].offset % size;
    s.relocs
        .iter()
        .enumerate()
        .all(|(i, r)| r.offset == i as u64 * size + at)
        .then_some(size)
}

/// Keeps the entries whose relocation refers to carried code, or, for a
/// table without relocations, the entries listed in `by_index`.
fn keep_entries(
    plan: &Plan<'_>,
    obj: &Object,
    s: &Section,
    size: u64,
    by_index: Option<&[u64]>,
) -> Filtered {
    let mut f = Filtered {
        source: s.id,
        data: Vec::new(),
        relocs: Vec::new(),
    };
    let n = s.size / size;
    for i in 0..n {
        let (lo, hi) = (i * size, (i + 1) * size);
        let relocs = s.relocs_in(lo, hi);
        let keep = match by_index {
            Some(list) => list.contains(&i),
            None => !relocs.is_empty() && relocs.iter().all(|r| carried(plan, obj, r)),
        };
        if keep {
            let base = f.data.len() as u64;
            f.data.extend_from_slice(&s.data[lo as usize..hi as usize]);
            f.relocs
                .extend(relocs.iter().map(|r| (base + r.offset - lo, r.offset)));
        }
    }
    f
}
