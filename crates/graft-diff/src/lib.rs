//! The differ: pairs the symbols of an original and a patched object
//! ("twins"), decides for each function and data object whether it is the
//! same, changed or new, explains why, and refuses what a live patch cannot
//! carry.
//!
//! Passes, in order: [`correlate`] (twins: by name, by normalized name, by
//! users) → [`compare`] (code, data and the table entries describing code,
//! relocation-aware, modulo `__LINE__` fields) → the author's [`markers`]
//! (ignored functions and sections count as the same) → promotion (code
//! that reads a changed constant, and cold parts, change with it; hookless
//! changed callees are carried as new and their callers patched,
//! [`callees`]) → [`rules`] (refusals). The kernel's entry layouts come from
//! [`layout`]; the section roles from [`special`]. See `docs/differ.md`.

pub mod callees;
pub mod code;
pub mod compare;
pub mod correlate;
pub mod crc;
pub mod layout;
pub mod markers;
pub mod names;
pub mod prefix;
pub mod rules;
pub mod special;
pub mod split;
pub mod types;

#[cfg(test)]
mod fuzz_regressions;

use std::collections::{BTreeSet, HashMap};

use graft_elf::{Object, SectionId, SymKind, SymbolId};
use serde::Serialize;

pub use correlate::Strategy;
pub use crc::Crcs;
pub use layout::Layout;
pub use markers::Markers;
pub use names::Hidden;
pub use rules::{Refusal, Rule};

use compare::{Ctx, Difference, Side};

/// What happened to one function or data object between the two builds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(tag = "verdict", rename_all = "snake_case")]
pub enum Verdict {
    Same,
    /// Differs; `offset` is the first differing byte, relocation or
    /// described site, from the symbol's start.
    Changed {
        offset: u64,
    },
    New,
}

/// The first differing instruction of a changed function, disassembled.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct InsnDiff {
    pub offset: u64,
    pub orig: String,
    pub patched: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Change {
    pub name: String,
    pub section: String,
    #[serde(flatten)]
    pub verdict: Verdict,
    /// The twin's name in the original build (and so in the running kernel).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub orig_name: Option<String>,
    /// How the twin was found.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub paired_by: Option<Strategy>,
    /// Why it changed, in words.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// For a same symbol whose line fields differ: which lines moved.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_insn: Option<InsnDiff>,
    /// Marked by the patch author (`GRAFT_IGNORE_FUNCTION`/`_SECTION`):
    /// the running kernel's stays, whatever changed. An ignored symbol
    /// that changed is `Same` with its `reason` kept.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub ignored: bool,
    #[serde(skip)]
    pub symbol: SymbolId,
    #[serde(skip)]
    pub section_id: SectionId,
    #[serde(skip)]
    pub twin: Option<SymbolId>,
    #[serde(skip)]
    pub hidden: Option<Hidden>,
}

/// A once flag, ratelimit state or lockdep key of the running kernel that a
/// carried function uses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SharedState {
    /// The carried function.
    pub function: String,
    /// The state's name in the original build, which is the running
    /// kernel's name for it (`__already_done.10`, repeated kernel-wide).
    pub state: String,
    #[serde(skip)]
    pub symbol: SymbolId,
    /// The original build's functions that use the state: verifying one
    /// against the running kernel finds the running copy.
    #[serde(skip)]
    pub users: Vec<SymbolId>,
}

