//! The data layouts an object was compiled with, from its DWARF: every
//! named structure and union, its size and its members' places and types.
//! Two builds of one file that disagree on a layout cannot share data: code
//! of the running kernel uses the old layout on the same objects.

use std::collections::BTreeMap;

use gimli::{AttributeValue, EndianSlice, LittleEndian, UnitOffset};
use serde::Serialize;

use crate::model::{Object, RelocTarget};

/// One member of a structure or union.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Member {
    /// Empty for an anonymous member (a nested anonymous struct or union).
    pub name: String,
    /// Offset in bits from the start of the aggregate.
    pub bit_offset: u64,
    /// Width in bits of a bitfield; 0 for an ordinary member.
    pub bit_size: u64,
    /// The member's type, spelled out (`struct mm_struct *`, `u32[4]`).
    pub ty: String,
}

/// A named structure or union as one build sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TypeLayout {
    /// `struct task_struct`, `union bpf_attr`.
    pub name: String,
    pub size: u64,
    pub members: Vec<Member>,
}

/// Named aggregates of `obj` by name. A name with two different
/// definitions in one object (local types of two functions) identifies
/// nothing and is left out; so is an object without DWARF (empty map).
pub fn type_layouts(obj: &Object) -> BTreeMap<String, TypeLayout> {
    let mut out: BTreeMap<String, TypeLayout> = BTreeMap::new();
    let mut conflicting: Vec<String> = Vec::new();
    let Some(dwarf) = load(obj) else {
        return out;
    };
    let dwarf = dwarf.borrow(|s| EndianSlice::new(s, LittleEndian));
    let mut units = dwarf.units();
    while let Ok(Some(header)) = units.next() {
        let Ok(unit) = dwarf.unit(header) else {
            continue;
        };
        let mut entries = unit.entries();
        while let Ok(Some((_, e))) = entries.next_dfs() {
            let kind = match e.tag() {
                gimli::DW_TAG_structure_type => "struct",
                gimli::DW_TAG_union_type => "union",
                _ => continue,
            };
            if e.attr_value(gimli::DW_AT_declaration)
                .ok()
                .flatten()
                .is_some()
            {
                continue;
            }
            let Some(name) = name_of(
                &dwarf,
                &unit,
                e.attr_value(gimli::DW_AT_name).ok().flatten(),
            ) else {
                continue;
            };
            let Some(layout) = aggregate(&dwarf, &unit, e.offset(), kind, &name) else {
                continue;
            };
            match out.get(&layout.name) {
                Some(old) if *old != layout => conflicting.push(layout.name.clone()),
                Some(_) => {}
                None => {
                    out.insert(layout.name.clone(), layout);
                }
            }
        }
    }
    for c in conflicting {
        out.remove(&c);
    }
    out
}

type Slice<'a> = EndianSlice<'a, LittleEndian>;

fn aggregate(
    dwarf: &gimli::Dwarf<Slice<'_>>,
    unit: &gimli::Unit<Slice<'_>>,
    at: UnitOffset,
    kind: &str,
    name: &str,
) -> Option<TypeLayout> {
    let mut tree = unit.entries_tree(Some(at)).ok()?;
    let root = tree.root().ok()?;
    let size = match root.entry().attr_value(gimli::DW_AT_byte_size).ok()? {
        Some(v) => v.udata_value()?,
        None => return None,
    };
    let mut members = Vec::new();
    let mut children = root.children();
    while let Ok(Some(child)) = children.next() {
        let e = child.entry();
        if e.tag() != gimli::DW_TAG_member {
            continue;
        }
        let name = name_of(dwarf, unit, e.attr_value(gimli::DW_AT_name).ok().flatten())
            .unwrap_or_default();
        let bytes = match e
            .attr_value(gimli::DW_AT_data_member_location)
            .ok()
            .flatten()
        {
            Some(v) => v.udata_value().unwrap_or(0),
            None => 0,
        };
        let bit_offset = match e.attr_value(gimli::DW_AT_data_bit_offset).ok().flatten() {
            Some(v) => v.udata_value().unwrap_or(0),
            None => bytes * 8,
        };
        let bit_size = e
            .attr_value(gimli::DW_AT_bit_size)
            .ok()
            .flatten()
            .and_then(|v| v.udata_value())
            .unwrap_or(0);
        let ty = match e.attr_value(gimli::DW_AT_type).ok().flatten() {
            Some(AttributeValue::UnitRef(r)) => spell(dwarf, unit, r, 0),
            _ => "?".into(),
        };
        members.push(Member {
            name,
            bit_offset,
            bit_size,
            ty,
        });
    }
    Some(TypeLayout {
        name: format!("{kind} {name}"),
        size,
        members,
    })
}

