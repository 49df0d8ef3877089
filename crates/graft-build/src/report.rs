//! What a build tells its caller: the module written, and for each
//! translation unit what changed, what was verified, and the warnings.

use std::path::PathBuf;

use serde::Serialize;

#[derive(Debug, Clone, Serialize)]
pub struct BuildReport {
    pub module: PathBuf,
    pub name: String,
    pub replace: bool,
    pub files: Vec<FileReport>,
    /// Functions proven to match the target's code (empty with --no-verify).
    pub verified: Vec<graft_verify::Match>,
    /// Callbacks wired into the klp objects, and the klp_states declared.
    pub callbacks: Vec<graft_klp::KlpCallback>,
    pub states: Vec<graft_diff::markers::State>,
    /// Things graft accepted but that do not do what they may seem to.
    pub warnings: Vec<String>,
    pub klp_relocations: usize,
    /// Who linked the module: `graft` (kbuild's commands replayed), or
    /// `kbuild (why graft did not)`.
    pub module_linked_by: String,
    /// Changed headers and the units of the target that include them.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<HeaderReport>,
    /// Seconds spent building the tree's unit index, when this build did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub index_seconds: Option<f64>,
    /// Units whose original object was kept from an earlier build of the
    /// same tree state (only their patched side was compiled).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub kept_originals: Vec<String>,
    pub seconds: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct HeaderReport {
    pub header: String,
    /// Objects of the target's build that include it.
    pub units: Vec<String>,
    /// Of those, the ones whose preprocessed code reaches a changed item
    /// (compiled twice and diffed); the others compile as before. `None`
    /// when graft did not read them (then all were compiled).
    pub compiled: Option<Vec<String>>,
}

#[derive(Debug, Clone, Serialize)]
pub struct FileReport {
    pub file: String,
    pub changed: Vec<String>,
    pub new: Vec<String>,
    /// Changed, but left out by the author's ignore markers.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ignored: Vec<String>,
}

/// Progress of a build, for the caller to show (libraries never print).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A pipeline step begins.
    Step(&'static str),
}
