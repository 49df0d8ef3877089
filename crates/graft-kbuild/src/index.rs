//! Which translation units the target's build has, and which headers each
//! includes — without building the kernel.
//!
//! The units come from kbuild itself: `make -n` (nothing is run) of
//! `vmlinux` and `modules` prints the compile command of every object this
//! config builds, with `-W include/linux/kconfig.h` so that objects already
//! built count as stale. The includes come from scanning the `#include`
//! lines of each unit's source and of every header they reach, resolved
//! against the units' include paths. The scan ignores `#if`, so it finds
//! every header a unit may include under any config: a superset, which is
//! the safe side (a header change compiles a unit too many, never one too
//! few). An include through a macro (`#include TRACE_INCLUDE(...)`) cannot
//! be resolved by reading; the files it names are included by their name
//! elsewhere (trace headers by the `.c` that defines the events).

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::path::Path;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::{io, KbuildError};

/// One object the target's build compiles.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnitInfo {
    /// `fs/proc/cmdline.o`
    pub object: String,
    /// `fs/proc/cmdline.c`
    pub source: String,
    /// Part of a loadable module (`-DMODULE`).
    pub module: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Index {
    pub units: Vec<UnitInfo>,
    /// Every scanned file (tree-relative), and the files it includes.
    files: Vec<String>,
    includes: Vec<Vec<u32>>,
    /// How long building the index took.
    pub seconds: f64,
}

/// The compile commands of a `make -n` listing, cut into what the index needs.
#[derive(Debug, Default)]
struct Listing {
    units: Vec<UnitInfo>,
    /// Per unit: forced includes (`-include`), then its own `-I` directories.
    forced: Vec<Vec<String>>,
    dirs: Vec<Vec<String>>,
}

fn parse_listing(text: &str) -> Listing {
    let mut out = Listing::default();
    let mut seen = BTreeSet::new();
    for line in text.lines() {
        for cmd in line.split(';') {
            let words: Vec<&str> = cmd.split_whitespace().collect();
            let Some(c) = words.iter().position(|w| *w == "-c") else {
                continue;
            };
            let (Some(&"-o"), Some(obj), Some(src)) =
                (words.get(c + 1), words.get(c + 2), words.get(c + 3))
            else {
                continue;
            };
            if !obj.ends_with(".o") || !src.ends_with(".c") {
                continue;
            }
            let obj = obj.trim_start_matches("./");
            if !seen.insert(obj.to_owned()) {
                continue;
            }
            let mut forced = Vec::new();
            let mut dirs = Vec::new();
            let mut i = 0;
            while i < words.len() {
                let w = words[i];
                if w == "-include" {
                    if let Some(f) = words.get(i + 1) {
                        forced.push(f.trim_start_matches("./").to_owned());
                    }
                    i += 1;
                } else if let Some(d) = w.strip_prefix("-I") {
                    let d = if d.is_empty() {
                        i += 1;
                        words.get(i).copied().unwrap_or("")
                    } else {
                        d
                    };
                    dirs.push(normalize(d.trim_start_matches("./")));
                }
                i += 1;
            }
            out.units.push(UnitInfo {
                object: obj.to_owned(),
                source: src.trim_start_matches("./").to_owned(),
                module: words.contains(&"-DMODULE"),
            });
            out.forced.push(forced);
            out.dirs.push(dirs);
        }
    }
    out
}

/// `a/./b/../c` → `a/c`, tree-relative.
fn normalize(p: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for c in p.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            c => parts.push(c),
        }
    }
    parts.join("/")
}

/// The `#include` lines of a C file: (name, quoted).
fn scan_includes(text: &[u8]) -> Vec<(String, bool)> {
    let mut out = Vec::new();
    for line in text.split(|&b| b == b'\n') {
        let l = line.trim_ascii_start();
        let Some(rest) = l.strip_prefix(b"#") else {
            continue;
        };
        let Some(rest) = rest.trim_ascii_start().strip_prefix(b"include") else {
            continue;
        };
        let rest = rest.trim_ascii_start();
        let (close, quoted) = match rest.first() {
            Some(b'"') => (b'"', true),
            Some(b'<') => (b'>', false),
            _ => continue, // through a macro: see the module documentation
        };
        if let Some(end) = rest[1..].iter().position(|&b| b == close) {
            out.push((
                String::from_utf8_lossy(&rest[1..1 + end]).into_owned(),
                quoted,
            ));
        }
    }
    out
}

