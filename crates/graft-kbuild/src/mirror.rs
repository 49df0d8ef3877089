//! graft's private copy of the user's kernel tree.
//!
//! kbuild writes next to the sources (objects, `.cmd` files, and it rebuilds
//! generated files when the compiler flags change), so graft never builds in
//! the user's tree. The copy is made once and then kept in step with the
//! tree by a manifest of (size, mtime) per file: a warm sync only stats.
//! Files the patch touched are recorded in a `dirty` list before patching,
//! so even a killed build is reverted by the next sync.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, UNIX_EPOCH};

use crate::patch::SourcePatch;
use crate::tree::KernelTree;
use crate::{io, KbuildError};

pub struct Mirror {
    /// The copy, where kbuild runs.
    pub root: PathBuf,
    source: PathBuf,
    state: PathBuf,
    /// Held for the mirror's lifetime: one build per copy at a time.
    _lock: File,
}

/// What a sync did.
#[derive(Debug, Default, Clone, Copy)]
pub struct SyncStats {
    pub files: usize,
    pub copied: usize,
    pub removed: usize,
}

#[derive(Clone, Copy, PartialEq, Eq)]
struct Stamp {
    size: u64,
    mtime_ns: i128,
}

impl Mirror {
    /// Opens (creating or refreshing) the private copy of `tree` under `cache`.
    pub fn sync(tree: &KernelTree, cache: &Path) -> Result<(Mirror, SyncStats), KbuildError> {
        let state = cache.join(format!(
            "tree-{:016x}",
            fnv(tree.root.to_string_lossy().as_bytes())
        ));
        let root = state.join("tree");
        fs::create_dir_all(&root).map_err(io(format!("cannot create {}", root.display())))?;
        let lock = File::create(state.join("lock")).map_err(io("cannot create the mirror lock"))?;
        lock.lock().map_err(io("cannot lock the mirror"))?;
        let mut m = Mirror {
            root,
            source: tree.root.clone(),
            state,
            _lock: lock,
        };
        let stats = m.refresh()?;
        Ok((m, stats))
    }

    /// Where graft keeps what it knows about this tree (manifest, index).
    pub fn state_dir(&self) -> &Path {
        &self.state
    }

