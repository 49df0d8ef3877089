//! Which sections of the patched object the module carries, and where each
//! of their references goes: into the module itself, to an exported symbol
//! the module links against, or to a kernel symbol found through a klp
//! relocation.
//!
//! The closure starts from the changed and new functions and follows every
//! relocation of what is carried, including the table entries that
//! describe carried code (a bug entry's file name, a jump entry's key, an
//! alternative's replacement). New data, changed constants and the
//! identity-free hidden data (`__func__`, dynamic debug descriptors) are
//! carried; everything else is the running kernel's, named by the name the
//! kernel knows it by (a renumbered `foo.isra.1` is still `foo.isra.0`
//! there).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use graft_diff::code::{CodeMap, Target as Ref};
use graft_diff::compare::is_string_section;
use graft_diff::special::{self, Role};
use graft_diff::{ObjectDiff, Verdict};
use graft_elf::{Object, SectionId, SymKind, SymbolId};
use graft_target::{Exports, SymbolTable, SymposError};

use crate::special::Filtered;
use crate::{KlpCallback, KlpError, KlpFunc};

/// What the target kernel offers a patch module.
pub struct Resolver<'a> {
    pub symbols: &'a SymbolTable,
    pub exports: &'a Exports,
    /// The klp object the patched file belongs to ("vmlinux" or a module name).
    pub object: &'a str,
    /// `sympos` proven by run-pre verification; names not listed must be unique.
    pub known: &'a BTreeMap<String, u32>,
    /// Global functions and data that the patch itself adds (in any of its
    /// files): the module links them by name.
    pub patch_defines: &'a BTreeSet<String>,
}

impl Resolver<'_> {
    fn sympos(&self, name: &str) -> Result<u32, SymposError> {
        match self.known.get(name) {
            Some(&p) => Ok(p),
            None => self.symbols.unique_sympos(self.object, name),
        }
    }
}

/// Where one reference of carried code goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A named symbol of a carried section.
    Symbol(SymbolId, i64),
    /// An offset in a carried section (strings, pieces, constants).
    Section(SectionId, i64),
    /// A symbol of the running kernel, by its final name in the module
    /// (plain for exports, `.klp.sym.*` otherwise).
    External(String, i64),
}

/// The module's share of one patched object.
pub struct Plan<'a> {
    pub patched: &'a Object,
    /// The klp object the patched file belongs to: "vmlinux" or a module.
    pub object: String,
    /// The file's number among the patch's files (for unique names).
    pub unit: usize,
    /// Patched sections carried into the module.
    pub sections: BTreeSet<SectionId>,
    /// Resolved target of every relocation the module keeps, by (section,
    /// offset) in the patched object; relocations of carried sections that
    /// have none lie in pieces nothing carried uses, and are left out.
    pub targets: BTreeMap<(SectionId, u64), Target>,
    pub funcs: Vec<KlpFunc>,
    /// Global aliases that let the stub name each new function.
    pub aliases: Vec<(SymbolId, String)>,
    /// The callbacks this file declares, named by their aliases.
    pub callbacks: Vec<KlpCallback>,
    /// The tables about carried code, cut down to their entries.
    pub specials: Vec<Filtered>,
    /// Global functions and data new in this file: they keep their global
    /// binding in the module, for the patch's other files.
    pub new_globals: BTreeSet<SymbolId>,
    /// objtool runs on the module at its link
    /// ([`crate::special::objtool_at_link`]). It reads the symbols: the
    /// stub's aliases are then untyped (a second function symbol at a
    /// function's address would be another function to it, and the jumps to
    /// the cold part sibling calls), and references the compiler made
    /// through a section symbol stay so (a jump to `foo.cold` through its
    /// function symbol is a call to it).
    pub objtool_at_link: bool,
}

impl<'a> Plan<'a> {
    /// The jump-label tables of this file the stub must register itself.
    pub fn deferred_jumps(&self) -> impl Iterator<Item = &crate::DeferredJumps> {
        self.specials.iter().filter_map(|f| f.deferred.as_ref())
    }

    pub fn object_name(&self) -> String {
        self.patched
            .path
            .file_name()
            .map_or_else(String::new, |n| n.to_string_lossy().into_owned())
    }
}

/// Decides what the module carries for `diff` of `patched`. `unit` numbers
/// the object among all of the patch, to keep alias names unique.
pub fn plan<'a>(
    patched: &'a Object,
    diff: &ObjectDiff,
    resolver: &Resolver<'_>,
    unit: usize,
) -> Result<Plan<'a>, KlpError> {
    let mut p = Planner::new(patched, diff, resolver, unit);
    p.seed_functions()?;
    p.keep_table_entries();
    p.resolve_references()?;
    p.plan.specials = crate::special::cut(&p.plan, diff, &p.kept)?;
    p.register_functions(unit)?;
    p.wire_callbacks()?;
    Ok(p.plan)
}