impl Index {
    /// Lists the units with `make -n` in `root` (a prepared tree) and scans
    /// their includes.
    pub fn build(root: &Path, make_vars: &[String]) -> Result<Index, KbuildError> {
        let start = Instant::now();
        let out = crate::buildroot::command_in(root, "make", &[], None)
            .arg("-C")
            .arg(root)
            .args(["-n", "-k", "-W", "include/linux/kconfig.h"])
            .args(make_vars)
            .args(["vmlinux", "modules"])
            .env_remove("MAKEFLAGS")
            .env_remove("KCFLAGS")
            .env("LC_ALL", "C")
            .output()
            .map_err(io("cannot run make"))?;
        let listing = parse_listing(&String::from_utf8_lossy(&out.stdout));
        if listing.units.is_empty() {
            return Err(KbuildError::Compile {
                what: "the list of the build's objects (make -n)".into(),
                first_error: crate::first_error(&String::from_utf8_lossy(&out.stderr)),
                log: root.join(".config"),
                hint: "check that the tree is configured and prepared".into(),
            });
        }
        let mut idx = Self::scan(root, listing);
        idx.seconds = start.elapsed().as_secs_f64();
        Ok(idx)
    }

    fn scan(root: &Path, l: Listing) -> Index {
        let mut sc = Scanner::new(root, &l);
        for u in &l.units {
            sc.id_of(&u.source);
        }
        let forced: BTreeSet<&String> = l.forced.iter().flatten().collect();
        for f in &forced {
            sc.id_of(f);
        }
        while let Some(id) = sc.queue.pop_front() {
            sc.scan_file(id);
        }
        // Forced includes are included by every unit's source.
        let forced_ids: Vec<u32> = forced
            .iter()
            .filter_map(|f| sc.ids.get(*f).copied())
            .collect();
        for u in &l.units {
            if let Some(&s) = sc.ids.get(&u.source) {
                let inc = &mut sc.includes[s as usize];
                inc.extend(&forced_ids);
                inc.sort_unstable();
                inc.dedup();
            }
        }
        Index {
            units: l.units,
            files: sc.files,
            includes: sc.includes,
            seconds: 0.0,
        }
    }

    /// The unit compiled to `object`, if the target's build has it.
    pub fn unit(&self, object: &str) -> Option<&UnitInfo> {
        self.units.iter().find(|u| u.object == object)
    }

    /// Every file the units include (tree-relative), their sources too.
    pub fn files(&self) -> &[String] {
        &self.files
    }

    /// Each file's position in `files`.
    fn file_ids(&self) -> HashMap<&str, usize> {
        self.files
            .iter()
            .enumerate()
            .map(|(i, f)| (f.as_str(), i))
            .collect()
    }

    /// The files the units of `objects` include, directly or not, their
    /// sources too.
    pub fn closure_of(&self, objects: &[String]) -> Vec<&str> {
        let ids = self.file_ids();
        let mut reached = vec![false; self.files.len()];
        let mut queue: VecDeque<usize> = self
            .units
            .iter()
            .filter(|u| objects.contains(&u.object))
            .filter_map(|u| ids.get(u.source.as_str()).copied())
            .collect();
        for &q in &queue {
            reached[q] = true;
        }
        while let Some(f) = queue.pop_front() {
            for &i in &self.includes[f] {
                if !reached[i as usize] {
                    reached[i as usize] = true;
                    queue.push_back(i as usize);
                }
            }
        }
        (0..self.files.len())
            .filter(|&i| reached[i])
            .map(|i| self.files[i].as_str())
            .collect()
    }

    /// The units that include `header` (tree-relative), directly or not.
    pub fn includers(&self, header: &str) -> Vec<&UnitInfo> {
        self.includers_of(|f| f == header)
    }

    /// The units that include, directly or not, a file `wanted` names (or
    /// whose source it names).
    pub fn includers_of(&self, wanted: impl Fn(&str) -> bool) -> Vec<&UnitInfo> {
        let targets: Vec<usize> = (0..self.files.len())
            .filter(|&i| wanted(&self.files[i]))
            .collect();
        if targets.is_empty() {
            return Vec::new();
        }
        let mut users: Vec<Vec<u32>> = vec![Vec::new(); self.files.len()];
        for (f, inc) in self.includes.iter().enumerate() {
            for &i in inc {
                users[i as usize].push(f as u32);
            }
        }
        let mut reached = vec![false; self.files.len()];
        let mut queue: VecDeque<u32> = targets.iter().map(|&t| t as u32).collect();
        for &t in &targets {
            reached[t] = true;
        }
        while let Some(f) = queue.pop_front() {
            for &u in &users[f as usize] {
                if !reached[u as usize] {
                    reached[u as usize] = true;
                    queue.push_back(u);
                }
            }
        }
        let by_source = self.file_ids();
        self.units
            .iter()
            .filter(|u| {
                by_source
                    .get(u.source.as_str())
                    .is_some_and(|&i| reached[i])
            })
            .collect()
    }

