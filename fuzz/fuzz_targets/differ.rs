//! Fuzzes the ELF reader and the differ: any bytes give an object or an
//! error, and any two objects (with any layout) give a diff, never a panic.
#![no_main]

#[path = "../harness/differ.rs"]
mod harness;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = harness::run(data);
});
