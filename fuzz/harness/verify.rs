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
/// Returns what happened, one line per check, for the replay test.
pub fn run(data: &[u8]) -> Vec<String> {
    let mut out = Vec::new();
    let (obj, rest) = take(data);
    let (image, table) = take(rest);
    let Ok(orig) = Object::parse(obj, Path::new("orig.o")) else {
        return out;
    };
    let functions: Vec<SymbolId> = orig.functions().map(|s| s.id).collect();
    if let Ok(symbols) = SymbolTable::parse(&String::from_utf8_lossy(table)) {
        if let Ok(image) = KernelImage::parse(Path::new("vmlinux"), image.to_vec()) {
            let target = graft_verify::Target {
                symbols: &symbols,
                image: &image,
                object: "vmlinux",
            };
            out.push(match graft_verify::verify(&orig, &functions, &target) {
                Ok(v) => format!("image: verified {}", names(&v)),
                Err(e) => format!("image: {e}"),
            });
        }
    }
    if let Ok(module) = ModuleFile::parse(Path::new("target.ko"), image.to_vec()) {
        out.push(
            match graft_verify::verify_module(&orig, &functions, &module) {
                Ok(v) => format!("module: verified {}", names(&v)),
                Err(e) => format!("module: {e}"),
            },
        );
    }
    out
}

fn names(v: &graft_verify::Verified) -> String {
    let mut n: Vec<&str> = v.functions.iter().map(|m| m.function.as_str()).collect();
    n.sort();
    n.join(" ")
}
