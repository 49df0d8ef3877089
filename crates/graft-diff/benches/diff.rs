//! `graft diff` time over the changed objects of the differ's scenarios
//! (the patches of the VM tests), compiled by kbuild from the lab's Debian
//! source. Prints one line per object and the total; run with
//! `cargo bench -p graft-diff --bench diff`.

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::Instant;

use graft_diff::Options;
use graft_elf::Object;

const SCENARIOS: &[(&str, &str)] = &[
    ("differ-meminfo-string", "fs/proc/meminfo.o"),
    ("differ-new-function", "fs/proc/version.o"),
    ("differ-readdir", "fs/readdir.o"),
    ("differ-bug-table", "fs/proc/base.o"),
    ("differ-line-shift", "fs/proc/generic.o"),
    ("differ-init-change", "fs/proc/meminfo.o"),
    ("differ-global-init", "kernel/sys.o"),
    ("differ-struct-field", "fs/dcache.o"),
];

fn main() {
    let k = common::kernel();
    let scratch = tempfile::tempdir().unwrap();
    let mut total_read = 0.0;
    let mut total_diff = 0.0;
    let rounds = 5;
    println!(
        "{:28} {:22} {:>9} {:>11} {:>11}",
        "scenario", "object", "size KiB", "read ms", "diff ms"
    );
    for (patch, object) in SCENARIOS {
        let text = std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../../tests/patches")
                .join(format!("{patch}.patch")),
        )
        .unwrap();
        let dir = scratch.path().join(patch);
        std::fs::create_dir_all(&dir).unwrap();
        let (o, p) = k.kernel_pair(&text, &[object], &dir);
        let (op, pp) = (o.join(object), p.join(object));
        let size = std::fs::metadata(&pp).unwrap().len() / 1024;
        let mut best_read = f64::MAX;
        let mut best_diff = f64::MAX;
        for _ in 0..rounds {
            let t = Instant::now();
            let orig = Object::read(&op).unwrap();
            let patched = Object::read(&pp).unwrap();
            best_read = best_read.min(t.elapsed().as_secs_f64());
            let t = Instant::now();
            let opts = Options {
                layout: Some(&k.layout),
                crcs: graft_diff::Crcs {
                    orig: graft_kbuild::record::export_crcs(&op).unwrap(),
                    patched: graft_kbuild::record::export_crcs(&pp).unwrap(),
                },
                ..Default::default()
            };
            let d = graft_diff::analyze(&orig, &patched, &opts);
            best_diff = best_diff.min(t.elapsed().as_secs_f64());
            std::hint::black_box(d);
        }
        total_read += best_read;
        total_diff += best_diff;
        println!(
            "{patch:28} {object:22} {size:>9} {:>11.1} {:>11.1}",
            best_read * 1e3,
            best_diff * 1e3
        );
    }
    println!(
        "{:28} {:22} {:>9} {:>11.1} {:>11.1}",
        "total",
        "",
        "",
        total_read * 1e3,
        total_diff * 1e3
    );
}
