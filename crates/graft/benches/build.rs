//! Wall time of `graft build` for the cmdline patch, cold (empty graft
//! cache: the private tree copy is made from scratch) and warm (second run),
//! next to its floor measured in the same run: the two kbuild compiles of
//! `fs/proc/cmdline.o` (original and patched) plus one livepatch module build
//! against the headers, with no graft in between.
//!
//! Run with `./run bench` (or `cargo bench -p graft --bench build`).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use graft_lab::Lab;

fn main() {
    let lab = Lab::open(&Lab::default_root()).expect("lab set up (./run bench does it)");
    let patch = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/patches/cmdline.patch");
    let scratch = tempfile::tempdir().unwrap();
    let cache = scratch.path().join("cache");
    let out = scratch.path().join("out");

    let cold = time_graft(&lab, &patch, &cache, &out);
    let warm = time_graft(&lab, &patch, &cache, &out);
    let warm2 = time_graft(&lab, &patch, &cache, &out);
    let warm = warm.min(warm2);

    // The floor, in graft's own copy of the tree (never in the lab's tree).
    let mirror = std::fs::read_dir(cache.join("build"))
        .unwrap()
        .map(|e| e.unwrap().path().join("tree"))
        .find(|p| p.join("Makefile").is_file())
        .expect("graft's tree copy");
    let compile = || {
        let _ = std::fs::remove_file(mirror.join("fs/proc/cmdline.o"));
        let t = Instant::now();
        let st = Command::new("make")
            .arg("-C")
            .arg(&mirror)
            .arg("-j2")
            .arg("KCFLAGS=-ffunction-sections -fdata-sections")
            .args(make_vars(&lab))
            .arg("fs/proc/cmdline.o")
            .output()
            .unwrap();
        assert!(
            st.status.success(),
            "{}",
            String::from_utf8_lossy(&st.stderr)
        );
        t.elapsed()
    };
    let compiles = compile() + compile();
    let module = time_module_build(&lab, scratch.path());
    let floor = compiles + module;

    println!(
        "graft build, fs/proc/cmdline.c one-line fix, Debian {} ({})",
        lab.release, lab.debian_version
    );
    println!(
        "  floor (2 kbuild compiles {:.2}s + module build {:.2}s): {:.2}s",
        secs(compiles),
        secs(module),
        secs(floor)
    );
    println!(
        "  cold (empty cache, tree copy made): {:.2}s   limit 60s: {}",
        secs(cold),
        verdict(cold <= Duration::from_secs(60))
    );
    println!(
        "  warm (best of 2): {:.2}s = {:.2}x floor   limit 2x: {}",
        secs(warm),
        secs(warm) / secs(floor),
        verdict(warm <= floor * 2)
    );
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

fn verdict(ok: bool) -> &'static str {
    if ok {
        "within"
    } else {
        "EXCEEDED"
    }
}

fn make_vars(lab: &Lab) -> Vec<String> {
    lab.source.make_vars.clone()
}

fn time_graft(lab: &Lab, patch: &Path, cache: &Path, out: &Path) -> Duration {
    let t = Instant::now();
    let o = Command::new(env!("CARGO_BIN_EXE_graft"))
        .arg("build")
        .arg(patch)
        .args(["--name", "cmdline"])
        .args(lab.graft_target_args())
        .arg("--output")
        .arg(out)
        .arg("--cache-dir")
        .arg(cache)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    t.elapsed()
}

/// A minimal livepatch module of our own, built like graft builds its modules.
fn time_module_build(lab: &Lab, scratch: &Path) -> Duration {
    let dir: PathBuf = scratch.join("floor-module");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("floor.c"),
        r#"#include <linux/module.h>
#include <linux/livepatch.h>
#include <linux/seq_file.h>
static int new_show(struct seq_file *m, void *v) { seq_puts(m, "floor\n"); return 0; }
static struct klp_func funcs[] = { { .old_name = "cmdline_proc_show", .new_func = new_show }, { } };
static struct klp_object objs[] = { { .funcs = funcs }, { } };
static struct klp_patch patch = { .mod = THIS_MODULE, .objs = objs };
static int __init floor_init(void) { return klp_enable_patch(&patch); }
static void __exit floor_exit(void) { }
module_init(floor_init);
module_exit(floor_exit);
MODULE_LICENSE("GPL");
MODULE_INFO(livepatch, "Y");
"#,
    )
    .unwrap();
    std::fs::write(dir.join("Kbuild"), "obj-m := floor.o\n").unwrap();
    let t = Instant::now();
    let o = Command::new("make")
        .arg("-C")
        .arg(lab.headers())
        .arg(format!("M={}", dir.display()))
        .arg("modules")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    t.elapsed()
}
