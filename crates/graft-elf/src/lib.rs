//! The ELF layer of graft: a read-only, owned model of a relocatable x86-64
//! object (the unit the differ compares) and the livepatch constants the
//! kernel defines for patch modules.
//!
//! The model is owned rather than borrowed because every later stage keeps
//! two objects (original and patched) alive side by side and indexes into
//! both; kernel objects are small, so the copy is cheap.

pub mod dwarf;
pub mod exec;
pub mod klp;
mod model;
pub mod write;
pub mod x86;

pub use model::{
    Binding, ElfError, Object, Reloc, RelocTarget, Section, SectionId, SymKind, Symbol, SymbolId,
};
