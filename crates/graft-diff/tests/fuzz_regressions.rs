//! The `differ` fuzz target's body (`fuzz/harness/differ.rs`) on the inputs kept
//! for it: every input it once crashed with (`fuzz/regressions/differ/`) must
//! not panic again, and its seeds (`fuzz/seeds/differ/`) must give what their
//! `.expect` files say, so that the seeds keep reaching the deep paths.

#[path = "../../../fuzz/harness/differ.rs"]
mod harness;

use std::path::{Path, PathBuf};

fn inputs(kind: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../../fuzz/{kind}/differ"));
    let mut v: Vec<PathBuf> = match std::fs::read_dir(&dir) {
        Ok(rd) => rd.map(|e| e.unwrap().path()).collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => panic!("{}: {e}", dir.display()),
    };
    v.retain(|p| p.extension().is_some_and(|x| x == "bin"));
    v.sort();
    v
}

#[test]
fn seeds_and_inputs_found_by_fuzzing() {
    let (seeds, crashes) = (inputs("seeds"), inputs("regressions"));
    assert!(!seeds.is_empty(), "no seeds for differ");
    let mut failed = Vec::new();
    for p in seeds.iter().chain(&crashes) {
        let data = std::fs::read(p).unwrap();
        match std::panic::catch_unwind(|| harness::run(&data)) {
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
