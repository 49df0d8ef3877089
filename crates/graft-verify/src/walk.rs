//! Instruction-level matching of one original function against the
//! target's copy of it (Ksplice's run-pre matching).
//!
//! graft compiles with `-ffunction-sections`; the distro kernel was not. In
//! graft's object a jump from one function to another of the same file is a
//! 5-byte jump with a relocation, while the assembler that built the target
//! resolved it in place and picked the 2-byte form where the target was near.
//! The two copies are the same code, but every later offset of the target's
//! copy moves. So both copies are decoded and walked in step, one instruction
//! against one instruction:
//!
//! - a relocated `call`/`jmp`/`jcc` of ours and the same mnemonic in the
//!   target (short or near) are equal when the target's branch reaches the
//!   symbol our relocation names;
//! - a branch inside the function is equal when both reach the same
//!   instruction (its position in our copy mapped to its position in theirs),
//!   whatever the displacement or encoding;
//! - everything else is exact: same encoding, same bytes outside relocated
//!   fields, and every relocated field of the target's copy reaches the symbol
//!   ours names;
//! - a static branch's `jmp` that objtool turns into a NOP at the kernel's
//!   link (6.12, where objtool runs on vmlinux, not on each object: its
//!   `__jump_table` entry's key carries bit 1) is equal to a NOP in the
//!   target.

use graft_elf::x86::{is_string_section, reloc_width, string_at};
use graft_elf::{Object, Reloc, RelocTarget, Section};
use graft_target::SymbolTable;
use iced_x86::{
    ConstantOffsets, Decoder, DecoderOptions, Formatter, GasFormatter, Instruction, Mnemonic,
    OpKind,
};

const R_X86_64_64: u32 = 1;
const R_X86_64_PC32: u32 = 2;
const R_X86_64_PLT32: u32 = 4;
const R_X86_64_32: u32 = 10;
const R_X86_64_32S: u32 = 11;

/// Our copy of a function, in a relocatable object built with
/// `-ffunction-sections`.
pub(crate) struct Ours<'a> {
    pub obj: &'a Object,
    pub section: &'a Section,
    pub name: &'a str,
    /// Section offset of the function.
    pub start: u64,
    pub code: &'a [u8],
    /// Section offsets of our static branch `jmp`s that objtool NOPs at the
    /// link (`arch_static_branch` with `CONFIG_HAVE_JUMP_LABEL_HACK`).
    nop_sites: Vec<u64>,
}

impl<'a> Ours<'a> {
    /// `None` when the symbol's bytes are not in its section (a malformed
    /// object).
    pub fn new(obj: &'a Object, f: graft_elf::SymbolId) -> Option<Ours<'a>> {
        let sym = obj.symbol(f);
        let section = obj.section(sym.section?);
        let code = section
            .data
            .get(sym.value as usize..sym.value.checked_add(sym.size)? as usize)?;
        Some(Ours {
            obj,
            section,
            name: &sym.name,
            start: sym.value,
            code,
            nop_sites: nop_sites(obj, section.id),
        })
    }

    fn relocs_in(&self, insn: &Instruction) -> &'a [Reloc] {
        self.section.relocs_in(insn.ip(), insn.next_ip())
    }
}

/// The sites in section `sec` of `obj` whose `__jump_table` entry asks
/// objtool to NOP them: `struct jump_entry` is `s32 code, s32 target, long
/// key`, and the key's relocation carries `2 | branch` in its addend
/// (arch/x86/include/asm/jump_label.h).
fn nop_sites(obj: &Object, sec: graft_elf::SectionId) -> Vec<u64> {
    const ENTRY: u64 = 16;
    let mut out = Vec::new();
    for t in obj.sections.iter().filter(|s| s.name == "__jump_table") {
        for code in t.relocs.iter().filter(|r| r.offset % ENTRY == 0) {
            let key = t.relocs_in(code.offset + 8, code.offset + 9);
            if key.first().is_none_or(|k| k.addend & 2 == 0) {
                continue;
            }
            if let RelocTarget::SectionOffset(s, off) = obj.reloc_target(code) {
                if s == sec && off >= 0 {
                    out.push(off as u64);
                }
            } else if let RelocTarget::Symbol(id) = obj.reloc_target(code) {
                let sym = obj.symbol(id);
                if sym.section == Some(sec) {
                    out.push((sym.value as i64).wrapping_add(code.addend) as u64);
                }
            }
        }
    }
    out
}

