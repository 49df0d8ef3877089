//! Wall time of `graft build` for one-line fixes to `fs/proc/version.c`,
//! next to its floor measured in the same run on the same machine: one
//! kbuild compile of `fs/proc/version.o` (with graft's flags, in graft's
//! copy of the tree) plus the kbuild build of a trivial livepatch module
//! against the headers: what any tool must at least do for the fix.
//!
//! Figures: cold (empty graft cache: tree copy, originals, layout probe and
//! module-link commands all made), warm (the same fix again), and warm on a
//! second fix to the same file (the kept original object is reused, so one
//! compile). Limits from issue 15: cold ≤ 20 s, second fix ≤ 1.2× floor.
//!
//! Run with `./run bench` (or `cargo bench -p graft --bench build`).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use graft_lab::Lab;

fn main() {
    let lab = Lab::open(&Lab::default_root()).expect("lab set up (./run bench does it)");
    let patches = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/patches");
    let (first, second) = (
        patches.join("version.patch"),
        patches.join("version-2.patch"),
    );
    let scratch = tempfile::tempdir().unwrap();
    let cache = scratch.path().join("cache");
    let out = scratch.path().join("out");

    let cold = time_graft(&lab, &first, &cache, &out);
    let warm = best_of(3, || time_graft(&lab, &first, &cache, &out));
    // Each build of the second fix is its first patched compile: graft
    // keeps original objects, never patched ones.
    let second_fix = best_of(3, || time_graft(&lab, &second, &cache, &out));

    // The floor, in graft's own copy of the tree (never in the lab's tree).
    let mirror = std::fs::read_dir(cache.join("build"))
        .unwrap()
        .map(|e| e.unwrap().path().join("tree"))
        .find(|p| p.join("Makefile").is_file())
        .expect("graft's tree copy");
    let compile = best_of(3, || {
        let _ = std::fs::remove_file(mirror.join("fs/proc/version.o"));
        let t = Instant::now();
        let st = Command::new("make")
            .arg("-C")
            .arg(&mirror)
            .arg(format!("KCFLAGS={}", graft_kbuild::compile::KCFLAGS))
            .args(&lab.source.make_vars)
            .arg("fs/proc/version.o")
            .output()
            .unwrap();
        assert!(
            st.status.success(),
            "{}",
            String::from_utf8_lossy(&st.stderr)
        );
        t.elapsed()
    });
    let module = best_of(3, || time_module_build(&lab, scratch.path()));
    let floor = compile + module;

    println!(
        "graft build, fs/proc/version.c one-line fixes, Debian {} ({}), {} cores",
        lab.release,
        lab.debian_version,
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    println!(
        "  floor (1 kbuild compile {:.2}s + module build {:.2}s): {:.2}s",
        secs(compile),
        secs(module),
        secs(floor)
    );
    println!(
        "  cold (empty cache): {:.2}s = {:.2}x floor   limit 20s: {}",
        secs(cold),
        secs(cold) / secs(floor),
        verdict(cold <= Duration::from_secs(20))
    );
    println!(
        "  warm (same fix again, best of 3): {:.2}s = {:.2}x floor",
        secs(warm),
        secs(warm) / secs(floor)
    );
    println!(
        "  warm, second fix to the same file (best of 3): {:.2}s = {:.2}x floor   limit 1.2x: {}",
        secs(second_fix),
        secs(second_fix) / secs(floor),
        verdict(second_fix.as_secs_f64() <= 1.2 * floor.as_secs_f64())
    );
}

/// The shortest of `n` timings: the least disturbed by the machine.
fn best_of(n: usize, mut f: impl FnMut() -> Duration) -> Duration {
    (0..n).map(|_| f()).min().expect("n > 0")
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

fn time_graft(lab: &Lab, patch: &Path, cache: &Path, out: &Path) -> Duration {
    let t = Instant::now();
    let o = Command::new(env!("CARGO_BIN_EXE_graft"))
        .arg("build")
        .arg(patch)
        .args(["--name", "version"])
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
static struct klp_func funcs[] = { { .old_name = "version_proc_show", .new_func = new_show }, { } };
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
