//! Run-pre verification (Ksplice's idea): before a patch is built on the
//! original objects, their code is matched byte for byte against the target
//! kernel's code, outside relocation fields, and every relocation field of
//! the kernel's copy must reach the symbol our relocation names.
//!
//! A match proves the build is faithful (same source, config and compiler)
//! and tells which of several same-named symbols is meant: the candidate
//! whose bytes match is the one, and the addresses its relocation fields
//! reach name the symbols the function uses.

use std::collections::BTreeMap;

use graft_diff::compare::{is_string_section, pcrel_bias, reloc_width};
use graft_elf::{Object, RelocTarget, SymbolId};
use graft_target::{KallsymsEntry, KernelImage, SymbolTable};
use iced_x86::{Decoder, DecoderOptions, Formatter, GasFormatter, Instruction};
use serde::Serialize;

/// The kernel graft verifies against.
pub struct Target<'a> {
    pub symbols: &'a SymbolTable,
    pub image: &'a KernelImage,
    /// The klp object ("vmlinux").
    pub object: &'a str,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Match {
    pub function: String,
    /// Address in the symbol table's address space.
    pub address: u64,
    pub sympos: u32,
}

/// What verification established.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Verified {
    pub functions: Vec<Match>,
    /// `sympos` of every symbol whose identity the matched code proved.
    pub sympos: BTreeMap<String, u32>,
}

#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("{object}: {function} differs from the target kernel's code at +{offset:#x}: ours `{ours}`, the kernel's `{theirs}`; the source, config or compiler is not the target's; hint: build from the target kernel's exact source and config (--no-verify skips this check at your own risk)")]
    Mismatch {
        object: String,
        function: String,
        offset: u64,
        ours: String,
        theirs: String,
    },
    #[error("{object}: {function} at +{offset:#x} refers to {ours}, but the target kernel's code there reaches {theirs}; the source or config is not the target's; hint: build from the target kernel's exact source and config (--no-verify skips this check at your own risk)")]
    WrongReference {
        object: String,
        function: String,
        offset: u64,
        ours: String,
        theirs: String,
    },
    #[error("{object}: {function} is not in the target kernel's symbol table; hint: the file may not be built into this kernel, or the function is inlined there")]
    NotInKernel { object: String, function: String },
    #[error("{object}: {function} matches {count} functions of the target kernel equally ({addresses}); graft cannot tell which one to patch")]
    Ambiguous {
        object: String,
        function: String,
        count: usize,
        addresses: String,
    },
    #[error("the kernel image {path} does not hold the code of {function} at {address:#x}; hint: pass the image the target booted")]
    NotInImage {
        path: String,
        function: String,
        address: u64,
    },
}

/// Why one candidate did not match.
enum Miss {
    Bytes {
        offset: u64,
    },
    Reference {
        offset: u64,
        ours: String,
        theirs: String,
    },
    NoBytes,
}

/// Verifies `functions` of `orig` against the target.
pub fn verify(
    orig: &Object,
    functions: &[SymbolId],
    target: &Target<'_>,
) -> Result<Verified, VerifyError> {
    let object = orig.path.display().to_string();
    let delta = target
        .symbols
        .lookup(target.object, "_text")
        .first()
        .map_or(0, |e| e.address.wrapping_sub(target.image.text_start));
    let mut out = Verified::default();
    for &f in functions {
        let sym = orig.symbol(f);
        let candidates: Vec<&KallsymsEntry> = target
            .symbols
            .lookup(target.object, &sym.name)
            .into_iter()
            .filter(|e| e.is_text())
            .collect();
        if candidates.is_empty() {
            return Err(VerifyError::NotInKernel {
                object: object.clone(),
                function: sym.name.clone(),
            });
        }
        let mut matched = Vec::new();
        let mut misses = Vec::new();
        for (i, c) in candidates.iter().enumerate() {
            match check(orig, f, c.address, delta, target) {
                Ok(seen) => matched.push((i, c.address, seen)),
                Err(m) => misses.push((c.address, m)),
            }
        }
        match matched.len() {
            1 => {
                let (i, address, seen) = matched.pop().expect("one");
                let sympos = if candidates.len() == 1 {
                    0
                } else {
                    i as u32 + 1
                };
                out.functions.push(Match {
                    function: sym.name.clone(),
                    address,
                    sympos,
                });
                out.sympos.insert(sym.name.clone(), sympos);
                for (name, addr) in seen {
                    let same = target.symbols.lookup(target.object, &name);
                    if let Some(pos) = same.iter().position(|e| e.address == addr) {
                        let p = if same.len() == 1 { 0 } else { pos as u32 + 1 };
                        out.sympos.insert(name, p);
                    }
                }
            }
            0 => return Err(explain(orig, f, &object, delta, target, misses)),
            n => {
                return Err(VerifyError::Ambiguous {
                    object,
                    function: sym.name.clone(),
                    count: n,
                    addresses: matched
                        .iter()
                        .map(|m| format!("{:#x}", m.1))
                        .collect::<Vec<_>>()
                        .join(", "),
                })
            }
        }
    }
    Ok(out)
}

