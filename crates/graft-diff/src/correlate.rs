//! Pairing the symbols of the original and patched objects ("twins").
//!
//! Strategies run in order; each only considers what earlier ones left
//! unpaired:
//!
//! 1. **Name.** A name without compiler-made numbers is an identity within
//!    one translation unit: `meminfo_proc_show` pairs with
//!    `meminfo_proc_show`, `saved_command_line` with `saved_command_line`.
//! 2. **Normalized name.** gcc numbers clones per translation unit, so
//!    `show_val_kb.isra.0` may come back as `show_val_kb.isra.1` after an
//!    unrelated edit elsewhere in the file, and `cpu_is_hotpluggable.cold`
//!    follows its parent. With the numbers stripped (see
//!    [`crate::names::family`]), a family with exactly one unpaired member
//!    on each side pairs, unless the two are used by different functions
//!    (then they are different variables that happen to share a name, e.g.
//!    `static int count` removed from one function and added to another).
//! 3. **Users.** Static locals (`count.3`, `__func__.12`) and clones that
//!    share a family are told apart by who uses them: for every pair of
//!    twin functions (or data) the k-th reference to a family in the
//!    original corresponds to the k-th reference to it in the patched
//!    build. In `fs/proc/meminfo.c`-like code a `static unsigned long
//!    last.5` inside `foo` becomes `last.7` when a static is added above
//!    it; `foo`'s twin votes `last.5 ↔ last.7`. A static local used by two
//!    functions (its function inlined into another) gets a vote from each,
//!    and the votes must agree; one that was removed gets none and is
//!    reported as removed.
//!
//! Strategies 2 and 3 repeat until nothing new pairs, because a newly
//! paired static can itself be the user of another one (`_entry_ptr.4` →
//! `_entry.3`). Whatever stays unpaired in a family present on both sides
//! with no evidence either way is ambiguous, and [`crate::rules`] refuses it
//! instead of guessing.

use std::collections::{BTreeMap, HashMap, HashSet};

use graft_elf::{Object, SectionId, SymKind, SymbolId};
use serde::Serialize;

use crate::code::{CodeMap, Target};
use crate::names::family;
use crate::special::{role, Role};

/// The strategy that paired a symbol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    Name,
    Normalized,
    Users,
}

pub struct Twins {
    patched_to_orig: HashMap<SymbolId, (SymbolId, Strategy)>,
    orig_to_patched: HashMap<SymbolId, SymbolId>,
    /// Patched symbols whose pairing could not be decided, with the
    /// original candidates and why.
    pub ambiguous: Vec<(SymbolId, Vec<SymbolId>, String)>,
}

impl Twins {
    pub fn orig_of(&self, patched: SymbolId) -> Option<SymbolId> {
        self.patched_to_orig.get(&patched).map(|p| p.0)
    }

    pub fn strategy(&self, patched: SymbolId) -> Option<Strategy> {
        self.patched_to_orig.get(&patched).map(|p| p.1)
    }

    pub fn patched_of(&self, orig: SymbolId) -> Option<SymbolId> {
        self.orig_to_patched.get(&orig).copied()
    }

    fn pair(&mut self, o: SymbolId, p: SymbolId, how: Strategy) {
        self.patched_to_orig.insert(p, (o, how));
        self.orig_to_patched.insert(o, p);
    }
}

/// Symbols that take part in pairing: functions and data objects of code
/// and data sections (table entries, exports and objtool annotations are
/// judged with the code they describe, not on their own).
pub fn pairable(obj: &Object) -> Vec<SymbolId> {
    obj.symbols
        .iter()
        .filter(|s| matches!(s.kind, SymKind::Func | SymKind::Object))
        .filter(|s| {
            s.section.is_some_and(|sec| {
                matches!(
                    role(obj.section(sec)),
                    Some(Role::Code | Role::Data | Role::Registry)
                )
            })
        })
        .map(|s| s.id)
        .collect()
}

/// The named symbol at `sec`+`off`: a covering function or object, or the
/// only one of its section.
pub fn symbol_at(obj: &Object, sec: SectionId, off: i64) -> Option<SymbolId> {
    let mut only = None;
    let mut count = 0;
    for s in obj.symbols_in(sec) {
        if !matches!(s.kind, SymKind::Func | SymKind::Object) {
            continue;
        }
        count += 1;
        only = Some(s.id);
        let start = s.value as i64;
        if off >= start && off < start.saturating_add(s.size.max(1) as i64) {
            return Some(s.id);
        }
    }
    (count == 1).then_some(only).flatten()
}

