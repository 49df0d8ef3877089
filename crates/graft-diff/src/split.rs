//! One section per function, also for functions with an explicit section.
//!
//! `-ffunction-sections` gives every function a section of its own, which
//! is what lets graft compare and carry functions one by one. A function
//! with an explicit section (`__sched` → `.sched.text`, `__ref` →
//! `.ref.text`, `__lockfunc` → `.spinlock.text`, `__init` → `.init.text`)
//! shares it with every other function of the file that has the same
//! attribute, and the assembler resolves calls and jumps between them in
//! place, without relocations. [`split_shared_sections`] cuts such a
//! section into one piece per function (named `<section>.<function>`, as
//! `-ffunction-sections` would), moves each relocation and symbol to its
//! piece, points references through the section symbol at the right piece,
//! and turns each in-place branch between two pieces into the relocation it
//! would have had. Both builds are split the same way before the diff, so
//! every later pass sees functions in sections of their own.

use std::collections::{HashMap, HashSet};

use graft_elf::{Object, Reloc, RelocTarget, SectionId, SymKind, Symbol, SymbolId};
use iced_x86::{Decoder, DecoderOptions, Instruction, OpKind};

use crate::code::CodeMap;

const R_X86_64_PC32: u32 = 2;

/// Why a section cannot be split.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SplitError {
    pub section: String,
    pub what: String,
}

/// A section to cut, and where.
struct Cut {
    section: SectionId,
    /// Piece starts, ascending; the first is 0.
    starts: Vec<u64>,
    /// Section ids of the pieces (the first is the original section).
    pieces: Vec<SectionId>,
    /// Section symbol of each piece.
    symbols: Vec<SymbolId>,
    /// The branches the assembler resolved between two pieces.
    branches: Vec<Branch>,
}

impl Cut {
    fn piece_of(&self, offset: u64) -> usize {
        self.starts
            .partition_point(|&s| s <= offset)
            .saturating_sub(1)
    }
}

/// Splits every code section that holds functions at more than one address.
/// Returns how many sections were split. Init code is never patched (a
/// change to it is refused by the differ, function by function or as the
/// section): an init section the assembler tied together with short jumps
/// stays whole; any other such section is an error.
pub fn split_shared_sections(obj: &mut Object) -> Result<usize, SplitError> {
    let (cuts, uncuttable) = plan_cuts(obj);
    if let Some(e) = uncuttable
        .into_iter()
        .find(|e| !e.section.starts_with(".init"))
    {
        return Err(e);
    }
    Ok(cut(obj, cuts))
}

/// Splits both builds of an object alike. A section the assembler tied
/// together with short jumps between its functions (`.sched.text` of
/// kernel/sched/core.o) cannot be cut; it stays whole in both builds when
/// it compiled the same in both (nothing in it is patched), and is an
/// error only when it differs.
pub fn split_pair(orig: &mut Object, patched: &mut Object) -> Result<usize, SplitError> {
    let (mut orig_cuts, orig_bad) = plan_cuts(orig);
    let (mut patched_cuts, patched_bad) = plan_cuts(patched);
    let mut leave = HashSet::new();
    for e in orig_bad.into_iter().chain(patched_bad) {
        if e.section.starts_with(".init") || same_section(orig, patched, &e.section) {
            leave.insert(e.section);
        } else {
            return Err(e);
        }
    }
    orig_cuts.retain(|c| !leave.contains(&orig.section(c.section).name));
    patched_cuts.retain(|c| !leave.contains(&patched.section(c.section).name));
    Ok(cut(orig, orig_cuts) + cut(patched, patched_cuts))
}

/// The sections of `obj` to cut, each with the branches between its
/// pieces, and the sections that cannot be cut (a short branch between two
/// functions).
fn plan_cuts(obj: &Object) -> (Vec<Cut>, Vec<SplitError>) {
    let mut cuts = Vec::new();
    let mut uncuttable = Vec::new();
    for mut c in find_cuts(obj) {
        match branches_between_pieces(obj, &c) {
            Ok(b) => {
                c.branches = b;
                cuts.push(c);
            }
            Err(e) => uncuttable.push(e),
        }
    }
    (cuts, uncuttable)
}

