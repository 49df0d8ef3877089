//! What a live patch cannot carry. Each refusal names the object, the
//! symbol and the rule, and says what to do instead.

use std::fmt;

use graft_elf::{Object, SymKind};
use serde::Serialize;

use crate::correlate::has_numbered_suffix;
use crate::{ObjectDiff, Verdict};

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Refusal {
    pub object: String,
    pub symbol: String,
    pub rule: Rule,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Rule {
    /// A changed function in `.init.text`/`.exit.text`.
    InitCode { section: String },
    /// A changed function that ftrace cannot redirect.
    NoFentry,
    /// A changed initial value or size of existing data.
    DataChanged { section: String },
    /// A numbered local (static local variable or clone) without a twin.
    UnpairedLocal,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (o, s) = (&self.object, &self.symbol);
        match &self.rule {
            Rule::InitCode { section } => write!(
                f,
                "{o}: {s} (in {section}) changed: __init/__exit code has run and been freed, it cannot be live patched; hint: patch the code that runs after boot, or make the change take effect in a post-patch callback"
            ),
            Rule::NoFentry => write!(
                f,
                "{o}: {s} changed but has no __fentry__ call (notrace, or not built with -mfentry), so livepatch cannot redirect it; hint: patch its callers instead"
            ),
            Rule::DataChanged { section } => write!(
                f,
                "{o}: the initial value or size of {s} (in {section}) changed: running code already uses the old data, which a live patch cannot rewrite; hint: keep the data as it is and attach new state with a shadow variable, or convert it in a post-patch callback"
            ),
            Rule::UnpairedLocal => write!(
                f,
                "{o}: cannot pair the numbered local {s} with the original build (graft does not yet correlate renumbered static locals or compiler clones); hint: keep the patch from renumbering static locals (do not add or remove static variables in this file)"
            ),
        }
    }
}

pub fn check(patched: &Object, diff: &ObjectDiff) -> Vec<Refusal> {
    let object = patched
        .path
        .file_name()
        .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
    let mut out = Vec::new();
    let refuse = |symbol: &str, rule: Rule| Refusal {
        object: object.clone(),
        symbol: symbol.to_owned(),
        rule,
    };
    for c in &diff.functions {
        if c.verdict == Verdict::Same {
            continue;
        }
        if is_init_section(&c.section) {
            out.push(refuse(
                &c.name,
                Rule::InitCode {
                    section: c.section.clone(),
                },
            ));
            continue;
        }
        if matches!(c.verdict, Verdict::Changed { .. })
            && !is_part(&c.name)
            && !has_fentry(patched, c)
        {
            out.push(refuse(&c.name, Rule::NoFentry));
        }
        if c.verdict == Verdict::New && has_numbered_suffix(&c.name) && !is_part(&c.name) {
            out.push(refuse(&c.name, Rule::UnpairedLocal));
        }
    }
    for c in &diff.data {
        let sym = patched.symbol(c.symbol);
        match c.verdict {
            Verdict::Changed { .. } if is_init_section(&c.section) => out.push(refuse(
                &c.name,
                Rule::InitCode {
                    section: c.section.clone(),
                },
            )),
            Verdict::Changed { .. } => out.push(refuse(
                &c.name,
                Rule::DataChanged {
                    section: c.section.clone(),
                },
            )),
            Verdict::New if sym.kind == SymKind::Object && has_numbered_suffix(&c.name) => {
                out.push(refuse(&c.name, Rule::UnpairedLocal))
            }
            _ => {}
        }
    }
    out
}

pub fn is_init_section(name: &str) -> bool {
    name.starts_with(".init.") || name.starts_with(".exit.")
}

/// A piece split off a function by the compiler (`foo.cold`): carried along
/// with its parent, never patched on its own.
pub fn is_part(name: &str) -> bool {
    name.contains(".cold")
}

/// `-mfentry` puts `call __fentry__` first (after `endbr64` on IBT kernels).
fn has_fentry(obj: &Object, c: &crate::Change) -> bool {
    let sym = obj.symbol(c.symbol);
    obj.section(c.section_id)
        .relocs_in(sym.value, sym.value + 16)
        .iter()
        .any(|r| obj.symbol(r.symbol).name == "__fentry__")
}