    /// Loads the index cached under `dir` for `key`, or builds and caches it.
    /// Returns whether it was built now.
    pub fn cached(
        dir: &Path,
        key: u64,
        root: &Path,
        make_vars: &[String],
    ) -> Result<(Index, bool), KbuildError> {
        let path = dir.join(format!("index-{key:016x}.json"));
        if let Ok(text) = std::fs::read(&path) {
            if let Ok(idx) = serde_json::from_slice::<Index>(&text) {
                return Ok((idx, false));
            }
        }
        let idx = Self::build(root, make_vars)?;
        // Older indexes describe trees that are gone.
        if let Ok(entries) = std::fs::read_dir(dir) {
            for e in entries.flatten() {
                let n = e.file_name().to_string_lossy().into_owned();
                if n.starts_with("index-") && n.ends_with(".json") {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
        let bytes = serde_json::to_vec(&idx).expect("the index serializes");
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, bytes).map_err(io("cannot write the unit index"))?;
        std::fs::rename(&tmp, &path).map_err(io("cannot write the unit index"))?;
        Ok((idx, true))
    }
}

/// The include scan: files found so far, their includes, and what is left
/// to read.
struct Scanner<'r> {
    root: &'r Path,
    /// Directories every unit searches (the kernel's LINUXINCLUDE, the same
    /// for all) in order, and the union of the others.
    common: Vec<String>,
    extra: BTreeSet<String>,
    files: Vec<String>,
    ids: HashMap<String, u32>,
    includes: Vec<Vec<u32>>,
    queue: VecDeque<u32>,
    exists: HashMap<String, bool>,
    /// `<x>` resolves the same from every file; `"x"` too once the
    /// including file's own directory does not have it.
    global: HashMap<String, Vec<String>>,
}

impl<'r> Scanner<'r> {
    fn new(root: &'r Path, l: &Listing) -> Self {
        let common: Vec<String> = l
            .dirs
            .first()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .filter(|d| l.dirs.iter().all(|ds| ds.contains(d)))
            .collect();
        let extra: BTreeSet<String> = l
            .dirs
            .iter()
            .flatten()
            .filter(|d| !common.contains(d))
            .cloned()
            .collect();
        Scanner {
            root,
            common,
            extra,
            files: Vec::new(),
            ids: HashMap::new(),
            includes: Vec::new(),
            queue: VecDeque::new(),
            exists: HashMap::new(),
            global: HashMap::new(),
        }
    }

    /// The id of file `f`, queued for reading the first time it is seen.
    fn id_of(&mut self, f: &str) -> u32 {
        if let Some(&id) = self.ids.get(f) {
            return id;
        }
        self.files.push(f.to_owned());
        self.includes.push(Vec::new());
        let id = (self.files.len() - 1) as u32;
        self.ids.insert(f.to_owned(), id);
        self.queue.push_back(id);
        id
    }

    fn exists(&mut self, rel: &str) -> bool {
        if let Some(&e) = self.exists.get(rel) {
            return e;
        }
        let e = self.root.join(rel).is_file();
        self.exists.insert(rel.to_owned(), e);
        e
    }

    /// Where `#include` of `name` from directory `here` may lead.
    fn resolve(&mut self, here: &str, name: &str, quoted: bool) -> Vec<String> {
        if quoted {
            let local = normalize(&format!("{here}/{name}"));
            if self.exists(&local) {
                return vec![local];
            }
        }
        if let Some(h) = self.global.get(name) {
            return h.clone();
        }
        let common: Vec<String> = self
            .common
            .iter()
            .map(|d| normalize(&format!("{d}/{name}")))
            .collect();
        let first = common.into_iter().find(|c| self.exists(c));
        let hits = match first {
            Some(c) => vec![c],
            // Only some units search the other directories: any of them
            // may be the one (the superset again).
            None => {
                let extra: Vec<String> = self
                    .extra
                    .iter()
                    .map(|d| normalize(&format!("{d}/{name}")))
                    .collect();
                extra.into_iter().filter(|c| self.exists(c)).collect()
            }
        };
        self.global.insert(name.to_owned(), hits.clone());
        hits
    }