/// Compares one candidate; on success returns the (symbol name, address)
/// pairs its relocation fields reach.
fn check(
    orig: &Object,
    f: SymbolId,
    address: u64,
    delta: u64,
    target: &Target<'_>,
) -> Result<Vec<(String, u64)>, Miss> {
    let sym = orig.symbol(f);
    let section = orig.section(sym.section.expect("defined"));
    let ours = code_of(section, sym).ok_or(Miss::NoBytes)?;
    let image_addr = address.wrapping_sub(delta);
    let theirs = target
        .image
        .bytes(image_addr, ours.len())
        .ok_or(Miss::NoBytes)?;
    let relocs = section.relocs_in(sym.value, end_of(sym));
    let masked = |i: u64| relocs.iter().any(|r| in_field(r, sym.value, i));
    if let Some(i) = (0..ours.len()).find(|&i| ours[i] != theirs[i] && !masked(i as u64)) {
        return Err(Miss::Bytes { offset: i as u64 });
    }
    let mut seen = Vec::new();
    for r in relocs {
        let off = (r.offset - sym.value) as usize;
        let width = reloc_width(r.r_type) as usize;
        let Some(field) = off.checked_add(width).and_then(|end| theirs.get(off..end)) else {
            continue;
        };
        let p = address.wrapping_add(off as u64);
        // S + A as the kernel's field encodes it, in symbol-table addresses.
        let s_plus_a = match r.r_type {
            2 | 4 => p.wrapping_add(i32::from_le_bytes(field.try_into().expect("4")) as i64 as u64),
            11 => {
                (i32::from_le_bytes(field.try_into().expect("4")) as i64 as u64).wrapping_add(delta)
            }
            10 => u64::from(u32::from_le_bytes(field.try_into().expect("4"))).wrapping_add(delta),
            1 => u64::from_le_bytes(field.try_into().expect("8")).wrapping_add(delta),
            _ => continue,
        };
        let Some((name, addend)) = named_target(orig, r) else {
            continue;
        };
        let at = s_plus_a.wrapping_sub(addend as u64);
        let same = target.symbols.lookup(target.object, &name);
        if same.is_empty() {
            // Not in kallsyms (e.g. a linker-script symbol): nothing to prove.
            continue;
        }
        if !same.iter().any(|e| e.address == at) {
            return Err(Miss::Reference {
                offset: off as u64,
                ours: name,
                theirs: describe(target.symbols, target.object, at),
            });
        }
        seen.push((name, at));
    }
    Ok(seen)
}

/// The bytes of function `sym` in `section`, if the section holds them all
/// (a malformed object's symbol may lie past its section).
fn code_of<'a>(section: &'a graft_elf::Section, sym: &graft_elf::Symbol) -> Option<&'a [u8]> {
    let start = usize::try_from(sym.value).ok()?;
    let end = start.checked_add(usize::try_from(sym.size).ok()?)?;
    section.data.get(start..end)
}

/// The end of `sym`'s range in its section, saturating.
fn end_of(sym: &graft_elf::Symbol) -> u64 {
    sym.value.saturating_add(sym.size)
}

