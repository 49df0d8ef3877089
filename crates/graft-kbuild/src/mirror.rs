//! graft's private copy of the user's kernel tree.
//!
//! kbuild writes next to the sources (objects, `.cmd` files, and it rebuilds
//! generated files when the compiler flags change), so graft never builds in
//! the user's tree. The copy is kept in step with the tree by a manifest of
//! (size, mtime) per file: a warm sync only stats.
//!
//! The copy costs no bytes for the files nothing ever writes: sources are
//! hard links to the user's files. A hard link shares the user's inode, so
//! it is only safe where no tool writes the file in place; everything kbuild
//! may write is a private copy instead ([`must_copy`]: the configuration and
//! generated headers, kbuild's records and outputs, programs, and whatever
//! is newer than the tree's `.config`, i.e. made by a build). graft's own
//! writes (`patch(1)`, the `#line` rewrite, its headers) replace files by a
//! rename, which leaves the user's inode alone. Copies go through
//! `copy_file_range`, which filesystems with reflinks serve without bytes;
//! where links are impossible (another filesystem, a file the user may not
//! link) the file is copied.
//!
//! Files the patch touched are recorded in a `dirty` list before patching,
//! so even a killed build is reverted by the next sync.

use std::collections::{HashMap, HashSet};
use std::ffi::OsString;
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
    /// What the copy holds of each file of the user's tree, as last synced.
    manifest: HashMap<String, Entry>,
    fingerprint: u64,
    /// Set once a hard link failed for a reason every file shares (the
    /// copy is on another filesystem): the rest are copied without trying.
    no_links: bool,
    /// Held for the mirror's lifetime: one build per copy at a time.
    _lock: File,
}

/// What a sync did.
#[derive(Debug, Default, Clone, Copy)]
pub struct SyncStats {
    pub files: usize,
    /// Files (re)placed in the copy as hard links to the user's files.
    pub linked: usize,
    /// Files (re)placed as private copies.
    pub copied: usize,
    pub removed: usize,
}

/// How the copy holds one file of the user's tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Held {
    /// A hard link to the user's file: no bytes of its own.
    Linked,
    /// A private copy (kbuild may rewrite it).
    Copied,
    /// A symbolic link with the user's target.
    Symlink,
}

impl Held {
    fn tag(self) -> char {
        match self {
            Held::Linked => 'l',
            Held::Copied => 'c',
            Held::Symlink => 's',
        }
    }

