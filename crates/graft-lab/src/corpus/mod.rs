//! A corpus of real fixes: the change between two consecutive Debian
//! kernels, cut into one item per changed kernel `.c` file (grouped with
//! the headers of the update it needs to compile) and one per changed
//! header no `.c` item needs, each built with the `graft` binary against
//! the older kernel and every built module loaded in a VM booting it.
//!
//! Everything is fetched through the lab (graft-debian: downloaded and
//! unpacked, never installed) and cached under `<lab root>/corpus/`:
//!
//! ```text
//! corpus/
//!   choice.json                     the default pair, with the kernels apt served then
//!   <from>..<to>/                   one pair (Debian versions)
//!     changes.json                  the changed .c/.h files and their diffs
//!     patches/<id>[-N].patch, .log  what graft was given and what it said
//!     modules/<key>/livepatch-<id>.ko
//!     results.json                  build results by key (patches, graft, target, options)
//!     loads.json                    load results by module sha256
//! ```

pub mod build;
pub mod changes;
pub mod items;
pub mod load;
pub mod outcome;
pub mod pair;
pub mod report;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::error::LabError;
use crate::lab::{write_atomic, Lab};
pub use build::{Builder, ItemResult};
pub use changes::ChangedFile;
pub use items::{Item, Place};
pub use load::{LoadOutcome, ToLoad};
pub use outcome::Outcome;
pub use pair::{Considered, Kernel, Pair};

/// Items of at most this many changed lines are the corpus.
pub const MAX_LINES: usize = 30;
/// `graft build --max-units` for the corpus: a header reaching more units
/// is refused (too-many-units) instead of taking most of an hour.
pub const MAX_UNITS: usize = 60;

/// A prepared corpus: the pair, both kernels in the lab, the changes and
/// the items.
#[derive(Debug, Clone)]
pub struct Corpus {
    pub pair: Pair,
    pub considered: Vec<Considered>,
    /// The target kernel's lab.
    pub target: Lab,
    /// `<lab root>/corpus/<from>..<to>`.
    pub dir: PathBuf,
    pub changes: Vec<ChangedFile>,
    pub items: Vec<Item>,
    /// Seconds graft spent building the tree's unit index, when this
    /// preparation built it.
    pub index_seconds: Option<f64>,
    /// Seconds the preparation took.
    pub prepare_seconds: f64,
}

/// The version of `changes.json`'s content: a cache of another version is
/// made again.
const CHANGES_FORMAT: u32 = 2;

#[derive(Serialize, Deserialize)]
struct CachedChanges {
    format: u32,
    from_tree: PathBuf,
    to_tree: PathBuf,
    changes: Vec<ChangedFile>,
}

/// The lab root's corpus directory.
pub fn root(lab_root: &Path) -> PathBuf {
    lab_root.join("corpus")
}

/// The changes between the pair's trees, from the cache when it has them.
fn changes_of(
    lab_root: &Path,
    pair: &Pair,
    progress: &mut dyn FnMut(&str),
) -> Result<(Lab, Vec<ChangedFile>), LabError> {
    let from = pair::lab_of(lab_root, &pair.from, progress)?;
    let to = pair::lab_of(lab_root, &pair.to, progress)?;
    let dir = root(lab_root).join(pair.dir_name());
    let path = dir.join("changes.json");
    if let Some(c) = std::fs::read(&path)
        .ok()
        .and_then(|b| serde_json::from_slice::<CachedChanges>(&b).ok())
    {
        if c.format == CHANGES_FORMAT
            && c.from_tree == from.source_tree()
            && c.to_tree == to.source_tree()
        {
            return Ok((from, c.changes));
        }
    }
    progress(&format!(
        "comparing the sources of {} and {}…",
        pair.from.debian_version, pair.to.debian_version
    ));
    let changes = changes::compare(&from.source_tree(), &to.source_tree())?;
    std::fs::create_dir_all(&dir)
        .map_err(|e| LabError::io(format!("creating {}", dir.display()), e))?;
    let cached = CachedChanges {
        format: CHANGES_FORMAT,
        from_tree: from.source_tree(),
        to_tree: to.source_tree(),
        changes,
    };
    write_atomic(&path, &serde_json::to_vec(&cached).expect("serializes"))?;
    Ok((from, cached.changes))
}

