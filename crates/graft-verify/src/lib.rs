//! Run-pre verification (Ksplice's idea): before a patch is built on the
//! original objects, their code is matched instruction by instruction
//! against the target kernel's code ([`walk`]): the same instructions, the
//! same bytes outside relocation fields, and every reference of the
//! kernel's copy reaching the symbol ours names. Only the encoding of a jump
//! may differ, where the target's assembler resolved it in place (see
//! `walk`).
//!
//! A match proves the build is faithful (same source, config and compiler)
//! and tells which of several same-named symbols is meant: the candidate
//! whose code matches is the one, and the addresses its references reach
//! name the symbols the function uses. Where several copies match (a helper
//! gcc emitted identically in many files), the one among the file's other
//! functions in the symbol table is the file's ([`choose`]).

mod choose;
mod walk;

use std::collections::BTreeMap;

use graft_elf::{Object, SymbolId};
use graft_target::{KernelImage, SymbolTable};
use serde::Serialize;

use walk::{Matched, Miss, Ours, Resolver, Theirs};

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
    /// Why this copy, when several of the target's copies matched.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub choice: Option<String>,
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
    #[error("{object}: {function} matches {count} functions of the target kernel equally ({addresses}), and the target's symbol table does not place exactly one of them among the file's other functions; graft cannot tell which one is the file's; hint: check that the symbol table is the target's")]
    Ambiguous {
        object: String,
        function: String,
        count: usize,
        addresses: String,
    },
    #[error("{object}: the code of {function} is not in its section (a malformed object); hint: rebuild the object")]
    Unreadable { object: String, function: String },
    #[error("the kernel image {path} does not hold the code of {function} at {address:#x}; hint: pass the image the target booted")]
    NotInImage {
        path: String,
        function: String,
        address: u64,
    },
}

/// What one candidate gave.
type Tried = (u64, Option<Miss>);

/// A function several candidates matched, decided once every other
/// function is matched: `slot` in the result, and the matches (position of
/// the candidate, what it matched).
struct Undecided {
    slot: usize,
    function: SymbolId,
    matched: Vec<(usize, Matched)>,
}

/// Verifies `functions` of `orig` against the target.
pub fn verify(
    orig: &Object,
    functions: &[SymbolId],
    target: &Target<'_>,
) -> Result<Verified, VerifyError> {
    let object = orig.path.display().to_string();
    let symbols = target.symbols;
    let entries = symbols.entries();
    let delta = symbols
        .lookup(target.object, "_text")
        .first()
        .map_or(0, |e| e.address.wrapping_sub(target.image.text_start));
    let in_object = |e: &graft_target::KallsymsEntry| {
        e.module.as_deref().unwrap_or(graft_elf::klp::VMLINUX) == target.object
    };
    // A copy ends, at the latest, where the next symbol starts: kallsyms
    // lists symbols by address. (Out of order, the bound is only looser: a
    // copy is never taken longer than what pairs with our instructions.)
    let next_start = |i: usize| -> Option<u64> {
        let at = entries[i].address;
        entries[i + 1..]
            .iter()
            .find(|e| in_object(e) && e.address > at)
            .map(|e| e.address)
    };
    let resolver = Resolver::Linked {
        symbols,
        object: target.object,
        delta,
    };

    let mut out = Verified::default();
    let mut slots: Vec<Option<Match>> = Vec::new();
    let mut undecided = Vec::new();
    for &f in functions {
        let sym = orig.symbol(f);
        let ours = Ours::new(orig, f).ok_or_else(|| VerifyError::Unreadable {
            object: object.clone(),
            function: sym.name.clone(),
        })?;
        let all = symbols.positions(target.object, &sym.name);
        let candidates: Vec<usize> = all
            .iter()
            .copied()
            .filter(|&i| entries[i].is_text())
            .collect();
        if candidates.is_empty() {
            return Err(VerifyError::NotInKernel {
                object: object.clone(),
                function: sym.name.clone(),
            });
        }
        let mut matched = Vec::new();
        let mut misses: Vec<Tried> = Vec::new();
        for &i in &candidates {
            let address = entries[i].address;
            // Our length and a little more, to show a longer instruction
            // of theirs whole; never into the next symbol.
            let max = next_start(i)
                .map_or(usize::MAX, |n| (n - address) as usize)
                .min(ours.code.len() + 16);
            let Some(code) = target.image.bytes_upto(address.wrapping_sub(delta), max) else {
                misses.push((address, None));
                continue;
            };
            let theirs = Theirs {
                code,
                ip: address,
                size: None,
                resolver,
            };
            match walk::walk(&ours, &theirs) {
                Ok(m) => matched.push((i, m)),
                Err(m) => misses.push((address, Some(m))),
            }
        }
        match matched.len() {
            0 => return Err(explain(&object, &sym.name, target, misses)),
            1 => {
                let (i, m) = matched.pop().expect("one");
                slots.push(Some(vmlinux_match(
                    &mut out,
                    symbols,
                    target.object,
                    &sym.name,
                    i,
                    &m,
                    None,
                )));
            }
            _ => {
                slots.push(None);
                undecided.push(Undecided {
                    slot: slots.len() - 1,
                    function: f,
                    matched,
                });
            }
        }
    }
    if !undecided.is_empty() {
        let table: Vec<choose::Entry<'_>> = entries
            .iter()
            .map(|e| choose::Entry {
                name: &e.name,
                code: e.is_text() && in_object(e),
                group: 0,
            })
            .collect();
        let proven: Vec<u64> = slots.iter().flatten().map(|m| m.address).collect();
        let certain = |i: usize| {
            symbols.positions(target.object, &entries[i].name).len() == 1
                || proven.contains(&entries[i].address)
        };
        for u in undecided {
            let name = &orig.symbol(u.function).name;
            let positions: Vec<usize> = u.matched.iter().map(|m| m.0).collect();
            let (order, me) = choose::layout(orig, u.function);
            let Some((k, place)) = choose::pick(&table, &positions, &order, me, &certain) else {
                return Err(VerifyError::Ambiguous {
                    object,
                    function: name.clone(),
                    count: positions.len(),
                    addresses: addresses(positions.iter().map(|&i| entries[i].address)),
                });
            };
            let (i, m) = &u.matched[k];
            let sympos = sympos_in(symbols.positions(target.object, name), *i);
            let note = choice_note(
                &object,
                &u.matched.iter().map(|m| &m.1).collect::<Vec<_>>(),
                entries[*i].address,
                sympos,
                &place,
            );
            slots[u.slot] = Some(vmlinux_match(
                &mut out,
                symbols,
                target.object,
                name,
                *i,
                m,
                Some(note),
            ));
        }
    }
    out.functions = slots.into_iter().flatten().collect();
    Ok(out)
}

