//! Run-pre verification time against the lab's Debian kernel, for two
//! patches of tests/patches: the cmdline fix (one function verified) and
//! verify-twenty-functions (twenty functions of fs/file.c edited, 26
//! verified: with the ones gcc inlined them into). The original objects are
//! compiled by kbuild in graft's private copy of the lab tree, and the
//! functions verified are the ones `graft build` picks. Reading the target
//! (decompressing the vmlinuz, parsing kallsyms) is reported apart: a build
//! does it once, whatever the patch.
//!
//! Run with `cargo bench -p graft-verify --bench verify`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use graft_diff::Verdict;
use graft_elf::{Object, SymbolId};
use graft_kbuild::{compile, mirror::Mirror, patch::SourcePatch, tree::KernelTree};
use graft_lab::Lab;
use graft_target::{KernelImage, SymbolTable};

const PATCHES: &[&str] = &["cmdline", "verify-twenty-functions"];
const ROUNDS: usize = 20;

fn main() {
    let lab = Lab::open(&Lab::default_root()).expect("lab set up (./run test does it)");
    let cache = std::env::var_os("GRAFT_CACHE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/graft"))
        .join("build");
    let scratch = tempfile::tempdir().unwrap();

    let t = Instant::now();
    let symbols = SymbolTable::read(&lab.kallsyms()).unwrap();
    let read_symbols = t.elapsed();
    let t = Instant::now();
    let image = KernelImage::read(&lab.vmlinuz()).unwrap();
    let read_image = t.elapsed();
    let layout = graft_diff::Layout::from_probe(
        &graft_elf::Object::parse(
            &graft_kbuild::probe::compile(&lab.source_tree(), graft_diff::layout::PROBE).unwrap(),
            std::path::Path::new("probe.o"),
        )
        .unwrap(),
    )
    .unwrap();
    println!(
        "Debian {} ({}): reading kallsyms {}, decompressing the vmlinuz {}",
        lab.release,
        lab.debian_version,
        ms(read_symbols),
        ms(read_image)
    );
    println!(
        "{:26} {:>8} {:>10} {:>10}",
        "patch", "verified", "best", "median"
    );
    for name in PATCHES {
        let dir = scratch.path().join(name);
        let objects = compile_pair(&lab, &cache, name, &dir);
        let mut all = Vec::new();
        let mut count = 0;
        for obj in &objects {
            let mut orig = Object::read(&dir.join("orig").join(obj)).unwrap();
            let patched = Object::read(&dir.join("patched").join(obj)).unwrap();
            orig.path = PathBuf::from(obj);
            let d = graft_diff::analyze(
                &orig,
                &patched,
                &graft_diff::Options {
                    layout: Some(&layout),
                    ..Default::default()
                },
            );
            assert!(d.refusals.is_empty(), "{name}: {:?}", d.refusals);
            let ids = to_verify(&orig, &patched, &d);
            count += ids.len();
            all.push((orig, ids));
        }
        let target = graft_verify::Target {
            symbols: &symbols,
            image: &image,
            object: "vmlinux",
        };
        let mut times: Vec<Duration> = (0..ROUNDS)
            .map(|_| {
                let t = Instant::now();
                for (orig, ids) in &all {
                    graft_verify::verify(orig, ids, &target).expect("verified");
                }
                t.elapsed()
            })
            .collect();
        times.sort();
        println!(
            "{name:26} {count:>8} {:>10} {:>10}",
            ms(times[0]),
            ms(times[ROUNDS / 2])
        );
    }
}

fn ms(d: Duration) -> String {
    if d < Duration::from_millis(10) {
        format!("{:.0} µs", d.as_secs_f64() * 1e6)
    } else {
        format!("{:.0} ms", d.as_secs_f64() * 1e3)
    }
}

/// Compiles the patch's objects before and after it; returns their paths.
fn compile_pair(lab: &Lab, cache: &Path, name: &str, dir: &Path) -> Vec<String> {
    let patch = SourcePatch::read(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../../tests/patches/{name}.patch")),
    )
    .unwrap();
    let objects = patch.objects().unwrap();
    let tree = KernelTree::open(&lab.source_tree()).unwrap();
    let (mut mirror, _) = Mirror::sync(&tree, cache).unwrap();
    let keep = |to: &str, mirror: &Mirror| {
        for o in &objects {
            let dst = dir.join(to).join(o);
            std::fs::create_dir_all(dst.parent().unwrap()).unwrap();
            std::fs::copy(mirror.root.join(o), &dst).unwrap();
        }
    };
    let log = mirror.log_path();
    compile::compile(&mirror.root, &tree.make_vars, &objects, 2, "orig", &log).unwrap();
    keep("orig", &mirror);
    mirror.apply(&patch).unwrap();
    let r = compile::compile(&mirror.root, &tree.make_vars, &objects, 2, "patched", &log);
    mirror.revert().unwrap();
    r.unwrap();
    keep("patched", &mirror);
    objects
}

/// The functions `graft build` verifies (crates/graft/src/build.rs): the
/// changed ones, and the ones of the file that carried code reaches.
fn to_verify(orig: &Object, patched: &Object, d: &graft_diff::ObjectDiff) -> Vec<SymbolId> {
    let mut ids: Vec<SymbolId> = d
        .changed_functions()
        .filter(|c| !graft_diff::rules::is_part(&c.name))
        .filter_map(|c| c.twin)
        .collect();
    let refs = graft_diff::correlate::references(patched, &graft_diff::code::CodeMap::new(patched));
    for c in d.included_functions() {
        for t in refs.get(&c.symbol).into_iter().flatten() {
            let twin = d
                .functions
                .iter()
                .find(|f| f.symbol == *t && f.verdict == Verdict::Same)
                .and_then(|f| f.twin);
            let Some(o) = twin else { continue };
            let weak = orig.symbol(o).binding == graft_elf::Binding::Weak;
            if !weak && !graft_diff::rules::is_part(&patched.symbol(*t).name) && !ids.contains(&o) {
                ids.push(o);
            }
        }
    }
    ids
}
