//! Cutting an update into corpus items: one per changed kernel `.c` file,
//! one per changed header, each placed in the target's build by the tree's
//! unit index (graft-kbuild's, the one `graft build` uses).

use std::collections::BTreeSet;

use graft_kbuild::index::Index;
use serde::{Deserialize, Serialize};

use super::changes::{in_type_definition, inline_code_only, relatedness, Change, ChangedFile};

/// Where a changed file is in the target's build.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "in", rename_all = "snake_case")]
pub enum Place {
    /// A `.c` file compiled as its own unit, into vmlinux or a module.
    Unit { object: String, module: bool },
    /// A `.c` file the build compiles only as part of other units, which
    /// `#include` it (`kernel/sched/rt.c` in `build_policy.c`).
    IncludedBy { units: Vec<String> },
    /// A header, and how many units of the build include it.
    Header { units: usize },
    /// The target's build does not compile it (its option is off, it is
    /// for another machine, or the update adds it).
    NotBuilt,
}

impl Place {
    pub fn in_build(&self) -> bool {
        !matches!(self, Place::NotBuilt)
    }

    /// One phrase for the report.
    pub fn describe(&self) -> String {
        match self {
            Place::Unit { module: false, .. } => "vmlinux".into(),
            Place::Unit { module: true, .. } => "module".into(),
            Place::IncludedBy { units } => {
                format!("in {}", units.first().map_or("", |u| u.as_str()))
            }
            Place::Header { units } => format!("{units} units"),
            Place::NotBuilt => "not built".into(),
        }
    }
}

/// A changed header a `.c` item's unit includes, and how related the two
/// changes look (names the `.c` change adds that the header change touches).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Related {
    pub header: String,
    pub score: usize,
    /// Units of the build including the header.
    pub units: usize,
}

/// One changed file of the update, as a corpus candidate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Item {
    /// Short and stable for a pair: `c017` (the 17th changed `.c` file in
    /// path order), `h004`; also the live patch's name.
    pub id: String,
    pub file: String,
    pub change: Change,
    pub lines: usize,
    pub place: Place,
    /// For `.c` items: the changed headers its unit includes, most related
    /// first.
    pub related: Vec<Related>,
}

impl Item {
    pub fn is_header(&self) -> bool {
        self.file.ends_with(".h")
    }

    /// The units of the build the item's `.c` file is compiled in.
    pub fn units(&self) -> Vec<String> {
        match &self.place {
            Place::Unit { object, .. } => vec![object.clone()],
            Place::IncludedBy { units } => units.clone(),
            _ => Vec::new(),
        }
    }
}

/// Every changed `.c` and `.h` file of `changes` as an item, placed with
/// `index`. Items are numbered per kind in path order.
pub fn split(changes: &[ChangedFile], index: &Index) -> Vec<Item> {
    let headers: Vec<&ChangedFile> = changes.iter().filter(|f| f.is_header()).collect();
    let header_units: Vec<BTreeSet<String>> = headers
        .iter()
        .map(|h| {
            index
                .includers(&h.path)
                .into_iter()
                .map(|u| u.object.clone())
                .collect()
        })
        .collect();
    let mut out = Vec::new();
    let (mut nc, mut nh) = (0, 0);
    for f in changes {
        if f.is_header() {
            nh += 1;
            let i = headers
                .iter()
                .position(|h| h.path == f.path)
                .expect("listed");
            let units = header_units[i].len();
            out.push(Item {
                id: format!("h{nh:03}"),
                file: f.path.clone(),
                change: f.change,
                lines: f.lines,
                place: if units == 0 {
                    Place::NotBuilt
                } else {
                    Place::Header { units }
                },
                related: Vec::new(),
            });
            continue;
        }
        nc += 1;
        let object = format!("{}.o", f.path.trim_end_matches(".c"));
        let place = if f.change == Change::Added {
            Place::NotBuilt
        } else if let Some(u) = index.unit(&object) {
            Place::Unit {
                object: u.object.clone(),
                module: u.module,
            }
        } else {
            let units: Vec<String> = index
                .includers(&f.path)
                .into_iter()
                .map(|u| u.object.clone())
                .collect();
            if units.is_empty() {
                Place::NotBuilt
            } else {
                Place::IncludedBy { units }
            }
        };
        let units = match &place {
            Place::Unit { object, .. } => vec![object.clone()],
            Place::IncludedBy { units } => units.clone(),
            _ => Vec::new(),
        };
        let mut related: Vec<Related> = headers
            .iter()
            .zip(&header_units)
            .filter(|(_, users)| units.iter().any(|u| users.contains(u)))
            .map(|(h, users)| Related {
                header: h.path.clone(),
                score: relatedness(&f.diff, &h.diff),
                units: users.len(),
            })
            .collect();
        related.sort_by(|a, b| b.score.cmp(&a.score).then(a.units.cmp(&b.units)));
        out.push(Item {
            id: format!("c{nc:03}"),
            file: f.path.clone(),
            change: f.change,
            lines: f.lines,
            place,
            related,
        });
    }
    out
}