/// Whether byte `i` of a function at `base` lies in relocation `r`'s field
/// (`r` at or after `base`).
fn in_field(r: &graft_elf::Reloc, base: u64, i: u64) -> bool {
    let at = r.offset - base;
    i >= at && i < at.saturating_add(reloc_width(r.r_type))
}

/// The named symbol a relocation reaches and the addend relative to it;
/// `None` for strings and anonymous data, which have no name to check.
fn named_target(obj: &Object, r: &graft_elf::Reloc) -> Option<(String, i64)> {
    match obj.reloc_target(r) {
        RelocTarget::Symbol(id) => Some((obj.symbol(id).name.clone(), r.addend)),
        RelocTarget::SectionOffset(sec, off) => {
            let section = obj.section(sec);
            if is_string_section(section) {
                return None;
            }
            let s = obj.symbol_covering(sec, off.wrapping_add(pcrel_bias(r.r_type)))?;
            Some((s.name.clone(), off.wrapping_sub(s.value as i64)))
        }
    }
}

/// "name+0x12" for an address, from the symbol table.
fn describe(symbols: &SymbolTable, object: &str, addr: u64) -> String {
    match symbols.nearest(object, addr) {
        Some(e) if e.address == addr => e.name.clone(),
        Some(e) => format!("{}+{:#x}", e.name, addr - e.address),
        None => format!("{addr:#x}"),
    }
}

/// Builds the error for a function no candidate matched, from the candidate
/// that matched longest.
fn explain(
    orig: &Object,
    f: SymbolId,
    object: &str,
    delta: u64,
    target: &Target<'_>,
    misses: Vec<(u64, Miss)>,
) -> VerifyError {
    let sym = orig.symbol(f);
    let best = misses.into_iter().max_by_key(|(_, m)| match m {
        Miss::Bytes { offset } | Miss::Reference { offset, .. } => *offset as i64,
        Miss::NoBytes => -1,
    });
    match best {
        Some((address, Miss::Bytes { offset })) => {
            let section = orig.section(sym.section.expect("defined"));
            let ours = code_of(section, sym).unwrap_or(&[]);
            // A few bytes more of theirs, so a longer last instruction decodes whole.
            let image_addr = address.wrapping_sub(delta);
            let theirs = (0..=15)
                .rev()
                .find_map(|extra| target.image.bytes(image_addr, ours.len() + extra))
                .unwrap_or(&[]);
            let relocs = section.relocs_in(sym.value, end_of(sym));
            let our_names = |lo: u64, hi: u64| {
                relocs
                    .iter()
                    .find(|r| r.offset - sym.value >= lo && r.offset - sym.value < hi)
                    .and_then(|r| named_target(orig, r).map(|(n, _)| n))
            };
            let mut ours_text = disassemble_at(ours, address, offset, &our_names);
            let mut theirs_text = disassemble_at(theirs, address, offset, &|_, _| None);
            if let Some(t) = reached(theirs, address, offset) {
                theirs_text.push_str(&format!(
                    " → {}",
                    describe(target.symbols, target.object, t)
                ));
            }
            if ours_text.is_empty() {
                ours_text = "(end of function)".into();
            }
            if theirs_text.is_empty() {
                theirs_text = "(end of function)".into();
            }
            VerifyError::Mismatch {
                object: object.to_owned(),
                function: sym.name.clone(),
                offset,
                ours: ours_text,
                theirs: theirs_text,
            }
        }
        Some((
            _,
            Miss::Reference {
                offset,
                ours,
                theirs,
            },
        )) => VerifyError::WrongReference {
            object: object.to_owned(),
            function: sym.name.clone(),
            offset,
            ours,
            theirs,
        },
        Some((address, Miss::NoBytes)) => VerifyError::NotInImage {
            path: target.image.path.display().to_string(),
            function: sym.name.clone(),
            address,
        },
        None => VerifyError::NotInKernel {
            object: object.to_owned(),
            function: sym.name.clone(),
        },
    }
}