/// The symbols each symbol refers to, in the order of its relocations.
pub fn references(obj: &Object, code: &CodeMap) -> HashMap<SymbolId, Vec<SymbolId>> {
    let mut out: HashMap<SymbolId, Vec<SymbolId>> = HashMap::new();
    for id in pairable(obj) {
        let s = obj.symbol(id);
        let Some(sec) = s.section else { continue };
        let section = obj.section(sec);
        let end = if s.size == 0 {
            section.size
        } else {
            s.value.saturating_add(s.size)
        };
        let refs = out.entry(id).or_default();
        for r in section.relocs_in(s.value, end) {
            if let Target::Place(t, off, _) = code.target(obj, section, r) {
                if let Some(x) = symbol_at(obj, t, off) {
                    if x != id {
                        refs.push(x);
                    }
                }
            }
        }
    }
    out
}

/// Pairs the symbols of `orig` and `patched`, given what each symbol of
/// either refers to ([`references`]): names first, then normalized names
/// and users' votes in turn until nothing new pairs; what stays undecided
/// is recorded as ambiguous.
pub fn correlate(
    orig: &Object,
    patched: &Object,
    o_refs: &HashMap<SymbolId, Vec<SymbolId>>,
    p_refs: &HashMap<SymbolId, Vec<SymbolId>>,
) -> Twins {
    let mut c = Correlator {
        orig,
        patched,
        o_refs,
        p_refs,
        t: Twins {
            patched_to_orig: HashMap::new(),
            orig_to_patched: HashMap::new(),
            ambiguous: Vec::new(),
        },
        o_syms: pairable(orig),
        p_syms: pairable(patched),
        o_users: users(o_refs),
        p_users: users(p_refs),
        distinct: HashSet::new(),
    };
    c.by_name();
    loop {
        let before = c.t.patched_to_orig.len();
        let fams = c.by_family();
        let votes_p = c.by_votes();
        if c.t.patched_to_orig.len() == before {
            c.record_undecided(&fams, &votes_p);
            return c.t;
        }
    }
}

/// Who refers to each symbol.
fn users(refs: &HashMap<SymbolId, Vec<SymbolId>>) -> HashMap<SymbolId, HashSet<SymbolId>> {
    let mut u: HashMap<SymbolId, HashSet<SymbolId>> = HashMap::new();
    for (user, targets) in refs {
        for x in targets {
            u.entry(*x).or_default().insert(*user);
        }
    }
    u
}

fn is_func(obj: &Object, id: SymbolId) -> bool {
    obj.symbol(id).kind == SymKind::Func
}

/// Unpaired symbols by (family key, is a function): (originals, patched).
type Families = BTreeMap<(String, bool), (Vec<SymbolId>, Vec<SymbolId>)>;

struct Correlator<'a> {
    orig: &'a Object,
    patched: &'a Object,
    o_refs: &'a HashMap<SymbolId, Vec<SymbolId>>,
    p_refs: &'a HashMap<SymbolId, Vec<SymbolId>>,
    t: Twins,
    o_syms: Vec<SymbolId>,
    p_syms: Vec<SymbolId>,
    o_users: HashMap<SymbolId, HashSet<SymbolId>>,
    p_users: HashMap<SymbolId, HashSet<SymbolId>>,
    /// Family pairs whose users show they are different variables.
    distinct: HashSet<(SymbolId, SymbolId)>,
}

