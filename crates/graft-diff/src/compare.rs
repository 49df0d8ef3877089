//! Equality of a function or data object across the two builds.
//!
//! A symbol is the same when its bytes are equal outside relocated fields,
//! every relocation reaches "the same thing", and every table entry that
//! describes it (bug sites, exception fixups, jump labels, alternatives…)
//! is the same. "The same thing" is judged by identity, never by index or
//! offset: a twin's original name for symbols (so a renumbered `count.3` is
//! still `count.1`), the contents of a string, the contents of an anonymous
//! code or data piece.
//!
//! `__LINE__` is compared modulo the fields the kernel's own layout says are
//! line numbers (`bug_entry.line`, `_ddebug.lineno`, `pi_entry.line`): WARN
//! and BUG sites record their line in `__bug_table` and not in the code, so
//! a function whose WARN_ON moved down three lines has identical code and
//! entries that differ only there. Such a function is the same, with a note.

use std::collections::HashMap;

use graft_elf::{Object, Reloc, Section, SectionId, SymKind, SymbolId};

use crate::code::{CodeMap, Target};
use crate::correlate::{symbol_at, Twins};
use crate::layout::Layout;
use crate::special::{self, Role, TableEntries};

// Relocation semantics live in graft-elf; re-exported for the differ's passes.
pub use graft_elf::x86::{is_string_section, pcrel_bias, reloc_width, string_at};

/// What a relocation refers to, independent of symbol and section indexes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RefKey {
    /// A symbol, by its identity in the original build.
    Symbol(String),
    /// A C string, by its contents.
    Str(Vec<u8>),
    /// An anonymous piece of code or data, by its contents.
    Piece(Vec<u8>, Vec<NormReloc>),
    /// A place in a section graft cannot cut into pieces.
    Section(String),
}

/// A relocation made comparable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NormReloc {
    pub offset: u64,
    pub r_type: u32,
    pub key: RefKey,
    /// The offset into what `key` names.
    pub addend: i64,
}

/// A relocation normalized by names alone, for comparing objects that are
/// not two builds of one file (run-pre matching against the target): a
/// symbol by its name, a string by its contents, anything else by section.
pub fn normalize(obj: &Object, reloc: &Reloc, base: u64) -> NormReloc {
    let (key, addend) = match obj.reloc_target(reloc) {
        graft_elf::RelocTarget::Symbol(id) => {
            (RefKey::Symbol(obj.symbol(id).name.clone()), reloc.addend)
        }
        graft_elf::RelocTarget::SectionOffset(sec, off) => {
            let section = obj.section(sec);
            let bias = pcrel_bias(reloc.r_type);
            if is_string_section(section) {
                match string_at(section, off + bias) {
                    Some(s) => (RefKey::Str(s.to_vec()), -bias),
                    None => (RefKey::Section(section.name.clone()), reloc.addend),
                }
            } else if let Some(sym) = obj.symbol_covering(sec, off + bias) {
                (
                    RefKey::Symbol(sym.name.clone()),
                    off.wrapping_sub(sym.value as i64),
                )
            } else {
                (RefKey::Section(section.name.clone()), off)
            }
        }
    };
    NormReloc {
        offset: reloc.offset.saturating_sub(base),
        r_type: reloc.r_type,
        key,
        addend,
    }
}

/// One build's object with what the comparison needs to know about it.
pub struct Side<'a> {
    pub obj: &'a Object,
    /// Instruction boundaries, decoded once for every pass (and kept in the
    /// diff's result for planning and verification).
    pub code: std::sync::Arc<CodeMap>,
    /// What each symbol refers to, in relocation order.
    pub refs: std::sync::Arc<HashMap<SymbolId, Vec<SymbolId>>>,
    pub tables: Vec<TableEntries>,
    /// Tables graft could not cut (no layout, malformed), by section.
    pub table_errors: Vec<(SectionId, special::TableError)>,
    /// (table index, entry index) of the entries describing each function.
    pub entries_of: HashMap<SymbolId, Vec<(usize, usize)>>,
    pub pieces: HashMap<SectionId, Vec<u64>>,
    pub patched: bool,
}

