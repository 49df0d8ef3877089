//! Pairing symbols of the original and patched objects ("twins").
//!
//! First version: functions and data objects pair by exact name and kind.
//! Compiler clones whose numbers shift between builds and static locals are
//! paired more cleverly by later strategies; until then an unpaired
//! numbered local is refused by [`crate::rules`] rather than guessed.

use std::collections::HashMap;

use graft_elf::{Object, SymKind, SymbolId};

pub struct Twins {
    patched_to_orig: HashMap<SymbolId, SymbolId>,
    orig_to_patched: HashMap<SymbolId, SymbolId>,
}

impl Twins {
    pub fn new(orig: &Object, patched: &Object) -> Twins {
        let mut by_name: HashMap<(&str, bool), SymbolId> = HashMap::new();
        for s in orig
            .symbols
            .iter()
            .filter(|s| pairable(s.kind) && s.section.is_some())
        {
            by_name.insert((&s.name, s.kind == SymKind::Func), s.id);
        }
        let mut patched_to_orig = HashMap::new();
        let mut orig_to_patched = HashMap::new();
        for s in patched
            .symbols
            .iter()
            .filter(|s| pairable(s.kind) && s.section.is_some())
        {
            if let Some(&o) = by_name.get(&(s.name.as_str(), s.kind == SymKind::Func)) {
                patched_to_orig.insert(s.id, o);
                orig_to_patched.insert(o, s.id);
            }
        }
        Twins {
            patched_to_orig,
            orig_to_patched,
        }
    }

    pub fn orig_of(&self, patched: SymbolId) -> Option<SymbolId> {
        self.patched_to_orig.get(&patched).copied()
    }

    pub fn patched_of(&self, orig: SymbolId) -> Option<SymbolId> {
        self.orig_to_patched.get(&orig).copied()
    }
}

fn pairable(kind: SymKind) -> bool {
    matches!(kind, SymKind::Func | SymKind::Object)
}

/// Whether `name` carries a compiler-made number (`count.0`, `foo.isra.1`).
pub fn has_numbered_suffix(name: &str) -> bool {
    name.rsplit_once('.').is_some_and(|(base, n)| {
        !base.is_empty() && !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit())
    })
}