    /// A hash of the user's tree as last synced (every file's path, size
    /// and mtime): it changes when any file of the tree does.
    pub fn fingerprint(&self) -> u64 {
        let text = fs::read_to_string(self.manifest_path()).unwrap_or_default();
        let mut lines: Vec<&str> = text.lines().collect();
        lines.sort_unstable();
        lines.iter().fold(0xcbf2_9ce4_8422_2325, |h, l| {
            l.bytes()
                .chain(std::iter::once(b'\n'))
                .fold(h, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
        })
    }

    /// Where the last make run's whole output is kept.
    pub fn log_path(&self) -> PathBuf {
        self.state.join("make.log")
    }

    fn manifest_path(&self) -> PathBuf {
        self.state.join("manifest")
    }

    fn dirty_path(&self) -> PathBuf {
        self.state.join("dirty")
    }

    fn refresh(&mut self) -> Result<SyncStats, KbuildError> {
        let old = read_manifest(&self.manifest_path());
        let dirty: Vec<String> = fs::read_to_string(self.dirty_path())
            .map(|t| t.lines().map(str::to_owned).collect())
            .unwrap_or_default();
        let mut now = HashMap::with_capacity(old.len().max(1024));
        let mut stats = SyncStats::default();
        walk(&self.source, "", &mut |rel, meta| {
            let stamp = Stamp {
                size: meta.len(),
                mtime_ns: meta.mtime() as i128 * 1_000_000_000 + meta.mtime_nsec() as i128,
            };
            stats.files += 1;
            let stale = old.get(rel) != Some(&stamp)
                || dirty.iter().any(|d| d == rel)
                || (is_configuration(rel) && self.differs(rel));
            if stale {
                self.copy_in(rel, meta)?;
                stats.copied += 1;
            }
            now.insert(rel.to_owned(), stamp);
            Ok(())
        })?;
        for rel in old
            .keys()
            .chain(dirty.iter())
            .filter(|k| !now.contains_key(*k))
        {
            let _ = fs::remove_file(self.root.join(rel));
            stats.removed += 1;
        }
        write_manifest(&self.manifest_path(), &now)?;
        let _ = fs::remove_file(self.dirty_path());
        Ok(stats)
    }

    /// Whether the copy of `rel` no longer has the user's content.
    fn differs(&self, rel: &str) -> bool {
        match (
            fs::read(self.source.join(rel)),
            fs::read(self.root.join(rel)),
        ) {
            (Ok(a), Ok(b)) => a != b,
            _ => true,
        }
    }

    /// Copies one file (or symlink) from the user's tree, atomically, keeping its mtime.
    fn copy_in(&self, rel: &str, meta: &fs::Metadata) -> Result<(), KbuildError> {
        let from = self.source.join(rel);
        let to = self.root.join(rel);
        if let Some(dir) = to.parent() {
            fs::create_dir_all(dir).map_err(io(format!("cannot create {}", dir.display())))?;
        }
        let tmp = to.with_file_name(format!(
            ".graft-tmp.{}",
            to.file_name().unwrap_or_default().to_string_lossy()
        ));
        let _ = fs::remove_file(&tmp);
        if meta.file_type().is_symlink() {
            let link =
                fs::read_link(&from).map_err(io(format!("cannot read {}", from.display())))?;
            std::os::unix::fs::symlink(link, &tmp)
                .map_err(io(format!("cannot create {}", tmp.display())))?;
        } else {
            fs::copy(&from, &tmp).map_err(io(format!("cannot copy {}", from.display())))?;
            let mtime = UNIX_EPOCH + Duration::new(meta.mtime() as u64, meta.mtime_nsec() as u32);
            File::options()
                .write(true)
                .open(&tmp)
                .and_then(|f| f.set_modified(mtime))
                .map_err(io(format!("cannot set the time of {}", tmp.display())))?;
        }
        fs::rename(&tmp, &to).map_err(io(format!("cannot rename to {}", to.display())))
    }

    /// Checks that `patch` applies to the copy, without changing it.
    pub fn check(&self, patch: &SourcePatch) -> Result<(), KbuildError> {
        self.run_patch(patch, true)
    }

    /// Applies `patch` to the copy, recording the touched files first so
    /// that any later sync reverts them.
    pub fn apply(&self, patch: &SourcePatch) -> Result<(), KbuildError> {
        let mut dirty =
            File::create(self.dirty_path()).map_err(io("cannot record the patched files"))?;
        for f in &patch.files {
            writeln!(dirty, "{f}").map_err(io("cannot record the patched files"))?;
        }
        dirty
            .sync_all()
            .map_err(io("cannot record the patched files"))?;
        self.run_patch(patch, false)?;
        for f in patch
            .files
            .iter()
            .filter(|f| f.ends_with(".c") || f.ends_with(".h"))
        {
            self.keep_line_numbers(f)?;
        }
        Ok(())
    }

    /// Gives the patched file `#line` directives after each change, so the
    /// code below keeps the line numbers it has in the running kernel.
    fn keep_line_numbers(&self, rel: &str) -> Result<(), KbuildError> {
        let (old, new) = (self.source.join(rel), self.root.join(rel));
        if !old.is_file() || !new.is_file() {
            return Ok(()); // a new or deleted file has no numbering to keep
        }
        let out = std::process::Command::new("diff")
            .arg("-U0")
            .arg(&old)
            .arg(&new)
            .output()
            .map_err(io("cannot run diff(1); hint: apt-get install diffutils"))?;
        let d = crate::lines::directives(&String::from_utf8_lossy(&out.stdout));
        if d.is_empty() {
            return Ok(());
        }
        let text = fs::read(&new).map_err(io(format!("cannot read {}", new.display())))?;
        let text = crate::lines::insert(&text, &d);
        // Replaced, never written in place.
        let tmp = new.with_file_name(format!(
            ".graft-tmp.{}",
            new.file_name().unwrap_or_default().to_string_lossy()
        ));
        fs::write(&tmp, text).map_err(io(format!("cannot write {}", tmp.display())))?;
        fs::rename(&tmp, &new).map_err(io(format!("cannot write {}", new.display())))
    }

    fn run_patch(&self, patch: &SourcePatch, dry: bool) -> Result<(), KbuildError> {
        let mut cmd = std::process::Command::new("patch");
        cmd.args([
            "-p1",
            "--batch",
            "--forward",
            "--no-backup-if-mismatch",
            "-r",
            "-",
        ])
        .arg("-d")
        .arg(&self.root);
        if dry {
            cmd.arg("--dry-run");
        }
        // The bytes graft parsed are the bytes applied: fed on stdin.
        let out = run_with_input(&mut cmd, &patch.bytes)
            .map_err(io("cannot run patch(1); hint: apt-get install patch"))?;
        if !out.status.success() {
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            let output = text
                .lines()
                .filter(|l| !l.trim().is_empty() && !l.starts_with("checking file"))
                .collect::<Vec<_>>()
                .join("; ");
            return Err(KbuildError::PatchDoesNotApply {
                tree: self.source.clone(),
                output,
            });
        }
        Ok(())
    }

    /// Puts the patched files back as they are in the user's tree.
    pub fn revert(&mut self) -> Result<(), KbuildError> {
        self.refresh().map(|_| ())
    }
}

/// The tree's configuration and the headers generated from it. kbuild
/// rewrites them when it is run with other settings; whatever happened in
/// the copy, they must be the user's, so they are compared by content.
fn is_configuration(rel: &str) -> bool {
    const DIRS: &[&str] = &[
        "include/config/",
        "include/generated/",
        "arch/x86/include/generated/",
    ];
    rel == ".config" || DIRS.iter().any(|d| rel.starts_with(d))
}

fn run_with_input(
    cmd: &mut std::process::Command,
    input: &[u8],
) -> std::io::Result<std::process::Output> {
    use std::process::Stdio;
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let mut stdin = child.stdin.take().expect("piped");
    let data = input.to_vec();
    // Written from a thread: patch may fill its output pipes before reading all input.
    let writer = std::thread::spawn(move || stdin.write_all(&data));
    let out = child.wait_with_output()?;
    let _ = writer.join();
    Ok(out)
}

fn walk(
    dir: &Path,
    rel: &str,
    f: &mut dyn FnMut(&str, &fs::Metadata) -> Result<(), KbuildError>,
) -> Result<(), KbuildError> {
    let entries = fs::read_dir(dir).map_err(io(format!("cannot read {}", dir.display())))?;
    for e in entries {
        let e = e.map_err(io(format!("cannot read {}", dir.display())))?;
        let name = e.file_name();
        let name = name.to_string_lossy();
        if rel.is_empty() && name == ".git" {
            continue;
        }
        let path = if rel.is_empty() {
            name.to_string()
        } else {
            format!("{rel}/{name}")
        };
        let meta = fs::symlink_metadata(e.path()).map_err(io(format!("cannot stat {path}")))?;
        if meta.is_dir() {
            walk(&e.path(), &path, f)?;
        } else if meta.is_file() || meta.file_type().is_symlink() {
            f(&path, &meta)?;
        }
    }
    Ok(())
}

fn read_manifest(path: &Path) -> HashMap<String, Stamp> {
    let Ok(text) = fs::read_to_string(path) else {
        return HashMap::new();
    };
    text.lines()
        .filter_map(|l| {
            let mut it = l.splitn(3, ' ');
            let mtime_ns = it.next()?.parse().ok()?;
            let size = it.next()?.parse().ok()?;
            Some((it.next()?.to_owned(), Stamp { size, mtime_ns }))
        })
        .collect()
}

fn write_manifest(path: &Path, m: &HashMap<String, Stamp>) -> Result<(), KbuildError> {
    let mut text = String::with_capacity(m.len() * 64);
    for (k, s) in m {
        text.push_str(&format!("{} {} {k}\n", s.mtime_ns, s.size));
    }
    let tmp = path.with_extension("tmp");
    fs::write(&tmp, text).map_err(io("cannot write the mirror manifest"))?;
    fs::rename(&tmp, path).map_err(io("cannot write the mirror manifest"))
}

/// FNV-1a: a stable name for a tree path (no cryptographic need).
fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}