impl<'a> Side<'a> {
    pub fn new(obj: &'a Object, layout: &Layout, patched: bool) -> Side<'a> {
        let code = CodeMap::new(obj);
        let mut tables = Vec::new();
        let mut table_errors = Vec::new();
        let mut pieces = HashMap::new();
        for s in &obj.sections {
            match special::role(s) {
                Some(Role::Table(t)) => match special::entries(obj, s, &t, layout) {
                    Ok(e) => tables.push(e),
                    Err(e) => table_errors.push((s.id, e)),
                },
                Some(Role::Pieces) => {
                    pieces.insert(s.id, special::piece_starts(obj, &code, s.id));
                }
                // Anonymous data (no symbol) is cut into pieces too.
                Some(Role::Data)
                    if (!s.relocs.is_empty() || s.is_alloc())
                        && obj.symbols_in(s.id).next().is_none()
                        && !is_string_section(s) =>
                {
                    pieces.insert(s.id, special::piece_starts(obj, &code, s.id));
                }
                _ => {}
            }
        }
        let mut entries_of: HashMap<SymbolId, Vec<(usize, usize)>> = HashMap::new();
        for (ti, t) in tables.iter().enumerate() {
            for (ei, e) in t.entries.iter().enumerate() {
                if let Some(o) = e.owner {
                    entries_of.entry(o).or_default().push((ti, ei));
                }
            }
        }
        let refs = std::sync::Arc::new(crate::correlate::references(obj, &code));
        Side {
            obj,
            code: std::sync::Arc::new(code),
            refs,
            tables,
            table_errors,
            entries_of,
            pieces,
            patched,
        }
    }
}

pub struct Ctx<'a> {
    pub orig: Side<'a>,
    pub patched: Side<'a>,
    pub twins: Twins,
    pub layout: &'a Layout,
}

/// A function's or object's comparable body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Body {
    pub bytes: Vec<u8>,
    pub relocs: Vec<NormReloc>,
    pub entries: Vec<NormEntry>,
    /// Line numbers read from line fields, in entry order.
    pub lines: Vec<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NormEntry {
    pub table: String,
    pub site: i64,
    pub bytes: Vec<u8>,
    pub relocs: Vec<NormReloc>,
    pub replacement: Option<(Vec<u8>, Vec<NormReloc>)>,
}

/// How two bodies differ.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Difference {
    /// Code or data bytes differ at this offset.
    Bytes(u64),
    /// A relocation at this offset reaches something else.
    Reloc(u64, String),
    /// Sizes differ.
    Size(u64, u64),
    /// A table entry describing the site at this offset differs.
    Entry(String, i64),
}

impl Difference {
    pub fn offset(&self) -> u64 {
        match self {
            Difference::Bytes(o) | Difference::Reloc(o, _) => *o,
            Difference::Size(a, b) => (*a).min(*b),
            Difference::Entry(_, site) => (*site).max(0) as u64,
        }
    }
}