/// `sympos` of the entry at position `i` among `same` (every entry of that
/// name, whatever its type: livepatch counts them all).
fn sympos_in(same: &[usize], i: usize) -> u32 {
    if same.len() == 1 {
        0
    } else {
        same.iter()
            .position(|&j| j == i)
            .map_or(0, |p| p as u32 + 1)
    }
}

/// Records a vmlinux match, and the `sympos` of what its code reaches.
fn vmlinux_match(
    out: &mut Verified,
    symbols: &SymbolTable,
    object: &str,
    name: &str,
    i: usize,
    m: &Matched,
    choice: Option<String>,
) -> Match {
    let sympos = sympos_in(symbols.positions(object, name), i);
    out.sympos.insert(name.to_owned(), sympos);
    for (n, addr) in &m.seen {
        let same = symbols.positions(object, n);
        if let Some(&j) = same
            .iter()
            .find(|&&j| symbols.entries()[j].address == *addr)
        {
            out.sympos.insert(n.clone(), sympos_in(same, j));
        }
    }
    Match {
        function: name.to_owned(),
        address: symbols.entries()[i].address,
        sympos,
        choice,
    }
}

fn addresses(a: impl Iterator<Item = u64>) -> String {
    a.map(|a| format!("{a:#x}")).collect::<Vec<_>>().join(", ")
}

/// Says which copy is used and why.
fn choice_note(
    object: &str,
    matched: &[&Matched],
    address: u64,
    sympos: u32,
    place: &choose::Placement<'_>,
) -> String {
    let identical = matched
        .iter()
        .all(|m| m.len == matched[0].len && m.seen == matched[0].seen);
    let context = match (place.before, place.after) {
        (Some(b), Some(a)) => format!(": between {b} and {a}"),
        (Some(b), None) => format!(": after {b}"),
        (None, Some(a)) => format!(": before {a}"),
        (None, None) => String::new(),
    };
    format!(
        "{} copies in the target match ({}); the one at {address:#x} (sympos {sympos}) is {object}'s: in the symbol table it lies among that file's functions, in the file's order ({} neighbours agree{context})",
        matched.len(),
        if identical {
            "identical code reaching the same symbols, so any would run the same"
        } else {
            "they reach different symbols"
        },
        place.score,
    )
}

/// Builds the error for a function no candidate matched, from the candidate
/// that matched longest.
fn explain(object: &str, function: &str, target: &Target<'_>, misses: Vec<Tried>) -> VerifyError {
    let best = misses
        .into_iter()
        .max_by_key(|(_, m)| m.as_ref().map_or(-1, |m| m.offset() as i64));
    match best {
        Some((_, Some(miss))) => miss_error(object, function, miss),
        Some((address, None)) => VerifyError::NotInImage {
            path: target.image.path.display().to_string(),
            function: function.to_owned(),
            address,
        },
        None => VerifyError::NotInKernel {
            object: object.to_owned(),
            function: function.to_owned(),
        },
    }
}

fn miss_error(object: &str, function: &str, miss: Miss) -> VerifyError {
    match miss {
        Miss::Instruction {
            offset,
            ours,
            theirs,
        } => VerifyError::Mismatch {
            object: object.to_owned(),
            function: function.to_owned(),
            offset,
            ours,
            theirs,
        },
        Miss::Reference {
            offset,
            ours,
            theirs,
        } => VerifyError::WrongReference {
            object: object.to_owned(),
            function: function.to_owned(),
            offset,
            ours,
            theirs,
        },
    }
}

