//! The sections of a kernel object, by role: code, data, the tables the
//! kernel keeps *about* code (one entry per site: ftrace call sites, bug
//! sites, exception fixups, jump labels…), code pieces those tables point to,
//! and what a patch never needs. Every section name must be understood:
//! [`role`] returns `None` for anything else, and a section the differ does
//! not understand that refers to patched code is refused, never dropped.

use graft_elf::{Object, RelocTarget, Section, SectionId, SymKind, SymbolId};
use serde::Serialize;

use crate::code::{CodeMap, Target};
use crate::layout::Layout;

/// How the size of a table's entries is known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Size {
    /// `sizeof` of the item the layout probe read from the kernel.
    Item(&'static str),
    /// The entry is a single relocated field and nothing else: a 32-bit
    /// PC-relative offset to a code site (`.smp_locks`, `.retpoline_sites`,
    /// `.return_sites`). The kernel declares their element type (`s32`) only
    /// inside `arch/x86/kernel/alternative.c`, where no header exposes it, so
    /// the size is the width of the relocation that fills the field, and the
    /// table must be exactly a dense array of such relocations.
    RelocField,
}

/// A table with one entry per code site.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Table {
    pub size: Size,
    /// The layout item whose masked field is a `__LINE__` (bug entries and
    /// printk index entries record source lines; a shifted line is no change).
    pub line_field: Option<(&'static str, &'static str)>,
    /// The entry points at a data object (printk index) whose `func` field
    /// names the function it belongs to, instead of at code.
    pub owner_by_func_field: Option<(&'static str, &'static str)>,
    /// The entry names a static key / static call key (jump labels, static calls).
    pub keyed: bool,
    /// Entries also point at a replacement in `.altinstr_replacement`, whose
    /// length is this field of the entry.
    pub replacement_len: Option<(&'static str, &'static str)>,
}