    fn from_tag(t: &str) -> Option<Held> {
        Some(match t {
            "l" => Held::Linked,
            "c" => Held::Copied,
            "s" => Held::Symlink,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    size: u64,
    mtime_ns: i128,
}

impl Stamp {
    fn of(meta: &fs::Metadata) -> Stamp {
        Stamp {
            size: meta.len(),
            mtime_ns: meta.mtime() as i128 * 1_000_000_000 + meta.mtime_nsec() as i128,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Entry {
    stamp: Stamp,
    held: Held,
}

/// The manifest's first line: older manifests (plain copies) are not
/// trusted, so the first sync by this version re-places every file.
const MANIFEST_HEADER: &str = "graft-mirror 2";

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
            manifest: HashMap::new(),
            fingerprint: 0,
            no_links: false,
            _lock: lock,
        };
        let stats = m.refresh()?;
        Ok((m, stats))
    }

    /// Where graft keeps what it knows about this tree (manifest, index).
    pub fn state_dir(&self) -> &Path {
        &self.state
    }

    /// The user's tree this is a copy of.
    pub fn source(&self) -> &Path {
        &self.source
    }

    /// A hash of the user's tree as last synced (every file's path, size
    /// and mtime): it changes when any file of the tree does.
    pub fn fingerprint(&self) -> u64 {
        self.fingerprint
    }

    /// How the copy holds `rel` (a path relative to the tree's top), as last synced.
    pub fn held(&self, rel: &str) -> Option<Held> {
        self.manifest.get(rel).map(|e| e.held)
    }

    /// The files among `rels` whose size or mtime in the user's tree is no
    /// longer what the last sync saw (edited during the build), or that are
    /// not in the tree at all.
    pub fn changed_since_sync<'a>(&self, rels: impl IntoIterator<Item = &'a str>) -> Vec<String> {
        rels.into_iter()
            .filter(|rel| {
                let now = fs::symlink_metadata(self.source.join(rel)).map(|m| Stamp::of(&m));
                self.manifest.get(*rel).map(|e| e.stamp) != now.ok()
            })
            .map(str::to_owned)
            .collect()
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

    fn read_dirty(&self) -> Vec<String> {
        fs::read_to_string(self.dirty_path())
            .map(|t| t.lines().map(str::to_owned).collect())
            .unwrap_or_default()
    }

    fn refresh(&mut self) -> Result<SyncStats, KbuildError> {
        let (old, trusted) = read_manifest(&self.manifest_path());
        let dirty: HashSet<String> = self.read_dirty().into_iter().collect();
        let configured = fs::metadata(self.source.join(".config"))
            .map(|m| Stamp::of(&m).mtime_ns)
            .unwrap_or(i128::MIN);
        let mut now = HashMap::with_capacity(old.len().max(1024));
        let mut stats = SyncStats::default();
        let source = self.source.clone();
        self.walk(&source, "", &mut |m, rel, name, meta, siblings| {
            let stamp = Stamp::of(meta);
            stats.files += 1;
            let want = if meta.file_type().is_symlink() {
                Held::Symlink
            } else if must_copy(rel, name, meta, siblings, configured) {
                Held::Copied
            } else {
                Held::Linked
            };
            let had = old.get(rel);
            let stale = had.map(|e| e.stamp) != Some(stamp)
                // A copy may stand where a link would do (links were
                // impossible): only a link that should be a copy is redone.
                || (had.map(|e| e.held) == Some(Held::Linked) && want != Held::Linked)
                || dirty.contains(rel)
                || (is_configuration(rel) && m.differs(rel, meta));
            let held = if stale {
                let held = m.place(rel, meta, want)?;
                match held {
                    Held::Linked => stats.linked += 1,
                    _ => stats.copied += 1,
                }
                held
            } else {
                had.map_or(want, |e| e.held)
            };
            now.insert(rel.to_owned(), Entry { stamp, held });
            Ok(())
        })?;
        for rel in old.keys().chain(dirty.iter()) {
            if !now.contains_key(rel) && fs::remove_file(self.root.join(rel)).is_ok() {
                stats.removed += 1;
            }
        }
        let changed = !trusted || stats.linked + stats.copied + stats.removed > 0 || old != now;
        self.manifest = now;
        self.fingerprint = fingerprint(&self.manifest);
        if changed {
            write_manifest(&self.manifest_path(), &self.manifest)?;
        }
        let _ = fs::remove_file(self.dirty_path());
        Ok(stats)
    }

    /// Whether the copy of the configuration file `rel` no longer has the
    /// user's content. An unchanged size and mtime mean the copy is the one
    /// graft made; else the contents are compared.
    fn differs(&self, rel: &str, meta: &fs::Metadata) -> bool {
        let copy = self.root.join(rel);
        if fs::symlink_metadata(&copy).is_ok_and(|c| Stamp::of(&c) == Stamp::of(meta)) {
            return false;
        }
        match (fs::read(self.source.join(rel)), fs::read(&copy)) {
            (Ok(a), Ok(b)) => a != b,
            _ => true,
        }
    }

    /// Puts the user's `rel` into the copy, held as `want` (a link falls
    /// back to a copy where it cannot be made). Every change is a rename
    /// over the old entry, or a new entry: a killed sync leaves either the
    /// old file or the new one.
    fn place(&mut self, rel: &str, meta: &fs::Metadata, want: Held) -> Result<Held, KbuildError> {
        let from = self.source.join(rel);
        let to = self.root.join(rel);
        let present = fs::symlink_metadata(&to).ok();
        if want == Held::Linked
            && present
                .as_ref()
                .is_some_and(|p| p.dev() == meta.dev() && p.ino() == meta.ino())
        {
            return Ok(Held::Linked); // already the user's inode
        }
        if present.is_none() {
            if let Some(dir) = to.parent() {
                fs::create_dir_all(dir).map_err(io(format!("cannot create {}", dir.display())))?;
            }
        }
        let tmp = to.with_file_name(format!(
            ".graft-tmp.{}",
            to.file_name().unwrap_or_default().to_string_lossy()
        ));
        // A new entry needs no temporary: link(2) and symlink(2) create it whole.
        let target = if present.is_some() { &tmp } else { &to };
        let _ = fs::remove_file(&tmp);
        let held = match want {
            Held::Symlink => {
                let link =
                    fs::read_link(&from).map_err(io(format!("cannot read {}", from.display())))?;
                std::os::unix::fs::symlink(link, target)
                    .map_err(io(format!("cannot create {}", target.display())))?;
                Held::Symlink
            }
            Held::Linked if !self.no_links => match fs::hard_link(&from, target) {
                Ok(()) => Held::Linked,
                Err(e) => {
                    // EXDEV: another filesystem, for every file alike.
                    if e.raw_os_error() == Some(18) {
                        self.no_links = true;
                    }
                    copy_file(&from, &tmp, meta, None)?;
                    fs::rename(&tmp, &to)
                        .map_err(io(format!("cannot rename to {}", to.display())))?;
                    return Ok(Held::Copied);
                }
            },
            _ => {
                let name = to.file_name().unwrap_or_default().to_string_lossy();
                // Whole directory names only: `/src/linux/` never matches `/src/linux2/`.
                let old = [self.source.as_os_str().as_encoded_bytes(), b"/"].concat();
                let new = [self.root.as_os_str().as_encoded_bytes(), b"/"].concat();
                let relocate = is_path_record(rel, &name).then_some((&old[..], &new[..]));
                copy_file(&from, &tmp, meta, relocate)?;
                fs::rename(&tmp, &to).map_err(io(format!("cannot rename to {}", to.display())))?;
                return Ok(Held::Copied);
            }
        };
        if present.is_some() {
            fs::rename(&tmp, &to).map_err(io(format!("cannot rename to {}", to.display())))?;
        }
        Ok(held)
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
        // Replaced, never written in place: the file may be a link to the user's.
        let tmp = new.with_file_name(format!(
            ".graft-tmp.{}",
            new.file_name().unwrap_or_default().to_string_lossy()
        ));
        let _ = fs::remove_file(&tmp);
        fs::write(&tmp, text).map_err(io(format!("cannot write {}", tmp.display())))?;
        fs::rename(&tmp, &new).map_err(io(format!("cannot write {}", new.display())))
    }

    fn run_patch(&self, patch: &SourcePatch, dry: bool) -> Result<(), KbuildError> {
        let mut cmd = std::process::Command::new("patch");
        // GNU patch writes each result to a new file renamed over the old
        // one: a hard link to the user's file is replaced, never written.
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

    /// Puts the patched files back as they are in the user's tree. Only the
    /// files the `dirty` list names changed since the sync.
    pub fn revert(&mut self) -> Result<(), KbuildError> {
        let configured = fs::metadata(self.source.join(".config"))
            .map(|m| Stamp::of(&m).mtime_ns)
            .unwrap_or(i128::MIN);
        for rel in self.read_dirty() {
            let from = self.source.join(&rel);
            match fs::symlink_metadata(&from) {
                Ok(meta) => {
                    let want = if meta.file_type().is_symlink() {
                        Held::Symlink
                    } else {
                        let dir = from.parent().unwrap_or(&self.source);
                        let siblings: HashSet<OsString> = fs::read_dir(dir)
                            .map(|d| d.flatten().map(|e| e.file_name()).collect())
                            .unwrap_or_default();
                        let name = from.file_name().unwrap_or_default().to_string_lossy();
                        if must_copy(&rel, &name, &meta, &siblings, configured) {
                            Held::Copied
                        } else {
                            Held::Linked
                        }
                    };
                    // Whatever the copy holds now is the patch's: replaced.
                    let held = self.place(&rel, &meta, want)?;
                    self.manifest.insert(
                        rel,
                        Entry {
                            stamp: Stamp::of(&meta),
                            held,
                        },
                    );
                }
                Err(_) => {
                    let _ = fs::remove_file(self.root.join(&rel));
                }
            }
        }
        let _ = fs::remove_file(self.dirty_path());
        Ok(())
    }

    /// Walks the user's tree (but `.git`), creating the copy's directories,
    /// and calls `f` with each file or symlink: its path, name, metadata
    /// and the names of its siblings.
    fn walk(&mut self, dir: &Path, rel: &str, f: &mut Visit<'_>) -> Result<(), KbuildError> {
        let entries: Vec<fs::DirEntry> = fs::read_dir(dir)
            .map_err(io(format!("cannot read {}", dir.display())))?
            .collect::<Result<_, _>>()
            .map_err(io(format!("cannot read {}", dir.display())))?;
        let names: HashSet<OsString> = entries.iter().map(|e| e.file_name()).collect();
        let copy_dir = self.root.join(rel);
        if let Err(e) = fs::create_dir(&copy_dir) {
            if e.kind() != std::io::ErrorKind::AlreadyExists {
                return Err(io(format!("cannot create {}", copy_dir.display()))(e));
            }
        }
        for e in entries {
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
            // Stat relative to the open directory: no path walk per file.
            let meta = e.metadata().map_err(io(format!("cannot stat {path}")))?;
            if meta.is_dir() {
                self.walk(&e.path(), &path, f)?;
            } else if meta.is_file() || meta.file_type().is_symlink() {
                f(self, &path, &name, &meta, &names)?;
            }
        }
        Ok(())
    }
}

/// What [`Mirror::walk`] calls with each file: the mirror, the file's path
/// and name, its metadata and the names beside it.
type Visit<'a> = dyn FnMut(&mut Mirror, &str, &str, &fs::Metadata, &HashSet<OsString>) -> Result<(), KbuildError>
    + 'a;

/// Whether the copy of `rel` must be a private copy rather than a hard link
/// to the user's file: anything kbuild (or a tool it runs) may write in
/// place. Each rule alone would catch most of kbuild's outputs; together
/// they leave links only for old files with a source's name and no build
/// record, which nothing in a build writes.
pub fn must_copy(
    rel: &str,
    name: &str,
    meta: &fs::Metadata,
    siblings: &HashSet<OsString>,
    configured_ns: i128,
) -> bool {
    /// Names of what kbuild and its tools produce (never a source's).
    const OUTPUTS: &[&str] = &[
        ".o", ".a", ".ko", ".so", ".mod", ".mod.c", ".s", ".lds", ".order", ".symvers", ".builtin",
        ".modinfo", ".tmp", ".d", ".cmd", ".i", ".lst", ".su", ".dwo", ".gcno", ".gz", ".xz",
        ".zst", ".lz4", ".lzo", ".bz2", ".lzma", ".bin", ".cpio", ".dtb", ".dtbo", ".elf", ".map",
        ".out", ".log", ".pem", ".x509",
    ];
    is_configuration(rel)
        // kbuild's records (.cmd, .d), stamps it touches, temporaries.
        || name.starts_with('.')
        // A target kbuild built: it records the command next to it.
        || siblings.contains(&OsString::from(format!(".{name}.cmd")))
        || OUTPUTS.iter().any(|e| name.ends_with(e))
        || name.starts_with("vmlinux")
        || name == "System.map"
        || name.starts_with("modules.")
        // Programs: the build's host tools (fixdep, objtool, modpost).
        || meta.mode() & 0o111 != 0
        // Made or changed since the tree was configured: by a build, or an
        // edit; a copy costs bytes, never safety.
        || Stamp::of(meta).mtime_ns >= configured_ns
}

/// Copies one file to `tmp`, keeping its mtime (kbuild compares times).
/// `relocate` replaces the user's tree's path in the copy by the copy's.
fn copy_file(
    from: &Path,
    tmp: &Path,
    meta: &fs::Metadata,
    relocate: Option<(&[u8], &[u8])>,
) -> Result<(), KbuildError> {
    let _ = fs::remove_file(tmp);
    let relocated = relocate.and_then(|(old, new)| {
        let bytes = fs::read(from).ok()?;
        let at = find(&bytes, old)?;
        let mut out = bytes[..at].to_vec();
        let mut rest = &bytes[at..];
        while let Some(i) = find(rest, old) {
            out.extend_from_slice(&rest[..i]);
            out.extend_from_slice(new);
            rest = &rest[i + old.len()..];
        }
        out.extend_from_slice(rest);
        Some(out)
    });
    match relocated {
        Some(bytes) => {
            fs::write(tmp, bytes).map_err(io(format!("cannot write {}", tmp.display())))?
        }
        None => {
            fs::copy(from, tmp).map_err(io(format!("cannot copy {}", from.display())))?;
        }
    }
    let mtime = UNIX_EPOCH + Duration::new(meta.mtime() as u64, meta.mtime_nsec() as u32);
    File::options()
        .write(true)
        .open(tmp)
        .and_then(|f| f.set_modified(mtime))
        .map_err(io(format!("cannot set the time of {}", tmp.display())))
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() {
        return None;
    }
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Whether `rel` is a build record that may name the tree by its absolute
/// path: the tools' builds (objtool, resolve_btfids) record commands and
/// dependencies that way. Its copy names the copy instead, so that make sees
/// the tools it already built as built, and does not build them again for
/// the copy's other path.
fn is_path_record(rel: &str, name: &str) -> bool {
    name.starts_with('.')
        && (name.ends_with(".cmd") || name.ends_with(".d"))
        && !is_configuration(rel)
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

/// The manifest, and whether it was written by this version of graft.
fn read_manifest(path: &Path) -> (HashMap<String, Entry>, bool) {
    let Ok(text) = fs::read_to_string(path) else {
        return (HashMap::new(), false);
    };
    let mut lines = text.lines();
    if lines.next() != Some(MANIFEST_HEADER) {
        return (HashMap::new(), false);
    }
    let m = lines
        .filter_map(|l| {
            let mut it = l.splitn(4, ' ');
            let mtime_ns = it.next()?.parse().ok()?;
            let size = it.next()?.parse().ok()?;
            let held = Held::from_tag(it.next()?)?;
            Some((
                it.next()?.to_owned(),
                Entry {
                    stamp: Stamp { size, mtime_ns },
                    held,
                },
            ))
        })
        .collect();
    (m, true)
}

fn write_manifest(path: &Path, m: &HashMap<String, Entry>) -> Result<(), KbuildError> {
    let mut text = String::with_capacity(m.len() * 64);
    text.push_str(MANIFEST_HEADER);
    text.push('\n');
    for (k, e) in m {
        text.push_str(&format!(
            "{} {} {} {k}\n",
            e.stamp.mtime_ns,
            e.stamp.size,
            e.held.tag()
        ));
    }
    let tmp = path.with_extension("tmp");
    fs::write(&tmp, text).map_err(io("cannot write the mirror manifest"))?;
    fs::rename(&tmp, path).map_err(io("cannot write the mirror manifest"))
}

/// The tree's fingerprint: each file's path, size and mtime hashed, and the
/// hashes summed, so the walk's order does not matter.
fn fingerprint(m: &HashMap<String, Entry>) -> u64 {
    m.iter().fold(0u64, |acc, (rel, e)| {
        let h = fnv(rel.as_bytes())
            ^ mix(e.stamp.size)
            ^ mix(e.stamp.mtime_ns as u64).rotate_left(17)
            ^ mix((e.stamp.mtime_ns >> 64) as u64).rotate_left(41);
        acc.wrapping_add(mix(h))
    })
}

/// splitmix64's finalizer: spreads every input bit over the output.
fn mix(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// FNV-1a: a stable name for a tree path (no cryptographic need).
fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::time::SystemTime;

    /// Writes `rel` under `root` with mtime `age` seconds ago (0: now).
    pub(crate) fn put(root: &Path, rel: &str, text: &str, age: u64) {
        let p = root.join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        let _ = fs::remove_file(&p); // replaced, never written in place
        fs::write(&p, text).unwrap();
        let t = SystemTime::now() - Duration::from_secs(age);
        File::options()
            .write(true)
            .open(&p)
            .unwrap()
            .set_modified(t)
            .unwrap();
    }

    /// A configured, prepared tree as `KernelTree::open` checks it: the
    /// sources unpacked long ago, then configured, then a build's outputs.
    pub(crate) fn fake_tree(root: &Path) -> KernelTree {
        put(
            root,
            "Makefile",
            "VERSION = 6\nPATCHLEVEL = 1\nSUBLEVEL = 0\n",
            9000,
        );
        put(root, "Kbuild", "", 9000);
        put(root, "arch/x86/Kconfig", "", 9000);
        put(root, "fs/proc/version.c", "int v;\n", 9000);
        put(root, "fs/proc/internal.h", "/* internal */\n", 9000);
        put(root, "scripts/checkpatch.pl", "#!/usr/bin/perl\n", 9000);
        let p = root.join("scripts/checkpatch.pl");
        fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        put(
            root,
            "lib/crc32table.h",
            "/* generated, no record */\n",
            9000,
        );
        put(root, ".config", "CONFIG_CC_IS_GCC=y\nCONFIG_X=y\n", 100);
        put(root, "include/config/auto.conf", "CONFIG_X=y\n", 90);
        put(
            root,
            "include/generated/autoconf.h",
            "#define CONFIG_X 1\n",
            90,
        );
        put(root, "scripts/basic/fixdep", "ELF", 90);
        put(
            root,
            "scripts/basic/.fixdep.cmd",
            "cmd_scripts/basic/fixdep := gcc\n",
            90,
        );
        put(
            root,
            "scripts/mod/elfconfig.h",
            "#define KERNEL_ELFCLASS 2\n",
            95,
        );
        put(
            root,
            "scripts/mod/.elfconfig.h.cmd",
            "cmd := mk_elfconfig\n",
            95,
        );
        put(root, "fs/proc/version.o", "ELF", 80);
        let rec = format!(
            "cmd_{0}/tools/objtool/check.o := gcc -o {0}/tools/objtool/check.o\n",
            root.display()
        );
        put(root, "tools/objtool/.check.o.cmd", &rec, 80);
        KernelTree::open(root).unwrap()
    }

    fn ino(p: &Path) -> u64 {
        fs::metadata(p).unwrap().ino()
    }

    #[test]
    fn links_sources_and_copies_what_kbuild_writes() {
        let d = tempfile::tempdir().unwrap();
        let tree = fake_tree(&d.path().join("linux"));
        let (m, stats) = Mirror::sync(&tree, &d.path().join("cache")).unwrap();
        let linked = [
            "Makefile",
            "Kbuild",
            "fs/proc/version.c",
            "lib/crc32table.h",
        ];
        for rel in linked {
            assert_eq!(m.held(rel), Some(Held::Linked), "{rel}");
            assert_eq!(ino(&m.root.join(rel)), ino(&tree.root.join(rel)), "{rel}");
        }
        let copied = [
            ".config",                      // configuration
            "include/config/auto.conf",     // configuration
            "include/generated/autoconf.h", // generated
            "scripts/basic/fixdep",         // a program kbuild built
            "scripts/basic/.fixdep.cmd",    // kbuild's record
            "scripts/mod/elfconfig.h",      // has a record: kbuild writes it
            "fs/proc/version.o",            // an output
            "scripts/checkpatch.pl",        // executable
        ];
        for rel in copied {
            assert_eq!(m.held(rel), Some(Held::Copied), "{rel}");
            assert_ne!(ino(&m.root.join(rel)), ino(&tree.root.join(rel)), "{rel}");
            assert_eq!(
                fs::read(m.root.join(rel)).unwrap(),
                fs::read(tree.root.join(rel)).unwrap(),
                "{rel}"
            );
        }
        assert_eq!(stats.linked, 4 + 2, "{stats:?}"); // and arch/x86/Kconfig, internal.h
                                                      // A tool's record names the copy, not the user's tree.
        let rec = fs::read_to_string(m.root.join("tools/objtool/.check.o.cmd")).unwrap();
        assert!(rec.contains(&format!("{}/tools/objtool/check.o", m.root.display())));
        assert!(!rec.contains(&tree.root.display().to_string()), "{rec}");
    }

    #[test]
    fn a_file_newer_than_the_config_is_copied() {
        let d = tempfile::tempdir().unwrap();
        let tree = fake_tree(&d.path().join("linux"));
        put(&tree.root, "fs/proc/cmdline.c", "int c;\n", 0);
        let (m, _) = Mirror::sync(&tree, &d.path().join("cache")).unwrap();
        assert_eq!(m.held("fs/proc/cmdline.c"), Some(Held::Copied));
    }

    #[test]
    fn warm_sync_places_nothing_and_edits_are_followed() {
        let d = tempfile::tempdir().unwrap();
        let tree = fake_tree(&d.path().join("linux"));
        let cache = d.path().join("cache");
        let fp = {
            let (m, _) = Mirror::sync(&tree, &cache).unwrap();
            m.fingerprint()
        };
        let (m, stats) = Mirror::sync(&tree, &cache).unwrap();
        assert_eq!(stats.linked + stats.copied + stats.removed, 0, "{stats:?}");
        assert_eq!(m.fingerprint(), fp);
        drop(m);
        // The user replaces a file (as editors do) and removes another.
        put(&tree.root, "fs/proc/version.c", "int v2;\n", 9000);
        fs::remove_file(tree.root.join("Kbuild")).unwrap();
        let (m, stats) = Mirror::sync(&tree, &cache).unwrap();
        assert_ne!(m.fingerprint(), fp);
        assert_eq!(stats.removed, 1);
        assert!(!m.root.join("Kbuild").exists());
        let rel = "fs/proc/version.c";
        assert_eq!(ino(&m.root.join(rel)), ino(&tree.root.join(rel)));
        assert_eq!(fs::read_to_string(m.root.join(rel)).unwrap(), "int v2;\n");
    }

    #[test]
    fn configuration_rewritten_in_the_copy_is_restored() {
        let d = tempfile::tempdir().unwrap();
        let tree = fake_tree(&d.path().join("linux"));
        let cache = d.path().join("cache");
        let root = Mirror::sync(&tree, &cache).unwrap().0.root.clone();
        put(
            &root,
            "include/generated/autoconf.h",
            "#define CONFIG_Y 1\n",
            0,
        );
        let (m, _) = Mirror::sync(&tree, &cache).unwrap();
        assert_eq!(
            fs::read_to_string(m.root.join("include/generated/autoconf.h")).unwrap(),
            "#define CONFIG_X 1\n"
        );
    }

    fn patch_file(dir: &Path) -> SourcePatch {
        let p = dir.join("fix.patch");
        fs::write(
            &p,
            "--- a/fs/proc/version.c\n+++ b/fs/proc/version.c\n@@ -1 +1 @@\n-int v;\n+int v = 1;\n",
        )
        .unwrap();
        SourcePatch::read(&p).unwrap()
    }

    #[test]
    fn patching_replaces_the_link_and_revert_restores_it() {
        let d = tempfile::tempdir().unwrap();
        let tree = fake_tree(&d.path().join("linux"));
        let rel = "fs/proc/version.c";
        let user = tree.root.join(rel);
        let (before, user_ino) = (fs::read(&user).unwrap(), ino(&user));
        let (mut m, _) = Mirror::sync(&tree, &d.path().join("cache")).unwrap();
        m.apply(&patch_file(d.path())).unwrap();
        assert_eq!(
            fs::read_to_string(m.root.join(rel)).unwrap(),
            "int v = 1;\n"
        );
        assert_ne!(ino(&m.root.join(rel)), user_ino);
        assert_eq!(
            fs::read(&user).unwrap(),
            before,
            "the user's file was written"
        );
        m.revert().unwrap();
        assert_eq!(ino(&m.root.join(rel)), user_ino);
        assert_eq!(fs::read(&user).unwrap(), before);
    }

    #[test]
    fn a_build_killed_while_patched_is_reverted_by_the_next_sync() {
        let d = tempfile::tempdir().unwrap();
        let tree = fake_tree(&d.path().join("linux"));
        let cache = d.path().join("cache");
        let rel = "fs/proc/version.c";
        {
            let (m, _) = Mirror::sync(&tree, &cache).unwrap();
            m.apply(&patch_file(d.path())).unwrap();
            // Dropped without revert: the process was killed.
        }
        let (m, _) = Mirror::sync(&tree, &cache).unwrap();
        assert_eq!(ino(&m.root.join(rel)), ino(&tree.root.join(rel)));
        assert_eq!(fs::read_to_string(m.root.join(rel)).unwrap(), "int v;\n");
    }

    #[test]
    fn a_copy_made_by_an_older_graft_is_replaced_by_links() {
        let d = tempfile::tempdir().unwrap();
        let tree = fake_tree(&d.path().join("linux"));
        let cache = d.path().join("cache");
        let state = Mirror::sync(&tree, &cache).unwrap().0.state.clone();
        // The old manifest format: "mtime size path", byte copies.
        fs::write(state.join("manifest"), "1 2 Makefile\n").unwrap();
        let rel = "fs/proc/version.c";
        let copy = state.join("tree").join(rel);
        fs::remove_file(&copy).unwrap();
        fs::copy(tree.root.join(rel), &copy).unwrap();
        let (m, _) = Mirror::sync(&tree, &cache).unwrap();
        assert_eq!(ino(&m.root.join(rel)), ino(&tree.root.join(rel)));
    }
}