/// The differ's result for one object pair.
#[derive(Debug, Clone, Serialize)]
pub struct ObjectDiff {
    pub object: String,
    pub functions: Vec<Change>,
    pub data: Vec<Change>,
    /// Functions and data of the original that the patched object no longer has.
    pub removed: Vec<String>,
    /// The patched object's tables about code, cut into entries.
    pub tables: Vec<special::TableEntries>,
    /// What the patch author's `.graft.*` records say (callbacks, states,
    /// ignore markers).
    #[serde(skip_serializing_if = "Markers::is_empty")]
    pub markers: Markers,
    pub refusals: Vec<Refusal>,
    /// Hidden state of the running kernel that carried code must share:
    /// resolved through run-pre verification of the original function.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub shared_state: Vec<SharedState>,
    /// The entry layouts the diff was made with (for rebuilding tables).
    #[serde(skip)]
    pub layout: Layout,
    /// The patched object's decoded code and references, as the diff used
    /// them: planning and verification reuse them.
    #[serde(skip)]
    pub code: std::sync::Arc<code::CodeMap>,
    #[serde(skip)]
    pub references: std::sync::Arc<HashMap<SymbolId, Vec<SymbolId>>>,
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

    /// Data the module carries a copy of: new data, changed constants, and
    /// read-only hidden data (the `Const` and `Registry` kinds of [`Hidden`]).
    pub fn carried_data(&self) -> impl Iterator<Item = &Change> {
        self.data.iter().filter(|c| {
            c.verdict != Verdict::Same || matches!(c.hidden, Some(Hidden::Const | Hidden::Registry))
        })
    }

    /// The name the running kernel knows a patched symbol by, when the
    /// symbol has a twin (renumbered clones and statics keep the original's).
    pub fn kernel_name(&self, patched: SymbolId) -> Option<&str> {
        self.functions
            .iter()
            .chain(&self.data)
            .find(|c| c.symbol == patched)
            .and_then(|c| c.orig_name.as_deref())
    }

    pub fn is_empty(&self) -> bool {
        self.included_functions().next().is_none()
            && self.data.iter().all(|c| c.verdict == Verdict::Same)
    }