/// How the target's copy names what its references reach.
#[derive(Clone, Copy)]
pub(crate) enum Resolver<'a> {
    /// Linked code (the kernel image): every reference was resolved in place
    /// and the symbol table names addresses. Addresses are the table's;
    /// `delta` turns a link address (an absolute field) into one.
    Linked {
        symbols: &'a SymbolTable,
        object: &'a str,
        delta: u64,
    },
    /// A relocatable module (`.ko`): references to other sections are
    /// relocations, references within its section were resolved in place.
    /// Addresses are offsets in `section`.
    Relocatable {
        obj: &'a Object,
        section: &'a Section,
    },
}

/// The target's copy.
pub(crate) struct Theirs<'a> {
    /// The function's bytes, and possibly what follows it: where the copy
    /// ends is decided by the walk unless `size` is known.
    pub code: &'a [u8],
    /// Address of `code[0]`.
    pub ip: u64,
    /// The copy's exact size, when the target's symbol says it.
    pub size: Option<u64>,
    pub resolver: Resolver<'a>,
}

/// A match.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Matched {
    /// Every symbol the target's copy was proven to reach, with the address
    /// it reaches it at.
    pub seen: Vec<(String, u64)>,
    /// Length of the target's copy.
    pub len: u64,
}

/// Why a candidate is not our function. Offsets are in our copy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Miss {
    /// The first instruction that differs, both disassembled.
    Instruction {
        offset: u64,
        ours: String,
        theirs: String,
    },
    /// A relocated field whose value in the target reaches another symbol.
    Reference {
        offset: u64,
        ours: String,
        theirs: String,
    },
}

impl Miss {
    pub fn offset(&self) -> u64 {
        match self {
            Miss::Instruction { offset, .. } | Miss::Reference { offset, .. } => *offset,
        }
    }
}

/// A branch or RIP-relative operand inside the function, to be checked once
/// both copies are paired: our instruction at `at` reaches our offset
/// `ours`, the target's reaches its offset `theirs`.
struct Local {
    at: u64,
    a: Instruction,
    b: Instruction,
    ours: i64,
    theirs: i64,
}

/// Walks both copies in step; the first difference ends the walk.
pub(crate) fn walk(ours: &Ours<'_>, theirs: &Theirs<'_>) -> Result<Matched, Miss> {
    let mut od = Decoder::with_ip(64, ours.code, ours.start, DecoderOptions::NONE);
    let mut td = Decoder::with_ip(64, theirs.code, theirs.ip, DecoderOptions::NONE);
    let limit = theirs
        .size
        .map_or(theirs.code.len(), |s| (s as usize).min(theirs.code.len()));
    let mut w = Walker {
        ours,
        theirs,
        pairs: Vec::new(),
        locals: Vec::new(),
        seen: Vec::new(),
    };
    let (mut a, mut b) = (Instruction::default(), Instruction::default());
    while od.can_decode() {
        od.decode_out(&mut a);
        let at = a.ip() - ours.start;
        let to = td.position();
        if a.is_invalid() {
            return Err(w.fail(Miss::Instruction {
                offset: at,
                ours: "(not an instruction)".into(),
                theirs: w.their_text_at(to),
            }));
        }
        if to >= limit || !td.can_decode() {
            return Err(w.fail(Miss::Instruction {
                offset: at,
                ours: w.our_text(&a, theirs.ip + to as u64),
                theirs: "(end of function)".into(),
            }));
        }
        td.decode_out(&mut b);
        if b.is_invalid() || td.position() > limit {
            return Err(w.fail(Miss::Instruction {
                offset: at,
                ours: w.our_text(&a, theirs.ip + to as u64),
                theirs: "(end of function)".into(),
            }));
        }
        w.pairs.push((at, to as u64));
        if is_padding(&a) && is_padding(&b) && a.len() != b.len() && ours.relocs_in(&a).is_empty() {
            // Alignment padding: the assembler sized it for where the code
            // lies in its section, which differs between graft's object and
            // the kernel's (gcc-14 aligns loops to 32 and more). Where two
            // NOPs differ in length, the run of NOPs is equal to the run of
            // NOPs, whatever their number and lengths; a branch into the
            // middle of one is not paired, and refused as a local branch to
            // another place. (NOPs of one length pair one to one, as any
            // instruction: a NOP can be a branch target, a static branch.)
            skip_padding(&mut od, ours.code.len(), &mut a);
            skip_padding(&mut td, limit, &mut b);
            continue;
        }
        let ao = od.get_constant_offsets(&a);
        let bo = td.get_constant_offsets(&b);
        if let Err(m) = w.step(&a, &b, &ao, &bo) {
            return Err(w.fail(m));
        }
    }
    let len = td.position() as u64;
    if theirs.size.is_some_and(|s| s != len) {
        return Err(w.fail(Miss::Instruction {
            offset: ours.code.len() as u64,
            ours: "(end of function)".into(),
            theirs: w.their_text_at(td.position()),
        }));
    }
    w.pairs.push((ours.code.len() as u64, len));
    if let Some(m) = w.broken_local(u64::MAX) {
        return Err(m);
    }
    Ok(Matched { seen: w.seen, len })
}

