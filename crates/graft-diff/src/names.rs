//! Names the compiler makes up, and what they tell about a symbol.
//!
//! gcc numbers what it creates: clones get `.isra.N`, `.constprop.N`,
//! `.part.N`, split-off cold parts `.cold`, static locals `name.N`, and the
//! kernel's `__UNIQUE_ID_` macro appends `__COUNTER__`. Those numbers are
//! counters over the whole translation unit, so an edit anywhere in the file
//! can renumber symbols the patch never touched. A name with such a number
//! is therefore not an identity: [`family`] strips the numbers to give the
//! key that pairing strategies compare.

/// Clone and split suffixes gcc (and clang's `.llvm.`) append.
const CLONE_KINDS: &[&str] = &["isra", "constprop", "part", "cold", "llvm", "lto_priv"];

/// A symbol name split into its family key and whether it carries a
/// compiler-made number.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Family {
    /// The name without numbers: `foo.isra.3` → `foo.isra`, `count.1` → `count.#`.
    pub key: String,
    /// The programmer's (or macro's) name: `foo`, `count`, `__UNIQUE_ID_ddebug`.
    pub base: String,
    /// The name holds a number the compiler may reassign between builds.
    pub numbered: bool,
    /// The name has a clone or split suffix (`.cold`, `.isra`…).
    pub clone: bool,
}

pub fn family(name: &str) -> Family {
    let plain = |name: &str| Family {
        key: name.to_owned(),
        base: name.to_owned(),
        numbered: false,
        clone: false,
    };
    if name.is_empty() || name.starts_with('.') {
        return plain(name);
    }
    let mut parts = name.split('.');
    let first = parts.next().unwrap_or_default();
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    let mut f = Family {
        key: String::new(),
        base: first.to_owned(),
        numbered: false,
        clone: false,
    };
    if let Some((base, key)) = pasted(first) {
        f.base = base;
        f.key = key;
        f.numbered = true;
    }
    if f.key.is_empty() {
        f.key = first.to_owned();
    }
    let rest: Vec<&str> = parts.collect();
    let mut i = 0;
    while i < rest.len() {
        let p = rest[i];
        if CLONE_KINDS.contains(&p) {
            f.key.push('.');
            f.key.push_str(p);
            f.clone = true;
            i += 1;
            if i < rest.len() && digits(rest[i]) {
                f.numbered = true;
                i += 1;
            }
        } else if digits(p) {
            f.key.push_str(".#");
            f.numbered = true;
            i += 1;
        } else {
            // Not a shape gcc makes: the name is the programmer's own.
            return plain(name);
        }
    }
    f
}

/// Names kernel macros paste `__COUNTER__` or `__LINE__` into, and where
/// the numbers sit. Both counters move when anything is added above the
/// definition, so these names identify nothing between two builds.
const PASTED: &[(&str, Numbers)] = &[
    // __UNIQUE_ID(prefix): `__UNIQUE_ID_ddebug412`, `__UNIQUE_ID___addressable_foo7`.
    ("__UNIQUE_ID_", Numbers::Trailing),
    // BTF_ID(struct, name): `__BTF_ID__struct__kallsym_iter__487952` (counter then line).
    ("__BTF_ID__", Numbers::Trailing),
    // DECLARE_PCI_FIXUP_SECTION: `__pci_fixup_quirk_foo1234` (line).
    ("__pci_fixup_", Numbers::Trailing),
    // __initcall_id(fn): `__initcall__kmod_kallsyms__353_956_kallsyms_init6`.
    ("__initcall__", Numbers::CounterLine),
];

#[derive(Clone, Copy)]
enum Numbers {
    /// One run of digits ends the name.
    Trailing,
    /// `__<counter>_<line>_` inside the name.
    CounterLine,
}

