//! What a patch tells graft through the macros of `<graft/livepatch.h>`
//! (and kpatch's, mapped onto them): records in `.graft.*` sections of the
//! patched object.
//!
//! | section | record | meaning |
//! |---|---|---|
//! | `.graft.callbacks.<kind>` | pointer to a function | a pre/post patch/unpatch callback of the file's klp object |
//! | `.graft.states` | `{ u64 id; u32 version; u32 reserved; }` | a `klp_state` the patch declares |
//! | `.graft.ignore.functions` | pointer to a function | leave this function out although it changed |
//! | `.graft.ignore.sections` | pointer to a string | leave out what the named section defines |
//! | `.graft.force_unsafe` | pointer to a function | kpatch's `KPATCH_FORCE_UNSAFE`: has no effect (warned) |
//!
//! The records are graft's input, never part of the module: the sections
//! have their own role in [`crate::special`], take no part in pairing, and
//! their references are not uses of what they name (a callback's address
//! in a record is not an ops pointer the kernel could call). A record graft
//! cannot read is refused rather than skipped: a silently dropped callback
//! or state would make a patch that loads and misbehaves.

use graft_elf::{Object, Section, SectionId, SymKind, SymbolId};
use serde::Serialize;

use crate::compare::{is_string_section, string_at};
use crate::special::{data_target, function_at};

/// Every marker section's name starts with this.
pub const PREFIX: &str = ".graft.";

const R_X86_64_64: u32 = 1;

/// The kind of a livepatch callback (`struct klp_callbacks`' field).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CallbackKind {
    PrePatch,
    PostPatch,
    PreUnpatch,
    PostUnpatch,
}

impl CallbackKind {
    pub const ALL: [CallbackKind; 4] = [
        CallbackKind::PrePatch,
        CallbackKind::PostPatch,
        CallbackKind::PreUnpatch,
        CallbackKind::PostUnpatch,
    ];

    /// The field of `struct klp_callbacks`, and the section suffix.
    pub fn field(self) -> &'static str {
        match self {
            CallbackKind::PrePatch => "pre_patch",
            CallbackKind::PostPatch => "post_patch",
            CallbackKind::PreUnpatch => "pre_unpatch",
            CallbackKind::PostUnpatch => "post_unpatch",
        }
    }

    /// The macro that declares one, for messages.
    pub fn macro_name(self) -> &'static str {
        match self {
            CallbackKind::PrePatch => "GRAFT_PRE_PATCH_CALLBACK",
            CallbackKind::PostPatch => "GRAFT_POST_PATCH_CALLBACK",
            CallbackKind::PreUnpatch => "GRAFT_PRE_UNPATCH_CALLBACK",
            CallbackKind::PostUnpatch => "GRAFT_POST_UNPATCH_CALLBACK",
        }
    }
}

/// A callback the patch declares.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Callback {
    pub kind: CallbackKind,
    pub function: String,
    #[serde(skip)]
    pub symbol: SymbolId,
}

/// A `klp_state` the patch declares.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct State {
    pub id: u64,
    pub version: u32,
}

/// A function a marker names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Named {
    pub function: String,
    #[serde(skip)]
    pub symbol: SymbolId,
}

/// Everything the patched object's markers say.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Markers {
    pub callbacks: Vec<Callback>,
    pub states: Vec<State>,
    pub ignored_functions: Vec<Named>,
    pub ignored_sections: Vec<String>,
    /// `KPATCH_FORCE_UNSAFE` targets: the kernel's livepatch has no
    /// per-function bypass of its consistency model, so these only warn.
    pub force_unsafe: Vec<Named>,
}

impl Markers {
    pub fn is_empty(&self) -> bool {
        *self == Markers::default()
    }
}

/// A record graft cannot use, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadMarker {
    /// The marker section.
    pub section: String,
    /// What the record names, when known.
    pub symbol: String,
    pub why: String,
}

/// Reads the markers of `obj` (the patched build).
pub fn read(obj: &Object) -> (Markers, Vec<BadMarker>) {
    let mut m = Markers::default();
    let mut bad = Vec::new();
    for s in obj.sections.iter().filter(|s| s.name.starts_with(PREFIX)) {
        let mut fail = |symbol: &str, why: String| {
            bad.push(BadMarker {
                section: s.name.clone(),
                symbol: symbol.to_owned(),
                why,
            })
        };
        read_section(obj, s, &mut m, &mut fail);
    }
    m.callbacks.sort_by_key(|c| c.kind);
    m.states.sort();
    m.states.dedup();
    (m, bad)
}

/// What `fail` is told of a record graft cannot use: the symbol it names
/// (empty when unknown) and why.
type Fail<'f> = dyn FnMut(&str, String) + 'f;