    /// Functions that changed but that the author's markers leave out.
    pub fn ignored_changes(&self) -> impl Iterator<Item = &Change> {
        self.functions
            .iter()
            .chain(&self.data)
            .filter(|c| c.ignored && c.reason.is_some())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DiffError {
    #[error("{}", refusals.iter().map(|r| r.to_string()).collect::<Vec<_>>().join("\n"))]
    Refused { refusals: Vec<Refusal> },
}

/// Looks up a fact about a symbol of the target kernel by name.
pub type Lookup<'a, T> = &'a dyn Fn(&str) -> T;

/// What the differ may know beyond the two objects.
#[derive(Default)]
pub struct Options<'a> {
    /// The kernel's entry layouts; without it, tables about changed code are refused.
    pub layout: Option<&'a Layout>,
    /// Export CRCs of both builds (kbuild's `#SYMVER` records).
    pub crcs: Crcs,
    /// The target kernel's CRC of an export (`Module.symvers`).
    pub target_crc: Option<Lookup<'a, Option<u32>>>,
    /// The klp object when the patched file belongs to a module, not vmlinux.
    pub module: Option<String>,
    /// Whether vmlinux defines a symbol (for keys referenced by module code).
    pub vmlinux_has: Option<Lookup<'a, bool>>,
    /// Whether the target module (see `module`) defines a symbol.
    pub module_has: Option<Lookup<'a, bool>>,
}

/// Diffs `orig` against `patched`; refusals are an error.
pub fn diff(orig: &Object, patched: &Object) -> Result<ObjectDiff, DiffError> {
    diff_with(orig, patched, &Options::default())
}

/// Diffs with `opts`; refusals are an error.
pub fn diff_with(
    orig: &Object,
    patched: &Object,
    opts: &Options<'_>,
) -> Result<ObjectDiff, DiffError> {
    let d = analyze(orig, patched, opts);
    if d.refusals.is_empty() {
        Ok(d)
    } else {
        Err(DiffError::Refused {
            refusals: d.refusals,
        })
    }
}

/// The whole analysis, refusals included in the result (for `graft diff`).
pub fn analyze(orig: &Object, patched: &Object, opts: &Options<'_>) -> ObjectDiff {
    let empty = Layout::default();
    let layout = opts.layout.unwrap_or(&empty);
    let o_side = Side::new(orig, layout, false);
    let p_side = Side::new(patched, layout, true);
    let twins = correlate::correlate(orig, patched, &o_side.refs, &p_side.refs);
    let ctx = Ctx {
        orig: o_side,
        patched: p_side,
        twins,
        layout,
    };
    let object = patched
        .path
        .file_name()
        .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
    let mut out = ObjectDiff {
        object,
        functions: Vec::new(),
        data: Vec::new(),
        removed: Vec::new(),
        tables: ctx.patched.tables.clone(),
        markers: Markers::default(),
        refusals: Vec::new(),
        shared_state: Vec::new(),
        layout: layout.clone(),
        code: ctx.patched.code.clone(),
        references: ctx.patched.refs.clone(),
    };
    for id in correlate::pairable(patched) {
        let s = patched.symbol(id);
        let change = verdict(&ctx, id);
        if s.kind == SymKind::Func {
            out.functions.push(change);
        } else {
            out.data.push(change);
        }
    }
    let paired: BTreeSet<SymbolId> = correlate::pairable(orig)
        .into_iter()
        .filter(|o| ctx.twins.patched_of(*o).is_some())
        .collect();
    out.removed = correlate::pairable(orig)
        .into_iter()
        .filter(|o| !paired.contains(o))
        .map(|o| orig.symbol(o).name.clone())
        .collect();
    let (markers, bad) = markers::read(patched);
    let mut marker_refusals: Vec<Refusal> = bad
        .into_iter()
        .map(|b| Refusal {
            object: out.object.clone(),
            symbol: b.symbol,
            rule: Rule::Marker {
                section: b.section,
                why: b.why,
            },
        })
        .collect();
    let ignored = ignore(patched, &mut out, &markers, &mut marker_refusals);
    out.markers = markers;
    promote_constants(&ctx, &mut out, &ignored);
    promote_parts(&mut out, &ignored);
    let blocked = callees::promote(&ctx, &mut out, &ignored, opts.module.is_some());
    promote_parts(&mut out, &ignored);
    out.refusals = rules::check(&ctx, &out, opts, &blocked);
    out.refusals.extend(
        types::changed_layouts(orig, patched)
            .into_iter()
            .map(|(ty, what)| Refusal {
                object: out.object.clone(),
                symbol: ty,
                rule: Rule::LayoutChanged { what },
            }),
    );
    out.shared_state = rules::shared_state(&ctx, &out);
    out.refusals.extend(marker_refusals);
    out
}

/// Applies the author's ignore markers: a changed function or data object
/// they name counts as the same (the running kernel's stays), and so do
/// its cold parts. Returns every ignored symbol, for the promotions to
/// leave alone.
fn ignore(
    patched: &Object,
    out: &mut ObjectDiff,
    m: &Markers,
    refusals: &mut Vec<Refusal>,
) -> BTreeSet<SymbolId> {
    let mut set: BTreeSet<SymbolId> = BTreeSet::new();
    let mut why: HashMap<SymbolId, String> = HashMap::new();
    for f in &m.ignored_functions {
        set.insert(f.symbol);
        why.insert(f.symbol, "GRAFT_IGNORE_FUNCTION".into());
        if out
            .functions
            .iter()
            .any(|c| c.symbol == f.symbol && c.verdict == Verdict::New)
        {
            refusals.push(Refusal {
                object: out.object.clone(),
                symbol: f.function.clone(),
                rule: Rule::Marker {
                    section: ".graft.ignore.functions".into(),
                    why: format!("{0} is new: the running kernel has no {0} to keep (if gcc inlines {0} there, the marker's reference is what made gcc emit it here; mark the functions it is inlined into instead); hint: remove the GRAFT_IGNORE_FUNCTION marker", f.function),
                },
            });
        }
        // Its cold parts go with it.
        for p in patched.functions() {
            if names::parent_of_part(&p.name) == Some(f.function.as_str()) {
                set.insert(p.id);
                why.insert(p.id, "GRAFT_IGNORE_FUNCTION".into());
            }
        }
    }
    for name in &m.ignored_sections {
        let secs: Vec<_> = patched
            .sections
            .iter()
            .filter(|s| s.name == *name)
            .collect();
        if secs.is_empty() {
            refusals.push(Refusal {
                object: out.object.clone(),
                symbol: String::new(),
                rule: Rule::Marker {
                    section: ".graft.ignore.sections".into(),
                    why: format!("the file has no section {name}; hint: name a section of this file's object (with -ffunction-sections, function foo is in .text.foo)"),
                },
            });
        }
        for s in secs {
            for sym in patched.symbols_in(s.id) {
                if matches!(sym.kind, SymKind::Func | SymKind::Object) {
                    set.insert(sym.id);
                    why.insert(sym.id, format!("GRAFT_IGNORE_SECTION(\"{name}\")"));
                }
            }
        }
    }
    for c in out.functions.iter_mut().chain(out.data.iter_mut()) {
        if !set.contains(&c.symbol) || c.verdict == Verdict::New {
            continue;
        }
        c.ignored = true;
        if let Verdict::Changed { .. } = c.verdict {
            // The reason stays: it changed, and the author chose to keep
            // the running kernel's.
            let marker = why.get(&c.symbol).map_or("a marker", String::as_str);
            c.note = Some(format!(
                "changed, but left out by {marker}: the running kernel's stays"
            ));
            c.verdict = Verdict::Same;
        }
    }
    set
}

fn verdict(ctx: &Ctx<'_>, p: SymbolId) -> Change {
    let patched = ctx.patched.obj;
    let sym = patched.symbol(p);
    let section_id = sym.section.unwrap_or(SectionId(0));
    let section = patched.section(section_id);
    let twin = ctx.twins.orig_of(p);
    let mut change = Change {
        name: sym.name.clone(),
        section: section.name.clone(),
        verdict: Verdict::New,
        orig_name: twin.map(|o| ctx.orig.obj.symbol(o).name.clone()),
        paired_by: ctx.twins.strategy(p),
        reason: None,
        note: None,
        first_insn: None,
        ignored: false,
        symbol: p,
        section_id,
        twin,
        hidden: names::hidden_of(patched, p),
    };
    let Some(o) = twin else {
        return change;
    };
    match ctx.compare(o, p) {
        None => {
            change.verdict = Verdict::Same;
            let a = ctx.body(false, o);
            let b = ctx.body(true, p);
            if a.lines != b.lines {
                let moved: Vec<String> = a
                    .lines
                    .iter()
                    .zip(&b.lines)
                    .filter(|(x, y)| x != y)
                    .map(|(x, y)| format!("{x}→{y}"))
                    .collect();
                change.note = Some(format!(
                    "only __LINE__ differs (line {}), which is no change",
                    moved.join(", ")
                ));
            }
        }
        Some(d) => {
            change.verdict = Verdict::Changed { offset: d.offset() };
            change.reason = Some(match &d {
                Difference::Bytes(o) => format!("code or data bytes differ at +{o:#x}"),
                Difference::Reloc(o, what) => format!("the reference at +{o:#x} differs: {what}"),
                Difference::Size(a, b) => format!("size changed from {a} to {b} bytes"),
                Difference::Entry(t, site) => {
                    format!("its {t} entry for the site at +{site:#x} differs")
                }
            });
            if sym.kind == SymKind::Func
                && matches!(d, Difference::Bytes(_) | Difference::Reloc(..))
            {
                change.first_insn = first_insn(ctx, o, p, d.offset());
            }
        }
    }
    change
}

/// The instructions of both builds at the first difference.
fn first_insn(ctx: &Ctx<'_>, o: SymbolId, p: SymbolId, offset: u64) -> Option<InsnDiff> {
    let side = |side: &Side<'_>, id: SymbolId| -> Option<(u64, String)> {
        let s = side.obj.symbol(id);
        let sec = s.section?;
        let at = s.value.checked_add(offset)?;
        let (start, _) = side.code.insn_at(sec, at)?;
        let text = code::disassemble_at(&side.obj.section(sec).data, start)?;
        // A symbol need not start on an instruction boundary (hand-written
        // or malformed code): the instruction holding it is at offset 0.
        Some((start.saturating_sub(s.value), text))
    };
    let (po, pt) = side(&ctx.patched, p)?;
    let ot = side(&ctx.orig, o).map_or_else(|| "(past the end)".to_owned(), |x| x.1);
    Some(InsnDiff {
        offset: po,
        orig: ot,
        patched: pt,
    })
}

