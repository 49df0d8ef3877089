//! Fuzzes the offline reader of a module's `.modinfo` and symbols (`graft
//! info X.ko`, the checks of `graft load`): never a panic.
#![no_main]

#[path = "../harness/modinfo.rs"]
mod harness;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = harness::run(data);
});