/// The instruction of `code` (loaded at `ip`) that covers `offset`, in AT&T
/// syntax with its bytes; `names(lo, hi)` names the symbol a relocation in
/// the instruction's byte range refers to, if any.
pub fn disassemble_at(
    code: &[u8],
    ip: u64,
    offset: u64,
    names: &dyn Fn(u64, u64) -> Option<String>,
) -> String {
    match instruction_at(code, ip, offset) {
        Some(insn) => {
            let lo = insn.ip().wrapping_sub(ip);
            let hi = lo.saturating_add(insn.len() as u64);
            let mut s = String::new();
            GasFormatter::new().format(&insn, &mut s);
            let bytes: Vec<String> = code
                .get(lo as usize..hi as usize)
                .unwrap_or(&[])
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            let mut out = format!("{s} [{}]", bytes.join(" "));
            if let Some(n) = names(lo, hi) {
                out.push_str(&format!(" → {n}"));
            }
            out
        }
        None => String::new(),
    }
}

fn instruction_at(code: &[u8], ip: u64, offset: u64) -> Option<Instruction> {
    let mut d = Decoder::with_ip(64, code, ip, DecoderOptions::NONE);
    let mut insn = Instruction::default();
    while d.can_decode() {
        d.decode_out(&mut insn);
        if insn.is_invalid() {
            return None;
        }
        let at = insn.ip().wrapping_sub(ip);
        if offset >= at && offset < at.saturating_add(insn.len() as u64) {
            return Some(insn);
        }
    }
    None
}

/// The address an instruction's branch or RIP-relative operand reaches.
fn reached(code: &[u8], ip: u64, offset: u64) -> Option<u64> {
    let insn = instruction_at(code, ip, offset)?;
    if insn.is_ip_rel_memory_operand() {
        Some(insn.ip_rel_memory_address())
    } else if insn.near_branch_target() != 0 {
        Some(insn.near_branch_target())
    } else {
        None
    }
}

/// Verifies `functions` of `orig` against the target's module `.ko`. The
/// module is relocatable too, so code is compared relocation by relocation,
/// by the names each one reaches; `sympos` counts in the module's own order.
pub fn verify_module(
    orig: &Object,
    functions: &[SymbolId],
    module: &graft_target::ModuleFile,
) -> Result<Verified, VerifyError> {
    let object = orig.path.display().to_string();
    let ko = &module.object;
    let listed = module.kallsyms();
    let sympos_of = |name: &str, value: u64| -> Option<u32> {
        let same: Vec<_> = listed.iter().filter(|e| e.name == name).collect();
        let pos = same.iter().position(|e| e.address == value)?;
        Some(if same.len() == 1 { 0 } else { pos as u32 + 1 })
    };
    let mut out = Verified::default();
    for &f in functions {
        let sym = orig.symbol(f);
        let candidates: Vec<_> = ko.functions().filter(|k| k.name == sym.name).collect();
        if candidates.is_empty() {
            return Err(VerifyError::NotInKernel {
                object,
                function: format!("{} (module {})", sym.name, module.name),
            });
        }
        let mut matched = Vec::new();
        let mut best: Option<(u64, SymbolId)> = None;
        for k in &candidates {
            match compare_in_module(orig, f, ko, k.id) {
                None => matched.push(*k),
                Some(off) => {
                    if best.is_none_or(|(b, _)| off > b) {
                        best = Some((off, k.id));
                    }
                }
            }
        }
        match matched.as_slice() {
            [k] => {
                let sympos = sympos_of(&k.name, k.value).unwrap_or(0);
                out.functions.push(Match {
                    function: sym.name.clone(),
                    address: k.value,
                    sympos,
                });
                out.sympos.insert(sym.name.clone(), sympos);
                let sec = ko.section(k.section.expect("defined"));
                for r in sec.relocs_in(k.value, end_of(k)) {
                    if let Some((name, _)) = named_target(ko, r) {
                        let target = match ko.reloc_target(r) {
                            RelocTarget::Symbol(id) => Some(ko.symbol(id)),
                            RelocTarget::SectionOffset(s, off) => {
                                ko.symbol_covering(s, off.wrapping_add(pcrel_bias(r.r_type)))
                            }
                        };
                        if let Some(p) = target
                            .filter(|t| t.section.is_some())
                            .and_then(|t| sympos_of(&name, t.value))
                        {
                            out.sympos.insert(name, p);
                        }
                    }
                }
            }
            [] => {
                let (offset, k) = best.expect("a candidate that differs");
                let ksym = ko.symbol(k);
                let ours_sec = orig.section(sym.section.expect("defined"));
                let theirs_sec = ko.section(ksym.section.expect("defined"));
                let ours = code_of(ours_sec, sym).unwrap_or(&[]);
                let theirs = code_of(theirs_sec, ksym).unwrap_or(&[]);
                return Err(VerifyError::Mismatch {
                    object,
                    function: format!("{} (module {})", sym.name, module.name),
                    offset,
                    ours: disassemble_at(ours, 0, offset, &|_, _| None),
                    theirs: disassemble_at(theirs, 0, offset, &|_, _| None),
                });
            }
            many => {
                return Err(VerifyError::Ambiguous {
                    object,
                    function: sym.name.clone(),
                    count: many.len(),
                    addresses: many
                        .iter()
                        .map(|k| format!("{:#x}", k.value))
                        .collect::<Vec<_>>()
                        .join(", "),
                })
            }
        }
    }
    Ok(out)
}