impl<'a> Ctx<'a> {
    fn side(&self, patched: bool) -> &Side<'a> {
        if patched {
            &self.patched
        } else {
            &self.orig
        }
    }

    /// Identity of `id` on `side`, with original names resolved. Data
    /// without identity (`__func__`, dynamic debug descriptors…) is what it
    /// holds: its bytes and references, line fields aside. Their numbered
    /// names pair poorly (a dozen `__UNIQUE_ID_ddebug` of one function), and
    /// need not pair at all.
    pub fn identity(&self, patched: bool, id: SymbolId) -> String {
        let side = self.side(patched);
        let s = side.obj.symbol(id);
        if crate::names::identity_free(crate::names::hidden_of(side.obj, id)) {
            let b = self.body(patched, id);
            return format!("content {:?} {:?}", b.bytes, b.relocs);
        }
        if !patched || s.section.is_none() {
            return s.name.clone();
        }
        match self.twins.orig_of(id) {
            Some(o) => self.orig.obj.symbol(o).name.clone(),
            None => format!("new {}", s.name),
        }
    }

    fn norm(&self, patched: bool, s: &Section, r: &Reloc, base: u64, depth: u8) -> NormReloc {
        let side = self.side(patched);
        let obj = side.obj;
        let (key, addend) = match side.code.target(obj, s, r) {
            Target::Undefined(name, addend) => (RefKey::Symbol(name), addend),
            Target::Place(sec, off, _) => {
                let section = obj.section(sec);
                if is_string_section(section) {
                    match string_at(section, off) {
                        Some(st) => (RefKey::Str(st.to_vec()), 0),
                        None => (RefKey::Section(section.name.clone()), off),
                    }
                } else if let Some(starts) = side.pieces.get(&sec).filter(|_| depth == 0) {
                    let at = off.max(0) as u64;
                    let start = starts
                        .iter()
                        .rev()
                        .find(|&&st| st <= at)
                        .copied()
                        .unwrap_or(0);
                    let (lo, hi) = special::piece_range(obj, sec, starts, start);
                    let (bytes, relocs) = self.raw(patched, section, lo, hi, depth + 1);
                    (RefKey::Piece(bytes, relocs), off.wrapping_sub(lo as i64))
                } else if let Some(sym) = symbol_at(obj, sec, off) {
                    (
                        RefKey::Symbol(self.identity(patched, sym)),
                        off.wrapping_sub(obj.symbol(sym).value as i64),
                    )
                } else {
                    (RefKey::Section(section.name.clone()), off)
                }
            }
        };
        NormReloc {
            offset: r.offset.saturating_sub(base),
            r_type: r.r_type,
            key,
            addend,
        }
    }

    /// Bytes of `[lo, hi)` of `s` with relocation fields zeroed, and the
    /// normalized relocations.
    fn raw(
        &self,
        patched: bool,
        s: &Section,
        lo: u64,
        hi: u64,
        depth: u8,
    ) -> (Vec<u8>, Vec<NormReloc>) {
        let mut bytes = if s.is_nobits() {
            Vec::new()
        } else {
            let a = (lo as usize).min(s.data.len());
            let b = (hi as usize).min(s.data.len()).max(a);
            s.data[a..b].to_vec()
        };
        let relocs: Vec<NormReloc> = s
            .relocs_in(lo, hi)
            .iter()
            .map(|r| self.norm(patched, s, r, lo, depth))
            .collect();
        for r in s.relocs_in(lo, hi) {
            let a = (r.offset - lo) as usize;
            let b = a
                .saturating_add(reloc_width(r.r_type) as usize)
                .min(bytes.len());
            if a < b {
                bytes[a..b].fill(0);
            }
        }
        (bytes, relocs)
    }

    /// The comparable body of a function or data object.
    pub fn body(&self, patched: bool, id: SymbolId) -> Body {
        let side = self.side(patched);
        let obj = side.obj;
        let sym = obj.symbol(id);
        let Some(sec) = sym.section else {
            return Body {
                bytes: Vec::new(),
                relocs: Vec::new(),
                entries: Vec::new(),
                lines: Vec::new(),
            };
        };
        let section = obj.section(sec);
        let end = if sym.size == 0 && sym.kind == SymKind::Func {
            section.size
        } else {
            sym.value.saturating_add(sym.size)
        };
        let (mut bytes, relocs) = self.raw(patched, section, sym.value, end, 0);
        let mut lines = Vec::new();
        if let Some((item, field)) = self.line_mask_of(obj, id) {
            mask_field(&mut bytes, self.layout, item, field, &mut lines);
        }
        if section.is_nobits() {
            bytes = sym.size.to_le_bytes().to_vec();
        }
        let mut entries = Vec::new();
        for &(ti, ei) in side.entries_of.get(&id).into_iter().flatten() {
            let t = &side.tables[ti];
            let e = &t.entries[ei];
            let ts = obj.section(t.id);
            let (mut eb, er) = self.raw(patched, ts, e.offset, e.offset + e.size, 0);
            if let Some(Role::Table(table)) = special::role(ts) {
                if let Some((item, field)) = table.line_field {
                    mask_field(&mut eb, self.layout, item, field, &mut lines);
                }
            }
            let replacement = e.replacement.map(|(rs, lo, hi)| {
                let rsec = obj.section(rs);
                self.raw(patched, rsec, lo, hi, 1)
            });
            entries.push(NormEntry {
                table: t.section.clone(),
                site: e.site,
                bytes: eb,
                relocs: er,
                replacement,
            });
        }
        entries.sort_by(|a, b| (&a.table, a.site).cmp(&(&b.table, b.site)));
        Body {
            bytes,
            relocs,
            entries,
            lines,
        }
    }

    /// Data records that hold a `__LINE__` of their own.
    fn line_mask_of(&self, obj: &Object, id: SymbolId) -> Option<(&'static str, &'static str)> {
        let s = obj.symbol(id);
        let sec = obj.section(s.section?);
        if sec.name == "__dyndbg" {
            return Some(("ddebug", "lineno"));
        }
        if crate::names::family(&s.name).base == "_entry" {
            return Some(("pi_entry", "line"));
        }
        None
    }

    /// The first difference between an original symbol and its twin.
    pub fn compare(&self, o: SymbolId, p: SymbolId) -> Option<Difference> {
        let a = self.body(false, o);
        let b = self.body(true, p);
        first_difference(
            &a,
            &b,
            self.orig.obj.symbol(o).size,
            self.patched.obj.symbol(p).size,
        )
    }
}