/// Whether section `name` has the same bytes and relocations (by target
/// name) in both objects.
pub fn same_section(a: &Object, b: &Object, name: &str) -> bool {
    let view = |o: &Object| {
        o.section_by_name(name).map(|s| {
            let relocs: Vec<_> = s
                .relocs
                .iter()
                .map(|r| {
                    (
                        r.offset,
                        r.r_type,
                        o.symbol(r.symbol).name.clone(),
                        r.addend,
                    )
                })
                .collect();
            (s.size, s.data.clone(), relocs)
        })
    };
    view(a).is_some() && view(a) == view(b)
}

/// Cuts `obj` as `cuts` say; returns how many sections were cut.
fn cut(obj: &mut Object, mut cuts: Vec<Cut>) -> usize {
    if cuts.is_empty() {
        return 0;
    }
    // Decoded only when something is cut: most objects have nothing to.
    let code = CodeMap::new(obj);
    assign_ids(obj, &mut cuts);
    retarget_references(obj, &cuts, &code);
    make_pieces(obj, &mut cuts);
    add_branch_relocations(obj, &cuts);
    cuts.len()
}

/// A resolved branch between two pieces: (field offset in the section,
/// target offset, instruction end).
type Branch = (u64, u64, u64);

/// The sections to cut, and where: at every function start.
fn find_cuts(obj: &Object) -> Vec<Cut> {
    let mut cuts: Vec<Cut> = Vec::new();
    for s in obj
        .sections
        .iter()
        .filter(|s| s.is_exec() && !s.is_nobits())
    {
        let mut starts: Vec<u64> = obj
            .symbols
            .iter()
            .filter(|y| y.section == Some(s.id) && y.kind == SymKind::Func && y.value < s.size)
            .map(|y| y.value)
            .collect();
        starts.sort_unstable();
        starts.dedup();
        if starts.len() < 2 {
            continue;
        }
        starts[0] = 0; // bytes before the first function go with it
        cuts.push(Cut {
            section: s.id,
            starts,
            pieces: Vec::new(),
            symbols: Vec::new(),
            branches: Vec::new(),
        });
    }
    cuts
}

/// Ids of the pieces and of their section symbols, decided up front so
/// that references can point at them before the pieces exist.
fn assign_ids(obj: &Object, cuts: &mut [Cut]) {
    let (mut next_section, mut next_symbol) = (obj.sections.len(), obj.symbols.len());
    for c in cuts.iter_mut() {
        let own = obj
            .symbols
            .iter()
            .find(|y| y.kind == SymKind::Section && y.section == Some(c.section))
            .map(|y| y.id);
        for i in 0..c.starts.len() {
            c.pieces.push(if i == 0 {
                c.section
            } else {
                next_section += 1;
                SectionId(next_section - 1)
            });
            c.symbols.push(match (i, own) {
                (0, Some(own)) => own,
                _ => {
                    next_symbol += 1;
                    SymbolId(next_symbol - 1)
                }
            });
        }
    }
}

/// Every reference through a split section's symbol, resolved against the
/// section as it is now, points at the piece it reaches.
fn retarget_references(obj: &mut Object, cuts: &[Cut], code: &CodeMap) {
    let cut_of: HashMap<SectionId, usize> = cuts
        .iter()
        .enumerate()
        .map(|(i, c)| (c.section, i))
        .collect();
    let mut retarget: Vec<(SectionId, usize, SymbolId, i64)> = Vec::new();
    for s in &obj.sections {
        for (ri, r) in s.relocs.iter().enumerate() {
            if let RelocTarget::SectionOffset(t, off) = obj.reloc_target(r) {
                if let Some(&ci) = cut_of.get(&t) {
                    let c = &cuts[ci];
                    let at = off.wrapping_add(code.bias(s, r)).max(0) as u64;
                    let p = c.piece_of(at);
                    retarget.push((
                        s.id,
                        ri,
                        c.symbols[p],
                        r.addend.wrapping_sub(c.starts[p] as i64),
                    ));
                }
            }
        }
    }
    for (sec, ri, symbol, addend) in retarget {
        let r = &mut obj.sections[sec.0].relocs[ri];
        r.symbol = symbol;
        r.addend = addend;
    }
}

