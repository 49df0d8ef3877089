//! Objects built once per tree state and kept: the original side of a
//! build does not change between two fixes to the same kernel.
//!
//! An object is determined by the tree it is compiled in (every source,
//! header and configuration file: the mirror's fingerprint covers them all),
//! by how kbuild is run (the make variables, graft's flags) and by the
//! toolchain. The cache key is made of exactly these, so any edit to the
//! tree, another config, other flags or another compiler finds nothing kept
//! and compiles again. Kept objects live in the mirror's state directory,
//! one directory per key; the few most recently used keys are kept.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::compile::{Linkage, KCFLAGS};
use crate::mirror::Mirror;
use crate::{io, KbuildError};

/// Bumped when graft changes how it compiles objects: older ones are not reused.
const FORMAT: &str = "graft-objects 1";

/// How many tree states' objects are kept (the current one included).
const KEEP: usize = 4;

/// The objects kept for one tree state, compiler and set of flags.
pub struct ObjectCache {
    dir: PathBuf,
    key: u64,
}

impl ObjectCache {
    /// The cache for the mirror's tree as last synced, compiled with
    /// `make_vars` (which name the compiler, when it is not `gcc`).
    pub fn open(mirror: &Mirror, make_vars: &[String]) -> Result<ObjectCache, KbuildError> {
        let compiler = make_vars
            .iter()
            .find_map(|v| v.strip_prefix("CC="))
            .unwrap_or("gcc");
        let mut text = format!(
            "{FORMAT}\n{:016x}\nKCFLAGS={KCFLAGS}\n",
            mirror.fingerprint()
        );
        for v in make_vars {
            text.push_str(v);
            text.push('\n');
        }
        for tool in [compiler, "as"] {
            text.push_str(&toolchain_stamp(tool));
            text.push('\n');
        }
        let key = fnv(text.as_bytes());
        let base = mirror.state_dir().join("objects");
        let dir = base.join(format!("{key:016x}"));
        fs::create_dir_all(&dir).map_err(io(format!("cannot create {}", dir.display())))?;
        // What the key was made of, for whoever wonders why it missed.
        let _ = fs::write(dir.join("key"), &text);
        fs::write(dir.join("used"), b"").map_err(io("cannot write the object cache"))?;
        prune(&base);
        Ok(ObjectCache { dir, key })
    }

    /// The key of this tree state, toolchain and flags.
    pub fn key(&self) -> u64 {
        self.key
    }

    /// Copies the kept `object` (a path like `fs/proc/version.o`) and
    /// kbuild's record of it to `to`; `None` when it is not kept.
    pub fn get(&self, object: &str, to: &Path) -> Result<Option<Linkage>, KbuildError> {
        let kept = self.dir.join(object);
        let linkage = match fs::read_to_string(marker(&kept)).as_deref() {
            Ok("builtin") => Linkage::BuiltIn,
            Ok("module") => Linkage::Module,
            _ => return Ok(None),
        };
        if let Some(dir) = to.parent() {
            fs::create_dir_all(dir).map_err(io(format!("cannot create {}", dir.display())))?;
        }
        fs::copy(&kept, to).map_err(io(format!("cannot copy {}", kept.display())))?;
        let record = record_of(&kept);
        if record.is_file() {
            fs::copy(&record, record_of(to))
                .map_err(io(format!("cannot copy {}", record.display())))?;
        }
        Ok(Some(linkage))
    }

    /// Keeps `object`, built at `built` (with kbuild's record next to it).
    /// The marker is written last: an interrupted put keeps nothing.
    pub fn put(&self, object: &str, built: &Path, linkage: Linkage) -> Result<(), KbuildError> {
        let kept = self.dir.join(object);
        if let Some(dir) = kept.parent() {
            fs::create_dir_all(dir).map_err(io(format!("cannot create {}", dir.display())))?;
        }
        let _ = fs::remove_file(marker(&kept));
        copy_atomic(built, &kept)?;
        let record = record_of(built);
        if record.is_file() {
            copy_atomic(&record, &record_of(&kept))?;
        }
        let what = match linkage {
            Linkage::BuiltIn => "builtin",
            Linkage::Module => "module",
        };
        write_atomic(&marker(&kept), what.as_bytes())
    }

    /// Bytes kept under `name` (a probe's object), if any.
    pub fn get_bytes(&self, name: &str) -> Option<Vec<u8>> {
        fs::read(self.dir.join("blobs").join(name)).ok()
    }