/// `(base, key)` of a macro-pasted name, `None` for any other name.
fn pasted(name: &str) -> Option<(String, String)> {
    let &(prefix, numbers) = PASTED.iter().find(|(p, _)| name.starts_with(p))?;
    match numbers {
        Numbers::Trailing => {
            let base = name.trim_end_matches(|c: char| c.is_ascii_digit());
            (base.len() != name.len() && base.len() > prefix.len())
                .then(|| (base.to_owned(), format!("{base}#")))
        }
        Numbers::CounterLine => {
            // `…__<counter>_<line>_…`, the first such pair after the prefix.
            let rest = &name[prefix.len()..];
            let digits = |s: &str| s.bytes().take_while(u8::is_ascii_digit).count();
            let mut from = 0;
            while let Some(i) = rest[from..].find("__").map(|i| i + from) {
                let a = i + 2;
                let n1 = digits(&rest[a..]);
                if n1 > 0 && rest[a + n1..].starts_with('_') {
                    let b = a + n1 + 1;
                    let n2 = digits(&rest[b..]);
                    if n2 > 0 && rest[b + n2..].starts_with('_') {
                        let key = format!("{prefix}{}__#_#{}", &rest[..i], &rest[b + n2..]);
                        let base = key.replace("__#_#", "");
                        return Some((base, key));
                    }
                }
                from = i + 1;
            }
            None
        }
    }
}

/// The function a split-off part belongs to: `foo.cold` → `foo`,
/// `foo.part.0.cold` → `foo.part.0`. A cold part jumps back into its parent
/// at fixed offsets, so the two are only ever carried together.
pub fn parent_of_part(name: &str) -> Option<&str> {
    let (parent, last) = name.rsplit_once('.')?;
    if last == "cold" {
        return Some(parent);
    }
    // Older gcc numbered cold parts: `foo.cold.12`.
    let (parent2, kind) = parent.rsplit_once('.')?;
    (kind == "cold" && last.bytes().all(|b| b.is_ascii_digit()) && !last.is_empty())
        .then_some(parent2)
}

/// Static locals that kernel macros create behind the programmer's back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hidden {
    /// Read-only and compared by value (`__func__`, `__msg`, `CSWTCH`…): its
    /// address means nothing, so new code may use a copy of its own.
    Const,
    /// State the running kernel keeps (once flags of `pr_*_once`/`WARN_ONCE`,
    /// ratelimit state, lockdep keys): new code must share the kernel's
    /// copy, and those names repeat all over the kernel.
    State,
    /// A dynamic debug descriptor (`__dyndbg`): the module loader registers
    /// the module's own descriptors, so new code carries its own.
    Registry,
}

const HIDDEN_CONST: &[&str] = &[
    "__func__",
    "__FUNCTION__",
    "__PRETTY_FUNCTION__",
    "__msg",
    "CSWTCH",
    "___tp_str",
    "__flags",
    "_entry",
    "__compound_literal",
];

const HIDDEN_STATE: &[&str] = &[
    "__already_done",
    "__print_once",
    "___done",
    "__warned",
    "_rs",
    "__key",
    "___once_key",
];

/// Classifies a data symbol by its family and its section's name and flags.
pub fn hidden(name: &str, section: &str, writable: bool) -> Option<Hidden> {
    let f = family(name);
    if section == "__dyndbg" || f.base == "__UNIQUE_ID_ddebug" {
        return Some(Hidden::Registry);
    }
    if section == ".data.once" {
        return Some(Hidden::State);
    }
    if !f.numbered {
        return None;
    }
    if HIDDEN_STATE.contains(&f.base.as_str()) {
        Some(Hidden::State)
    } else if f.base == "___tp_str" {
        // tracepoint_string()'s pointer sits in a writable section, but
        // only the build writes it: it holds a string's address, no state.
        Some(Hidden::Const)
    } else if HIDDEN_CONST.contains(&f.base.as_str()) {
        Some(if writable {
            Hidden::State
        } else {
            Hidden::Const
        })
    } else {
        None
    }
}