    /// Reads file `id` and records what it includes.
    fn scan_file(&mut self, id: u32) {
        let file = self.files[id as usize].clone();
        let Ok(text) = std::fs::read(self.root.join(&file)) else {
            return;
        };
        let here = file.rsplit_once('/').map_or("", |(d, _)| d).to_owned();
        let mut found: Vec<u32> = Vec::new();
        for (name, quoted) in scan_includes(&text) {
            for h in self.resolve(&here, &name, quoted) {
                found.push(self.id_of(&h));
            }
        }
        found.sort_unstable();
        found.dedup();
        self.includes[id as usize] = found;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listing_gives_units_dirs_and_forced_includes() {
        let text = "set -e; echo x; gcc-12 -Wp,-MMD,fs/proc/.cmdline.o.d -nostdinc -I./arch/x86/include -I./include -include ./include/linux/kconfig.h -D__KERNEL__ -c -o fs/proc/cmdline.o fs/proc/cmdline.c; ./tools/objtool/objtool x\n\
gcc-12 -I./arch/x86/include -I./include -I ./drivers/foo -DMODULE -DKBUILD_MODNAME='\"foo\"' -c -o drivers/foo/bar.o drivers/foo/bar.c\n\
printf '%s' 'cmd_fs/proc/cmdline.o := gcc-12 -c -o fs/proc/cmdline.o fs/proc/cmdline.c'\n";
        let l = parse_listing(text);
        assert_eq!(
            l.units,
            vec![
                UnitInfo {
                    object: "fs/proc/cmdline.o".into(),
                    source: "fs/proc/cmdline.c".into(),
                    module: false
                },
                UnitInfo {
                    object: "drivers/foo/bar.o".into(),
                    source: "drivers/foo/bar.c".into(),
                    module: true
                },
            ]
        );
        assert_eq!(l.forced[0], vec!["include/linux/kconfig.h"]);
        assert_eq!(
            l.dirs[1],
            vec!["arch/x86/include", "include", "drivers/foo"]
        );
    }

    #[test]
    fn includes_are_read_quoted_or_not_and_macros_skipped() {
        let t =
            b"#include <linux/a.h>\n  #  include \"b.h\"\n#include TRACE_INCLUDE(x)\n#define y 1\n";
        assert_eq!(
            scan_includes(t),
            vec![("linux/a.h".to_owned(), false), ("b.h".to_owned(), true)]
        );
    }

    #[test]
    fn includers_follow_headers_transitively() {
        let d = tempfile::tempdir().unwrap();
        let w = |p: &str, t: &str| {
            let p = d.path().join(p);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, t).unwrap();
        };
        w("include/linux/kconfig.h", "");
        w("include/linux/a.h", "#include <linux/b.h>\n");
        w("include/linux/b.h", "");
        w("include/linux/c.h", "");
        w("fs/x.c", "#include <linux/a.h>\n#include \"local.h\"\n");
        w("fs/local.h", "");
        w("fs/y.c", "#include <linux/c.h>\n");
        w("drivers/z/z.c", "#include <zpriv.h>\n");
        w("drivers/z/inc/zpriv.h", "");
        let text = "gcc -I./include -include ./include/linux/kconfig.h -c -o fs/x.o fs/x.c\n\
gcc -I./include -include ./include/linux/kconfig.h -c -o fs/y.o fs/y.c\n\
gcc -I./include -I./drivers/z/inc -include ./include/linux/kconfig.h -DMODULE -c -o drivers/z/z.o drivers/z/z.c\n";
        let idx = Index::scan(d.path(), parse_listing(text));
        let names = |h: &str| -> Vec<String> {
            idx.includers(h).iter().map(|u| u.object.clone()).collect()
        };
        assert_eq!(names("include/linux/b.h"), vec!["fs/x.o"]);
        assert_eq!(names("fs/local.h"), vec!["fs/x.o"]);
        assert_eq!(names("include/linux/c.h"), vec!["fs/y.o"]);
        assert_eq!(names("drivers/z/inc/zpriv.h"), vec!["drivers/z/z.o"]);
        assert_eq!(
            names("include/linux/kconfig.h"),
            vec!["fs/x.o", "fs/y.o", "drivers/z/z.o"]
        );
        assert!(names("include/linux/none.h").is_empty());
    }
}
