//! The `modinfo` fuzz target's body (`fuzz/harness/modinfo.rs`) on the inputs kept
//! for it (`fuzz/harness/replay.rs` says what that checks).

#[path = "../../../fuzz/harness/modinfo.rs"]
mod harness;
#[path = "../../../fuzz/harness/replay.rs"]
mod replay;

#[test]
fn seeds_and_inputs_found_by_fuzzing() {
    let fuzz = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz");
    replay::replay(&fuzz, "modinfo", harness::run);
}
