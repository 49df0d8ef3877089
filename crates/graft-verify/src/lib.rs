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

/// A candidate that did not match: its address, and why (no miss: its
/// code could not be read).
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
    verify_with(orig, functions, &Image::new(target))
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
    verify_with(orig, functions, &Module::new(module))
}

/// Where the target keeps its copies of functions: the kernel image with
/// its symbol table ([`Image`]), or a module's object ([`Module`]). The
/// steps of verification are the same for both ([`verify_with`]); what
/// differs is how a copy is found, read, named and counted. Copies are
/// named by their position in the side's table.
trait Copies {
    /// `name` as the errors name it.
    fn label(&self, name: &str) -> String;
    /// The copies named `name` that can be its code.
    fn candidates(&self, name: &str) -> Vec<usize>;
    /// Walks our function against the copy at `i`: what it matched, or its
    /// address and why not (no miss: its code could not be read).
    fn try_copy(&self, ours: &Ours<'_>, i: usize) -> Result<Matched, Tried>;
    /// The error for `name`, when no copy matched.
    fn no_match(&self, object: &str, name: &str, misses: Vec<Tried>) -> VerifyError;
    /// Address of the copy at `i`.
    fn address(&self, i: usize) -> u64;
    /// `sympos` of the copy at `i`, named `name`.
    fn sympos(&self, name: &str, i: usize) -> u32;
    /// Records that `name` is the copy at `i`, and the `sympos` of what its
    /// code reaches.
    fn record(
        &self,
        out: &mut Verified,
        name: &str,
        i: usize,
        m: &Matched,
        choice: Option<String>,
    ) -> Match;
    /// The table `choose` walks, in the table's positions.
    fn table(&self) -> Vec<choose::Entry<'_>>;
    /// Whether the copy at `i` is certainly the one of its name: the only
    /// one, or one verification matched (`proven`).
    fn certain(&self, i: usize, proven: &[Match]) -> bool;
}

/// The steps of verification: each function matched against every copy of
/// its name; placed at once where one copy matched, else decided by the
/// file's layout once every other function is placed (its neighbours'
/// copies, proven, anchor the choice).
fn verify_with(
    orig: &Object,
    functions: &[SymbolId],
    copies: &impl Copies,
) -> Result<Verified, VerifyError> {
    let object = orig.path.display().to_string();
    let mut placing = Placing::default();
    for &f in functions {
        let matched = match_copies(orig, f, &object, copies)?;
        placing.place(copies, &orig.symbol(f).name, f, matched);
    }
    if !placing.undecided.is_empty() {
        placing.decide(orig, &object, copies)?;
    }
    Ok(placing.finish())
}

/// Every copy that matches our function `f` (by position), or why none
/// does: our code unreadable, no copy of its name, or the miss that went
/// furthest.
fn match_copies(
    orig: &Object,
    f: SymbolId,
    object: &str,
    copies: &impl Copies,
) -> Result<Vec<(usize, Matched)>, VerifyError> {
    let sym = orig.symbol(f);
    let ours = Ours::new(orig, f).ok_or_else(|| VerifyError::Unreadable {
        object: object.to_owned(),
        function: sym.name.clone(),
    })?;
    let candidates = copies.candidates(&sym.name);
    if candidates.is_empty() {
        return Err(VerifyError::NotInKernel {
            object: object.to_owned(),
            function: copies.label(&sym.name),
        });
    }
    let mut matched = Vec::new();
    let mut misses: Vec<Tried> = Vec::new();
    for &i in &candidates {
        match copies.try_copy(&ours, i) {
            Ok(m) => matched.push((i, m)),
            Err(t) => misses.push(t),
        }
    }
    if matched.is_empty() {
        return Err(copies.no_match(object, &sym.name, misses));
    }
    Ok(matched)
}

/// The result as it is built: a slot per function, in the caller's order,
/// empty while several copies of it matched.
#[derive(Default)]
struct Placing {
    out: Verified,
    slots: Vec<Option<Match>>,
    undecided: Vec<Undecided>,
}

impl Placing {
    /// Records function `f` (`name`) if one copy matched, else leaves it
    /// undecided.
    fn place(
        &mut self,
        copies: &impl Copies,
        name: &str,
        f: SymbolId,
        mut matched: Vec<(usize, Matched)>,
    ) {
        if matched.len() == 1 {
            let (i, m) = matched.pop().expect("one");
            let found = copies.record(&mut self.out, name, i, &m, None);
            self.slots.push(Some(found));
        } else {
            self.slots.push(None);
            self.undecided.push(Undecided {
                slot: self.slots.len() - 1,
                function: f,
                matched,
            });
        }
    }