/// Zeroes the line field of `bytes` (an entry or record) and records its value.
fn mask_field(bytes: &mut [u8], layout: &Layout, item: &str, field: &str, lines: &mut Vec<u64>) {
    let Some(mask) = layout.item(item).and_then(|i| i.masks.get(field)) else {
        return;
    };
    if mask.len() != bytes.len() {
        return;
    }
    let mut value = 0u64;
    let mut shift = 0u32;
    for (b, m) in bytes.iter_mut().zip(mask) {
        for bit in 0..8 {
            if m & (1 << bit) != 0 {
                if shift < 64 && *b & (1 << bit) != 0 {
                    value |= 1 << shift;
                }
                shift += 1;
            }
        }
        *b &= !m;
    }
    lines.push(value);
}

pub fn first_difference(a: &Body, b: &Body, asz: u64, bsz: u64) -> Option<Difference> {
    let mut found: Vec<Difference> = Vec::new();
    if let Some((x, y)) = a.relocs.iter().zip(&b.relocs).find(|(x, y)| x != y) {
        found.push(Difference::Reloc(
            x.offset.min(y.offset),
            format!(
                "{} vs {}",
                describe(&x.key, x.addend),
                describe(&y.key, y.addend)
            ),
        ));
    } else if a.relocs.len() != b.relocs.len() {
        let n = a.relocs.len().min(b.relocs.len());
        let r = a.relocs.get(n).or(b.relocs.get(n));
        found.push(Difference::Reloc(
            r.map_or(0, |r| r.offset),
            "a relocation only one build has".into(),
        ));
    }
    if let Some(i) = a.bytes.iter().zip(&b.bytes).position(|(x, y)| x != y) {
        found.push(Difference::Bytes(i as u64));
    }
    if asz != bsz || a.bytes.len() != b.bytes.len() {
        found.push(Difference::Size(asz, bsz));
    }
    let first = found.into_iter().min_by_key(|d| d.offset());
    if first.is_some() {
        return first;
    }
    if a.entries != b.entries {
        let (x, y) = (&a.entries, &b.entries);
        let at = x
            .iter()
            .zip(y)
            .find(|(p, q)| p != q)
            .map(|(p, _)| p)
            .or_else(|| x.get(y.len()).or(y.get(x.len())))
            .or(x.first())
            .or(y.first());
        return Some(match at {
            Some(e) => Difference::Entry(e.table.clone(), e.site),
            None => Difference::Entry(String::new(), 0),
        });
    }
    None
}

fn describe(k: &RefKey, addend: i64) -> String {
    let plus = |s: String| {
        if addend == 0 {
            s
        } else {
            format!("{s}{addend:+}")
        }
    };
    match k {
        RefKey::Symbol(s) => plus(s.clone()),
        RefKey::Str(s) => format!("\"{}\"", String::from_utf8_lossy(s).escape_default()),
        RefKey::Piece(b, _) => plus(format!("a {}-byte piece", b.len())),
        RefKey::Section(s) => plus(s.clone()),
    }
}
