//! Data layouts: a structure or union whose layout differs between the two
//! builds cannot be patched live, whether the change came from the `.c`
//! file or a header: the running kernel's code and its objects in memory
//! keep the old layout. Compared from DWARF ([`graft_elf::dwarf`]), so a
//! field added to a type that no data of this file instantiates
//! (`task_struct` in `kernel/ptrace.c`) is caught as well as one that does.

use std::collections::BTreeMap;

use graft_elf::dwarf::{type_layouts, Member, TypeLayout};
use graft_elf::Object;

/// `(type, what changed)` for every named aggregate both builds define
/// differently.
pub fn changed_layouts(orig: &Object, patched: &Object) -> Vec<(String, String)> {
    let a = type_layouts(orig);
    let b = type_layouts(patched);
    let mut out = Vec::new();
    for (name, old) in &a {
        let Some(new) = b.get(name) else { continue };
        if let Some(what) = difference(old, new) {
            out.push((name.clone(), what));
        }
    }
    out
}

/// The first difference between two layouts of one type, in words.
fn difference(old: &TypeLayout, new: &TypeLayout) -> Option<String> {
    let by_name = |t: &TypeLayout| -> BTreeMap<String, Member> {
        t.members
            .iter()
            .filter(|m| !m.name.is_empty())
            .map(|m| (m.name.clone(), m.clone()))
            .collect()
    };
    let (o, n) = (by_name(old), by_name(new));
    for m in &new.members {
        if !m.name.is_empty() && !o.contains_key(&m.name) {
            return Some(format!("member {} added at {}", m.name, place(m)));
        }
    }
    for m in &old.members {
        if !m.name.is_empty() && !n.contains_key(&m.name) {
            return Some(format!("member {} removed", m.name));
        }
    }
    for m in &old.members {
        let Some(x) = n.get(&m.name) else { continue };
        if m.ty != x.ty {
            return Some(format!(
                "member {} changed type from {} to {}",
                m.name, m.ty, x.ty
            ));
        }
        if (m.bit_offset, m.bit_size) != (x.bit_offset, x.bit_size) {
            return Some(format!(
                "member {} moved from {} to {}",
                m.name,
                place(m),
                place(x)
            ));
        }
    }
    if old.size != new.size {
        return Some(format!(
            "its size went from {} to {} bytes",
            old.size, new.size
        ));
    }
    (old.members != new.members).then(|| "its anonymous members changed".to_owned())
}

fn place(m: &Member) -> String {
    if m.bit_size != 0 || !m.bit_offset.is_multiple_of(8) {
        format!("bit {} (+{:#x})", m.bit_offset, m.bit_offset / 8)
    } else {
        format!("+{:#x}", m.bit_offset / 8)
    }
}
