//! A fixed subset of the corpus of real fixes (docs/corpus.md): the
//! change between two consecutive Debian kernels apt serves, cut into
//! per-file items, about ten of them chosen by a rule that names no
//! version and no file (`graft_lab::corpus::items::subset`: the first few
//! `.c` changes of each kind — alone, and with a changed header they relate
//! to — and header-only changes, in path order). Each is built with this
//! graft binary against the older kernel: every outcome must be explained
//! (built, refused with a rule, not in this kernel, does not compile, no
//! code change), and every built module must load, complete its
//! transition, disable and unload cleanly in one VM booting that kernel.
//!
//! `./run test` prepares the pair first (`graft-lab corpus --prepare`:
//! both kernels in the lab, their sources compared, the target tree's unit
//! index in graft's cache). Nothing is cached between runs of this test:
//! every item is built and loaded again.

use std::path::{Path, PathBuf};
use std::time::Instant;

use graft_lab::corpus::{self, items, report, Corpus, Outcome};
use graft_lab::Lab;

fn cache() -> PathBuf {
    std::env::var_os("GRAFT_CACHE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/graft"))
}

#[test]
fn corpus_subset_is_explained_and_loads_cleanly() {
    let start = Instant::now();
    let c = Corpus::prepare(&Lab::default_root(), &cache(), None, None, &mut |l| {
        eprintln!("{l}")
    })
    .unwrap_or_else(|e| {
        panic!(
            "the corpus is not ready: {e}\nrun `./run test` (it runs `graft-lab corpus --prepare`)"
        )
    });
    let prepared = start.elapsed().as_secs_f64();
    let chosen = items::subset(&c.items, &c.changes, corpus::MAX_LINES);
    assert!(
        chosen.len() >= 3,
        "the subset rule found {} items in {} → {}",
        chosen.len(),
        c.pair.from.debian_version,
        c.pair.to.debian_version
    );
    assert!(chosen.iter().all(|i| i.place.in_build()));

    let work = tempfile::tempdir().unwrap();
    let mut builder = c
        .builder(
            Path::new(env!("CARGO_BIN_EXE_graft")),
            &cache(),
            corpus::MAX_UNITS,
            1,
        )
        .unwrap();
    builder.dir = work.path().to_owned();
    builder.results = None;
    let built_at = Instant::now();
    let results = builder
        .run(&chosen, &c.changes, &|l| eprintln!("{l}"))
        .unwrap();
    let build_seconds = built_at.elapsed().as_secs_f64();
    let table: String = results
        .iter()
        .map(|r| {
            format!(
                "{} {}: {} — {}\n",
                r.id,
                r.files.join(" + "),
                r.outcome.label(),
                r.outcome.reason()
            )
        })
        .collect();
    assert_eq!(results.len(), chosen.len(), "{table}");
    for r in &results {
        assert!(
            r.outcome.is_explained(),
            "{} has no explained outcome:\n{table}",
            r.id
        );
        if let Outcome::Refused { rules, .. } = &r.outcome {
            assert!(!rules.is_empty(), "{table}");
        }
    }
    let built: Vec<_> = results.iter().filter(|r| r.outcome.is_built()).collect();
    assert!(
        !built.is_empty(),
        "no item of the subset was built, so nothing is loaded:\n{table}"
    );

    let load_at = Instant::now();
    let loads = c.load(&results, false, &mut |l| eprintln!("{l}")).unwrap();
    let load_seconds = load_at.elapsed().as_secs_f64();
    for r in &built {
        let l = loads
            .get(&r.id)
            .unwrap_or_else(|| panic!("{} was built but not loaded", r.id));
        assert!(
            l.is_clean(),
            "{} ({}) did not load cleanly: {}\n{table}",
            r.id,
            r.files.join(" + "),
            l.describe()
        );
    }
    let t = report::totals(&results, &loads);
    assert_eq!(t.unexplained, 0);
    assert_eq!(t.loaded_clean, built.len());
    eprintln!(
        "corpus subset {} → {}: {} items, {} built and loaded; prepare {prepared:.1} s, builds {build_seconds:.1} s, VM {load_seconds:.1} s\n{table}",
        c.pair.from.debian_version,
        c.pair.to.debian_version,
        results.len(),
        built.len()
    );
}