/// Verifies `functions` of `orig` against the target's module `.ko`. The
/// module is relocatable too: its references to other sections are
/// relocations, compared by what they reach; the assembler resolved those
/// within its one `.text` in place, as in vmlinux. `sympos` counts in the
/// module's own order.
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
    let in_module = |name: &str| format!("{name} (module {})", module.name);
    let mut out = Verified::default();
    let mut slots: Vec<Option<Match>> = Vec::new();
    let mut undecided = Vec::new();
    // The module's functions by section and address: what `choose` walks.
    let mut table: Vec<&graft_elf::Symbol> = ko.functions().collect();
    table.sort_by_key(|s| (s.section.map(|s| s.0), s.value));
    for &f in functions {
        let sym = orig.symbol(f);
        let ours = Ours::new(orig, f).ok_or_else(|| VerifyError::Unreadable {
            object: object.clone(),
            function: sym.name.clone(),
        })?;
        let candidates: Vec<usize> = (0..table.len())
            .filter(|&i| table[i].name == sym.name)
            .collect();
        if candidates.is_empty() {
            return Err(VerifyError::NotInKernel {
                object,
                function: in_module(&sym.name),
            });
        }
        let mut matched = Vec::new();
        let mut best: Option<Miss> = None;
        for &i in &candidates {
            let k = table[i];
            let ksec = ko.section(k.section.expect("defined"));
            let Some(code) = ksec
                .data
                .get(k.value as usize..k.value.saturating_add(k.size) as usize)
            else {
                continue;
            };
            let theirs = Theirs {
                code,
                ip: k.value,
                size: Some(k.size),
                resolver: Resolver::Relocatable {
                    obj: ko,
                    section: ksec,
                },
            };
            match walk::walk(&ours, &theirs) {
                Ok(m) => matched.push((i, m)),
                Err(m) => {
                    if best.as_ref().is_none_or(|b| m.offset() > b.offset()) {
                        best = Some(m);
                    }
                }
            }
        }
        match matched.len() {
            0 => {
                return Err(match best {
                    Some(m) => miss_error(&object, &in_module(&sym.name), m),
                    None => VerifyError::NotInKernel {
                        object,
                        function: in_module(&sym.name),
                    },
                })
            }
            1 => {
                let (i, m) = &matched[0];
                slots.push(Some(module_match(&mut out, &sympos_of, table[*i], m, None)));
            }
            _ => {
                slots.push(None);
                undecided.push(Undecided {
                    slot: slots.len() - 1,
                    function: f,
                    matched,
                });
            }
        }
    }
    if !undecided.is_empty() {
        let entries: Vec<choose::Entry<'_>> = table
            .iter()
            .map(|s| choose::Entry {
                name: &s.name,
                code: true,
                group: s.section.map_or(0, |s| s.0),
            })
            .collect();
        let proven: Vec<(String, u64)> = slots
            .iter()
            .flatten()
            .map(|m| (m.function.clone(), m.address))
            .collect();
        let certain = |i: usize| {
            let s = table[i];
            table.iter().filter(|t| t.name == s.name).count() == 1
                || proven.iter().any(|(n, a)| *n == s.name && *a == s.value)
        };
        for u in undecided {
            let name = &orig.symbol(u.function).name;
            let positions: Vec<usize> = u.matched.iter().map(|m| m.0).collect();
            let (order, me) = choose::layout(orig, u.function);
            let Some((k, place)) = choose::pick(&entries, &positions, &order, me, &certain) else {
                return Err(VerifyError::Ambiguous {
                    object,
                    function: in_module(name),
                    count: positions.len(),
                    addresses: addresses(positions.iter().map(|&i| table[i].value)),
                });
            };
            let (i, m) = &u.matched[k];
            let ksym = table[*i];
            let sympos = sympos_of(&ksym.name, ksym.value).unwrap_or(0);
            let note = choice_note(
                &object,
                &u.matched.iter().map(|m| &m.1).collect::<Vec<_>>(),
                ksym.value,
                sympos,
                &place,
            );
            slots[u.slot] = Some(module_match(&mut out, &sympos_of, ksym, m, Some(note)));
        }
    }
    out.functions = slots.into_iter().flatten().collect();
    Ok(out)
}

/// Records a module match, and the `sympos` of what its code reaches.
fn module_match(
    out: &mut Verified,
    sympos_of: &dyn Fn(&str, u64) -> Option<u32>,
    k: &graft_elf::Symbol,
    m: &Matched,
    choice: Option<String>,
) -> Match {
    let sympos = sympos_of(&k.name, k.value).unwrap_or(0);
    out.sympos.insert(k.name.clone(), sympos);
    for (name, value) in &m.seen {
        if let Some(p) = sympos_of(name, *value) {
            out.sympos.insert(name.clone(), p);
        }
    }
    Match {
        function: k.name.clone(),
        address: k.value,
        sympos,
        choice,
    }
}