/// The groups of headers to retry a `.c` item with when it does not
/// compile alone, in order: the most related header, every related one,
/// then every changed header its unit includes (when that is a handful).
pub fn header_groups(item: &Item) -> Vec<Vec<String>> {
    const MAX_ALL: usize = 6;
    let related: Vec<String> = item
        .related
        .iter()
        .filter(|r| r.score > 0)
        .map(|r| r.header.clone())
        .collect();
    let all: Vec<String> = item.related.iter().map(|r| r.header.clone()).collect();
    let mut groups: Vec<Vec<String>> = Vec::new();
    let mut push = |mut g: Vec<String>| {
        g.sort();
        if !g.is_empty() && !groups.contains(&g) {
            groups.push(g);
        }
    };
    if let Some(first) = related.first() {
        push(vec![first.clone()]);
    }
    push(related);
    if all.len() <= MAX_ALL {
        push(all);
    }
    groups
}

/// The CI subset, chosen by a fixed rule from whatever update the archive
/// gives: among the items in the target's build of at most `max_lines`
/// changed lines, in path order, [`SUBSET_EACH`] of each kind —
/// - `.c` changes no changed header relates to: the first ones;
/// - `.c` changes that relate to changed headers (and may need them):
///   first those whose related headers change no structure definition,
///   then the others;
/// - header changes: first those that only change `static inline` code,
///   then the others.
///
/// A header counts only when at most [`SUBSET_MAX_UNITS`] units include
/// it, so the subset stays quick. (Relates: the `.c` change's new code
/// uses a name the header change adds, removes or re-declares.)
pub fn subset<'a>(items: &'a [Item], changes: &[ChangedFile], max_lines: usize) -> Vec<&'a Item> {
    let diff = |path: &str| {
        changes
            .iter()
            .find(|c| c.path == path)
            .map_or("", |c| c.diff.as_str())
    };
    let cheap = |units: usize| (1..=SUBSET_MAX_UNITS).contains(&units);
    let small: Vec<&Item> = items
        .iter()
        .filter(|i| i.place.in_build() && i.lines <= max_lines)
        .collect();
    // The items that pass `first`, then the ones that pass only `then`.
    let pick = |first: &dyn Fn(&Item) -> bool, then: &dyn Fn(&Item) -> bool| -> Vec<&'a Item> {
        let a = small.iter().copied().filter(|i| first(i));
        let b = small.iter().copied().filter(|i| !first(i) && then(i));
        a.chain(b).take(SUBSET_EACH).collect()
    };
    fn related(i: &Item) -> Vec<&Related> {
        i.related.iter().filter(|r| r.score > 0).collect()
    }
    let c_only = pick(&|i| !i.is_header() && related(i).is_empty(), &|_| false);
    let c_and_h_any = |i: &Item| {
        let r = related(i);
        !i.is_header() && !r.is_empty() && r.iter().all(|r| cheap(r.units))
    };
    let c_and_h = pick(
        &|i| {
            c_and_h_any(i)
                && related(i)
                    .iter()
                    .all(|r| !in_type_definition(diff(&r.header)))
        },
        &c_and_h_any,
    );
    let header =
        |i: &Item| i.is_header() && matches!(i.place, Place::Header { units } if cheap(units));
    let h = pick(&|i| header(i) && inline_code_only(diff(&i.file)), &header);
    let mut v: Vec<&Item> = c_only.into_iter().chain(c_and_h).chain(h).collect();
    v.sort_by(|a, b| a.id.cmp(&b.id));
    v
}

