//! Function padding symbols. Kernels with `CALL_PADDING` (Debian's 6.12)
//! compile every function with 16 bytes of NOPs before it, in its own
//! section (`-fpatchable-function-entry=16,16`), where call thunks may be
//! written at boot; objtool's `--prefix` names that padding `__pfx_<name>`
//! (`__cfi_<name>` with CFI), a function symbol of its own. It is part of
//! the function that follows, never a function: the differ would pair,
//! compare and carry it as one, and the module link's objtool names the
//! padding again. [`demote`] makes these symbols untyped in an object
//! before any pass sees it; a kernel without padding has none.

use graft_elf::{Object, SymKind};

/// Name prefixes objtool gives a function's padding.
pub const PREFIXES: &[&str] = &["__pfx_", "__cfi_"];

/// Whether `name` names the padding of the function `name` ends with.
pub fn is_padding_symbol(name: &str) -> bool {
    PREFIXES
        .iter()
        .any(|p| name.strip_prefix(p).is_some_and(|f| !f.is_empty()))
}

/// Makes every padding function symbol of `obj` untyped; returns how many.
pub fn demote(obj: &mut Object) -> usize {
    let mut n = 0;
    for s in obj.symbols.iter_mut() {
        if s.kind == SymKind::Func && is_padding_symbol(&s.name) {
            s.kind = SymKind::NoType;
            n += 1;
        }
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn padding_names() {
        assert!(is_padding_symbol("__pfx_cmdline_proc_show"));
        assert!(is_padding_symbol("__cfi_foo"));
        assert!(!is_padding_symbol("__pfx_"));
        assert!(!is_padding_symbol("pfx_foo"));
        assert!(!is_padding_symbol("cmdline_proc_show"));
    }
}
