//! Equality of a function or data object across the two builds: bytes equal
//! outside relocation fields, and every relocation pointing at "the same
//! thing" (same symbol name, same string, same place in a section).

use graft_elf::{Object, Reloc, RelocTarget, Section, SymbolId};

use crate::correlate::Twins;
use crate::{Change, Verdict};

// x86-64 relocation types that matter for comparison.
const R_X86_64_64: u32 = 1;
const R_X86_64_PC32: u32 = 2;
const R_X86_64_PLT32: u32 = 4;
const R_X86_64_PC64: u32 = 24;

/// Width in bytes of the field a relocation writes.
pub fn reloc_width(r_type: u32) -> u64 {
    match r_type {
        R_X86_64_64 | R_X86_64_PC64 => 8,
        _ => 4,
    }
}

/// PC-relative relocations carry `-4` (the field's distance to the next
/// instruction) in their addend; remove it to see the real target offset.
pub fn pcrel_bias(r_type: u32) -> i64 {
    match r_type {
        R_X86_64_PC32 | R_X86_64_PLT32 => 4,
        _ => 0,
    }
}

/// What a relocation refers to, independent of symbol and section indexes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RefKey {
    /// A named symbol; the residual addend is kept alongside.
    Symbol(String),
    /// A NUL-terminated string in a mergeable string section.
    Str(Vec<u8>),
    /// Anonymous data in a section (jump tables, constants).
    Section(String),
}

/// A relocation made comparable: offset from the symbol start, type, what it
/// references and the addend relative to that.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NormReloc {
    pub offset: u64,
    pub r_type: u32,
    pub key: RefKey,
    pub addend: i64,
}

pub fn is_string_section(s: &Section) -> bool {
    const SHF_MERGE: u64 = 0x10;
    const SHF_STRINGS: u64 = 0x20;
    s.flags & (SHF_MERGE | SHF_STRINGS) == SHF_MERGE | SHF_STRINGS
}

/// The C string starting at `offset` of a string section.
pub fn string_at(s: &Section, offset: i64) -> Option<&[u8]> {
    let start = usize::try_from(offset).ok()?;
    let tail = s.data.get(start..)?;
    let end = tail.iter().position(|&b| b == 0)?;
    Some(&tail[..end])
}

pub fn normalize(obj: &Object, reloc: &Reloc, base: u64) -> NormReloc {
    let (key, addend) = match obj.reloc_target(reloc) {
        RelocTarget::Symbol(id) => (RefKey::Symbol(obj.symbol(id).name.clone()), reloc.addend),
        RelocTarget::SectionOffset(sec, off) => {
            let section = obj.section(sec);
            let bias = pcrel_bias(reloc.r_type);
            if is_string_section(section) {
                match string_at(section, off + bias) {
                    Some(s) => (RefKey::Str(s.to_vec()), -bias),
                    None => (RefKey::Section(section.name.clone()), reloc.addend),
                }
            } else if let Some(sym) = obj.symbol_covering(sec, off + bias) {
                (RefKey::Symbol(sym.name.clone()), off - sym.value as i64)
            } else {
                (RefKey::Section(section.name.clone()), off)
            }
        }
    };
    NormReloc {
        offset: reloc.offset - base,
        r_type: reloc.r_type,
        key,
        addend,
    }
}

/// Bytes and normalized relocations of a symbol.
fn body(obj: &Object, sym: SymbolId) -> (&[u8], Vec<NormReloc>) {
    let s = obj.symbol(sym);
    let section = obj.section(s.section.expect("defined symbol"));
    let start = s.value;
    let end = if s.size == 0 {
        section.size
    } else {
        start + s.size
    };
    let bytes = if section.is_nobits() {
        &[][..]
    } else {
        let lo = (start as usize).min(section.data.len());
        let hi = (end as usize).min(section.data.len()).max(lo);
        &section.data[lo..hi]
    };
    let relocs = section
        .relocs_in(start, end)
        .iter()
        .map(|r| normalize(obj, r, start))
        .collect();
    (bytes, relocs)
}

/// First offset at which the two symbols differ, or `None` if they are the same.
pub fn first_difference(orig: &Object, o: SymbolId, patched: &Object, p: SymbolId) -> Option<u64> {
    let (ob, orl) = body(orig, o);
    let (pb, prl) = body(patched, p);
    let (osz, psz) = (orig.symbol(o).size, patched.symbol(p).size);
    let masked = |offset: u64| {
        orl.iter()
            .chain(prl.iter())
            .any(|r| offset >= r.offset && offset < r.offset + reloc_width(r.r_type))
    };
    let byte_diff = ob
        .iter()
        .zip(pb.iter())
        .enumerate()
        .find(|&(i, (a, b))| a != b && !masked(i as u64))
        .map(|(i, _)| i as u64);
    let reloc_diff = orl
        .iter()
        .zip(prl.iter())
        .find(|(a, b)| a != b)
        .map(|(a, b)| a.offset.min(b.offset))
        .or_else(|| {
            (orl.len() != prl.len()).then(|| {
                let n = orl.len().min(prl.len());
                orl.get(n).or(prl.get(n)).map_or(0, |r| r.offset)
            })
        });
    let size_diff = (osz != psz || ob.len() != pb.len()).then(|| ob.len().min(pb.len()) as u64);
    [byte_diff, reloc_diff, size_diff]
        .into_iter()
        .flatten()
        .min()
}

pub fn verdict(orig: &Object, patched: &Object, twins: &Twins, p: SymbolId) -> Change {
    let sym = patched.symbol(p);
    let section_id = sym.section.expect("defined symbol");
    let twin = twins.orig_of(p);
    let verdict = match twin {
        None => Verdict::New,
        Some(o) => match first_difference(orig, o, patched, p) {
            None => Verdict::Same,
            Some(offset) => Verdict::Changed { offset },
        },
    };
    Change {
        name: sym.name.clone(),
        section: patched.section(section_id).name.clone(),
        verdict,
        symbol: p,
        section_id,
        twin,
    }
}