struct Walker<'w, 'a> {
    ours: &'w Ours<'a>,
    theirs: &'w Theirs<'a>,
    /// (our offset, their offset) of every paired instruction, in order.
    pairs: Vec<(u64, u64)>,
    locals: Vec<Local>,
    seen: Vec<(String, u64)>,
}

/// A NOP (`nop`, `nopl`, `nopw`, `xchg %ax,%ax`): alignment padding.
fn is_padding(i: &Instruction) -> bool {
    i.mnemonic() == Mnemonic::Nop
}

/// Moves `d` past the NOPs that follow (not beyond `limit`).
fn skip_padding(d: &mut Decoder<'_>, limit: usize, scratch: &mut Instruction) {
    while d.can_decode() {
        let (pos, ip) = (d.position(), d.ip());
        d.decode_out(scratch);
        if !is_padding(scratch) || d.position() > limit {
            d.set_position(pos).expect("a position we were at");
            d.set_ip(ip);
            return;
        }
    }
}

/// A direct `call`, `jmp` or `jcc` (or `loop`, `jrcxz`): one near-branch operand.
fn is_branch(i: &Instruction) -> bool {
    i.op_count() == 1 && i.op0_kind() == OpKind::NearBranch64
}

/// A pair of instructions `step` compares: ours (`a`, at offset `at` of our
/// copy) and the target's (`b`), their constant offsets, and the
/// relocations within each.
#[derive(Clone, Copy)]
struct Pair<'p, 'a> {
    a: &'p Instruction,
    b: &'p Instruction,
    ao: &'p ConstantOffsets,
    bo: &'p ConstantOffsets,
    at: u64,
    ar: &'a [Reloc],
    br: &'a [Reloc],
}

/// Marks `width` bytes from `lo` as compared elsewhere.
fn mask(masked: &mut [bool], lo: u64, width: u64) {
    for m in masked.iter_mut().skip(lo as usize).take(width as usize) {
        *m = true;
    }
}

