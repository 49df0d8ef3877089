//! The `verify` fuzz target's body (`fuzz/harness/verify.rs`) on the inputs kept
//! for it (`fuzz/harness/replay.rs` says what that checks).

#[path = "../../../fuzz/harness/verify.rs"]
mod harness;
#[path = "../../../fuzz/harness/replay.rs"]
mod replay;

#[test]
fn seeds_and_inputs_found_by_fuzzing() {
    let fuzz = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz");
    replay::replay(&fuzz, "verify", harness::run);
}