/// The state of one planning: what is carried so far, and what is left to
/// resolve.
struct Planner<'a, 'd, 'r> {
    plan: Plan<'a>,
    diff: &'d ObjectDiff,
    resolver: &'r Resolver<'r>,
    object: String,
    /// The differ's decoding of the patched object.
    code: std::sync::Arc<CodeMap>,
    /// The name the running kernel knows each paired symbol by.
    kernel_names: HashMap<SymbolId, String>,
    /// Data the module carries as soon as carried code uses it.
    carry_if_used: BTreeSet<SymbolId>,
    carried_funcs: BTreeSet<SymbolId>,
    /// Sections of anonymous pieces, their piece starts, and the ranges of
    /// them carried code uses.
    piece_sections: BTreeSet<SectionId>,
    starts: HashMap<SectionId, Vec<u64>>,
    live: BTreeMap<SectionId, Vec<(u64, u64)>>,
    /// Kept table entries: (table index, entry index).
    kept: Vec<(usize, usize)>,
    /// Carried sections whose relocations are still to resolve.
    work: Vec<SectionId>,
}

impl<'a, 'd, 'r> Planner<'a, 'd, 'r> {
    fn new(
        patched: &'a Object,
        diff: &'d ObjectDiff,
        resolver: &'r Resolver<'r>,
        unit: usize,
    ) -> Self {
        let plan = Plan {
            patched,
            object: resolver.object.to_owned(),
            unit,
            sections: BTreeSet::new(),
            targets: BTreeMap::new(),
            funcs: Vec::new(),
            aliases: Vec::new(),
            callbacks: Vec::new(),
            specials: Vec::new(),
            new_globals: diff
                .functions
                .iter()
                .chain(&diff.data)
                .filter(|c| c.verdict == Verdict::New && patched.symbol(c.symbol).is_global())
                .map(|c| c.symbol)
                .collect(),
            objtool_at_link: false,
        };
        let object = plan.object_name();
        let code = diff.code.clone();
        let piece_sections: BTreeSet<SectionId> = patched
            .sections
            .iter()
            .filter(|s| is_piece_section(patched, s.id))
            .map(|s| s.id)
            .collect();
        let starts = piece_sections
            .iter()
            .map(|&s| (s, special::piece_starts(patched, &code, s)))
            .collect();
        Planner {
            kernel_names: diff
                .functions
                .iter()
                .chain(&diff.data)
                .filter_map(|c| c.orig_name.clone().map(|n| (c.symbol, n)))
                .collect(),
            carry_if_used: diff.carried_data().map(|c| c.symbol).collect(),
            carried_funcs: diff.included_functions().map(|c| c.symbol).collect(),
            plan,
            diff,
            resolver,
            object,
            code,
            piece_sections,
            starts,
            live: BTreeMap::new(),
            kept: Vec::new(),
            work: Vec::new(),
        }
    }

    fn carry(&mut self, sec: SectionId) {
        if self.plan.sections.insert(sec) {
            self.work.push(sec);
        }
    }

    /// The sections of the changed and new functions. After
    /// [`crate::split`]-like splitting every function has its own section;
    /// one that still shares it cannot be carried alone.
    fn seed_functions(&mut self) -> Result<(), KlpError> {
        let patched = self.plan.patched;
        for c in self.diff.included_functions() {
            // Aliases (same address) are one function; other functions in
            // the section are not.
            let at = patched.symbol(c.symbol).value;
            let shared = patched
                .symbols_in(c.section_id)
                .any(|s| s.kind == SymKind::Func && s.id != c.symbol && s.value != at);
            if shared {
                return Err(KlpError::Unsupported {
                    object: self.object.clone(),
                    what: format!(
                        "{} shares {} with other functions, and graft carries whole sections; hint: this is a graft limitation for functions with an explicit section (__sched, noinstr…)",
                        c.name, c.section
                    ),
                });
            }
            self.carry(c.section_id);
        }
        Ok(())
    }

    /// The entries of tables about code that describe carried functions,
    /// and the replacement code (alternatives) they point to.
    fn keep_table_entries(&mut self) {
        for (ti, t) in self.diff.tables.iter().enumerate() {
            for (ei, e) in t.entries.iter().enumerate() {
                if e.owner.is_some_and(|o| self.carried_funcs.contains(&o)) {
                    self.kept.push((ti, ei));
                    if let Some((rs, lo, hi)) = e.replacement {
                        self.live.entry(rs).or_default().push((lo, hi));
                    }
                }
            }
        }
    }