impl Correlator<'_> {
    /// Strategy 1, names without compiler numbers.
    fn by_name(&mut self) {
        let (orig, patched, t) = (self.orig, self.patched, &mut self.t);
        let (o_syms, p_syms) = (&self.o_syms, &self.p_syms);
        let mut by_name: HashMap<(&str, bool), SymbolId> = HashMap::new();
        for &o in o_syms {
            let s = orig.symbol(o);
            if !family(&s.name).numbered {
                by_name.insert((&s.name, is_func(orig, o)), o);
            }
        }
        for &p in p_syms {
            let s = patched.symbol(p);
            if family(&s.name).numbered {
                continue;
            }
            if let Some(&o) = by_name.get(&(s.name.as_str(), is_func(patched, p))) {
                if t.patched_of(o).is_none() {
                    t.pair(o, p, Strategy::Name);
                }
            }
        }
    }

    /// Strategy 2, normalized names: a family with one unpaired member on each side
    /// pairs, unless their users show they are different variables.
    fn by_family(&mut self) -> Families {
        let (orig, patched, t) = (self.orig, self.patched, &mut self.t);
        let (o_syms, p_syms) = (&self.o_syms, &self.p_syms);
        let (o_users, p_users, distinct) = (&self.o_users, &self.p_users, &mut self.distinct);
        let mut fams: BTreeMap<(String, bool), (Vec<SymbolId>, Vec<SymbolId>)> = BTreeMap::new();
        for &o in o_syms.iter().filter(|o| t.patched_of(**o).is_none()) {
            let f = family(&orig.symbol(o).name);
            fams.entry((f.key, is_func(orig, o))).or_default().0.push(o);
        }
        for &p in p_syms.iter().filter(|p| t.orig_of(**p).is_none()) {
            let f = family(&patched.symbol(p).name);
            fams.entry((f.key, is_func(patched, p)))
                .or_default()
                .1
                .push(p);
        }
        for (os, ps) in fams.values() {
            if let ([o], [p]) = (os.as_slice(), ps.as_slice()) {
                let uo: HashSet<SymbolId> = o_users
                    .get(o)
                    .into_iter()
                    .flatten()
                    .filter_map(|u| t.patched_of(*u))
                    .collect();
                let up: HashSet<SymbolId> = p_users
                    .get(p)
                    .into_iter()
                    .flatten()
                    .filter(|u| t.orig_of(**u).is_some())
                    .copied()
                    .collect();
                if !uo.is_empty() && !up.is_empty() && uo.is_disjoint(&up) {
                    distinct.insert((*o, *p));
                } else {
                    t.pair(*o, *p, Strategy::Normalized);
                }
            }
        }

        fams
    }

    /// Strategy 3, votes of twin users: the k-th reference to a family in the
    /// original is the k-th in the patched build. Returns the votes each
    /// patched symbol got.
    fn by_votes(&mut self) -> HashMap<SymbolId, HashSet<SymbolId>> {
        let (orig, patched, t) = (self.orig, self.patched, &mut self.t);
        let (o_refs, p_refs) = (self.o_refs, self.p_refs);
        let mut votes_o: HashMap<SymbolId, HashSet<SymbolId>> = HashMap::new();
        let mut votes_p: HashMap<SymbolId, HashSet<SymbolId>> = HashMap::new();
        for (&p_user, p_targets) in p_refs {
            let Some(o_user) = t.orig_of(p_user) else {
                continue;
            };
            let Some(o_targets) = o_refs.get(&o_user) else {
                continue;
            };
            let group = |obj: &Object, list: &[SymbolId], unpaired: &dyn Fn(SymbolId) -> bool| {
                let mut g: BTreeMap<(String, bool), Vec<SymbolId>> = BTreeMap::new();
                let mut seen = HashSet::new();
                for &x in list {
                    let f = family(&obj.symbol(x).name);
                    if f.numbered && unpaired(x) && seen.insert(x) {
                        g.entry((f.key, is_func(obj, x))).or_default().push(x);
                    }
                }
                g
            };
            let go = group(orig, o_targets, &|x| t.patched_of(x).is_none());
            let gp = group(patched, p_targets, &|x| t.orig_of(x).is_none());
            for (key, os) in &go {
                let Some(ps) = gp.get(key) else { continue };
                for (o, p) in os.iter().zip(ps) {
                    votes_o.entry(*o).or_default().insert(*p);
                    votes_p.entry(*p).or_default().insert(*o);
                }
            }
        }
        for (o, ps) in &votes_o {
            if ps.len() != 1 {
                continue;
            }
            let p = *ps.iter().next().expect("one vote");
            if votes_p
                .get(&p)
                .is_some_and(|os| os.len() == 1 && os.contains(o))
                && t.patched_of(*o).is_none()
                && t.orig_of(p).is_none()
            {
                t.pair(*o, p, Strategy::Users);
            }
        }
        votes_p
    }

    /// What stays undecided: conflicting votes, or a family present on
    /// both sides with no evidence either way.
    fn record_undecided(
        &mut self,
        fams: &Families,
        votes_p: &HashMap<SymbolId, HashSet<SymbolId>>,
    ) {
        let (patched, t, distinct) = (self.patched, &mut self.t, &self.distinct);
        // Identity-free data (a `__func__` string) needs no twin: it is
        // compared by content and carried as a copy, whatever the votes.
        let identity_free =
            |p: SymbolId| crate::names::identity_free(crate::names::hidden_of(patched, p));
        for (p, os) in votes_p {
            if t.orig_of(*p).is_none() && os.len() > 1 && !identity_free(*p) {
                let mut os: Vec<SymbolId> = os.iter().copied().collect();
                os.sort();
                t.ambiguous.push((
                    *p,
                    os,
                    "functions that use it disagree about which original it is".into(),
                ));
            }
        }
        for (os, ps) in fams.values() {
            let os: Vec<SymbolId> = os
                .iter()
                .copied()
                .filter(|o| t.patched_of(*o).is_none())
                .collect();
            let ps: Vec<SymbolId> = ps
                .iter()
                .copied()
                .filter(|p| t.orig_of(*p).is_none())
                .collect();
            for p in &ps {
                let candidates: Vec<SymbolId> = os
                    .iter()
                    .copied()
                    .filter(|o| !distinct.contains(&(*o, *p)))
                    .collect();
                // Identity-free data is compared by content instead.
                let named = family(&patched.symbol(*p).name).numbered && !identity_free(*p);
                if named && !candidates.is_empty() && !t.ambiguous.iter().any(|(a, _, _)| a == p) {
                    t.ambiguous.push((
                        *p,
                        candidates,
                        "no function that uses it tells which original it is".into(),
                    ));
                }
            }
        }
    }
}
