//! The replay of a fuzz target's kept inputs, shared by each crate's
//! `tests/fuzz_regressions.rs`: every input the target once crashed with
//! (`fuzz/regressions/<target>/`) must not panic again, and its seeds
//! (`fuzz/seeds/<target>/`) must give what their `.expect` files say, so
//! that the seeds keep reaching the deep paths.

use std::path::{Path, PathBuf};

fn inputs(fuzz: &Path, kind: &str, target: &str) -> Vec<PathBuf> {
    let dir = fuzz.join(kind).join(target);
    let mut v: Vec<PathBuf> = match std::fs::read_dir(&dir) {
        Ok(rd) => rd.map(|e| e.unwrap().path()).collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => panic!("{}: {e}", dir.display()),
    };
    v.retain(|p| p.extension().is_some_and(|x| x == "bin"));
    v.sort();
    v
}

/// Replays `target`'s inputs under `fuzz` (the repository's `fuzz/`) through `run`.
pub fn replay(
    fuzz: &Path,
    target: &str,
    run: impl Fn(&[u8]) -> Vec<String> + std::panic::RefUnwindSafe,
) {
    let (seeds, crashes) = (
        inputs(fuzz, "seeds", target),
        inputs(fuzz, "regressions", target),
    );
    assert!(!seeds.is_empty(), "no seeds for {target}");
    let mut failed = Vec::new();
    for p in seeds.iter().chain(&crashes) {
        let data = std::fs::read(p).unwrap();
        match std::panic::catch_unwind(|| run(&data)) {
            Err(_) => failed.push(format!("{}: panicked", p.display())),
            Ok(lines) => {
                let expect = p.with_extension("expect");
                // GRAFT_BLESS=1 writes what the seeds give now.
                if std::env::var_os("GRAFT_BLESS").is_some() && seeds.contains(p) {
                    std::fs::write(&expect, lines.join("\n") + "\n").unwrap();
                }
                if let Ok(want) = std::fs::read_to_string(&expect) {
                    let want: Vec<&str> = want.lines().collect();
                    if lines != want {
                        failed.push(format!("{}: got {lines:#?}", p.display()));
                    }
                }
            }
        }
    }
    assert!(failed.is_empty(), "{}", failed.join("\n"));
}