/// Sort key of an item id: `.c` items, then headers, each by number.
pub fn id_order(id: &str) -> (bool, u64) {
    (
        id.starts_with('h'),
        id.get(1..).and_then(|n| n.parse().ok()).unwrap_or(u64::MAX),
    )
}

/// An item whose files are the same as an earlier item's (two files of
/// one multi-file fix each grow into the whole fix) is that fix again: it
/// is marked so, and counted and loaded once. `results` in item order.
pub fn dedupe(results: &mut [ItemResult]) {
    let mut seen: Vec<(Vec<String>, String)> = Vec::new();
    for r in results.iter_mut() {
        if r.files.len() < 2 {
            continue;
        }
        let mut set = r.files.clone();
        set.sort();
        if let Some((_, first)) = seen.iter().find(|(s, _)| *s == set) {
            r.outcome = Outcome::Skipped {
                why: format!("the same fix as {first}, which this file is part of"),
            };
            r.module = None;
        } else {
            seen.push((set, r.id.clone()));
        }
    }
}

/// How many kernel `.c` files changed.
pub fn c_files(changes: &[ChangedFile]) -> usize {
    changes.iter().filter(|c| !c.is_header()).count()
}

impl Corpus {
    /// Chooses the pair (`from`/`to`, or the default rule), sets both
    /// kernels up in the lab at `lab_root`, compares their sources, and
    /// places every change in the target's build with graft's unit index
    /// (made in graft's cache `cache`).
    pub fn prepare(
        lab_root: &Path,
        cache: &Path,
        from: Option<&str>,
        to: Option<&str>,
        progress: &mut dyn FnMut(&str),
    ) -> Result<Corpus, LabError> {
        let start = Instant::now();
        let (pair, considered) = pair::choose(
            &root(lab_root),
            from,
            to,
            &mut |p, progress| Ok(c_files(&changes_of(lab_root, p, progress)?.1)),
            progress,
        )?;
        let (target, changes) = changes_of(lab_root, &pair, progress)?;
        progress(&format!(
            "corpus {} → {} on {}: {} changed kernel .c files, {} headers",
            pair.from.debian_version,
            pair.to.debian_version,
            target.release,
            c_files(&changes),
            changes.len() - c_files(&changes)
        ));
        progress("reading the target tree's unit index (graft builds it once per tree)…");
        let (index, index_seconds) = graft_build::unit_index(&target.source_tree(), cache)
            .map_err(|e| {
                LabError::invalid(
                    format!("the unit index of {}: {e}", target.source_tree().display()),
                    "check that the lab's tree is prepared (graft-lab setup --release)",
                )
            })?;
        let items = items::split(&changes, &index);
        Ok(Corpus {
            dir: root(lab_root).join(pair.dir_name()),
            pair,
            considered,
            target,
            changes,
            items,
            index_seconds,
            prepare_seconds: start.elapsed().as_secs_f64(),
        })
    }

    /// The `.c` items of the corpus: in the target's build or not, of at
    /// most `max_lines` changed lines.
    pub fn c_items(&self, max_lines: usize) -> Vec<&Item> {
        self.items
            .iter()
            .filter(|i| !i.is_header() && i.lines <= max_lines)
            .collect()
    }

    /// The header items: changed headers of at most `max_lines` lines
    /// that none of `results` needed to compile.
    pub fn header_items(&self, max_lines: usize, results: &[ItemResult]) -> Vec<&Item> {
        let needed: std::collections::BTreeSet<&str> = results
            .iter()
            .flat_map(|r| r.files.iter().skip(1))
            .map(String::as_str)
            .collect();
        self.items
            .iter()
            .filter(|i| i.is_header() && i.lines <= max_lines && !needed.contains(i.file.as_str()))
            .collect()
    }

