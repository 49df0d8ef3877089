//! The `verify` fuzz target's body, shared with the test that replays the
//! inputs kept under `fuzz/regressions/verify/` (graft-verify's
//! `tests/fuzz_regressions.rs`): run-pre verification of an object's
//! functions against a kernel image and symbol table, and against a module
//! file, all of which a user hands graft from elsewhere.
//!
//! Input: a length-prefixed object, a length-prefixed image (a vmlinux ELF,
//! a compressed boot image, or a module), then the symbol table as text.

use std::path::Path;

use graft_elf::{Object, SymbolId};
use graft_target::{KernelImage, ModuleFile, SymbolTable};

fn take(data: &[u8]) -> (&[u8], &[u8]) {
    let Some((len, rest)) = data.split_first_chunk::<4>() else {
        return (data, &[]);
    };
    let n = (u32::from_le_bytes(*len) as usize).min(rest.len());
    rest.split_at(n)
}

/// Any object, image and table give a verdict or an error, never a panic.
pub fn run(data: &[u8]) {
    let (obj, rest) = take(data);
    let (image, table) = take(rest);
    let Ok(orig) = Object::parse(obj, Path::new("orig.o")) else {
        return;
    };
    let functions: Vec<SymbolId> = orig.functions().map(|s| s.id).collect();
    if let Ok(symbols) = SymbolTable::parse(&String::from_utf8_lossy(table)) {
        if let Ok(image) = KernelImage::parse(Path::new("vmlinux"), image.to_vec()) {
            let target = graft_verify::Target {
                symbols: &symbols,
                image: &image,
                object: "vmlinux",
            };
            match graft_verify::verify(&orig, &functions, &target) {
                Ok(v) => {
                    let _ = v.functions.len() + v.sympos.len();
                }
                Err(e) => {
                    let _ = e.to_string();
                }
            }
        }
    }
    if let Ok(module) = ModuleFile::parse(Path::new("target.ko"), image.to_vec()) {
        if let Err(e) = graft_verify::verify_module(&orig, &functions, &module) {
            let _ = e.to_string();
        }
    }
}
