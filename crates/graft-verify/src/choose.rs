//! Which of several matching copies is the patched file's.
//!
//! gcc emits byte-identical local helpers (`cpumask_weight.constprop.0`) in
//! many files; code alone cannot tell them apart. The symbol table can: it
//! lists symbols by address, the linker keeps each object's code together,
//! and gcc emits a file's functions in the same order with or without
//! `-ffunction-sections` (graft's object lists its sections in that order).
//! So the file's copy is the candidate whose neighbours in the symbol table
//! are the file's functions in the file's order; a candidate scores the
//! number of neighbours, on either side, that agree, provided one of them is
//! certain to be the file's.

use graft_elf::{Object, SymbolId};

/// One symbol of the target, in table (address) order.
pub(crate) struct Entry<'a> {
    pub name: &'a str,
    /// Whether the symbol can be code of the patched file at all (text of
    /// the right object): other symbols are skipped.
    pub code: bool,
    /// Symbols of different groups (sections of a module) are never
    /// neighbours.
    pub group: usize,
}

/// Where a candidate sits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Placement<'a> {
    /// Neighbours that agree with the file's order.
    pub score: usize,
    /// The nearest agreeing neighbours.
    pub before: Option<&'a str>,
    pub after: Option<&'a str>,
}

/// The functions of `obj` laid out as the target's linker places them
/// next to `f`: those of the same kind of section (plain `.text.*`,
/// `.text.unlikely.*`, or one shared section such as `.noinstr.text`), in
/// section order, and `f`'s position among them.
pub(crate) fn layout(obj: &Object, f: SymbolId) -> (Vec<&str>, usize) {
    let family = |name: &str| -> String {
        for p in [".text.unlikely.", ".text.hot.", ".text.startup.", ".text."] {
            if name.starts_with(p) {
                return p.trim_end_matches('.').to_owned();
            }
        }
        name.to_owned()
    };
    let section_of = |s: &graft_elf::Symbol| s.section.map(|id| obj.section(id));
    let Some(mine) = section_of(obj.symbol(f)).map(|s| family(&s.name)) else {
        return (Vec::new(), 0);
    };
    let mut funcs: Vec<&graft_elf::Symbol> = obj
        .functions()
        .filter(|s| section_of(s).is_some_and(|sec| family(&sec.name) == mine))
        .collect();
    funcs.sort_by_key(|s| (s.section.map(|id| id.0), s.value));
    let at = funcs.iter().position(|s| s.id == f).unwrap_or(0);
    (funcs.iter().map(|s| s.name.as_str()).collect(), at)
}

/// Walks the target's symbols from `at` (by `step`, -1 or +1) and the
/// file's order from `me` in step, while they agree: how many agree, the
/// nearest that agrees, and whether any of them is certain.
fn agree<'a>(
    entries: &[Entry<'a>],
    at: usize,
    step: isize,
    order: &[&str],
    me: usize,
    certain: &dyn Fn(usize) -> bool,
) -> (usize, Option<&'a str>, bool) {
    let group = entries[at].group;
    let (mut i, mut k) = (at, me);
    let (mut n, mut first, mut anchored) = (0, None, false);
    loop {
        // The next usable symbol of theirs, and the next function of ours.
        let next = loop {
            let Some(j) = i.checked_add_signed(step).filter(|&j| j < entries.len()) else {
                break None;
            };
            i = j;
            if entries[j].code && entries[j].group == group {
                break Some(j);
            }
        };
        let (Some(j), Some(o)) = (next, k.checked_add_signed(step).and_then(|x| order.get(x)))
        else {
            break;
        };
        k = k.wrapping_add_signed(step);
        if entries[j].name != *o {
            break;
        }
        first.get_or_insert(entries[j].name);
        anchored |= certain(j);
        n += 1;
    }
    (n, first, anchored)
}

fn placement<'a>(
    entries: &[Entry<'a>],
    at: usize,
    order: &[&str],
    me: usize,
    certain: &dyn Fn(usize) -> bool,
) -> Option<Placement<'a>> {
    let (back, before, a) = agree(entries, at, -1, order, me, certain);
    let (fwd, after, b) = agree(entries, at, 1, order, me, certain);
    (a || b).then_some(Placement {
        score: back + fwd,
        before,
        after,
    })
}

