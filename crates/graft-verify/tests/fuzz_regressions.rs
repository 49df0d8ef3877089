//! Every input the `verify` fuzz target found a crash with, kept under
//! `fuzz/regressions/verify/`, replayed through the target's own body
//! (`fuzz/harness/verify.rs`): none may panic again.

#[path = "../../../fuzz/harness/verify.rs"]
mod harness;

#[test]
fn inputs_found_by_fuzzing_do_not_panic() {
    let dir =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/regressions/verify");
    let mut inputs: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "bin"))
        .collect();
    inputs.sort();
    let mut failed = Vec::new();
    for p in &inputs {
        let data = std::fs::read(p).unwrap();
        if std::panic::catch_unwind(|| harness::run(&data)).is_err() {
            failed.push(p.display().to_string());
        }
    }
    assert!(failed.is_empty(), "panics on: {failed:?}");
}
