//! Fuzzes run-pre verification: an object's functions matched against a
//! kernel image with its symbol table, and against a module file: never a
//! panic, overflow or out-of-bounds access.
#![no_main]

#[path = "../harness/verify.rs"]
mod harness;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = harness::run(data);
});