impl<'a> Walker<'_, 'a> {
    /// The earliest difference: `m`, or a branch before it whose target,
    /// already paired, is not where ours goes.
    fn fail(&self, m: Miss) -> Miss {
        match self.broken_local(m.offset()) {
            Some(earlier) if earlier.offset() < m.offset() => earlier,
            _ => m,
        }
    }

    /// The first local branch (at an offset below `before`) whose target in
    /// our copy does not map onto its target in theirs. Targets not paired
    /// yet are skipped, unless the walk is complete (`before` is `MAX`).
    fn broken_local(&self, before: u64) -> Option<Miss> {
        let complete = before == u64::MAX;
        self.locals
            .iter()
            .filter(|l| l.at < before)
            .find(|l| {
                let mapped = u64::try_from(l.ours)
                    .ok()
                    .and_then(|o| self.pairs.binary_search_by_key(&o, |p| p.0).ok())
                    .map(|i| self.pairs[i].1 as i64);
                match mapped {
                    Some(t) => t != l.theirs,
                    // A target between instructions, or outside the function.
                    None => complete || l.ours < before as i64,
                }
            })
            .map(|l| Miss::Instruction {
                offset: l.at,
                ours: self.our_text(&l.a, self.their_ip_of(l.at)),
                theirs: self.their_text(&l.b),
            })
    }

    fn their_ip_of(&self, at: u64) -> u64 {
        let to = self.pairs.iter().find(|p| p.0 == at).map_or(at, |p| p.1);
        self.theirs.ip + to
    }

    /// Compares our instruction `a` with the target's `b`, paired at the
    /// same place of the walk: a NOP objtool made of our jump, a branch
    /// (whose encoding may differ), or any other instruction, equal but for
    /// what its relocations reach.
    fn step(
        &mut self,
        a: &Instruction,
        b: &Instruction,
        ao: &ConstantOffsets,
        bo: &ConstantOffsets,
    ) -> Result<(), Miss> {
        let p = Pair {
            a,
            b,
            ao,
            bo,
            at: a.ip() - self.ours.start,
            ar: self.ours.relocs_in(a),
            br: self.their_relocs(b),
        };
        if self.objtool_nop(&p) {
            // objtool made the kernel's copy a NOP of the jump's length; the
            // branch target is code of the function, walked all the same.
            return Ok(());
        }
        if is_branch(a) {
            if let Some(done) = self.compare_branch(&p) {
                return done;
            }
        }
        self.compare_exact(&p)
    }

    /// Whether the target's `b` is the NOP objtool wrote over our jump `a`.
    fn objtool_nop(&self, p: &Pair<'_, '_>) -> bool {
        p.a.mnemonic() == Mnemonic::Jmp
            && p.b.mnemonic() == Mnemonic::Nop
            && p.br.is_empty()
            && self.ours.nop_sites.contains(&p.a.ip())
    }

    /// Our branch `a` against `b`: the same kind of branch, reaching the
    /// same place (within the function, checked once both are paired), the
    /// same neighbour or the same symbol. `None`: an unusual relocation in
    /// the branch, left for the exact comparison.
    fn compare_branch(&mut self, p: &Pair<'_, '_>) -> Option<Result<(), Miss>> {
        let Pair {
            a,
            b,
            ao,
            at,
            ar,
            br,
            ..
        } = *p;
        if !is_branch(b) || a.mnemonic() != b.mnemonic() {
            return Some(Err(self.differ(a, b)));
        }
        // Short against near is the one difference allowed; in the same
        // form, the bytes (prefixes, opcode) before the displacement,
        // which iced reports as the immediate, must be equal.
        if a.len() == b.len() {
            let head = ao.immediate_offset().min(a.len());
            let at = at as usize;
            if Some(&self.ours.code[at..at + head]) != self.their_bytes(b, b.len()).get(..head) {
                return Some(Err(self.differ(a, b)));
            }
        }
        match ar {
            [] if br.is_empty() => {
                let ours = a.near_branch_target().wrapping_sub(self.ours.start) as i64;
                if (0..=self.ours.code.len() as i64).contains(&ours) {
                    self.locals.push(Local {
                        at,
                        a: *a,
                        b: *b,
                        ours,
                        theirs: b.near_branch_target().wrapping_sub(self.theirs.ip) as i64,
                    });
                    return Some(Ok(()));
                }
                // Another function of our section: functions placed in
                // a section by attribute (`noinstr`, `__sched`) share it
                // even under -ffunction-sections.
                Some(self.neighbour(a, b).map_err(|_| self.differ(a, b)))
            }
            [r] if matches!(r.r_type, R_X86_64_PC32 | R_X86_64_PLT32)
                && r.offset + 4 == a.next_ip() =>
            {
                Some(self.branch(a, b, r, br).map_err(|_| self.differ(a, b)))
            }
            _ if a.len() != b.len() => Some(Err(self.differ(a, b))),
            // An unusual relocation in a branch: compared exactly.
            _ => None,
        }
    }

    /// `a` against `b` byte for byte, but for the fields relocations fill
    /// (each compared by what it reaches) and a RIP-relative operand within
    /// the function (compared as a local branch).
    fn compare_exact(&mut self, p: &Pair<'_, '_>) -> Result<(), Miss> {
        let Pair {
            a, b, at, ar, br, ..
        } = *p;
        if a.len() != b.len() || a.code() != b.code() {
            return Err(self.differ(a, b));
        }
        let (an, bn) = (a.len(), b.len());
        let (abytes, bbytes) = (
            &self.ours.code[at as usize..at as usize + an],
            self.their_bytes(b, bn),
        );
        let mut masked = vec![false; an];
        for r in ar {
            mask(&mut masked, r.offset - a.ip(), reloc_width(r.r_type));
        }
        for q in br {
            mask(&mut masked, q.offset - b.ip(), reloc_width(q.r_type));
        }
        self.local_rip(p, &mut masked);
        if (0..an).any(|i| !masked[i] && abytes[i] != bbytes.get(i).copied().unwrap_or(!abytes[i]))
        {
            return Err(self.differ(a, b));
        }
        for q in br {
            if !ar.iter().any(|r| r.offset - a.ip() == q.offset - b.ip()) {
                return Err(self.differ(a, b));
            }
        }
        for r in ar {
            let k = r.offset - a.ip();
            self.field(a, b, r, k, bbytes)?;
        }
        Ok(())
    }

    /// A RIP-relative operand within the function's own section moves with
    /// the code, like a local branch: its field is masked, and where it
    /// leads is checked once both copies are paired.
    fn local_rip(&mut self, p: &Pair<'_, '_>, masked: &mut [bool]) {
        let Pair {
            a,
            b,
            ao,
            bo,
            at,
            ar,
            br,
        } = *p;
        let local_rip = a.is_ip_rel_memory_operand()
            && b.is_ip_rel_memory_operand()
            && ao.has_displacement()
            && ao.displacement_offset() == bo.displacement_offset()
            && !ar
                .iter()
                .any(|r| r.offset - a.ip() == ao.displacement_offset() as u64);
        if local_rip && br.is_empty() {
            mask(
                masked,
                ao.displacement_offset() as u64,
                ao.displacement_size() as u64,
            );
            self.locals.push(Local {
                at,
                a: *a,
                b: *b,
                ours: a.ip_rel_memory_address().wrapping_sub(self.ours.start) as i64,
                theirs: b.ip_rel_memory_address().wrapping_sub(self.theirs.ip) as i64,
            });
        }
    }

    /// Our relocated branch `r` against the target's branch `b`.
    fn branch(
        &mut self,
        a: &Instruction,
        b: &Instruction,
        r: &Reloc,
        br: &[Reloc],
    ) -> Result<(), ()> {
        match (&self.theirs.resolver, br) {
            (Resolver::Relocatable { obj, .. }, [q]) => {
                if q.offset + 4 != b.next_ip() || a.len() != b.len() {
                    return Err(());
                }
                let theirs = Ref::of(obj, q, b.next_ip());
                let ours = Ref::of(self.ours.obj, r, a.next_ip());
                if r.r_type != q.r_type || !ours.same_in(&theirs, obj, q) {
                    return Err(());
                }
                self.seen.extend(theirs.defined(obj, q));
                Ok(())
            }
            (_, [_, ..]) => Err(()),
            (_, []) => {
                // An anonymous target (static_cpu_has's test in
                // `.altinstr_aux`) has no name to prove.
                let Ref::Named(name, addend) = Ref::of(self.ours.obj, r, a.next_ip()) else {
                    return Ok(());
                };
                let bias = (a.next_ip() - r.offset) as i64;
                let at = b
                    .near_branch_target()
                    .wrapping_sub(addend.wrapping_add(bias) as u64);
                match self.theirs.resolver.is(&name, at) {
                    Some(true) => {
                        self.seen.push((name, at));
                        Ok(())
                    }
                    // Unknown to the target (a linker-script symbol): nothing to prove.
                    None => Ok(()),
                    Some(false) => Err(()),
                }
            }
        }
    }

    /// Our branch to another function of our section, resolved in place,
    /// against the target's branch `b`.
    fn neighbour(&mut self, a: &Instruction, b: &Instruction) -> Result<(), ()> {
        let target = a.near_branch_target();
        let s = self
            .ours
            .obj
            .symbol_covering(self.ours.section.id, target as i64)
            .ok_or(())?;
        let at = b.near_branch_target().wrapping_sub(target - s.value);
        match self.theirs.resolver.is(&s.name, at) {
            Some(true) => {
                self.seen.push((s.name.clone(), at));
                Ok(())
            }
            None => Ok(()),
            Some(false) => Err(()),
        }
    }

    /// Our relocated field `r` (at `k` in the instruction) against the same
    /// bytes of the target's instruction.
    fn field(
        &mut self,
        a: &Instruction,
        b: &Instruction,
        r: &Reloc,
        k: u64,
        bbytes: &[u8],
    ) -> Result<(), Miss> {
        let offset = r.offset - self.ours.start;
        let width = reloc_width(r.r_type) as usize;
        let Some(field) = bbytes.get(k as usize..k as usize + width) else {
            return Ok(());
        };
        let p = b.ip() + k;
        let reference = |ours: String, theirs: String| Miss::Reference {
            offset,
            ours,
            theirs,
        };
        match &self.theirs.resolver {
            Resolver::Relocatable { obj, .. } => {
                let br = self.their_relocs(b);
                if let Some(q) = br.iter().find(|q| q.offset - b.ip() == k) {
                    let (x, y) = (
                        Ref::of(self.ours.obj, r, a.next_ip()),
                        Ref::of(obj, q, b.next_ip()),
                    );
                    if r.r_type != q.r_type || !x.same_in(&y, obj, q) {
                        return Err(reference(x.to_string(), y.to_string()));
                    }
                    self.seen.extend(y.defined(obj, q));
                    return Ok(());
                }
                // Resolved in place: only a PC-relative reference into the
                // module's own section can be.
                let (Ref::Named(name, addend), R_X86_64_PC32 | R_X86_64_PLT32) =
                    (Ref::of(self.ours.obj, r, a.next_ip()), r.r_type)
                else {
                    return Err(Miss::Instruction {
                        offset: a.ip() - self.ours.start,
                        ours: self.our_text(a, b.ip()),
                        theirs: self.their_text(b),
                    });
                };
                let disp = i32::from_le_bytes(field.try_into().expect("4")) as i64;
                let at = (p as i64).wrapping_add(disp).wrapping_sub(addend) as u64;
                match self.theirs.resolver.is(&name, at) {
                    Some(true) => {
                        self.seen.push((name, at));
                        Ok(())
                    }
                    _ => Err(reference(name, self.theirs.resolver.describe(at))),
                }
            }
            Resolver::Linked { delta, .. } => {
                let delta = *delta;
                // S + A as the target's field encodes it, in table addresses.
                let s_plus_a = match r.r_type {
                    R_X86_64_PC32 | R_X86_64_PLT32 => p
                        .wrapping_add(
                            i32::from_le_bytes(field.try_into().expect("4")) as i64 as u64
                        ),
                    R_X86_64_32S => (i32::from_le_bytes(field.try_into().expect("4")) as i64
                        as u64)
                        .wrapping_add(delta),
                    R_X86_64_32 => u64::from(u32::from_le_bytes(field.try_into().expect("4")))
                        .wrapping_add(delta),
                    R_X86_64_64 => {
                        u64::from_le_bytes(field.try_into().expect("8")).wrapping_add(delta)
                    }
                    _ => return Ok(()),
                };
                // Strings and anonymous pieces have no name to prove.
                let Ref::Named(name, addend) = Ref::of(self.ours.obj, r, a.next_ip()) else {
                    return Ok(());
                };
                let at = s_plus_a.wrapping_sub(addend as u64);
                match self.theirs.resolver.is(&name, at) {
                    Some(true) => {
                        self.seen.push((name, at));
                        Ok(())
                    }
                    None => Ok(()),
                    Some(false) => Err(reference(name, self.theirs.resolver.describe(at))),
                }
            }
        }
    }

    fn differ(&self, a: &Instruction, b: &Instruction) -> Miss {
        Miss::Instruction {
            offset: a.ip() - self.ours.start,
            ours: self.our_text(a, b.ip()),
            theirs: self.their_text(b),
        }
    }

    fn their_relocs(&self, b: &Instruction) -> &'a [Reloc] {
        match self.theirs.resolver {
            Resolver::Relocatable { section, .. } => section.relocs_in(b.ip(), b.next_ip()),
            Resolver::Linked { .. } => &[],
        }
    }

    fn their_bytes(&self, b: &Instruction, len: usize) -> &'a [u8] {
        let lo = (b.ip() - self.theirs.ip) as usize;
        let code: &'a [u8] = self.theirs.code;
        code.get(lo..lo + len).unwrap_or(&[])
    }

    /// Our instruction as the target would hold it at `ip`, with what it
    /// reaches.
    fn our_text(&self, a: &Instruction, ip: u64) -> String {
        let at = (a.ip() - self.ours.start) as usize;
        let bytes = &self.ours.code[at..at + a.len()];
        let shown = Decoder::with_ip(64, bytes, ip, DecoderOptions::NONE).decode();
        let mut s = format_insn(&shown, bytes);
        let relocs = self.ours.relocs_in(a);
        if let Some(name) =
            relocs
                .iter()
                .find_map(|r| match Ref::of(self.ours.obj, r, a.next_ip()) {
                    Ref::Anonymous => None,
                    x => Some(x.to_string()),
                })
        {
            s.push_str(&format!(" → {name}"));
        } else if relocs.is_empty() && is_branch(a) {
            let t = a.near_branch_target();
            let within = t.wrapping_sub(self.ours.start) <= self.ours.code.len() as u64;
            let named = if within {
                None
            } else {
                self.ours
                    .obj
                    .symbol_covering(self.ours.section.id, t as i64)
            };
            match named {
                Some(n) if n.value == t => s.push_str(&format!(" → {}", n.name)),
                Some(n) => s.push_str(&format!(" → {}+{:#x}", n.name, t - n.value)),
                None => s.push_str(&format!(
                    " → {}+{:#x}",
                    self.ours.name,
                    t.wrapping_sub(self.ours.start)
                )),
            }
        }
        s
    }

    fn their_text(&self, b: &Instruction) -> String {
        let bytes = self.their_bytes(b, b.len());
        let mut s = format_insn(b, bytes);
        let relocs = self.their_relocs(b);
        let reached = match (&self.theirs.resolver, relocs.first()) {
            (Resolver::Relocatable { obj, .. }, Some(q)) => {
                Some(Ref::of(obj, q, b.next_ip()).to_string())
            }
            _ if is_branch(b) => Some(self.theirs.resolver.describe(b.near_branch_target())),
            _ if b.is_ip_rel_memory_operand() => {
                Some(self.theirs.resolver.describe(b.ip_rel_memory_address()))
            }
            _ => None,
        };
        if let Some(n) = reached {
            s.push_str(&format!(" → {n}"));
        }
        s
    }

    fn their_text_at(&self, offset: usize) -> String {
        let mut d = Decoder::with_ip(
            64,
            self.theirs.code.get(offset..).unwrap_or(&[]),
            self.theirs.ip + offset as u64,
            DecoderOptions::NONE,
        );
        if !d.can_decode() {
            return "(end of function)".into();
        }
        let b = d.decode();
        if b.is_invalid() {
            return "(not an instruction)".into();
        }
        self.their_text(&b)
    }
}