/// Code reading a changed constant is changed (it would read the old value
/// otherwise), unless the author marked it ignored.
fn promote_constants(ctx: &Ctx<'_>, out: &mut ObjectDiff, ignored: &BTreeSet<SymbolId>) {
    let patched = ctx.patched.obj;
    let refs: &HashMap<SymbolId, Vec<SymbolId>> = &ctx.patched.refs;
    let mut users: HashMap<SymbolId, Vec<SymbolId>> = HashMap::new();
    for (u, ts) in refs {
        for t in ts {
            users.entry(*t).or_default().push(*u);
        }
    }
    for v in users.values_mut() {
        v.sort();
        v.dedup();
    }
    let writable = |id: SymbolId| {
        patched
            .symbol(id)
            .section
            .is_some_and(|s| patched.section(s).flags & 1 != 0)
    };
    let mut work: Vec<SymbolId> = out
        .data
        .iter()
        .filter(|c| matches!(c.verdict, Verdict::Changed { .. }) && !writable(c.symbol))
        .map(|c| c.symbol)
        .collect();
    let mut seen: BTreeSet<SymbolId> = work.iter().copied().collect();
    while let Some(k) = work.pop() {
        let kname = patched.symbol(k).name.clone();
        for &u in users.get(&k).into_iter().flatten() {
            let c = match out
                .functions
                .iter_mut()
                .chain(out.data.iter_mut())
                .find(|c| c.symbol == u)
            {
                Some(c) => c,
                None => continue,
            };
            // Writable data pointing to a changed constant cannot follow it:
            // the constant-in-data rule refuses that.
            if c.verdict == Verdict::Same && !writable(u) && !ignored.contains(&u) {
                c.verdict = Verdict::Changed { offset: 0 };
                c.reason = Some(format!("it reads the changed constant {kname}"));
                if patched.symbol(u).kind == SymKind::Object && !writable(u) && seen.insert(u) {
                    work.push(u);
                }
            }
        }
    }
}

/// Cold parts travel with their parents, both ways (ignored ones stay).
fn promote_parts(out: &mut ObjectDiff, ignored: &BTreeSet<SymbolId>) {
    loop {
        let mut changed = false;
        let included: BTreeSet<String> = out
            .functions
            .iter()
            .filter(|c| c.verdict != Verdict::Same)
            .map(|c| c.name.clone())
            .collect();
        for c in out.functions.iter_mut() {
            if c.verdict != Verdict::Same || ignored.contains(&c.symbol) {
                continue;
            }
            if let Some(parent) = names::parent_of_part(&c.name) {
                if included.contains(parent) {
                    c.verdict = Verdict::Changed { offset: 0 };
                    c.reason = Some(format!("it is a part of {parent}, which the patch carries"));
                    changed = true;
                }
            } else if included
                .iter()
                .any(|n| names::parent_of_part(n) == Some(c.name.as_str()))
            {
                c.verdict = Verdict::Changed { offset: 0 };
                c.reason = Some("its cold part changed".into());
                changed = true;
            }
        }
        if !changed {
            break;
        }
    }
}
