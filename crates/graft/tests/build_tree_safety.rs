//! graft's private copy of the tree is made of hard links to the user's
//! files, yet nothing graft or kbuild does in it reaches the user's tree:
//! not a build that patches and compiles (kbuild regenerates files, objtool
//! rewrites objects in place), not a build killed while the copy is patched.
//! The next build puts the copy back and removes what the killed one left.

mod common;

use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime};

use common::*;

/// A cache of graft's beside the lab (same filesystem, so links work).
fn fresh_cache() -> tempfile::TempDir {
    let root = std::env::var_os("GRAFT_CACHE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/graft"));
    std::fs::create_dir_all(&root).unwrap();
    tempfile::Builder::new()
        .prefix("test-tree-safety-")
        .tempdir_in(root)
        .unwrap()
}

fn build(lab: &graft_lab::Lab, patch: &str, cache: &Path, out: &Path) -> serde_json::Value {
    let mut args = build_args(
        lab,
        &repo_file(&format!("tests/patches/{patch}")),
        "safety",
        out,
    );
    args.insert(0, "--json".into());
    args.extend(["--cache-dir".into(), cache.into()]);
    let o = graft(&args);
    assert!(o.status.success(), "graft build {patch}:\n{}", stderr(&o));
    serde_json::from_slice(&o.stdout).unwrap()
}

/// The copy's directory and its state directory (one tree per cache here).
fn mirror(cache: &Path) -> (PathBuf, PathBuf) {
    let state = std::fs::read_dir(cache.join("build"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.join("tree/Makefile").is_file())
        .expect("graft's copy of the tree");
    (state.join("tree"), state)
}

/// Every regular file of the copy: (path, inode, mtime).
fn files(root: &Path) -> Vec<(PathBuf, u64, SystemTime)> {
    fn walk(dir: &Path, out: &mut Vec<(PathBuf, u64, SystemTime)>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let e = e.unwrap();
            let m = e.metadata().unwrap();
            if m.is_dir() {
                walk(&e.path(), out);
            } else if m.is_file() {
                out.push((e.path(), m.ino(), m.modified().unwrap()));
            }
        }
    }
    let mut out = Vec::new();
    walk(root, &mut out);
    out
}

/// Checks that no file of the copy written since `since` (by graft, patch,
/// kbuild or the compiler) is the user's inode: a write through a hard link
/// would be exactly that. Returns how many were written.
fn nothing_written_through_links(copy: &Path, user: &Path, since: SystemTime) -> usize {
    let mut written = 0;
    for (path, ino, mtime) in files(copy) {
        if mtime < since {
            continue;
        }
        written += 1;
        let rel = path.strip_prefix(copy).unwrap();
        if let Ok(u) = std::fs::symlink_metadata(user.join(rel)) {
            assert_ne!(
                u.ino(),
                ino,
                "{} was written in graft's copy through a hard link to the user's tree",
                rel.display()
            );
        }
    }
    written
}

#[test]
fn builds_through_hard_links_never_write_the_users_tree_even_when_killed() {
    let lab = lab();
    let tree = lab.source_tree();
    let out = tempfile::tempdir().unwrap();
    let cache = fresh_cache();
    let before = fingerprint(&tree);
    let start = SystemTime::now() - Duration::from_secs(1);

    // A cold build: the copy is made, patched, compiled in and put back.
    build(&lab, "cmdline.patch", cache.path(), out.path());
    assert_eq!(fingerprint(&tree), before, "the user's tree was modified");
    let (copy, state) = mirror(cache.path());
    let all = files(&copy);
    let linked = all
        .iter()
        .filter(|(p, ino, _)| {
            let rel = p.strip_prefix(&copy).unwrap();
            std::fs::metadata(tree.join(rel)).is_ok_and(|m| m.ino() == *ino)
        })
        .count();
    assert!(
        linked * 10 > all.len() * 8,
        "only {linked} of {} files of the copy are links to the user's",
        all.len()
    );
    let rel = "fs/proc/cmdline.c";
    let ino = |p: &Path| std::fs::metadata(p).unwrap().ino();
    assert_eq!(
        ino(&copy.join(rel)),
        ino(&tree.join(rel)),
        "{rel} not linked back"
    );
    let written = nothing_written_through_links(&copy, &tree, start);
    // kbuild did write in the copy (objects, records, regenerated files).
    assert!(written > 10, "only {written} files written in the copy");

    // A build killed while the copy is patched and kbuild compiles in it.
    let since = SystemTime::now() - Duration::from_secs(1);
    let mut args = build_args(
        &lab,
        &repo_file("tests/patches/cmdline.patch"),
        "safety",
        out.path(),
    );
    args.extend(["--cache-dir".into(), cache.path().into()]);
    let mut child = Command::new(env!("CARGO_BIN_EXE_graft"))
        .args(&args)
        .process_group(0)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let t = Instant::now();
    let patched = || {
        state.join("dirty").exists()
            && std::fs::metadata(copy.join(rel)).is_ok_and(|m| m.ino() != ino(&tree.join(rel)))
    };
    while !patched() {
        assert!(
            t.elapsed() < Duration::from_secs(120),
            "the build never patched the copy"
        );
        assert!(child.try_wait().unwrap().is_none(), "the build ended early");
        std::thread::sleep(Duration::from_millis(5));
    }
    // Into the compile, then the whole process group at once.
    std::thread::sleep(Duration::from_millis(300));
    nix::sys::signal::killpg(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    child.wait().unwrap();
    assert_eq!(
        fingerprint(&tree),
        before,
        "the killed build modified the user's tree"
    );
    assert!(
        std::fs::read_to_string(copy.join(rel))
            .unwrap()
            .contains("graft_was_here"),
        "the build was not killed while the copy was patched"
    );
    let work_dirs = || {
        std::fs::read_dir(cache.path())
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .starts_with("work-")
            })
            .count()
    };
    assert_eq!(work_dirs(), 1, "the killed build left no work directory");
    nothing_written_through_links(&copy, &tree, since);

    // The next build puts the copy back and removes the killed one's work.
    let s = build(&lab, "cmdline.patch", cache.path(), out.path());
    assert_eq!(
        s["kept_originals"],
        serde_json::json!(["fs/proc/cmdline.o"]),
        "{s}"
    );
    assert_eq!(fingerprint(&tree), before, "the user's tree was modified");
    assert_eq!(
        ino(&copy.join(rel)),
        ino(&tree.join(rel)),
        "{rel} not reverted"
    );
    assert!(!state.join("dirty").exists());
    assert_eq!(work_dirs(), 0, "a work directory was left behind");
    nothing_written_through_links(&copy, &tree, since);
}