    /// Keeps `bytes` under `name`.
    pub fn put_bytes(&self, name: &str, bytes: &[u8]) -> Result<(), KbuildError> {
        let dir = self.dir.join("blobs");
        fs::create_dir_all(&dir).map_err(io(format!("cannot create {}", dir.display())))?;
        write_atomic(&dir.join(name), bytes)
    }
}

/// The files of the tree an object was compiled from, as kbuild recorded
/// them next to it (`source_` and `deps_` of its `.cmd`), relative to the
/// tree's top; files outside the tree (the compiler's) are left out.
pub fn sources_of(built: &Path) -> Vec<String> {
    let Ok(text) = fs::read_to_string(record_of(built)) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    let mut in_deps = false;
    for line in text.lines() {
        let item = if let Some(rest) = line.strip_prefix("source_") {
            in_deps = false;
            rest.split_once(" := ").map(|(_, v)| v)
        } else if line.starts_with("deps_") {
            in_deps = line.trim_end().ends_with('\\');
            None
        } else if in_deps {
            in_deps = line.trim_end().ends_with('\\');
            Some(line)
        } else {
            None
        };
        let Some(item) = item else { continue };
        let p = item.trim().trim_end_matches('\\').trim();
        if !p.is_empty() && !p.starts_with('/') && !p.starts_with('$') {
            out.push(p.trim_start_matches("./").to_owned());
        }
    }
    out
}

/// kbuild's record of an object: `dir/.name.o.cmd`.
fn record_of(object: &Path) -> PathBuf {
    let name = object
        .file_name()
        .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
    object.with_file_name(format!(".{name}.cmd"))
}

fn marker(kept: &Path) -> PathBuf {
    let name = kept
        .file_name()
        .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
    kept.with_file_name(format!("{name}.linkage"))
}

fn copy_atomic(from: &Path, to: &Path) -> Result<(), KbuildError> {
    let tmp = to.with_extension("graft-tmp");
    fs::copy(from, &tmp).map_err(io(format!("cannot copy {}", from.display())))?;
    fs::rename(&tmp, to).map_err(io(format!("cannot write {}", to.display())))
}

fn write_atomic(to: &Path, bytes: &[u8]) -> Result<(), KbuildError> {
    let tmp = to.with_extension("graft-tmp");
    fs::write(&tmp, bytes).map_err(io(format!("cannot write {}", tmp.display())))?;
    fs::rename(&tmp, to).map_err(io(format!("cannot write {}", to.display())))
}

/// Which program `tool` is (found in `PATH`, links followed) and its size
/// and mtime: a compiler upgraded in place changes it.
pub(crate) fn toolchain_stamp(tool: &str) -> String {
    let found = if tool.contains('/') {
        Some(PathBuf::from(tool))
    } else {
        std::env::var_os("PATH").and_then(|path| {
            std::env::split_paths(&path)
                .map(|d| d.join(tool))
                .find(|p| p.is_file())
        })
    };
    match found.and_then(|p| p.canonicalize().ok()) {
        Some(p) => match fs::metadata(&p) {
            Ok(m) => format!("{tool}={} {} {}", p.display(), m.len(), m.mtime()),
            Err(_) => format!("{tool}={}", p.display()),
        },
        None => format!("{tool}=?"),
    }
}

/// Removes all but the [`KEEP`] most recently used key directories.
fn prune(base: &Path) {
    let Ok(entries) = fs::read_dir(base) else {
        return;
    };
    let mut dirs: Vec<(std::time::SystemTime, PathBuf)> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .map(|p| {
            let used = fs::metadata(p.join("used"))
                .and_then(|m| m.modified())
                .unwrap_or(std::time::UNIX_EPOCH);
            (used, p)
        })
        .collect();
    dirs.sort_by_key(|d| std::cmp::Reverse(d.0));
    for (_, p) in dirs.into_iter().skip(KEEP) {
        let _ = fs::remove_dir_all(p);
    }
}