    /// Decides each undecided function by where its copies lie among the
    /// file's other functions ([`choose`]), anchored on the copies placed
    /// before this step; refuses one no layout decides.
    fn decide(
        &mut self,
        orig: &Object,
        object: &str,
        copies: &impl Copies,
    ) -> Result<(), VerifyError> {
        let table = copies.table();
        let proven: Vec<Match> = self.slots.iter().flatten().cloned().collect();
        let certain = |i: usize| copies.certain(i, &proven);
        for u in std::mem::take(&mut self.undecided) {
            let name = &orig.symbol(u.function).name;
            let positions: Vec<usize> = u.matched.iter().map(|m| m.0).collect();
            let (order, me) = choose::layout(orig, u.function);
            let Some((k, place)) = choose::pick(&table, &positions, &order, me, &certain) else {
                return Err(VerifyError::Ambiguous {
                    object: object.to_owned(),
                    function: copies.label(name),
                    count: positions.len(),
                    addresses: addresses(positions.iter().map(|&i| copies.address(i))),
                });
            };
            let (i, m) = &u.matched[k];
            let note = choice_note(
                object,
                &u.matched.iter().map(|m| &m.1).collect::<Vec<_>>(),
                copies.address(*i),
                copies.sympos(name, *i),
                &place,
            );
            self.slots[u.slot] = Some(copies.record(&mut self.out, name, *i, m, Some(note)));
        }
        Ok(())
    }

    fn finish(mut self) -> Verified {
        self.out.functions = self.slots.into_iter().flatten().collect();
        self.out
    }
}

/// The kernel image: copies are the text entries of the symbol table (its
/// positions), their code read from the image.
struct Image<'a> {
    symbols: &'a SymbolTable,
    image: &'a KernelImage,
    /// The klp object ("vmlinux").
    object: &'a str,
    /// Symbol-table address minus image (link) address.
    delta: u64,
}

impl<'a> Image<'a> {
    fn new(target: &Target<'a>) -> Image<'a> {
        let delta = target
            .symbols
            .lookup(target.object, "_text")
            .first()
            .map_or(0, |e| e.address.wrapping_sub(target.image.text_start));
        Image {
            symbols: target.symbols,
            image: target.image,
            object: target.object,
            delta,
        }
    }

    fn entries(&self) -> &'a [graft_target::KallsymsEntry] {
        self.symbols.entries()
    }

    fn in_object(&self, e: &graft_target::KallsymsEntry) -> bool {
        e.module.as_deref().unwrap_or(graft_elf::klp::VMLINUX) == self.object
    }

    /// A copy ends, at the latest, where the next symbol starts: kallsyms
    /// lists symbols by address. (Out of order, the bound is only looser: a
    /// copy is never taken longer than what pairs with our instructions.)
    fn next_start(&self, i: usize) -> Option<u64> {
        let entries = self.entries();
        let at = entries[i].address;
        entries[i + 1..]
            .iter()
            .find(|e| self.in_object(e) && e.address > at)
            .map(|e| e.address)
    }
}

impl Copies for Image<'_> {
    fn label(&self, name: &str) -> String {
        name.to_owned()
    }

    fn candidates(&self, name: &str) -> Vec<usize> {
        let entries = self.entries();
        self.symbols
            .positions(self.object, name)
            .iter()
            .copied()
            .filter(|&i| entries[i].is_text())
            .collect()
    }

    fn try_copy(&self, ours: &Ours<'_>, i: usize) -> Result<Matched, Tried> {
        let address = self.entries()[i].address;
        // Our length and a little more, to show a longer instruction
        // of theirs whole; never into the next symbol.
        let max = self
            .next_start(i)
            .map_or(usize::MAX, |n| (n - address) as usize)
            .min(ours.code.len() + 16);
        let Some(code) = self.image.bytes_upto(address.wrapping_sub(self.delta), max) else {
            return Err((address, None));
        };
        let theirs = Theirs {
            code,
            ip: address,
            size: None,
            resolver: Resolver::Linked {
                symbols: self.symbols,
                object: self.object,
                delta: self.delta,
            },
        };
        walk::walk(ours, &theirs).map_err(|m| (address, Some(m)))
    }

    /// From the candidate that matched longest (the last of equals).
    fn no_match(&self, object: &str, name: &str, misses: Vec<Tried>) -> VerifyError {
        let best = misses
            .into_iter()
            .max_by_key(|(_, m)| m.as_ref().map_or(-1, |m| m.offset() as i64));
        match best {
            Some((_, Some(miss))) => miss_error(object, name, miss),
            Some((address, None)) => VerifyError::NotInImage {
                path: self.image.path.display().to_string(),
                function: name.to_owned(),
                address,
            },
            None => VerifyError::NotInKernel {
                object: object.to_owned(),
                function: name.to_owned(),
            },
        }
    }

    fn address(&self, i: usize) -> u64 {
        self.entries()[i].address
    }

    fn sympos(&self, name: &str, i: usize) -> u32 {
        sympos_in(self.symbols.positions(self.object, name), i)
    }

    fn record(
        &self,
        out: &mut Verified,
        name: &str,
        i: usize,
        m: &Matched,
        choice: Option<String>,
    ) -> Match {
        let sympos = self.sympos(name, i);
        out.sympos.insert(name.to_owned(), sympos);
        for (n, addr) in &m.seen {
            let same = self.symbols.positions(self.object, n);
            if let Some(&j) = same.iter().find(|&&j| self.entries()[j].address == *addr) {
                out.sympos.insert(n.clone(), sympos_in(same, j));
            }
        }
        Match {
            function: name.to_owned(),
            address: self.entries()[i].address,
            sympos,
            choice,
        }
    }

    fn table(&self) -> Vec<choose::Entry<'_>> {
        self.entries()
            .iter()
            .map(|e| choose::Entry {
                name: &e.name,
                code: e.is_text() && self.in_object(e),
                group: 0,
            })
            .collect()
    }

    fn certain(&self, i: usize, proven: &[Match]) -> bool {
        let e = &self.entries()[i];
        self.symbols.positions(self.object, &e.name).len() == 1
            || proven.iter().any(|m| m.address == e.address)
    }
}

