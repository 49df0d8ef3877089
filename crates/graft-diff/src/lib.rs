//! The differ: pairs the symbols of an original and a patched object
//! ("twins"), decides for each function and data object whether it is the
//! same, changed or new, and refuses what a live patch cannot carry.
//!
//! Passes, in order: [`correlate`] (twins by name) → [`compare`] (code and
//! data equality, relocation-aware) → [`rules`] (refusals).

pub mod compare;
pub mod correlate;
pub mod rules;

use graft_elf::{Object, SectionId, SymbolId};
use serde::Serialize;

pub use rules::Refusal;

/// What happened to one function or data object between the two builds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(tag = "verdict", rename_all = "snake_case")]
pub enum Verdict {
    Same,
    /// Differs; `offset` is the first differing byte or relocation, from the symbol's start.
    Changed {
        offset: u64,
    },
    New,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Change {
    pub name: String,
    pub section: String,
    #[serde(flatten)]
    pub verdict: Verdict,
    #[serde(skip)]
    pub symbol: SymbolId,
    #[serde(skip)]
    pub section_id: SectionId,
    #[serde(skip)]
    pub twin: Option<SymbolId>,
}

/// The differ's result for one object pair.
#[derive(Debug, Clone, Serialize)]
pub struct ObjectDiff {
    pub functions: Vec<Change>,
    pub data: Vec<Change>,
    /// Functions of the original that the patched object no longer defines.
    pub removed: Vec<String>,
}

impl ObjectDiff {
    /// Functions the patch module must carry: changed and new ones.
    pub fn included_functions(&self) -> impl Iterator<Item = &Change> {
        self.functions.iter().filter(|c| c.verdict != Verdict::Same)
    }

    pub fn changed_functions(&self) -> impl Iterator<Item = &Change> {
        self.functions
            .iter()
            .filter(|c| matches!(c.verdict, Verdict::Changed { .. }))
    }

    pub fn is_empty(&self) -> bool {
        self.included_functions().next().is_none()
            && self.data.iter().all(|c| c.verdict == Verdict::Same)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DiffError {
    #[error("{}", refusals.iter().map(|r| r.to_string()).collect::<Vec<_>>().join("\n"))]
    Refused { refusals: Vec<Refusal> },
}

/// Diffs `orig` against `patched` (the same translation unit, built with
/// `-ffunction-sections -fdata-sections` before and after the source patch).
pub fn diff(orig: &Object, patched: &Object) -> Result<ObjectDiff, DiffError> {
    let twins = correlate::Twins::new(orig, patched);
    let mut out = ObjectDiff {
        functions: Vec::new(),
        data: Vec::new(),
        removed: Vec::new(),
    };
    for sym in patched.functions() {
        out.functions
            .push(compare::verdict(orig, patched, &twins, sym.id));
    }
    for sym in patched.data_objects() {
        out.data
            .push(compare::verdict(orig, patched, &twins, sym.id));
    }
    out.removed = orig
        .functions()
        .filter(|s| twins.patched_of(s.id).is_none())
        .map(|s| s.name.clone())
        .collect();
    let refusals = rules::check(patched, &out);
    if refusals.is_empty() {
        Ok(out)
    } else {
        Err(DiffError::Refused { refusals })
    }
}