fn format_insn(i: &Instruction, bytes: &[u8]) -> String {
    let mut s = String::new();
    GasFormatter::new().format(i, &mut s);
    let hex: Vec<String> = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("{s} [{}]", hex.join(" "))
}

impl Resolver<'_> {
    /// Whether `addr` is (a copy of) `name`; `None` when the target does not
    /// know the name at all.
    fn is(&self, name: &str, addr: u64) -> Option<bool> {
        match self {
            Resolver::Linked {
                symbols, object, ..
            } => {
                let same = symbols.lookup(object, name);
                if same.is_empty() {
                    return None;
                }
                Some(same.iter().any(|e| e.address == addr))
            }
            Resolver::Relocatable { obj, section } => Some(
                obj.symbols_in(section.id)
                    .any(|s| s.name == name && s.value == addr),
            ),
        }
    }

    /// "name+0x12" for an address.
    pub fn describe(&self, addr: u64) -> String {
        match self {
            Resolver::Linked {
                symbols, object, ..
            } => describe(symbols, object, addr),
            Resolver::Relocatable { obj, section } => {
                let best = obj
                    .symbols_in(section.id)
                    .filter(|s| s.value <= addr && !s.name.is_empty())
                    .max_by_key(|s| s.value);
                match best {
                    Some(s) if s.value == addr => s.name.clone(),
                    Some(s) => format!("{}+{:#x}", s.name, addr - s.value),
                    None => format!("{addr:#x}"),
                }
            }
        }
    }
}