/// Branches the assembler resolved between two pieces of `c` (a short one
/// cannot become a relocation: an error).
fn branches_between_pieces(obj: &Object, c: &Cut) -> Result<Vec<Branch>, SplitError> {
    let mut branches: Vec<Branch> = Vec::new();
    let s = obj.section(c.section);
    let mut d = Decoder::with_ip(64, &s.data, 0, DecoderOptions::NONE);
    let mut insn = Instruction::default();
    while d.can_decode() {
        d.decode_out(&mut insn);
        if !matches!(
            insn.op0_kind(),
            OpKind::NearBranch32 | OpKind::NearBranch64 | OpKind::NearBranch16
        ) {
            continue;
        }
        let (from, to) = (insn.ip(), insn.near_branch_target());
        if to >= s.size || c.piece_of(from) == c.piece_of(to) {
            continue;
        }
        let offsets = d.get_constant_offsets(&insn);
        let field = from + offsets.immediate_offset() as u64;
        let size = offsets.immediate_size() as u64;
        if !s.relocs_in(field, field + size).is_empty() {
            continue; // the assembler left it to the linker: already a relocation
        }
        if size != 4 {
            return Err(SplitError {
                section: s.name.clone(),
                what: format!(
                    "a {size}-byte jump at +{from:#x} crosses from one function to the next, which no relocation can express"
                ),
            });
        }
        branches.push((field, to, insn.next_ip()));
    }
    Ok(branches)
}

/// The pieces: sections, section symbols, relocations and symbols moved.
fn make_pieces(obj: &mut Object, cuts: &mut [Cut]) {
    for c in cuts.iter_mut() {
        let base = obj.section(c.section).clone();
        let name_at = |start: u64| -> String {
            obj.symbols
                .iter()
                .filter(|y| {
                    y.section == Some(c.section) && y.kind == SymKind::Func && y.value >= start
                })
                .min_by_key(|y| (y.value, !y.is_global()))
                .map_or_else(|| format!("{start:x}"), |y| y.name.clone())
        };
        let names: Vec<String> = c.starts.iter().map(|&st| name_at(st)).collect();
        for (i, &start) in c.starts.iter().enumerate() {
            let end = c.starts.get(i + 1).copied().unwrap_or(base.size);
            let mut piece = base.clone();
            piece.id = c.pieces[i];
            piece.name = format!("{}.{}", base.name, names[i]);
            piece.data = base
                .data
                .get(start as usize..end as usize)
                .unwrap_or_default()
                .to_vec();
            piece.size = end - start;
            piece.relocs = Vec::new();
            piece.rela = None;
            if i == 0 {
                let at = piece.id.0;
                obj.sections[at] = piece;
            } else {
                debug_assert_eq!(piece.id.0, obj.sections.len());
                obj.sections.push(piece);
            }
        }
        for (i, &sym) in c.symbols.iter().enumerate() {
            let name = obj.section(c.pieces[i]).name.clone();
            if sym.0 < obj.symbols.len() {
                obj.symbols[sym.0].name = name;
            } else {
                obj.symbols.push(Symbol {
                    id: sym,
                    name,
                    kind: SymKind::Section,
                    binding: graft_elf::Binding::Local,
                    section: Some(c.pieces[i]),
                    shndx: 0,
                    value: 0,
                    size: 0,
                    other: 0,
                });
            }
        }
        // Relocations of the section, to their pieces.
        for r in &base.relocs {
            let i = c.piece_of(r.offset);
            let mut r = *r;
            r.offset -= c.starts[i];
            obj.sections[c.pieces[i].0].relocs.push(r);
        }
        // Named symbols, to their pieces.
        for y in obj.symbols.iter_mut() {
            if y.section == Some(c.section) && y.kind != SymKind::Section {
                let i = c.piece_of(y.value);
                y.value -= c.starts[i];
                y.section = Some(c.pieces[i]);
            }
        }
    }
}

/// In-place branches between pieces become relocations.
fn add_branch_relocations(obj: &mut Object, cuts: &[Cut]) {
    for c in cuts {
        for &(field, to, end) in &c.branches {
            let (from_piece, to_piece) = (c.piece_of(field), c.piece_of(to));
            let addend = (to - c.starts[to_piece]) as i64 - (end - field) as i64;
            obj.sections[c.pieces[from_piece].0].relocs.push(Reloc {
                offset: field - c.starts[from_piece],
                r_type: R_X86_64_PC32,
                symbol: c.symbols[to_piece],
                addend,
            });
        }
        for p in &c.pieces {
            obj.sections[p.0].relocs.sort_by_key(|r| r.offset);
        }
    }
}