/// Items of each kind in the CI subset.
pub const SUBSET_EACH: usize = 3;
/// The most units a header of the CI subset may reach.
pub const SUBSET_MAX_UNITS: usize = 20;

#[cfg(test)]
mod tests {
    use super::*;

    fn item(id: &str, file: &str, place: Place, related: Vec<(&str, usize, usize)>) -> Item {
        Item {
            id: id.into(),
            file: file.into(),
            change: Change::Modified,
            lines: 4,
            place,
            related: related
                .into_iter()
                .map(|(h, score, units)| Related {
                    header: h.into(),
                    score,
                    units,
                })
                .collect(),
        }
    }

    fn unit(o: &str) -> Place {
        Place::Unit {
            object: o.into(),
            module: false,
        }
    }

    #[test]
    fn header_groups_go_from_most_related_to_all() {
        let i = item(
            "c001",
            "a/b.c",
            unit("a/b.o"),
            vec![("x.h", 3, 2), ("y.h", 1, 9), ("z.h", 0, 1)],
        );
        assert_eq!(
            header_groups(&i),
            vec![
                vec!["x.h".to_string()],
                vec!["x.h".into(), "y.h".into()],
                vec!["x.h".into(), "y.h".into(), "z.h".into()],
            ]
        );
        let none = item("c002", "a/c.c", unit("a/c.o"), vec![]);
        assert!(header_groups(&none).is_empty());
    }

    #[test]
    fn subset_takes_each_kind_in_path_order() {
        let mut items = Vec::new();
        for n in 1..=5 {
            items.push(item(
                &format!("c{n:03}"),
                &format!("k/{n}.c"),
                unit("k.o"),
                vec![],
            ));
        }
        items.push(item("c006", "k/6.c", Place::NotBuilt, vec![]));
        items.push(item("c007", "k/7.c", unit("k7.o"), vec![("k/a.h", 2, 3)]));
        items.push(item(
            "c008",
            "k/8.c",
            unit("k8.o"),
            vec![("k/big.h", 2, 900)],
        ));
        items.push(item(
            "c009",
            "k/9.c",
            unit("k9.o"),
            vec![("k/a.h", 1, 3), ("k/big.h", 0, 900)],
        ));
        items.push(item("c010", "k/10.c", unit("k10.o"), vec![("k/s.h", 1, 3)]));
        items.push(item("h001", "k/a.h", Place::Header { units: 3 }, vec![]));
        items.push(item("h002", "k/b.h", Place::Header { units: 4 }, vec![]));
        items.push(item(
            "h003",
            "k/big.h",
            Place::Header { units: 900 },
            vec![],
        ));
        items.push(item("h004", "k/c.h", Place::Header { units: 2 }, vec![]));
        items.push(item("h005", "k/s.h", Place::Header { units: 3 }, vec![]));
        let hunk = |path: &str, ctx: &str| ChangedFile {
            path: path.into(),
            change: Change::Modified,
            lines: 2,
            diff: format!("--- a/{path}\n+++ b/{path}\n@@ -1 +1 @@ {ctx}\n-a\n+b\n"),
        };
        let changes = vec![
            hunk("k/a.h", "int f(void);"),
            hunk("k/b.h", "static inline int g(void)"),
            hunk("k/c.h", "int h(void);"),
            hunk("k/s.h", "struct s {"),
        ];
        let ids: Vec<&str> = subset(&items, &changes, 30)
            .iter()
            .map(|i| i.id.as_str())
            .collect();
        // c010 relates to a structure's change: after c007 and c009. The
        // inline change h002 comes first; h003 reaches too many units.
        assert_eq!(
            ids,
            vec!["c001", "c002", "c003", "c007", "c009", "c010", "h001", "h002", "h004"]
        );
        // Without an inline change, headers come in path order.
        let fewer: Vec<Item> = items.iter().filter(|i| i.id != "h002").cloned().collect();
        let ids: Vec<String> = subset(&fewer, &changes, 30)
            .iter()
            .map(|i| i.id.clone())
            .collect();
        assert_eq!(
            ids,
            vec!["c001", "c002", "c003", "c007", "c009", "c010", "h001", "h004", "h005"]
        );
    }
}