/// "name+0x12" for an address, from the symbol table.
pub(crate) fn describe(symbols: &SymbolTable, object: &str, addr: u64) -> String {
    match symbols.nearest(object, addr) {
        Some(e) if e.address == addr => e.name.clone(),
        Some(e) => format!("{}+{:#x}", e.name, addr - e.address),
        None => format!("{addr:#x}"),
    }
}

/// What a relocation in an instruction ending at `end` reaches, found with
/// the real distance from its field to that end (`movb $0, x(%rip)` carries
/// `-5`: assuming `-4` names the symbol before `x`).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Ref {
    /// A named symbol and the addend relative to it.
    Named(String, i64),
    /// A C string, by its contents.
    Str(Vec<u8>),
    /// A place no symbol names (`.altinstr_aux`, anonymous data).
    Anonymous,
}

impl Ref {
    fn of(obj: &Object, r: &Reloc, end: u64) -> Ref {
        let bias = match r.r_type {
            R_X86_64_PC32 | R_X86_64_PLT32 => end.wrapping_sub(r.offset) as i64,
            _ => 0,
        };
        match obj.reloc_target(r) {
            RelocTarget::Symbol(id) => Ref::Named(obj.symbol(id).name.clone(), r.addend),
            RelocTarget::SectionOffset(sec, off) => {
                let section = obj.section(sec);
                if is_string_section(section) {
                    return string_at(section, off.wrapping_add(bias))
                        .map_or(Ref::Anonymous, |s| Ref::Str(s.to_vec()));
                }
                match obj.symbol_covering(sec, off.wrapping_add(bias)) {
                    Some(s) => Ref::Named(s.name.clone(), off.wrapping_sub(s.value as i64)),
                    None => Ref::Anonymous,
                }
            }
        }
    }