pub(crate) fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mirror::tests::{fake_tree, put};

    /// Keeps a fake original of `fs/proc/version.o` for the tree's state.
    fn keep(mirror: &Mirror, vars: &[String]) {
        let built = mirror.root.join("fs/proc/version.o");
        fs::write(&built, b"ORIG").unwrap();
        let c = ObjectCache::open(mirror, vars).unwrap();
        c.put("fs/proc/version.o", &built, Linkage::BuiltIn)
            .unwrap();
    }

    fn kept(mirror: &Mirror, vars: &[String], to: &Path) -> Option<Linkage> {
        let _ = fs::remove_file(to);
        let c = ObjectCache::open(mirror, vars).unwrap();
        let got = c.get("fs/proc/version.o", to).unwrap();
        if got.is_some() {
            assert_eq!(fs::read(to).unwrap(), b"ORIG");
        }
        got
    }

    #[test]
    fn kept_originals_are_found_for_the_same_tree_state_only() {
        let d = tempfile::tempdir().unwrap();
        let tree = fake_tree(&d.path().join("linux"));
        let cache = d.path().join("cache");
        let to = d.path().join("orig/version.o");
        let vars = tree.make_vars.clone();
        keep(&Mirror::sync(&tree, &cache).unwrap().0, &vars);
        let m = Mirror::sync(&tree, &cache).unwrap().0;
        assert_eq!(kept(&m, &vars, &to), Some(Linkage::BuiltIn));
        // Other make variables (another release) are another build.
        let other = vec!["KERNELRELEASE=6.1.0-99-amd64".to_owned()];
        assert_eq!(kept(&m, &other, &to), None);
        drop(m);

        // An edited header the object includes: compiled again.
        put(&tree.root, "fs/proc/internal.h", "/* edited */\n", 9000);
        let m = Mirror::sync(&tree, &cache).unwrap().0;
        assert_eq!(kept(&m, &vars, &to), None);
        keep(&m, &vars);
        assert_eq!(kept(&m, &vars, &to), Some(Linkage::BuiltIn));
        drop(m);

        // Another config: compiled again.
        put(
            &tree.root,
            ".config",
            "CONFIG_CC_IS_GCC=y\nCONFIG_X=n\n",
            100,
        );
        let m = Mirror::sync(&tree, &cache).unwrap().0;
        assert_eq!(kept(&m, &vars, &to), None);
    }

    #[test]
    fn an_interrupted_put_keeps_nothing() {
        let d = tempfile::tempdir().unwrap();
        let tree = fake_tree(&d.path().join("linux"));
        let m = Mirror::sync(&tree, &d.path().join("cache")).unwrap().0;
        let vars = tree.make_vars.clone();
        keep(&m, &vars);
        let c = ObjectCache::open(&m, &vars).unwrap();
        // The object is there but its marker is not (killed before the end).
        fs::remove_file(c.dir.join("fs/proc/version.o.linkage")).unwrap();
        assert_eq!(kept(&m, &vars, &d.path().join("o")), None);
    }

    #[test]
    fn only_the_most_recent_tree_states_are_kept() {
        let d = tempfile::tempdir().unwrap();
        let tree = fake_tree(&d.path().join("linux"));
        let cache = d.path().join("cache");
        for i in 0..KEEP + 2 {
            put(
                &tree.root,
                "fs/proc/internal.h",
                &format!("/* {i} */\n"),
                9000,
            );
            let m = Mirror::sync(&tree, &cache).unwrap().0;
            keep(&m, &tree.make_vars);
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let m = Mirror::sync(&tree, &cache).unwrap().0;
        let n = fs::read_dir(m.state_dir().join("objects")).unwrap().count();
        assert_eq!(n, KEEP);
    }

    #[test]
    fn sources_come_from_kbuilds_record() {
        let d = tempfile::tempdir().unwrap();
        let o = d.path().join("version.o");
        fs::write(
            d.path().join(".version.o.cmd"),
            "cmd_fs/proc/version.o := gcc -c x\n\nsource_fs/proc/version.o := fs/proc/version.c\n\ndeps_fs/proc/version.o := \\\n  include/linux/compiler-version.h \\\n    $(wildcard include/config/CC_VERSION_TEXT) \\\n  /usr/lib/gcc/x86_64-linux-gnu/12/include/stdarg.h \\\n  fs/proc/internal.h \\\n\nfs/proc/version.o: $(deps_fs/proc/version.o)\n",
        )
        .unwrap();
        assert_eq!(
            sources_of(&o),
            vec![
                "fs/proc/version.c",
                "include/linux/compiler-version.h",
                "fs/proc/internal.h"
            ]
        );
    }
}