/// A module's object: copies are its functions, by section and address
/// (the order `choose` walks), their code read from their sections.
struct Module<'a> {
    module: &'a graft_target::ModuleFile,
    /// The module's symbols as kallsyms lists them: what `sympos` counts.
    listed: Vec<graft_target::KallsymsEntry>,
    table: Vec<&'a graft_elf::Symbol>,
}

impl<'a> Module<'a> {
    fn new(module: &'a graft_target::ModuleFile) -> Module<'a> {
        let mut table: Vec<&graft_elf::Symbol> = module.object.functions().collect();
        table.sort_by_key(|s| (s.section.map(|s| s.0), s.value));
        Module {
            module,
            listed: module.kallsyms(),
            table,
        }
    }

    /// `sympos` of the module's symbol `name` at `value`, if listed.
    fn sympos_of(&self, name: &str, value: u64) -> Option<u32> {
        let same: Vec<_> = self.listed.iter().filter(|e| e.name == name).collect();
        let pos = same.iter().position(|e| e.address == value)?;
        Some(if same.len() == 1 { 0 } else { pos as u32 + 1 })
    }
}

impl Copies for Module<'_> {
    fn label(&self, name: &str) -> String {
        format!("{name} (module {})", self.module.name)
    }

    fn candidates(&self, name: &str) -> Vec<usize> {
        (0..self.table.len())
            .filter(|&i| self.table[i].name == name)
            .collect()
    }

    fn try_copy(&self, ours: &Ours<'_>, i: usize) -> Result<Matched, Tried> {
        let ko = &self.module.object;
        let k = self.table[i];
        let ksec = ko.section(k.section.expect("defined"));
        let Some(code) = ksec
            .data
            .get(k.value as usize..k.value.saturating_add(k.size) as usize)
        else {
            return Err((k.value, None));
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
        walk::walk(ours, &theirs).map_err(|m| (k.value, Some(m)))
    }

    /// From the candidate that matched longest (the first of equals); a
    /// copy whose code could not be read counts as none.
    fn no_match(&self, object: &str, name: &str, misses: Vec<Tried>) -> VerifyError {
        let mut best: Option<Miss> = None;
        for m in misses.into_iter().filter_map(|(_, m)| m) {
            if best.as_ref().is_none_or(|b| m.offset() > b.offset()) {
                best = Some(m);
            }
        }
        match best {
            Some(m) => miss_error(object, &self.label(name), m),
            None => VerifyError::NotInKernel {
                object: object.to_owned(),
                function: self.label(name),
            },
        }
    }

    fn address(&self, i: usize) -> u64 {
        self.table[i].value
    }

    fn sympos(&self, _name: &str, i: usize) -> u32 {
        let k = self.table[i];
        self.sympos_of(&k.name, k.value).unwrap_or(0)
    }

    fn record(
        &self,
        out: &mut Verified,
        _name: &str,
        i: usize,
        m: &Matched,
        choice: Option<String>,
    ) -> Match {
        let k = self.table[i];
        let sympos = self.sympos(&k.name, i);
        out.sympos.insert(k.name.clone(), sympos);
        for (name, value) in &m.seen {
            if let Some(p) = self.sympos_of(name, *value) {
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

    fn table(&self) -> Vec<choose::Entry<'_>> {
        self.table
            .iter()
            .map(|s| choose::Entry {
                name: &s.name,
                code: true,
                group: s.section.map_or(0, |s| s.0),
            })
            .collect()
    }

    fn certain(&self, i: usize, proven: &[Match]) -> bool {
        let s = self.table[i];
        self.table.iter().filter(|t| t.name == s.name).count() == 1
            || proven
                .iter()
                .any(|m| m.function == s.name && m.address == s.value)
    }
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
