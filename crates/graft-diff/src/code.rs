//! Instruction boundaries of an object's code, and what each relocation
//! really refers to.
//!
//! A PC-relative relocation in an instruction stores `target - next_ip`, so
//! its addend carries the distance from the field to the end of the
//! instruction: `-4` for `call foo`, but `-8` for `movl $1, x(%rip)`, whose
//! immediate follows the displacement. Guessing `-4` would name the wrong
//! neighbour of `x` in a section holding several objects, so graft decodes
//! the code and takes the real instruction end.

use std::collections::HashMap;

use graft_elf::{Object, Reloc, RelocTarget, Section, SectionId};
use iced_x86::{Decoder, DecoderOptions, Instruction, OpKind};

const R_X86_64_PC32: u32 = 2;
const R_X86_64_PLT32: u32 = 4;
const R_X86_64_PC64: u32 = 24;

fn pc_relative(r_type: u32) -> bool {
    matches!(r_type, R_X86_64_PC32 | R_X86_64_PLT32 | R_X86_64_PC64)
}

/// Decoded instruction starts and ends of every executable section.
#[derive(Debug, Default)]
pub struct CodeMap {
    insns: HashMap<SectionId, Vec<(u64, u64)>>,
}

impl CodeMap {
    pub fn new(obj: &Object) -> CodeMap {
        let mut insns = HashMap::new();
        for s in obj
            .sections
            .iter()
            .filter(|s| s.is_exec() && !s.is_nobits())
        {
            insns.insert(s.id, decode(&s.data));
        }
        CodeMap { insns }
    }

    /// The instruction holding byte `offset` of `sec`.
    pub fn insn_at(&self, sec: SectionId, offset: u64) -> Option<(u64, u64)> {
        let v = self.insns.get(&sec)?;
        let i = v.partition_point(|&(start, _)| start <= offset);
        let (start, end) = *v.get(i.checked_sub(1)?)?;
        (offset < end).then_some((start, end))
    }

    /// Whether the relocation at `offset` of code section `sec` is the
    /// target of a direct call or jump (`call f`, `jmp f` as a tail call,
    /// `jcc f`), as opposed to an address taken (`lea f(%rip)`, `mov $f`):
    /// only a direct branch transfers control without the address escaping.
    pub fn is_direct_branch(&self, obj: &Object, sec: SectionId, offset: u64) -> bool {
        let Some((start, _)) = self.insn_at(sec, offset) else {
            return false;
        };
        let Some(tail) = obj.section(sec).data.get(start as usize..) else {
            return false;
        };
        let insn = Decoder::with_ip(64, tail, start, DecoderOptions::NONE).decode();
        // Only direct branches (call, jmp, jcc) have a near-branch operand.
        !insn.is_invalid()
            && matches!(
                insn.op0_kind(),
                OpKind::NearBranch16 | OpKind::NearBranch32 | OpKind::NearBranch64
            )
    }

    /// Distance from a relocated field to the place its value is relative to.
    pub fn bias(&self, s: &Section, r: &Reloc) -> i64 {
        if !pc_relative(r.r_type) || !s.is_exec() {
            // Data tables write `target - field` (`.long sym - .`): no bias.
            return 0;
        }
        match self.insn_at(s.id, r.offset) {
            Some((_, end)) if end > r.offset => (end - r.offset) as i64,
            _ => 4,
        }
    }

    /// What `r` (a relocation of section `s`) refers to: a section and the
    /// offset in it, or an undefined symbol.
    pub fn target(&self, obj: &Object, s: &Section, r: &Reloc) -> Target {
        let bias = self.bias(s, r);
        match obj.reloc_target(r) {
            RelocTarget::SectionOffset(sec, off) => {
                Target::Place(sec, off.wrapping_add(bias), r.addend.wrapping_add(bias))
            }
            RelocTarget::Symbol(id) => {
                let sym = obj.symbol(id);
                match sym.section {
                    Some(sec) => Target::Place(
                        sec,
                        (sym.value as i64).wrapping_add(r.addend).wrapping_add(bias),
                        r.addend.wrapping_add(bias),
                    ),
                    None => Target::Undefined(sym.name.clone(), r.addend.wrapping_add(bias)),
                }
            }
        }
    }
}

/// What a relocation refers to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// (section, offset referred to, the addend once the bias is removed).
    Place(SectionId, i64, i64),
    /// An undefined symbol and the unbiased addend.
    Undefined(String, i64),
}

/// Linear decode from the section start: with -ffunction-sections every
/// function starts a section, and padding between functions is `int3`/nop.
fn decode(bytes: &[u8]) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    let mut d = Decoder::with_ip(64, bytes, 0, DecoderOptions::NONE);
    let mut insn = Instruction::default();
    while d.can_decode() {
        d.decode_out(&mut insn);
        let start = insn.ip();
        let end = insn.next_ip();
        if end <= start {
            break;
        }
        out.push((start, end));
    }
    out
}

/// Decodes the single instruction at `offset` of `bytes`, for explanations.
pub fn disassemble_at(bytes: &[u8], offset: u64) -> Option<String> {
    use iced_x86::{Formatter, GasFormatter};
    let tail = bytes.get(offset as usize..)?;
    let mut d = Decoder::with_ip(64, tail, offset, DecoderOptions::NONE);
    let insn = d.decode();
    if insn.is_invalid() {
        return None;
    }
    let mut f = GasFormatter::new();
    let mut s = String::new();
    f.format(&insn, &mut s);
    Some(s)
}

/// Start, end, and immediate field (offset, size) of the instruction at
/// `start` of `bytes`.
pub fn immediate_of(bytes: &[u8], start: u64) -> Option<(u64, u64, u64, u64)> {
    let tail = bytes.get(start as usize..)?;
    let mut d = Decoder::with_ip(64, tail, start, DecoderOptions::NONE);
    let insn = d.decode();
    if insn.is_invalid() {
        return None;
    }
    let c = d.get_constant_offsets(&insn);
    if !c.has_immediate() {
        return None;
    }
    Some((
        start,
        insn.next_ip(),
        start + c.immediate_offset() as u64,
        c.immediate_size() as u64,
    ))
}