impl Table {
    const fn plain(size: Size) -> Table {
        Table {
            size,
            line_field: None,
            owner_by_func_field: None,
            keyed: false,
            replacement_len: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Executable code; its function symbols are compared one by one.
    Code,
    /// Data; its object symbols are compared one by one.
    Data,
    /// A table about code: rebuilt with the entries of carried functions.
    Table(Table),
    /// `.orc_unwind`: records parallel to `.orc_unwind_ip`, by index.
    OrcData,
    /// Anonymous code pieces reached from tables or code
    /// (`.altinstr_replacement`, `.altinstr_aux`): compared by content,
    /// carried piece by piece.
    Pieces,
    /// Export tables (`__ksymtab+foo`…): vmlinux already exports the symbol
    /// and a patch must not export it again; the CRC rule guards the ABI.
    Exports,
    /// Boot-time registration tables of vmlinux (tracepoint and event
    /// definitions, parameters, `__setup`, initcalls): consumed once at boot,
    /// never carried. Their entries point at data objects, which are diffed
    /// as data, so a changed or new definition is refused there.
    Registry,
    /// Never part of a loaded kernel (objtool annotations, debug info, notes).
    Drop,
    /// graft's own records (`.graft.*`, written by `<graft/livepatch.h>`):
    /// read by [`crate::markers`], never carried, and what they point to is
    /// not thereby used.
    Marker,
    /// ELF bookkeeping (symbol and string tables, relocation sections).
    Meta,
}

const BUG: Table = Table {
    line_field: Some(("bug_entry", "line")),
    ..Table::plain(Size::Item("bug_entry"))
};
const JUMP: Table = Table {
    keyed: true,
    ..Table::plain(Size::Item("jump_entry"))
};
const ALT: Table = Table {
    replacement_len: Some(("alt_instr", "replacementlen")),
    ..Table::plain(Size::Item("alt_instr"))
};
const STATIC_CALL: Table = Table {
    keyed: true,
    ..Table::plain(Size::Item("static_call_site"))
};
const PRINTK_INDEX: Table = Table {
    line_field: Some(("pi_entry", "line")),
    owner_by_func_field: Some(("pi_entry", "func")),
    ..Table::plain(Size::Item("printk_index"))
};

/// The rule table: exact names first, then prefixes. Kernel references for
/// each (6.1, x86-64):
const EXACT: &[(&str, Role)] = &[
    // WARN/BUG sites: `_BUG_FLAGS` in arch/x86/include/asm/bug.h.
    ("__bug_table", Role::Table(BUG)),
    // Exception fixups: `_ASM_EXTABLE_TYPE` (get_user, copy_*_user, rdmsr…).
    (
        "__ex_table",
        Role::Table(Table::plain(Size::Item("exception_table_entry"))),
    ),
    // Jump labels: `static_branch_*`, tracepoint and dynamic debug keys.
    ("__jump_table", Role::Table(JUMP)),
    // Alternatives: `ALTERNATIVE`, `static_cpu_has`.
    (".altinstructions", Role::Table(ALT)),
    (
        "__mcount_loc",
        Role::Table(Table::plain(Size::Item("mcount_loc"))),
    ),
    ("__tracepoints_ptrs", Role::Registry),
    (
        ".parainstructions",
        Role::Table(Table::plain(Size::Item("paravirt_patch_site"))),
    ),
    (".smp_locks", Role::Table(Table::plain(Size::RelocField))),
    (".static_call_sites", Role::Table(STATIC_CALL)),
    (
        ".retpoline_sites",
        Role::Table(Table::plain(Size::RelocField)),
    ),
    (".return_sites", Role::Table(Table::plain(Size::RelocField))),
    // objtool's tables of IBT kernels (6.12), in objects it ran on (a module
    // of one file): call sites for call depth tracking, ENDBRs of functions
    // never address-taken (sealed at load), FineIBT's CFI sites.
    (".call_sites", Role::Table(Table::plain(Size::RelocField))),
    (
        ".ibt_endbr_seal",
        Role::Table(Table::plain(Size::RelocField)),
    ),
    (".cfi_sites", Role::Table(Table::plain(Size::RelocField))),
    (
        ".orc_unwind_ip",
        Role::Table(Table::plain(Size::Item("orc_unwind_ip"))),
    ),
    (".orc_unwind", Role::OrcData),
    (".printk_index", Role::Table(PRINTK_INDEX)),
    (
        "_kprobe_blacklist",
        Role::Table(Table::plain(Size::Item("kprobe_blacklist"))),
    ),
    (
        "_error_injection_whitelist",
        Role::Table(Table::plain(Size::Item("error_injection_entry"))),
    ),
    (".altinstr_replacement", Role::Pieces),
    (".altinstr_aux", Role::Pieces),
    ("__dyndbg", Role::Data),
    ("__ksymtab_strings", Role::Exports),
    // Tracepoint and trace event definitions (CREATE_TRACE_POINTS files).
    ("__tracepoints", Role::Registry),
    ("__tracepoints_strings", Role::Registry),
    ("_ftrace_events", Role::Registry),
    ("_ftrace_eval_map", Role::Registry),
    ("__bpf_raw_tp_map", Role::Registry),
    ("__trace_printk_fmt", Role::Registry),
    ("__tracepoint_str", Role::Registry),
    ("__syscalls_metadata", Role::Registry),
    ("__dyndbg_classes", Role::Registry),
    ("__param", Role::Registry),
    ("__modver", Role::Registry),
    (".static_call_tramp_key", Role::Registry),
    // Where `-fpatchable-function-entry` put each function's padding
    // (6.12's CALL_PADDING): x86 discards it from vmlinux and ftrace reads
    // `__mcount_loc`, so nothing reads it in a module either.
    ("__patchable_function_entries", Role::Drop),
    (".modinfo", Role::Drop),
    (".comment", Role::Drop),
    (".BTF", Role::Drop),
    (".BTF.ext", Role::Drop),
    (".llvm_addrsig", Role::Drop),
];

const PREFIX: &[(&str, Role)] = &[
    // Callbacks, states and ignore markers of the patch author.
    (crate::markers::PREFIX, Role::Marker),
    // objtool annotations and other link-time-only sections.
    (".discard.", Role::Drop),
    (".debug_", Role::Drop),
    (".note", Role::Drop),
    ("___ksymtab", Role::Exports),
    ("__ksymtab", Role::Exports),
    ("__kcrctab", Role::Exports),
    (".init.setup", Role::Registry),
    (".initcall", Role::Registry),
    (".con_initcall", Role::Registry),
    (".data", Role::Data),
    (".bss", Role::Data),
    (".rodata", Role::Data),
    (".tbss", Role::Data),
    (".tdata", Role::Data),
    (".init.data", Role::Data),
    (".init.rodata", Role::Data),
    (".exit.data", Role::Data),
    (".ref.data", Role::Data),
    (".meminit.data", Role::Data),
    (".meminit.rodata", Role::Data),
];

/// The role of `s`, or `None` for a section graft does not understand.
pub fn role(s: &Section) -> Option<Role> {
    const SHT_NULL: u32 = 0;
    const SHT_SYMTAB: u32 = 2;
    const SHT_STRTAB: u32 = 3;
    const SHT_GROUP: u32 = 17;
    const SHT_SYMTAB_SHNDX: u32 = 18;
    if s.is_rela()
        || matches!(
            s.sh_type,
            SHT_NULL | SHT_SYMTAB | SHT_STRTAB | SHT_GROUP | SHT_SYMTAB_SHNDX
        )
    {
        return Some(Role::Meta);
    }
    if let Some((_, r)) = EXACT.iter().find(|(n, _)| *n == s.name) {
        return Some(*r);
    }
    if let Some((_, r)) = PREFIX.iter().find(|(p, _)| s.name.starts_with(p)) {
        return Some(*r);
    }
    // Every other executable section holds functions (`.text.*`,
    // `.init.text`, `.sched.text`, `.noinstr.text`…).
    if s.is_exec() {
        return Some(Role::Code);
    }
    None
}

/// One entry of a table, and the function it describes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Entry {
    /// Offset of the entry in its section.
    pub offset: u64,
    pub size: u64,
    /// The function the entry describes; `None` for entries about code
    /// without a function symbol.
    #[serde(skip)]
    pub owner: Option<SymbolId>,
    /// Offset of the described site from the owner's start.
    pub site: i64,
    /// The replacement code the entry points to (`.altinstructions`).
    #[serde(skip)]
    pub replacement: Option<(SectionId, u64, u64)>,
}

/// A table of an object, cut into entries.
#[derive(Debug, Clone, Serialize)]
pub struct TableEntries {
    pub section: String,
    #[serde(skip)]
    pub id: SectionId,
    pub entry_size: u64,
    pub entries: Vec<Entry>,
}

/// Why a table cannot be cut into entries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TableError {
    /// The kernel's layout has no item for it (config option off, or no probe).
    NoLayout { item: &'static str },
    /// The section is not a whole number of entries, or entries lack relocations where required.
    Malformed { what: String },
}

/// Where a data relocation points: (section, offset), no instruction bias.
pub fn data_target(obj: &Object, r: &graft_elf::Reloc) -> Option<(SectionId, i64)> {
    match obj.reloc_target(r) {
        RelocTarget::SectionOffset(sec, off) => Some((sec, off)),
        RelocTarget::Symbol(id) => {
            let s = obj.symbol(id);
            s.section
                .map(|sec| (sec, (s.value as i64).wrapping_add(r.addend)))
        }
    }
}

/// The function of `obj` at `sec`+`off`; an entry may point just past the
/// end of a function (ORC's end-of-function record), which still is that
/// function's.
pub fn function_at(obj: &Object, sec: SectionId, off: i64) -> Option<SymbolId> {
    let mut end_match = None;
    for s in obj.symbols_in(sec) {
        if s.kind != SymKind::Func {
            continue;
        }
        let start = s.value as i64;
        let end = start.saturating_add(s.size as i64);
        if off >= start && off < end {
            return Some(s.id);
        }
        if off == end && s.size > 0 {
            end_match = Some(s.id);
        }
    }
    end_match
}

/// The named data object of `obj` at `sec`+`off`.
fn object_at(obj: &Object, sec: SectionId, off: i64) -> Option<SymbolId> {
    obj.symbols_in(sec)
        .find(|s| {
            s.kind == SymKind::Object
                && off >= s.value as i64
                && off < (s.value as i64).saturating_add(s.size.max(1) as i64)
        })
        .map(|s| s.id)
}

/// Entry size of `table` in section `s`.
pub fn entry_size(table: &Table, s: &Section, layout: &Layout) -> Result<u64, TableError> {
    let size = match table.size {
        Size::Item(item) => layout
            .item(item)
            .map(|i| i.size)
            .ok_or(TableError::NoLayout { item })?,
        Size::RelocField => {
            let width = s
                .relocs
                .first()
                .map(|r| crate::compare::reloc_width(r.r_type))
                .unwrap_or(4);
            let dense = s.relocs.len() as u64 * width == s.size
                && s.relocs.iter().enumerate().all(|(i, r)| {
                    r.offset == i as u64 * width && crate::compare::reloc_width(r.r_type) == width
                });
            if !dense {
                return Err(TableError::Malformed {
                    what: format!(
                        "{} is not a dense array of {width}-byte relocated offsets",
                        s.name
                    ),
                });
            }
            width
        }
    };
    if size == 0 || !s.size.is_multiple_of(size) {
        return Err(TableError::Malformed {
            what: format!(
                "{} ({} bytes) is not a whole number of {size}-byte entries",
                s.name, s.size
            ),
        });
    }
    Ok(size)
}

/// Cuts table `s` of `obj` into entries and finds the function each describes.
pub fn entries(
    obj: &Object,
    s: &Section,
    table: &Table,
    layout: &Layout,
) -> Result<TableEntries, TableError> {
    let size = entry_size(table, s, layout)?;
    let repl_field = match table.replacement_len {
        Some((item, field)) => Some(
            layout
                .item(item)
                .and_then(|i| i.field(field))
                .ok_or(TableError::NoLayout { item })?,
        ),
        None => None,
    };
    let func_field = match table.owner_by_func_field {
        Some((item, field)) => Some(
            layout
                .item(item)
                .and_then(|i| i.field(field))
                .ok_or(TableError::NoLayout { item })?,
        ),
        None => None,
    };
    let mut out = TableEntries {
        section: s.name.clone(),
        id: s.id,
        entry_size: size,
        entries: Vec::new(),
    };
    let n = s.size / size;
    for i in 0..n {
        let (lo, hi) = (i * size, (i + 1) * size);
        let relocs = s.relocs_in(lo, hi);
        let mut e = Entry {
            offset: lo,
            size,
            owner: None,
            site: 0,
            replacement: None,
        };
        // The described site is the entry's first field in every table the
        // kernel has (bug_addr, insn, code, instr_offset, instr, addr, ip).
        if let Some(anchor) = relocs.first().filter(|r| r.offset == lo) {
            if let Some((sec, off)) = data_target(obj, anchor) {
                if func_field.is_some() {
                    e.owner = owner_by_func(obj, sec, off, func_field);
                } else if let Some(f) = function_at(obj, sec, off) {
                    e.owner = Some(f);
                    e.site = off.wrapping_sub(obj.symbol(f).value as i64);
                }
            }
        }
        if let Some((foff, fwidth)) = repl_field {
            let repl = relocs.get(1).and_then(|r| data_target(obj, r));
            let len = s
                .data
                .get((lo + foff) as usize..(lo + foff + fwidth) as usize)
                .map(|b| b.iter().rev().fold(0u64, |a, &x| (a << 8) | x as u64));
            if let (Some((sec, off)), Some(len)) = (repl, len) {
                if off >= 0 {
                    e.replacement = Some((sec, off as u64, off as u64 + len));
                }
            }
        }
        out.entries.push(e);
    }
    Ok(out)
}

/// For entries that point at a data record naming its function (`pi_entry`):
/// the function whose name is the string the record's `func` field points to.
fn owner_by_func(
    obj: &Object,
    sec: SectionId,
    off: i64,
    field: Option<(u64, u64)>,
) -> Option<SymbolId> {
    let (foff, _) = field?;
    let record = object_at(obj, sec, off)?;
    let rs = obj.symbol(record);
    let section = obj.section(rs.section?);
    let at = rs.value.checked_add(foff)?;
    let r = section.relocs_in(at, at + 1).first()?;
    let (ssec, soff) = data_target(obj, r)?;
    let name = crate::compare::string_at(obj.section(ssec), soff)?;
    let name = std::str::from_utf8(name).ok()?;
    obj.functions().find(|f| f.name == name).map(|f| f.id)
}

/// Piece boundaries of a pieces section: every offset something refers to
/// starts a piece, which ends where the next one starts.
pub fn piece_starts(obj: &Object, code: &CodeMap, sec: SectionId) -> Vec<u64> {
    let mut starts: Vec<u64> = Vec::new();
    for s in &obj.sections {
        for r in &s.relocs {
            if let Target::Place(t, at, _) = code.target(obj, s, r) {
                if t == sec && at >= 0 {
                    starts.push(at as u64);
                }
            }
        }
    }
    starts.sort_unstable();
    starts.dedup();
    starts
}

/// The piece of `sec` that starts at `start`: up to the next start or the
/// section's end.
pub fn piece_range(obj: &Object, sec: SectionId, starts: &[u64], start: u64) -> (u64, u64) {
    let end = starts
        .iter()
        .copied()
        .find(|&s| s > start)
        .unwrap_or(obj.section(sec).size)
        .max(start);
    (start, end)
}
