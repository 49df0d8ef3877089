//! C fixtures compiled at test time, without a kernel tree: plain gcc with
//! the flags that make an object look like a kernel object to graft (one
//! section per function and per datum, `call __fentry__` first in every
//! function, the kernel's code model). No `__mcount_loc` (`-mrecord-mcount`)
//! and no unwind tables: the tables they make need the kernel's entry
//! layouts, which only the lab has.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

use graft_elf::Object;
use graft_target::{Exports, SymbolTable};

const FLAGS: &[&str] = &[
    "-O2",
    "-ffunction-sections",
    "-fdata-sections",
    "-fno-pic",
    "-mcmodel=kernel",
    "-pg",
    "-mfentry",
    "-fno-asynchronous-unwind-tables",
    "-fcf-protection=none",
    "-fno-stack-protector",
];

/// Both builds of one fixture, read as graft-build reads them.
pub struct Pair {
    _dir: tempfile::TempDir,
    pub orig: Object,
    pub patched: Object,
}

fn fixture_dir(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn compile(src: &Path, out: &Path) {
    let run = Command::new("gcc")
        .args(FLAGS)
        .arg("-c")
        .arg("-o")
        .arg(out)
        .arg(src)
        .output()
        .unwrap_or_else(|e| panic!("cannot run gcc: {e}"));
    assert!(
        run.status.success(),
        "{} does not compile:\n{}",
        src.display(),
        String::from_utf8_lossy(&run.stderr)
    );
}

/// Compiles `tests/fixtures/<name>/{orig,patched}.c` and reads both objects,
/// named `<name>.o`, through the passes graft-build runs before the diff.
pub fn pair(name: &str) -> Pair {
    let dir = tempfile::tempdir().expect("scratch directory");
    let src = fixture_dir(name);
    let read = |side: &str| {
        let out = dir.path().join(format!("{side}.o"));
        compile(&src.join(format!("{side}.c")), &out);
        let mut obj = Object::read(&out).expect("gcc's object");
        obj.path = PathBuf::from(format!("{name}.o"));
        graft_diff::prefix::demote(&mut obj);
        graft_diff::split::split_shared_sections(&mut obj).expect("split");
        obj
    };
    let orig = read("orig");
    let patched = read("patched");
    Pair {
        _dir: dir,
        orig,
        patched,
    }
}

/// A symbol table from kallsyms text.
pub fn symbols(text: &str) -> SymbolTable {
    SymbolTable::parse(text).unwrap_or_else(|(n, l)| panic!("kallsyms line {n}: {l}"))
}

/// Exports from `Module.symvers` text.
pub fn exports(text: &str) -> Exports {
    Exports::parse(text).unwrap_or_else(|(n, l)| panic!("Module.symvers line {n}: {l}"))
}
