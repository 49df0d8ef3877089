//! Shared helpers of graft's integration tests: the lab, running the
//! `graft` binary, and fingerprints that prove a tree was left alone.

#![allow(dead_code)]

use std::collections::hash_map::DefaultHasher;
use std::ffi::OsString;
use std::hash::{Hash, Hasher};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use graft_lab::Lab;

/// The lab, set up by `./run test` (or `graft-lab setup`).
pub fn lab() -> Lab {
    Lab::open(&Lab::default_root())
        .unwrap_or_else(|e| panic!("the kernel lab is not set up: {e}\nrun `./run test`, or `cargo run -p graft-lab -- setup` first"))
}

pub fn repo_file(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(rel)
}

pub fn graft(args: &[OsString]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_graft"))
        .args(args)
        .output()
        .expect("run graft")
}

/// `graft` run from the repository's top directory (relative paths work).
pub fn graft_in_repo(args: &[OsString]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_graft"))
        .args(args)
        .current_dir(repo_file(""))
        .output()
        .expect("run graft")
}

/// `graft build PATCH` against the lab's kernel, with `extra` arguments.
pub fn build_args(lab: &Lab, patch: &Path, name: &str, out: &Path) -> Vec<OsString> {
    let mut args: Vec<OsString> = vec!["build".into(), patch.into(), "--name".into(), name.into()];
    args.extend(lab.graft_target_args());
    args.extend(["--output".into(), out.into()]);
    args
}

/// Replaces the value that follows `flag` in `args`.
pub fn set_arg(args: &mut [OsString], flag: &str, value: impl Into<OsString>) {
    let i = args
        .iter()
        .position(|a| a == flag)
        .unwrap_or_else(|| panic!("no {flag} in {args:?}"));
    args[i + 1] = value.into();
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// A hash of every path, size, mtime and mode under `dir`: any write shows.
pub fn fingerprint(dir: &Path) -> u64 {
    fn walk(dir: &Path, h: &mut DefaultHasher) {
        let mut entries: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap())
            .collect();
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let meta = std::fs::symlink_metadata(e.path()).unwrap();
            e.file_name().hash(h);
            (meta.len(), meta.mtime(), meta.mtime_nsec(), meta.mode()).hash(h);
            if meta.is_dir() {
                walk(&e.path(), h);
            }
        }
    }
    let mut h = DefaultHasher::new();
    walk(dir, &mut h);
    h.finish()
}

/// Writes `text` as a patch file in `dir`.
pub fn patch_file(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

/// Builds `tests/patches/<patch>` as patch `name` for the lab's kernel;
/// returns the module path and the JSON summary.
pub fn build_ok(lab: &Lab, patch: &str, name: &str, out: &Path) -> (PathBuf, serde_json::Value) {
    build_ok_with(lab, patch, name, out, &[])
}

/// [`build_ok`] with `extra` arguments to `graft build`.
pub fn build_ok_with(
    lab: &Lab,
    patch: &str,
    name: &str,
    out: &Path,
    extra: &[std::ffi::OsString],
) -> (PathBuf, serde_json::Value) {
    let mut args = build_args(
        lab,
        &repo_file(&format!("tests/patches/{patch}")),
        name,
        out,
    );
    args.insert(0, "--json".into());
    args.extend(extra.iter().cloned());
    let built = graft(&args);
    assert!(
        built.status.success(),
        "graft build {patch} failed:\n{}",
        stderr(&built)
    );
    let summary: serde_json::Value = serde_json::from_slice(&built.stdout).expect("JSON summary");
    (out.join(format!("livepatch-{name}.ko")), summary)
}

/// Shell helpers for scenario scripts: `wait_for 'COND'` polls for ~30 s.
pub const SH_PRELUDE: &str = r#"
wait_for() { i=0; while [ $i -lt 120 ]; do eval "$1" && return 0; sleep 0.25; i=$((i+1)); done; return 1; }
problems() { dmesg | grep -E "WARNING|Oops|BUG:|Call Trace|livepatch: .*(failed|error)" | sed 's/^/KERNEL-PROBLEM: /'; }
"#;

/// A variant of the lab's kernel tree, made once and cached next to the lab:
/// hard links to the lab tree (which nothing writes to) with the files
/// `change` writes replaced. `change` gets the variant's root and must
/// replace files (remove, then write), never write into them.
pub fn variant_tree(lab: &Lab, name: &str, change: impl FnOnce(&Path)) -> PathBuf {
    let base = lab.dir().join("test-variants");
    std::fs::create_dir_all(&base).unwrap();
    let root = base.join(name);
    let done = base.join(format!("{name}.done"));
    let lock = std::fs::File::create(base.join(format!("{name}.lock"))).unwrap();
    lock.lock().unwrap();
    if !done.exists() {
        let _ = std::fs::remove_dir_all(&root);
        let st = Command::new("cp")
            .arg("-al")
            .arg(lab.source_tree())
            .arg(&root)
            .status()
            .unwrap();
        assert!(st.success(), "cp -al of the lab tree failed");
        change(&root);
        std::fs::write(&done, "").unwrap();
    }
    root
}

/// Replaces `rel` in a hard-linked variant tree with `text`.
pub fn replace_file(root: &Path, rel: &str, text: &str) {
    let p = root.join(rel);
    std::fs::remove_file(&p).unwrap();
    std::fs::write(&p, text).unwrap();
}

/// The rest of the one console line that starts with `prefix`; fails the
/// test, with the console, unless there is exactly one.
pub fn line_value(run: &graft_lab::ScenarioOutput, prefix: &str) -> String {
    let lines = run.lines_with_prefix(prefix);
    assert_eq!(
        lines.len(),
        1,
        "expected one {prefix} line; console:\n{}",
        run.console
    );
    lines[0][prefix.len()..].trim().to_owned()
}

/// The lab's releases of the current kernel's series, current first: the
/// kernels `--kernel` tests build for (the 6.12 kernels have tests of
/// their own).
pub fn lab_kernels() -> Vec<Lab> {
    let root = Lab::default_root();
    let current = lab();
    let series = |r: &str| graft_debian::Release::parse(r).map(|r| r.series);
    let mut v = vec![current.clone()];
    for r in Lab::releases(&root).unwrap() {
        if r != current.release && series(&r) == series(&current.release) {
            v.push(Lab::open_release(&root, &r).unwrap());
        }
    }
    // The newest other ABI first.
    v[1..].reverse();
    v
}

/// A graft cache in which `--kernel` finds the lab's kernels ready: each
/// lab release directory is a graft-debian kernel directory, so
/// `kernels/<release>/<version>` links to it (unless the cache already has
/// that kernel). Downloading and preparing are the lab setup's, which runs
/// the same fetch code.
pub fn kernel_cache(labs: &[Lab]) -> PathBuf {
    let root = std::env::var_os("GRAFT_CACHE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/graft"));
    for l in labs {
        let at = root
            .join("kernels")
            .join(&l.release)
            .join(&l.debian_version);
        if std::fs::symlink_metadata(&at).is_err() {
            std::fs::create_dir_all(at.parent().unwrap()).unwrap();
            // Tests running in parallel may race to make it.
            match std::os::unix::fs::symlink(l.dir(), &at) {
                Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => panic!("{e}"),
                _ => {}
            }
        }
    }
    root
}