/// Reads the marker section `s` into `m`, by its kind (the name after
/// [`PREFIX`]); a section or record graft cannot use goes to `fail`.
fn read_section(obj: &Object, s: &Section, m: &mut Markers, fail: &mut Fail<'_>) {
    let kind = &s.name[PREFIX.len()..];
    // Every record graft knows, but the states, is one pointer.
    let pointer_records = kind.starts_with("callbacks.")
        || matches!(
            kind,
            "ignore.functions" | "ignore.sections" | "force_unsafe"
        );
    if pointer_records && !s.size.is_multiple_of(8) {
        fail(
            "",
            format!("{} bytes are not a whole number of 8-byte pointer records; hint: write markers only with the macros of <graft/livepatch.h>", s.size),
        );
        return;
    }
    if let Some(k) = kind.strip_prefix("callbacks.") {
        read_callbacks(obj, s, k, m, fail);
        return;
    }
    match kind {
        "states" => read_states(s, m, fail),
        "ignore.functions" | "force_unsafe" => read_functions(obj, s, kind, m, fail),
        "ignore.sections" => read_ignored_sections(obj, s, m, fail),
        _ => fail(
            "",
            format!("graft does not know the marker section {}; hint: this graft reads .graft.callbacks.*, .graft.states, .graft.ignore.functions, .graft.ignore.sections and .graft.force_unsafe; use the <graft/livepatch.h> that graft installs, not a copy from another version", s.name),
        ),
    }
}

/// `.graft.callbacks.<k>`: functions of the callback kind `k`.
fn read_callbacks(obj: &Object, s: &Section, k: &str, m: &mut Markers, fail: &mut Fail<'_>) {
    let Some(kind) = CallbackKind::ALL.into_iter().find(|c| c.field() == k) else {
        fail(
            "",
            format!("{k} is not a livepatch callback (pre_patch, post_patch, pre_unpatch, post_unpatch)"),
        );
        return;
    };
    for p in pointers(obj, s.id) {
        match function_named(obj, p) {
            Ok((symbol, function)) => m.callbacks.push(Callback {
                kind,
                function,
                symbol,
            }),
            Err(why) => fail(&why.0, format!("the {} callback {}", kind.field(), why.1)),
        }
    }
}

/// `.graft.states`: `GRAFT_STATE` records, constants only.
fn read_states(s: &Section, m: &mut Markers, fail: &mut Fail<'_>) {
    const RECORD: usize = 16;
    if !s.data.len().is_multiple_of(RECORD) || !s.relocs.is_empty() {
        fail(
            "",
            format!(
                "{} bytes with {} relocation(s) are not GRAFT_STATE records (16 bytes of constants each); hint: declare states only with GRAFT_STATE(id, version)",
                s.data.len(),
                s.relocs.len()
            ),
        );
        return;
    }
    for r in s.data.chunks_exact(RECORD) {
        let id = u64::from_le_bytes(r[0..8].try_into().expect("8 bytes"));
        let version = u32::from_le_bytes(r[8..12].try_into().expect("4 bytes"));
        m.states.push(State { id, version });
    }
}

/// `.graft.ignore.functions` and `.graft.force_unsafe` (`kind`): functions
/// of this file.
fn read_functions(obj: &Object, s: &Section, kind: &str, m: &mut Markers, fail: &mut Fail<'_>) {
    for p in pointers(obj, s.id) {
        match function_named(obj, p) {
            Ok((symbol, function)) => {
                let n = Named { function, symbol };
                if kind == "force_unsafe" {
                    m.force_unsafe.push(n);
                } else {
                    m.ignored_functions.push(n);
                }
            }
            Err(why) => fail(&why.0, format!("the marked function {}", why.1)),
        }
    }
}

/// `.graft.ignore.sections`: names of sections, as strings.
fn read_ignored_sections(obj: &Object, s: &Section, m: &mut Markers, fail: &mut Fail<'_>) {
    for p in pointers(obj, s.id) {
        let name = p.ok().and_then(|(sec, off)| {
            let sec = obj.section(sec);
            is_string_section(sec)
                .then(|| string_at(sec, off))
                .flatten()
                .map(|b| String::from_utf8_lossy(b).into_owned())
        });
        match name {
            Some(n) => m.ignored_sections.push(n),
            None => fail(
                "",
                "a GRAFT_IGNORE_SECTION record does not point to a string; hint: pass a string literal: GRAFT_IGNORE_SECTION(\".text.foo\")".into(),
            ),
        }
    }
}

/// The 8-byte pointers of a record section: where each points, or the name
/// of an undefined symbol it points to.
fn pointers(obj: &Object, sec: SectionId) -> Vec<Result<(SectionId, i64), String>> {
    let s = obj.section(sec);
    let n = s.size / 8;
    (0..n)
        .map(|i| {
            let at = i * 8;
            let r = s
                .relocs_in(at, at + 1)
                .first()
                .filter(|r| r.r_type == R_X86_64_64)
                .ok_or_else(String::new)?;
            data_target(obj, r).ok_or_else(|| obj.symbol(r.symbol).name.clone())
        })
        .collect()
}

/// The function a pointer reaches: it must be defined in this file.
fn function_named(
    obj: &Object,
    p: Result<(SectionId, i64), String>,
) -> Result<(SymbolId, String), (String, String)> {
    match p {
        Ok((sec, off)) => match function_at(obj, sec, off) {
            Some(f) if obj.symbol(f).value as i64 == off && obj.symbol(f).kind == SymKind::Func => {
                Ok((f, obj.symbol(f).name.clone()))
            }
            _ => Err((
                String::new(),
                format!(
                    "points into {} but not at a function's start; hint: name a function of this file",
                    obj.section(sec).name
                ),
            )),
        },
        Err(name) if !name.is_empty() => Err((
            name.clone(),
            format!(
                "{name} is not defined in this file; hint: a marker names a function of the file it is written in (define the callback there; mark an ignored function in its own file)"
            ),
        )),
        Err(_) => Err((
            String::new(),
            "is not a pointer graft can read; hint: use the macros of <graft/livepatch.h>".into(),
        )),
    }
}