    /// Resolves every relocation of what is carried (carried sections,
    /// live pieces, kept entries), carrying what they need in turn, until
    /// nothing new is carried.
    fn resolve_references(&mut self) -> Result<(), KlpError> {
        let patched = self.plan.patched;
        let mut resolved_sections: BTreeSet<SectionId> = BTreeSet::new();
        let mut pending: Vec<(SectionId, u64)> = Vec::new();
        for &(ti, ei) in &self.kept {
            let t = &self.diff.tables[ti];
            let e = &t.entries[ei];
            for r in patched.section(t.id).relocs_in(e.offset, e.offset + e.size) {
                pending.push((t.id, r.offset));
            }
        }
        loop {
            while let Some(sec) = self.work.pop() {
                if !resolved_sections.insert(sec) {
                    continue;
                }
                if self.piece_sections.contains(&sec) {
                    continue; // resolved by live range below
                }
                for r in &patched.section(sec).relocs {
                    pending.push((sec, r.offset));
                }
            }
            // Piece sections: relocations inside live ranges.
            for (&sec, ranges) in &self.live {
                for r in &patched.section(sec).relocs {
                    if ranges
                        .iter()
                        .any(|&(lo, hi)| r.offset >= lo && r.offset < hi)
                        && !self.plan.targets.contains_key(&(sec, r.offset))
                        && !pending.contains(&(sec, r.offset))
                    {
                        pending.push((sec, r.offset));
                    }
                }
                if self.plan.sections.insert(sec) {
                    resolved_sections.insert(sec);
                }
            }
            if pending.is_empty() {
                return Ok(());
            }
            while let Some((sec, off)) = pending.pop() {
                if self.plan.targets.contains_key(&(sec, off)) {
                    continue;
                }
                if let Some(target) = self.resolve(sec, off)? {
                    self.plan.targets.insert((sec, off), target);
                }
            }
        }
    }

    /// Where the relocation at `sec`+`off` goes.
    fn resolve(&mut self, sec: SectionId, off: u64) -> Result<Option<Target>, KlpError> {
        let patched = self.plan.patched;
        let section = patched.section(sec);
        let Some(r) = section.relocs_in(off, off + 1).first().copied() else {
            return Ok(None);
        };
        let user = function_at(patched, sec, off);
        Ok(Some(match self.code.target(patched, section, &r) {
            // What the stub defines (`__graft_patch`, for graft_state())
            // links inside the module.
            Ref::Undefined(name, _) if crate::stub::DEFINES.contains(&name.as_str()) => {
                Target::External(name, r.addend)
            }
            Ref::Undefined(name, _) => Target::External(
                external_name(self.resolver, &self.object, &user, &name, true)?,
                r.addend,
            ),
            Ref::Place(home, at, _) => self.resolve_place(&r, home, at, &user)?,
        }))
    }

    /// A reference to a place of the patched object: a named symbol there
    /// (carried, or the running kernel's), or an offset in a carried
    /// section (strings, anonymous pieces).
    fn resolve_place(
        &mut self,
        r: &graft_elf::Reloc,
        home: SectionId,
        at: i64,
        user: &str,
    ) -> Result<Target, KlpError> {
        let patched = self.plan.patched;
        let hs = patched.section(home);
        let own = patched.symbol(r.symbol);
        let named = if matches!(own.kind, SymKind::Func | SymKind::Object) && own.section.is_some()
        {
            // A reference to a named symbol is to that symbol.
            Some(r.symbol)
        } else {
            (!is_string_section(hs) && !self.piece_sections.contains(&home))
                .then(|| graft_diff::correlate::symbol_at(patched, home, at))
                .flatten()
        };
        let Some(sym) = named else {
            if self.piece_sections.contains(&home) {
                let st = &self.starts[&home];
                let start = st
                    .iter()
                    .rev()
                    .find(|&&x| x as i64 <= at)
                    .copied()
                    .unwrap_or(0);
                let range = special::piece_range(patched, home, st, start);
                self.live.entry(home).or_default().push(range);
            }
            self.carry(home);
            // Through a section symbol or a local label (`.LC3`): the
            // offset in the section.
            let off = if own.kind == SymKind::Section {
                reloc_addend_to(patched, r, 0)
            } else {
                (own.value as i64).wrapping_add(r.addend)
            };
            return Ok(Target::Section(home, off));
        };
        let s = patched.symbol(sym);
        let carry = self.plan.sections.contains(&home)
            || self.carry_if_used.contains(&sym)
            || self.carried_funcs.contains(&sym)
            || is_constant(patched, sym);
        // Relative to the symbol: the raw addend with the symbol's offset
        // in its section removed.
        let addend = reloc_addend_to(patched, r, s.value);
        if carry {
            self.carry(home);
            Ok(Target::Symbol(sym, addend))
        } else if matches!(s.kind, SymKind::Func | SymKind::Object) {
            let name = self
                .kernel_names
                .get(&sym)
                .map_or(s.name.as_str(), String::as_str);
            Ok(Target::External(
                external_name(self.resolver, &self.object, user, name, s.is_global())?,
                addend,
            ))
        } else {
            Err(KlpError::Unsupported {
                object: self.object.clone(),
                what: format!(
                    "{user} references {}, an untyped symbol in {}; graft cannot tell what it is",
                    s.name, hs.name
                ),
            })
        }
    }