    /// A builder for this corpus.
    pub fn builder(
        &self,
        graft: &Path,
        cache: &Path,
        max_units: usize,
        jobs: usize,
    ) -> Result<Builder, LabError> {
        Ok(Builder {
            graft: graft.to_owned(),
            graft_id: build::file_sha256(graft)?,
            target: self.target.clone(),
            dir: self.dir.clone(),
            results: Some(self.dir.join("results.json")),
            cache: cache.to_owned(),
            max_units,
            jobs,
        })
    }

    /// Loads the built modules of `results` in VMs booting the target;
    /// with `reuse`, results of modules loaded before (same bytes) are
    /// reused and the new ones kept.
    pub fn load(
        &self,
        results: &[ItemResult],
        reuse: bool,
        progress: &mut dyn FnMut(&str),
    ) -> Result<BTreeMap<String, LoadOutcome>, LabError> {
        let path = self.dir.join("loads.json");
        let mut cached: BTreeMap<String, LoadOutcome> = std::fs::read(&path)
            .ok()
            .filter(|_| reuse)
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        let mut out = BTreeMap::new();
        let mut todo = Vec::new();
        let mut shas = BTreeMap::new();
        for r in results {
            let Some(m) = &r.module else { continue };
            let sha = build::file_sha256(m)?;
            if let Some(o) = cached.get(&sha) {
                out.insert(r.id.clone(), o.clone());
            } else {
                todo.push(ToLoad {
                    id: r.id.clone(),
                    module: m.clone(),
                });
                shas.insert(r.id.clone(), sha);
            }
        }
        if !todo.is_empty() {
            // The consoles of a cached run are kept with the results.
            let consoles = reuse.then(|| self.dir.join("vm"));
            let fresh = load::load_all(&self.target, &todo, consoles.as_deref(), progress)?;
            for (id, o) in fresh {
                if let Some(sha) = shas.get(&id) {
                    cached.insert(sha.clone(), o.clone());
                }
                out.insert(id, o);
            }
            write_atomic(
                &path,
                &serde_json::to_vec_pretty(&cached).expect("serializes"),
            )?;
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(id: &str, files: &[&str], outcome: Outcome) -> ItemResult {
        ItemResult {
            id: id.into(),
            key: String::new(),
            files: files.iter().map(|f| f.to_string()).collect(),
            lines: 1,
            outcome,
            seconds: 1.0,
            attempts: Vec::new(),
            module: Some("/m.ko".into()),
            method: build::METHOD,
        }
    }

    #[test]
    fn one_multi_file_fix_counts_once() {
        let refused = Outcome::Refused {
            rules: vec!["export-crc".into()],
            message: "m".into(),
        };
        let mut v = vec![
            result("c007", &["a.c", "x.h", "b.c"], refused.clone()),
            result("c008", &["b.c", "x.h", "a.c"], refused.clone()),
            result("c009", &["c.c"], refused.clone()),
            result("c010", &["c.c", "y.h"], refused),
        ];
        dedupe(&mut v);
        assert!(matches!(&v[1].outcome, Outcome::Skipped { why } if why.contains("c007")));
        assert!(v[1].module.is_none());
        assert!(matches!(v[0].outcome, Outcome::Refused { .. }));
        assert!(matches!(v[3].outcome, Outcome::Refused { .. }));
    }

    #[test]
    fn ids_sort_by_kind_then_number() {
        let mut ids = vec!["h002", "c1000", "c999", "h010", "c001"];
        ids.sort_by_key(|i| id_order(i));
        assert_eq!(ids, vec!["c001", "c999", "c1000", "h002", "h010"]);
    }
}
