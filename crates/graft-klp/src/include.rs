//! Which sections of the patched object the module carries, and where each
//! of their references goes: into the module itself, to an exported symbol
//! the module links against, or to a kernel symbol found through a klp
//! relocation.

use std::collections::{BTreeMap, BTreeSet};

use graft_diff::compare::is_string_section;
use graft_diff::{ObjectDiff, Verdict};
use graft_elf::{Object, Reloc, RelocTarget, SectionId, SymKind, SymbolId};
use graft_target::{Exports, SymbolTable, SymposError};

use crate::{KlpError, KlpFunc};

/// What the target kernel offers a patch module.
pub struct Resolver<'a> {
    pub symbols: &'a SymbolTable,
    pub exports: &'a Exports,
    /// The klp object the patched file belongs to ("vmlinux" or a module name).
    pub object: &'a str,
    /// `sympos` proven by run-pre verification; names not listed must be unique.
    pub known: &'a BTreeMap<String, u32>,
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
    /// An offset in a carried section (strings, jump tables, constants).
    Section(SectionId, i64),
    /// A symbol of the running kernel, by its final name in the module
    /// (plain for exports, `.klp.sym.*` otherwise).
    External(String, i64),
}

/// The module's share of one patched object.
pub struct Plan<'a> {
    pub patched: &'a Object,
    /// Patched sections carried into the module.
    pub sections: BTreeSet<SectionId>,
    /// Resolved target of every relocation of the carried sections.
    pub targets: BTreeMap<(SectionId, u64), Target>,
    pub funcs: Vec<KlpFunc>,
    /// Global aliases that let the stub name each new function.
    pub aliases: Vec<(SymbolId, String)>,
}

impl<'a> Plan<'a> {
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
    let mut plan = Plan {
        patched,
        sections: BTreeSet::new(),
        targets: BTreeMap::new(),
        funcs: Vec::new(),
        aliases: Vec::new(),
    };
    let object = plan.object_name();
    let mut work: Vec<SectionId> = Vec::new();
    for c in diff.included_functions() {
        if plan.sections.insert(c.section_id) {
            work.push(c.section_id);
        }
        // A split-off part (`foo.cold`) jumps back into its parent at fixed
        // offsets: the new parent needs its own copy, never the old one.
        for part in diff
            .functions
            .iter()
            .filter(|p| is_part_of(&p.name, &c.name))
        {
            if plan.sections.insert(part.section_id) {
                work.push(part.section_id);
            }
        }
    }
    let new_data: BTreeSet<SymbolId> = diff
        .data
        .iter()
        .filter(|c| c.verdict == Verdict::New)
        .map(|c| c.symbol)
        .collect();
    while let Some(sec) = work.pop() {
        let section = patched.section(sec);
        for reloc in &section.relocs {
            let user = function_at(patched, sec, reloc.offset);
            let target = reduce(patched, reloc);
            let resolved = match target {
                Reduced::Defined(sym, addend) => {
                    let s = patched.symbol(sym);
                    let home = s.section.expect("defined");
                    if plan.sections.contains(&home)
                        || new_data.contains(&sym)
                        || is_constant(patched, sym)
                    {
                        if plan.sections.insert(home) {
                            work.push(home);
                        }
                        Target::Symbol(sym, addend)
                    } else if matches!(s.kind, SymKind::Func | SymKind::Object) {
                        Target::External(
                            external_name(resolver, &object, &user, &s.name, s.is_global())?,
                            addend,
                        )
                    } else {
                        return Err(KlpError::Unsupported {
                            object,
                            what: format!(
                                "{user} references {}, an untyped symbol in {}; graft cannot tell what it is",
                                s.name,
                                patched.section(home).name
                            ),
                        });
                    }
                }
                Reduced::Anonymous(home, addend) => {
                    if plan.sections.insert(home) {
                        work.push(home);
                    }
                    Target::Section(home, addend)
                }
                Reduced::Undefined(name, addend) => Target::External(
                    external_name(resolver, &object, &user, &name, true)?,
                    addend,
                ),
            };
            plan.targets.insert((sec, reloc.offset), resolved);
        }
    }

    for (n, c) in diff.included_functions().enumerate() {
        if graft_diff::rules::is_part(&c.name) {
            continue;
        }
        let alias = format!("__graft_new_{unit}_{n}");
        plan.aliases.push((c.symbol, alias.clone()));
        if matches!(c.verdict, Verdict::Changed { .. }) {
            let old_sympos = resolver
                .sympos(&c.name)
                .map_err(|e| lookup_error(&object, &c.name, &c.name, e))?;
            plan.funcs.push(KlpFunc {
                object: (resolver.object != graft_elf::klp::VMLINUX)
                    .then(|| resolver.object.to_owned()),
                old_name: c.name.clone(),
                old_sympos,
                new_symbol: alias,
            });
        }
    }
    Ok(plan)
}

/// Read-only data (string constants such as `__func__.42`, const tables) is
/// carried as a copy: it cannot change at run time, and a copy spares a
/// fragile reference to a compiler-numbered local in the running kernel.
fn is_constant(obj: &Object, sym: SymbolId) -> bool {
    const SHF_WRITE: u64 = 1;
    let s = obj.symbol(sym);
    s.kind == SymKind::Object
        && s.section.is_some_and(|sec| {
            let sec = obj.section(sec);
            sec.is_alloc()
                && !sec.is_exec()
                && sec.flags & SHF_WRITE == 0
                && !sec.name.starts_with(".init")
        })
}

/// `foo.cold` and `foo.cold.3` are parts of `foo`.
fn is_part_of(name: &str, parent: &str) -> bool {
    name.strip_prefix(parent)
        .and_then(|rest| rest.strip_prefix(".cold"))
        .is_some_and(|n| {
            n.is_empty() || (n.starts_with('.') && n[1..].bytes().all(|b| b.is_ascii_digit()))
        })
}

enum Reduced {
    /// A named symbol defined in the patched object.
    Defined(SymbolId, i64),
    /// A place in a section that has no named symbol there.
    Anonymous(SectionId, i64),
    Undefined(String, i64),
}

/// Rewrites section-symbol references to the named symbol they land in, so
/// that what is referenced can be judged by its name.
fn reduce(obj: &Object, reloc: &Reloc) -> Reduced {
    match obj.reloc_target(reloc) {
        RelocTarget::Symbol(id) => {
            let s = obj.symbol(id);
            if s.section.is_some() {
                Reduced::Defined(id, reloc.addend)
            } else {
                Reduced::Undefined(s.name.clone(), reloc.addend)
            }
        }
        RelocTarget::SectionOffset(sec, off) => {
            let section = obj.section(sec);
            let bias = graft_diff::compare::pcrel_bias(reloc.r_type);
            let named = (!is_string_section(section))
                .then(|| obj.symbol_covering(sec, off + bias))
                .flatten();
            match named {
                Some(sym) => Reduced::Defined(sym.id, off - sym.value as i64),
                None => Reduced::Anonymous(sec, off),
            }
        }
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
        if resolver.symbols.lookup(VMLINUX, name).is_empty()
            && global
            && resolver.exports.get(name).is_some()
        {
            // Exported by another module: an ordinary dependency.
            return Ok(name.to_owned());
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