/// A type as C would spell it, deep enough to tell two apart: aggregates by
/// name (their own layouts are compared on their own), the rest spelled out.
fn spell(
    dwarf: &gimli::Dwarf<Slice<'_>>,
    unit: &gimli::Unit<Slice<'_>>,
    at: UnitOffset,
    depth: u8,
) -> String {
    if depth > 8 {
        return "…".into();
    }
    let Ok(e) = unit.entry(at) else {
        return "?".into();
    };
    let name = name_of(dwarf, unit, e.attr_value(gimli::DW_AT_name).ok().flatten());
    let inner = |depth: u8| match e.attr_value(gimli::DW_AT_type).ok().flatten() {
        Some(AttributeValue::UnitRef(r)) => spell(dwarf, unit, r, depth + 1),
        _ => "void".into(),
    };
    match e.tag() {
        gimli::DW_TAG_base_type | gimli::DW_TAG_typedef => name.unwrap_or_else(|| "?".into()),
        gimli::DW_TAG_structure_type => format!("struct {}", name.unwrap_or_default()),
        gimli::DW_TAG_union_type => format!("union {}", name.unwrap_or_default()),
        gimli::DW_TAG_enumeration_type => format!("enum {}", name.unwrap_or_default()),
        gimli::DW_TAG_pointer_type => format!("{} *", inner(depth)),
        gimli::DW_TAG_const_type => format!("const {}", inner(depth)),
        gimli::DW_TAG_volatile_type => format!("volatile {}", inner(depth)),
        gimli::DW_TAG_subroutine_type => "fn".into(),
        gimli::DW_TAG_array_type => {
            let mut dims = String::new();
            if let Ok(mut tree) = unit.entries_tree(Some(at)) {
                if let Ok(root) = tree.root() {
                    let mut ch = root.children();
                    while let Ok(Some(c)) = ch.next() {
                        let ce = c.entry();
                        let n = ce
                            .attr_value(gimli::DW_AT_count)
                            .ok()
                            .flatten()
                            .and_then(|v| v.udata_value())
                            .or_else(|| {
                                ce.attr_value(gimli::DW_AT_upper_bound)
                                    .ok()
                                    .flatten()
                                    .and_then(|v| v.udata_value())
                                    .map(|u| u + 1)
                            });
                        dims.push_str(&match n {
                            Some(n) => format!("[{n}]"),
                            None => "[]".into(),
                        });
                    }
                }
            }
            format!("{}{dims}", inner(depth))
        }
        _ => name.unwrap_or_else(|| "?".into()),
    }
}

fn name_of(
    dwarf: &gimli::Dwarf<Slice<'_>>,
    unit: &gimli::Unit<Slice<'_>>,
    v: Option<AttributeValue<Slice<'_>>>,
) -> Option<String> {
    let v = v?;
    let s = dwarf.attr_string(unit, v).ok()?;
    Some(s.to_string_lossy().into_owned())
}

/// The DWARF sections of `obj`, with their relocations applied: in a
/// relocatable object the references between debug sections (string
/// offsets, abbreviations, line tables) are relocations against the section
/// symbols.
fn load(obj: &Object) -> Option<gimli::DwarfSections<Vec<u8>>> {
    obj.section_by_name(".debug_info")?;
    let section = |id: gimli::SectionId| -> Result<Vec<u8>, ()> {
        Ok(obj
            .section_by_name(id.name())
            .map(|s| relocated(obj, s))
            .unwrap_or_default())
    };
    gimli::DwarfSections::load(section).ok()
}

fn relocated(obj: &Object, s: &crate::model::Section) -> Vec<u8> {
    let mut data = s.data.clone();
    for r in &s.relocs {
        let value = match obj.reloc_target(r) {
            RelocTarget::SectionOffset(_, off) => off,
            RelocTarget::Symbol(id) => (obj.symbol(id).value as i64).wrapping_add(r.addend),
        } as u64;
        let at = r.offset as usize;
        // R_X86_64_64, R_X86_64_32 (and 32S): absolute fields.
        let width = match r.r_type {
            1 => 8,
            10 | 11 => 4,
            _ => continue,
        };
        if let Some(field) = data.get_mut(at..at + width) {
            field.copy_from_slice(&value.to_le_bytes()[..width]);
        }
    }
    data
}