    /// A global alias for each carried function the stub names, and a
    /// `klp_func` for each changed one. Aliases (`__x64_sys_getpid` and
    /// `__do_sys_getpid` are one function) are registered once: two
    /// klp_funcs for one address would stack two ftrace redirections on it.
    /// The global name is preferred: it is unique.
    fn register_functions(&mut self, unit: usize) -> Result<(), KlpError> {
        let patched = self.plan.patched;
        let diff = self.diff;
        let mut by_address: BTreeMap<(SectionId, u64), &graft_diff::Change> = BTreeMap::new();
        for c in diff
            .included_functions()
            .filter(|c| !graft_diff::rules::is_part(&c.name))
        {
            let key = (c.section_id, patched.symbol(c.symbol).value);
            let better = |old: &&graft_diff::Change| {
                patched.symbol(c.symbol).is_global() && !patched.symbol(old.symbol).is_global()
            };
            match by_address.get(&key) {
                Some(old) if !better(old) => {}
                _ => {
                    by_address.insert(key, c);
                }
            }
        }
        let registered: BTreeSet<SymbolId> = by_address.values().map(|c| c.symbol).collect();
        for (n, c) in diff.included_functions().enumerate() {
            if graft_diff::rules::is_part(&c.name) || !registered.contains(&c.symbol) {
                continue;
            }
            let alias = graft_elf::klp::new_alias(unit, n);
            self.plan.aliases.push((c.symbol, alias.clone()));
            if matches!(c.verdict, Verdict::Changed { .. }) {
                let old_name = c.orig_name.clone().unwrap_or_else(|| c.name.clone());
                let old_sympos = self
                    .resolver
                    .sympos(&old_name)
                    .map_err(|e| lookup_error(&self.object, &old_name, &old_name, e))?;
                self.plan.funcs.push(KlpFunc {
                    object: (self.resolver.object != graft_elf::klp::VMLINUX)
                        .then(|| self.resolver.object.to_owned()),
                    old_name,
                    old_sympos,
                    new_symbol: alias,
                });
            }
        }
        Ok(())
    }

    /// Callbacks: functions the patch carries, named by their aliases (by
    /// address: gcc may have made the callback an alias of an identical
    /// function, which then holds the stub's alias).
    fn wire_callbacks(&mut self) -> Result<(), KlpError> {
        let patched = self.plan.patched;
        let object = &self.object;
        let home = |id: SymbolId| (patched.symbol(id).section, patched.symbol(id).value);
        for cb in &self.diff.markers.callbacks {
            let Some((_, alias)) = self
                .plan
                .aliases
                .iter()
                .find(|(s, _)| home(*s) == home(cb.symbol))
            else {
                return Err(KlpError::Markers {
                    what: format!(
                        "{object}: the {} callback {} is not code the patch carries (it is the running kernel's, unchanged{})",
                        cb.kind.field(),
                        cb.function,
                        if self
                            .diff
                            .functions
                            .iter()
                            .any(|c| c.symbol == cb.symbol && c.ignored)
                        {
                            ", and marked ignored"
                        } else {
                            ""
                        }
                    ),
                    hint: format!(
                        "define the callback in the patch, next to {}(...)",
                        cb.kind.macro_name()
                    ),
                });
            };
            let alias = alias.clone();
            self.plan.callbacks.push(KlpCallback {
                object: (self.resolver.object != graft_elf::klp::VMLINUX)
                    .then(|| self.resolver.object.to_owned()),
                kind: cb.kind,
                function: cb.function.clone(),
                file: patched.path.display().to_string(),
                symbol: alias,
            });
        }
        Ok(())
    }
}