/// First offset where `orig`'s function `f` and the module's function `k`
/// differ. The module was built without `-ffunction-sections`, so the
/// assembler resolved calls between its functions in place: where our copy
/// has a relocation and the module's has none, the module's displacement must
/// land on the symbol our relocation names.
fn compare_in_module(orig: &Object, f: SymbolId, ko: &Object, k: SymbolId) -> Option<u64> {
    use graft_diff::compare::normalize;
    let (os, ks) = (orig.symbol(f), ko.symbol(k));
    // Code that is not all there (a malformed symbol) differs at once.
    let (Some(osec), Some(ksec)) = (os.section, ks.section) else {
        return Some(0);
    };
    let (osec, ksec) = (orig.section(osec), ko.section(ksec));
    let (Some(ours), Some(theirs)) = (code_of(osec, os), code_of(ksec, ks)) else {
        return Some(0);
    };
    if ours.len() != theirs.len() {
        return Some(ours.len().min(theirs.len()) as u64);
    }
    let orel = osec.relocs_in(os.value, end_of(os));
    let krel = ksec.relocs_in(ks.value, end_of(ks));
    let masked = |i: u64| {
        orel.iter().any(|r| in_field(r, os.value, i))
            || krel.iter().any(|r| in_field(r, ks.value, i))
    };
    let mut first: Option<u64> = (0..ours.len())
        .find(|&i| ours[i] != theirs[i] && !masked(i as u64))
        .map(|i| i as u64);
    let mut note = |off: u64| first = Some(first.map_or(off, |f| f.min(off)));
    for r in orel {
        let off = r.offset - os.value;
        match krel.iter().find(|q| q.offset - ks.value == off) {
            Some(q) => {
                let (a, b) = (normalize(orig, r, os.value), normalize(ko, q, ks.value));
                if a != b {
                    note(off);
                }
            }
            None => {
                // Resolved in place: only PC-relative references can be.
                let Some((name, addend)) = named_target(orig, r) else {
                    note(off);
                    continue;
                };
                if !matches!(r.r_type, 2 | 4) {
                    note(off);
                    continue;
                }
                let Some(field) = theirs.get(off as usize..(off as usize).saturating_add(4)) else {
                    note(off);
                    continue;
                };
                let disp = i32::from_le_bytes(field.try_into().expect("4")) as i64;
                let at = (ks.value.wrapping_add(off) as i64)
                    .wrapping_add(disp)
                    .wrapping_sub(addend);
                let hit = ko
                    .symbols_in(ksec.id)
                    .any(|s| s.name == name && s.value as i64 == at);
                if !hit {
                    note(off);
                }
            }
        }
    }
    for q in krel {
        let off = q.offset - ks.value;
        if !orel.iter().any(|r| r.offset - os.value == off) {
            note(off);
        }
    }
    first
}