/// [`hidden`] for a symbol of `obj`. An empty object holds no state: only
/// its address is passed around, and no two addresses of it can be told
/// apart by what they hold. A lockdep `__key` is such an object without
/// CONFIG_LOCKDEP (`init_completion` in kernel_clone), so a fresh copy is as
/// good as the kernel's.
pub fn hidden_of(obj: &graft_elf::Object, id: graft_elf::SymbolId) -> Option<Hidden> {
    let sym = obj.symbol(id);
    if sym.kind != graft_elf::SymKind::Object {
        return None;
    }
    let section = obj.section(sym.section?);
    match hidden(&sym.name, &section.name, section.flags & 1 != 0) {
        Some(Hidden::State) if sym.size == 0 => Some(Hidden::Const),
        h => h,
    }
}

/// Identity-free hidden data: what it holds is all there is to it, so it is
/// compared by content and carried as a copy.
pub fn identity_free(h: Option<Hidden>) -> bool {
    matches!(h, Some(Hidden::Const | Hidden::Registry))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families() {
        let k = |n: &str| family(n).key;
        assert_eq!(k("foo.isra.3"), "foo.isra");
        assert_eq!(k("foo.constprop.0.isra.0"), "foo.constprop.isra");
        assert_eq!(k("foo.part.0.cold"), "foo.part.cold");
        assert_eq!(k("count.12"), "count.#");
        assert_eq!(k("__UNIQUE_ID_ddebug412"), "__UNIQUE_ID_ddebug#");
        assert_eq!(k("meminfo_proc_show"), "meminfo_proc_show");
        assert_eq!(k("weird.name"), "weird.name");
        assert!(family("foo.cold").clone && !family("foo.cold").numbered);
        assert!(family("count.1").numbered);
        assert!(!family("plain").numbered);
        assert_eq!(k(""), "");
        assert_eq!(k(".LC0"), ".LC0");
        // Macro-pasted counters and lines.
        assert_eq!(
            k("__BTF_ID__struct__kallsym_iter__487952"),
            "__BTF_ID__struct__kallsym_iter__#"
        );
        assert!(family("__BTF_ID__struct__kallsym_iter__487952").numbered);
        assert_eq!(
            k("__initcall__kmod_kallsyms__353_956_kallsyms_init6"),
            "__initcall__kmod_kallsyms__#_#_kallsyms_init6"
        );
        assert_eq!(k("__pci_fixup_quirk_foo1234"), "__pci_fixup_quirk_foo#");
        assert_eq!(
            k("__UNIQUE_ID___addressable_foo7"),
            "__UNIQUE_ID___addressable_foo#"
        );
        // A prefix alone, or no number, is a plain name.
        assert!(!family("__BTF_ID__").numbered);
        assert!(!family("__initcall__kmod_x__y_init6").numbered);
    }

    #[test]
    fn parts_and_hidden() {
        assert_eq!(parent_of_part("foo.cold"), Some("foo"));
        assert_eq!(parent_of_part("foo.part.0.cold"), Some("foo.part.0"));
        assert_eq!(parent_of_part("foo.cold.7"), Some("foo"));
        assert_eq!(parent_of_part("foo.isra.0"), None);
        assert_eq!(
            hidden("__already_done.3", ".data.once", true),
            Some(Hidden::State)
        );
        assert_eq!(
            hidden("__func__.2", ".rodata.__func__.2", false),
            Some(Hidden::Const)
        );
        assert_eq!(hidden("count.1", ".bss.count.1", true), None);
        // tracepoint_string()'s pointer: a writable section, no state.
        assert_eq!(
            hidden("___tp_str.147", "__tracepoint_str", true),
            Some(Hidden::Const)
        );
        assert_eq!(
            hidden("__msg.3", ".data.__msg.3", true),
            Some(Hidden::State)
        );
        assert_eq!(
            hidden("__UNIQUE_ID_ddebug7", "__dyndbg", true),
            Some(Hidden::Registry)
        );
    }
}