/// Sections whose contents are anonymous pieces (no symbols): only the
/// pieces carried code uses matter.
fn is_piece_section(obj: &Object, id: SectionId) -> bool {
    let s = obj.section(id);
    match special::role(s) {
        Some(Role::Pieces) => true,
        Some(Role::Data) => {
            !is_string_section(s) && obj.symbols_in(id).next().is_none() && !s.relocs.is_empty()
        }
        _ => false,
    }
}

/// The addend of `r` rewritten relative to a symbol at `base` of the same
/// section as its target (section-symbol references carry the offset).
fn reloc_addend_to(obj: &Object, r: &graft_elf::Reloc, base: u64) -> i64 {
    let sym = obj.symbol(r.symbol);
    if sym.kind == SymKind::Section {
        (sym.value as i64)
            .wrapping_add(r.addend)
            .wrapping_sub(base as i64)
    } else {
        r.addend
    }
}

/// The function whose code holds `offset` of `sec`, for messages.
fn function_at(obj: &Object, sec: SectionId, offset: u64) -> String {
    obj.symbol_covering(sec, offset as i64)
        .map_or_else(|| obj.section(sec).name.clone(), |s| s.name.clone())
}

fn external_name(
    resolver: &Resolver<'_>,
    object: &str,
    user: &str,
    name: &str,
    global: bool,
) -> Result<String, KlpError> {
    use graft_elf::klp::{sym_name, VMLINUX};
    if global && resolver.exports.vmlinux_exports(name) {
        return Ok(name.to_owned());
    }
    if global && resolver.patch_defines.contains(name) {
        // New in the patch, defined by another of its files.
        return Ok(name.to_owned());
    }
    if resolver.object != VMLINUX {
        // Code of a module reaches the module's own symbols through klp
        // relocations even when they are exported: the module may load
        // after the patch, so the patch must not depend on it.
        if !resolver.symbols.lookup(resolver.object, name).is_empty() {
            let sympos = resolver
                .sympos(name)
                .map_err(|e| lookup_error(object, user, name, e))?;
            return Ok(sym_name(resolver.object, name, sympos));
        }
        if let Some(e) = resolver
            .exports
            .get(name)
            .filter(|e| global && e.module != VMLINUX)
        {
            // Exported by another module: reached through a klp relocation
            // applied when this object's module loads (it depends on the
            // exporter, so the exporter is there), so that loading the
            // patch never needs or pulls in the exporter.
            return Ok(sym_name(&module_name(&e.module), name, 0));
        }
    }
    let sympos = match resolver.known.get(name) {
        Some(&p) if resolver.object == VMLINUX => p,
        _ => resolver
            .symbols
            .unique_sympos(VMLINUX, name)
            .map_err(|e| lookup_error(object, user, name, e))?,
    };
    Ok(sym_name(VMLINUX, name, sympos))
}

/// A module's name from its path in `Module.symvers` (`crypto/af_alg` →
/// `af_alg`): the kernel names modules by file name, `-` as `_`.
fn module_name(path: &str) -> String {
    path.rsplit('/').next().unwrap_or(path).replace('-', "_")
}

/// Compiler-made read-only data (`__func__.42`, `__UNIQUE_ID_…`) is carried
/// as a copy: it cannot change at run time, and a copy spares a fragile
/// reference to a compiler-numbered local in the running kernel. Named
/// constants are not copied: code may compare their addresses
/// (`f_op == &proc_fops`), so they stay the kernel's own.
fn is_constant(obj: &Object, sym: SymbolId) -> bool {
    const SHF_WRITE: u64 = 1;
    let s = obj.symbol(sym);
    s.kind == SymKind::Object
        && (graft_diff::names::family(&s.name).numbered || s.name.starts_with("__func__"))
        && s.section.is_some_and(|sec| {
            let sec = obj.section(sec);
            sec.is_alloc()
                && !sec.is_exec()
                && sec.flags & SHF_WRITE == 0
                && !sec.name.starts_with(".init")
        })
}

fn lookup_error(object: &str, function: &str, symbol: &str, e: SymposError) -> KlpError {
    match e {
        SymposError::Missing { .. } => KlpError::MissingSymbol {
            object: object.into(),
            function: function.into(),
            symbol: symbol.into(),
        },
        e @ SymposError::Ambiguous { .. } => KlpError::AmbiguousSymbol {
            object: object.into(),
            function: function.into(),
            symbol: symbol.into(),
            source: Box::new(e),
        },
    }
}
