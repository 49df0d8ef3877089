//! x86-64 relocation semantics graft relies on, in one place: how wide a
//! relocated field is, where a PC-relative value is measured from, and the
//! merged string sections references may point into.

use crate::model::Section;

const R_X86_64_64: u32 = 1;
const R_X86_64_PC32: u32 = 2;
const R_X86_64_PLT32: u32 = 4;
const R_X86_64_PC64: u32 = 24;

/// Width in bytes of the field a relocation of `r_type` writes.
pub fn reloc_width(r_type: u32) -> u64 {
    match r_type {
        R_X86_64_64 | R_X86_64_PC64 => 8,
        _ => 4,
    }
}

/// The usual distance from a PC-relative field in code to its
/// instruction's end (`call`, `jmp`, most RIP-relative loads); an
/// instruction with an immediate after the displacement has a longer one,
/// which only decoding tells (graft-diff's `CodeMap::bias`).
pub fn pcrel_bias(r_type: u32) -> i64 {
    match r_type {
        R_X86_64_PC32 | R_X86_64_PLT32 => 4,
        _ => 0,
    }
}

/// A section of NUL-terminated strings the linker may merge (`.rodata.str1.1`).
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
