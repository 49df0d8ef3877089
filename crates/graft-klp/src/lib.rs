//! From a diff to a livepatch module's parts.
//!
//! Passes: [`include`] (which sections of the patched object the module
//! carries, and how each reference is resolved) → [`special`] (the special
//! sections, cut down to the entries of included code) → [`emit`] (the patch
//! object) → [`stub`] (the C registration stub) → after kbuild links the
//! module, [`postlink`] turns the references to `.klp.sym.*` symbols into klp
//! relocation sections. [`reload`] decides who clears the patch's
//! relocations to a module when that module goes away (the kernel, the stub,
//! or nobody), so that a patched module can be reloaded.

pub mod emit;
pub mod include;
pub mod jumps;
pub mod postlink;
pub mod reload;
pub mod special;
pub mod stub;

use serde::Serialize;

/// One function the patch replaces, for the `klp_func` table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KlpFunc {
    /// The klp object the function lives in: `None` for vmlinux, else the module.
    pub object: Option<String>,
    /// The function's name in the running kernel.
    pub old_name: String,
    pub old_sympos: u32,
    /// The global alias of the new function in the patch object.
    #[serde(skip)]
    pub new_symbol: String,
}

/// Jump-label entries of carried code of a module whose keys live in that
/// module: written as their own table (`symbol`, `count` entries) that the
/// stub registers with the kernel once the module's klp relocations are
/// applied (see [`jumps`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeferredJumps {
    /// The klp object (module) whose keys they are.
    pub object: String,
    /// The global symbol at the start of the table.
    pub symbol: String,
    pub count: usize,
}

/// A callback the patch declares (`GRAFT_*_CALLBACK`), for the `klp_object`
/// of the file that declares it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KlpCallback {
    /// `None` for vmlinux, else the module.
    pub object: Option<String>,
    pub kind: graft_diff::markers::CallbackKind,
    /// The callback's name in the patched source.
    pub function: String,
    /// The file that declares it, for messages.
    pub file: String,
    /// The global alias the stub names it by.
    #[serde(skip)]
    pub symbol: String,
}

#[derive(Debug, thiserror::Error)]
pub enum KlpError {
    #[error("{object}: {function} references {symbol}, which the target kernel's symbol table does not have; hint: it may be new in another file of the same fix (give that file's change too), or the symbol table is from another kernel, or the symbol was inlined or optimized away there")]
    MissingSymbol {
        object: String,
        function: String,
        symbol: String,
    },
    #[error("{object}: {function} references {symbol}: {source}; hint: graft does not yet tell same-named local symbols apart by their code")]
    AmbiguousSymbol {
        object: String,
        function: String,
        symbol: String,
        source: Box<graft_target::SymposError>,
    },
    #[error("{object}: {what}")]
    Unsupported { object: String, what: String },
    #[error("{what} [rule: marker]; hint: {hint}")]
    Markers { what: String, hint: String },
    #[error("{object}: changed code has entries in {section}, a special section graft does not handle yet; the module would misbehave without them, so it is refused")]
    UnsupportedSpecialSection { object: String, section: String },
    #[error("cannot write the patch object: {0}")]
    Write(String),
    #[error("{path}: cannot convert klp relocations: {what}")]
    PostLink { path: String, what: String },
}