    /// Whether our reference reaches what the module's `theirs` (its
    /// relocation `q`) does. Anonymous places cannot be told apart and are
    /// taken as the same; a name is also the same when the module has a
    /// symbol of that name at the place `q` reaches (an empty lockdep
    /// `__key` shares its address with the next variable).
    fn same_in(&self, theirs: &Ref, obj: &Object, q: &Reloc) -> bool {
        if self == theirs || matches!((self, theirs), (Ref::Anonymous, Ref::Anonymous)) {
            return true;
        }
        let (Ref::Named(name, addend), RelocTarget::SectionOffset(sec, off)) =
            (self, obj.reloc_target(q))
        else {
            return false;
        };
        obj.symbols_in(sec)
            .any(|s| s.name == *name && s.value as i64 == off.wrapping_sub(*addend))
    }

    /// The module's own symbol a reference `q` of its reaches, with its
    /// section offset (what `sympos` is counted by).
    fn defined(&self, obj: &Object, q: &Reloc) -> Option<(String, u64)> {
        let Ref::Named(name, _) = self else {
            return None;
        };
        let value = match obj.reloc_target(q) {
            RelocTarget::Symbol(id) => {
                let s = obj.symbol(id);
                s.section?;
                s.value
            }
            RelocTarget::SectionOffset(sec, _) => {
                obj.symbols_in(sec).find(|s| s.name == *name)?.value
            }
        };
        Some((name.clone(), value))
    }
}

impl std::fmt::Display for Ref {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Ref::Named(n, _) => f.write_str(n),
            Ref::Str(s) => write!(f, "the string {:?}", String::from_utf8_lossy(s)),
            Ref::Anonymous => f.write_str("an unnamed place"),
        }
    }
}