/// The candidate (an index into `candidates`, which index `entries`) whose
/// neighbours follow the file's order (`order`, where our function is at
/// `me`) best, if exactly one does best. Agreement counts only when it
/// reaches a `certain` symbol (one whose name occurs once in the target, or
/// whose copy verification proved): static inline helpers of one header
/// come out in the same order in every file that uses them.
pub(crate) fn pick<'a>(
    entries: &[Entry<'a>],
    candidates: &[usize],
    order: &[&str],
    me: usize,
    certain: &dyn Fn(usize) -> bool,
) -> Option<(usize, Placement<'a>)> {
    let placed: Vec<(usize, Placement<'a>)> = candidates
        .iter()
        .enumerate()
        .filter_map(|(i, &at)| Some((i, placement(entries, at, order, me, certain)?)))
        .collect();
    let best = placed.iter().map(|p| p.1.score).max()?;
    let mut top = placed.iter().filter(|p| p.1.score == best);
    let first = top.next()?;
    if top.next().is_some() {
        return None;
    }
    Some(first.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table<'a>(names: &[&'a str]) -> Vec<Entry<'a>> {
        names
            .iter()
            .map(|&name| Entry {
                name,
                code: true,
                group: 0,
            })
            .collect()
    }

    #[test]
    fn the_copy_among_the_files_functions_wins() {
        let entries = table(&[
            "other_a",
            "helper.constprop.0",
            "other_b",
            "aio_prep_rw",
            "helper.constprop.0",
            "aio_write",
            "aio_read",
            "unrelated",
        ]);
        let order = ["aio_prep_rw", "helper.constprop.0", "aio_write", "aio_read"];
        let unique = |i: usize| entries[i].name != "helper.constprop.0";
        let (i, p) = pick(&entries, &[1, 4], &order, 1, &unique).unwrap();
        assert_eq!(i, 1);
        assert_eq!(p.score, 3);
        assert_eq!(p.before, Some("aio_prep_rw"));
        assert_eq!(p.after, Some("aio_write"));
    }

    /// binfmt_elf.c is compiled twice (compat_binfmt_elf.c includes it):
    /// both runs hold the same names, but only one in the file's order.
    #[test]
    fn the_files_order_decides_between_two_copies_of_a_file() {
        let entries = table(&[
            "load_script",
            "padzero",
            "notesize",
            "writenote",
            "elf_core_dump",
            "elf_map",
            "load_elf_binary",
            "padzero",
            "notesize",
            "writenote",
            "test_ti_thread_flag.constprop.0",
            "elf_core_dump",
            "elf_map.isra.0",
        ]);
        let order = [
            "padzero",
            "notesize",
            "writenote",
            "elf_core_dump",
            "elf_map",
            "load_elf_binary",
        ];
        let unique = |i: usize| entries[i].name == "elf_map";
        let (i, p) = pick(&entries, &[1, 7], &order, 0, &unique).unwrap();
        assert_eq!((i, p.score), (0, 5));
        assert_eq!((p.before, p.after), (None, Some("notesize")));
        // Without a certain symbol among them, agreeing names prove nothing:
        // header helpers come out in the same order in many files.
        assert_eq!(pick(&entries, &[1, 7], &order, 0, &|_| false), None);
    }

    #[test]
    fn no_evidence_or_a_tie_decides_nothing() {
        let all = |_: usize| true;
        let entries = table(&["a", "helper", "b", "helper", "c"]);
        assert_eq!(pick(&entries, &[1, 3], &["helper"], 0, &all), None);
        assert_eq!(
            pick(&entries, &[1, 3], &["x", "helper", "y"], 1, &all),
            None
        );
        // Symbols that cannot be the file's code are skipped, and groups
        // (a module's sections) do not run into each other.
        let mut entries = table(&["a", "data", "helper", "b", "helper", "c"]);
        entries[1].code = false;
        let (i, _) = pick(&entries, &[2, 4], &["a", "helper"], 1, &all).unwrap();
        assert_eq!(i, 0);
        entries[0].group = 1;
        assert_eq!(pick(&entries, &[2, 4], &["a", "helper"], 1, &all), None);
    }
}
