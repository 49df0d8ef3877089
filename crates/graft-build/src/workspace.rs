//! Where the build happens: the user's tree and patch (only read), graft's
//! private copy of the tree (patched, compiled, reverted there), the
//! original objects kept per tree state, and a work directory holding the
//! original and patched objects of every unit.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use graft_kbuild::compile::{self, Linkage};
use graft_kbuild::mirror::Mirror;
use graft_kbuild::objects::ObjectCache;
use graft_kbuild::patch::SourcePatch;
use graft_kbuild::tree::KernelTree;
use graft_kbuild::{mentions, reach};
use std::collections::HashSet;

use graft_kbuild::index::Index;

use crate::error::{DOES_NOT_COMPILE, NOT_IN_BUILD};
use crate::{Event, Inputs};

/// FNV-1a, for cache keys.
fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The user's inputs, read and checked against the target before any work.
pub struct Sources {
    pub tree: KernelTree,
    pub patch: SourcePatch,
    /// The objects kbuild builds from the changed C files (`fs/proc/cmdline.o`).
    pub objects: Vec<String>,
    /// The changed headers; the units that include them are built too.
    pub headers: Vec<String>,
}

impl Sources {
    pub fn read(inputs: &Inputs) -> Result<Sources> {
        let tree = KernelTree::open(&inputs.tree)?;
        let patch = SourcePatch::read(&inputs.patch)?;
        let objects = patch.objects()?;
        let headers = patch.headers()?;
        let config = &inputs.target.config;
        if !config.is_file() {
            bail!(
                "the target kernel's config {} does not exist; hint: pass it with --config",
                config.display()
            );
        }
        // The compiler first: a config from another compiler differs in its
        // compiler options too, and the compiler is the cause worth naming.
        tree.check_compiler(config)?;
        tree.check_config(config)?;
        Ok(Sources {
            tree,
            patch,
            objects,
            headers,
        })
    }
}

/// The unit index of `tree`'s private copy, built once per state of the
/// tree and make variables and cached with the copy; whether it was built now.
pub(crate) fn cached_index(mirror: &Mirror, tree: &KernelTree) -> Result<(Index, bool)> {
    let key = mirror.fingerprint()
        ^ tree
            .make_vars
            .iter()
            .fold(0u64, |h, v| h.rotate_left(5) ^ fnv(v.as_bytes()));
    Ok(Index::cached(
        mirror.state_dir(),
        key,
        &mirror.root,
        &tree.make_vars,
    )?)
}

pub struct Workspace {
    pub sources: Sources,
    mirror: Mirror,
    objects: ObjectCache,
    work: tempfile::TempDir,
    /// Held while the build runs: a work directory whose lock is free
    /// belongs to a build that was killed, and the next build removes it.
    _work_lock: std::fs::File,
    jobs: usize,
    keep: Option<PathBuf>,
    /// Every object to compile: the changed C files', then the includers of
    /// the changed headers.
    pub units: Vec<String>,
    /// How kbuild links each compiled object (vmlinux or a module), in the
    /// order of `compiled`.
    pub linkage: Vec<Linkage>,
    /// The objects compiled so far, both builds kept in the work directory.
    pub compiled: Vec<String>,
    /// Of those, the ones whose original came from the objects kept for
    /// this tree state (only the patched side was compiled).
    pub kept_originals: Vec<String>,
    /// For each changed header, the units of the target that include it.
    pub header_units: Vec<(String, Vec<String>)>,
    /// How long building the unit index took, when this build built it.
    pub index_seconds: Option<f64>,
    /// Includers of the changed headers whose preprocessed code reaches no
    /// changed item: never compiled.
    pub unchanged: Vec<String>,
    /// Whether the includers were read ([`Workspace::narrow`]).
    pub narrowed: bool,
    /// Whether the includers' sources were scanned for the changed names.
    pub scanned: bool,
    /// The unit index, as [`Workspace::find_units`] read it (the scan of a
    /// header change's includers uses it again).
    index: Option<Index>,
}

impl Drop for Workspace {
    fn drop(&mut self) {
        // Whatever the outcome: the objects of a refused build are the ones
        // worth a look.
        if let Some(keep) = &self.keep {
            let _ = std::fs::remove_dir_all(keep);
            if std::fs::rename(self.work.path(), keep).is_err() {
                let _ = std::process::Command::new("cp")
                    .arg("-a")
                    .arg(self.work.path())
                    .arg(keep)
                    .status();
            }
        }
    }
}

impl Workspace {
    /// Syncs the private copy of the tree and checks that the patch applies.
    pub fn open(inputs: &Inputs, sources: Sources) -> Result<Workspace> {
        std::fs::create_dir_all(&inputs.output)
            .with_context(|| format!("cannot create {}", inputs.output.display()))?;
        let (mirror, _) = Mirror::sync(&sources.tree, &inputs.cache.join("build"))?;
        let objects = ObjectCache::open(&mirror, &sources.tree.make_vars)?;
        remove_stale_work(&inputs.cache);
        let work = tempfile::Builder::new()
            .prefix("work-")
            .tempdir_in(&inputs.cache)
            .with_context(|| {
                format!(
                    "cannot create a work directory in {}",
                    inputs.cache.display()
                )
            })?;
        let work_lock = lock_work(work.path())?;
        mirror.check(&sources.patch)?;
        // <graft/livepatch.h> and kpatch's headers, in the copy only.
        graft_kbuild::headers::install(&mirror.root)?;
        Ok(Workspace {
            sources,
            mirror,
            objects,
            work,
            _work_lock: work_lock,
            jobs: inputs.jobs,
            keep: inputs.keep_work.clone(),
            units: Vec::new(),
            linkage: Vec::new(),
            compiled: Vec::new(),
            kept_originals: Vec::new(),
            header_units: Vec::new(),
            index_seconds: None,
            unchanged: Vec::new(),
            narrowed: false,
            scanned: false,
            index: None,
        })
    }

    /// The tree's unit index (made once per tree state, then read).
    pub fn index(&self) -> Result<Index> {
        Ok(cached_index(&self.mirror, &self.sources.tree)?.0)
    }

    pub fn work_dir(&self) -> &Path {
        self.work.path()
    }

    /// Where the original (`orig`) or patched (`patched`) build of `object` is kept.
    pub fn object_path(&self, side: &str, object: &str) -> PathBuf {
        self.work.path().join(side).join(object)
    }

    /// Decides which units to compile: the changed C files, and for a
    /// changed header every unit of the target's build that includes it,
    /// found in the tree's unit index (built once per tree state).
    pub fn find_units(&mut self, progress: &mut dyn FnMut(Event)) -> Result<()> {
        self.units = self.sources.objects.clone();
        if self.sources.headers.is_empty() {
            return Ok(());
        }
        progress(Event::Step(
            "indexing the tree's units and includes (once per tree)",
        ));
        let (index, built) = cached_index(&self.mirror, &self.sources.tree)?;
        if built {
            self.index_seconds = Some(index.seconds);
        }
        for o in &self.sources.objects {
            if index.unit(o).is_none() {
                bail!(
                    "{}{NOT_IN_BUILD} (kbuild does not compile it with this config: its option is off, or it is not built for x86-64); hint: a fix to code the kernel does not have needs no live patch",
                    o.trim_end_matches(".o").to_owned() + ".c"
                );
            }
        }
        for h in &self.sources.headers {
            let users: Vec<String> = index
                .includers(h)
                .into_iter()
                .map(|u| u.object.clone())
                .collect();
            for u in &users {
                if !self.units.contains(u) {
                    self.units.push(u.clone());
                }
            }
            self.header_units.push((h.clone(), users));
        }
        self.index = Some(index);
        Ok(())
    }

    /// The units to compile first: the changed C files and one includer
    /// of each changed header, enough to see a changed data layout before
    /// compiling every includer.
    pub fn first_units(&self) -> Vec<String> {
        let mut first = self.sources.objects.clone();
        for (_, users) in &self.header_units {
            if let Some(u) = users.first() {
                if !first.contains(u) {
                    first.push(u.clone());
                }
            }
        }
        first
    }

    /// Drops from `units` the includers of the changed headers whose code
    /// the change cannot alter: each is preprocessed before and after the
    /// change and its items compared ([`graft_kbuild::reach`]). Reading
    /// costs a fraction of compiling; past `limit` includers nothing is
    /// read or dropped.
    pub fn narrow(&mut self, limit: usize, progress: &mut dyn FnMut(Event)) -> Result<()> {
        let mut candidates: Vec<String> = self
            .units
            .iter()
            .filter(|u| !self.compiled.contains(u) && !self.sources.objects.contains(u))
            .cloned()
            .collect();
        if candidates.len() > SCAN_FROM {
            progress(Event::Step(
                "finding the includers whose source can name the change",
            ));
            if let Some(named) = self.scan(&candidates)? {
                let (keep, drop): (Vec<String>, Vec<String>) =
                    candidates.into_iter().partition(|u| named.contains(u));
                let dropped: HashSet<&String> = drop.iter().collect();
                self.units.retain(|u| !dropped.contains(u));
                self.unchanged.extend(drop);
                self.scanned = true;
                candidates = keep;
            }
        }
        if candidates.is_empty() || candidates.len() > limit {
            return Ok(());
        }
        progress(Event::Step("reading the includers' code before the change"));
        let mut originals = Vec::with_capacity(candidates.len());
        for chunk in candidates.chunks(PREPROCESS_CHUNK) {
            let texts = self.preprocess(chunk)?;
            originals.extend(parallel(&texts, self.jobs, |p| {
                take(p.as_deref()).map(|t| reach::Summary::of(&t))
            }));
        }
        progress(Event::Step("reading the includers' code after the change"));
        let read = self
            .mirror
            .apply(&self.sources.patch)
            .map_err(anyhow::Error::from)
            .and_then(|()| {
                let mut differs = Vec::with_capacity(candidates.len());
                for (chunk, before) in candidates
                    .chunks(PREPROCESS_CHUNK)
                    .zip(originals.chunks(PREPROCESS_CHUNK))
                {
                    let texts = self.preprocess(chunk)?;
                    let pairs: Vec<_> = texts.iter().zip(before).collect();
                    differs.extend(parallel(&pairs, self.jobs, |(p, b)| {
                        // A unit that cannot be read is compiled (and its
                        // error reported there).
                        match (take(p.as_deref()), b) {
                            (Some(t), Some(b)) => reach::differs(b, &t),
                            _ => true,
                        }
                    }));
                }
                Ok(differs)
            });
        self.mirror.revert()?;
        let differs = read?;
        let same: Vec<String> = candidates
            .iter()
            .zip(&differs)
            .filter(|(_, d)| !**d)
            .map(|(u, _)| u.clone())
            .collect();
        let dropped: HashSet<&String> = same.iter().collect();
        self.units.retain(|u| !dropped.contains(u));
        self.unchanged.extend(same);
        self.narrowed = true;
        Ok(())
    }

    /// The units among `candidates` whose sources (or the headers they
    /// include) can name what the change alters ([`graft_kbuild::mentions`]),
    /// or `None` when the change cannot be read from the source text.
    fn scan(&mut self, candidates: &[String]) -> Result<Option<HashSet<String>>> {
        let index = match self.index.take() {
            Some(i) => i,
            None => self.index()?,
        };
        let root = self.mirror.root.clone();
        let read = |h: &String| std::fs::read(root.join(h)).unwrap_or_default();
        let before: Vec<Vec<u8>> = self.sources.headers.iter().map(read).collect();
        let after = self
            .mirror
            .apply(&self.sources.patch)
            .map(|()| self.sources.headers.iter().map(read).collect::<Vec<_>>());
        self.mirror.revert()?;
        let changed: Vec<(String, Vec<u8>, Vec<u8>)> = self
            .sources
            .headers
            .iter()
            .cloned()
            .zip(before)
            .zip(after?)
            .map(|((h, b), a)| (h, b, a))
            .collect();
        let files = index.closure_of(candidates);
        let named = mentions::hot_files(&root, &files, &changed).map(|hot| {
            index
                .includers_of(|f| hot.contains(f))
                .into_iter()
                .map(|u| u.object.clone())
                .collect()
        });
        self.index = Some(index);
        Ok(named)
    }

    fn preprocess(&self, objects: &[String]) -> Result<Vec<Option<PathBuf>>> {
        Ok(compile::preprocess(
            &self.mirror.root,
            &self.sources.tree.make_vars,
            objects,
            self.jobs,
            &self.mirror.log_path(),
        )?)
    }

    /// Compiles `objects` from the original source (or takes the originals
    /// kept for this tree state), then from the patched source (the copy is
    /// reverted whatever happens), keeping both builds.
    pub fn compile_pair(
        &mut self,
        objects: &[String],
        progress: &mut dyn FnMut(Event),
    ) -> Result<()> {
        let objects: Vec<String> = objects
            .iter()
            .filter(|o| !self.compiled.contains(o))
            .cloned()
            .collect();
        if objects.is_empty() {
            return Ok(());
        }
        let mut linkage = std::collections::HashMap::new();
        for o in &objects {
            if let Some(l) = self.objects.get(o, &self.object_path("orig", o))? {
                linkage.insert(o.clone(), l);
                self.kept_originals.push(o.clone());
            }
        }
        let missing: Vec<String> = objects
            .iter()
            .filter(|o| !linkage.contains_key(*o))
            .cloned()
            .collect();
        if !missing.is_empty() {
            progress(Event::Step("compiling the original objects"));
            let built = self.compile(&missing, "the original source")?;
            self.keep(&missing, "orig")?;
            self.keep_originals(&missing, &built)?;
            linkage.extend(missing.iter().cloned().zip(built));
        }
        progress(Event::Step("compiling the patched objects"));
        let built = self
            .mirror
            .apply(&self.sources.patch)
            .map_err(anyhow::Error::from)
            .and_then(|()| self.compile(&objects, "the patched source").map(|_| ()));
        // The user's tree was never touched; the copy is put back.
        self.mirror.revert()?;
        built?;
        self.keep(&objects, "patched")?;
        self.linkage
            .extend(objects.iter().map(|o| linkage[o.as_str()]));
        self.compiled.extend(objects);
        Ok(())
    }

    /// Keeps the originals just compiled for later builds of this tree
    /// state, unless a file they were compiled from changed in the user's
    /// tree since the sync (then the objects are not the tree's state).
    fn keep_originals(&self, objects: &[String], linkage: &[Linkage]) -> Result<()> {
        let root = &self.mirror.root;
        let mut sources: Vec<String> = objects
            .iter()
            .flat_map(|o| graft_kbuild::objects::sources_of(&root.join(o)))
            .collect();
        sources.sort();
        sources.dedup();
        // Files graft installs in the copy are not the user's.
        sources.retain(|s| self.mirror.held(s).is_some());
        let changed = self
            .mirror
            .changed_since_sync(sources.iter().map(String::as_str));
        if let Some(f) = changed.first() {
            bail!(
                "{f} changed in {} while graft compiled it; hint: build again once the tree is settled",
                self.sources.tree.root.display()
            );
        }
        for (o, l) in objects.iter().zip(linkage) {
            self.objects.put(o, &root.join(o), *l)?;
        }
        Ok(())
    }

    /// The probe's object compiled against the copy, kept per tree state.
    pub fn probe(&self, source: &str) -> Result<Vec<u8>> {
        let name = format!("probe-{:016x}.o", fnv(source.as_bytes()));
        if let Some(bytes) = self.objects.get_bytes(&name) {
            return Ok(bytes);
        }
        let bytes = graft_kbuild::probe::compile(&self.mirror.root, source)?;
        self.objects.put_bytes(&name, &bytes)?;
        Ok(bytes)
    }

    fn compile(&self, objects: &[String], what: &str) -> Result<Vec<Linkage>> {
        compile::compile(
            &self.mirror.root,
            &self.sources.tree.make_vars,
            objects,
            self.jobs,
            what,
            &self.mirror.log_path(),
        )
        .map_err(|e| match e {
            // The original source compiles in the kernel's build, so a
            // failure there means the file is not part of it; a failure of
            // the patched source is the patch's.
            graft_kbuild::KbuildError::Compile {
                what,
                first_error,
                log,
                ..
            } if what == "the patched source" => anyhow::anyhow!(
                "{DOES_NOT_COMPILE}{first_error}; hint: a fix may need a change it does not carry (a header, another file of the same update), or be written for another kernel version (full output: {})",
                log.display()
            ),
            graft_kbuild::KbuildError::Compile {
                first_error, log, ..
            } => anyhow::anyhow!(
                "{}{NOT_IN_BUILD}: it does not compile with the target's config ({first_error}); hint: a fix to code the kernel does not build needs no live patch (full output: {})",
                objects
                    .iter()
                    .map(|o| o.trim_end_matches(".o").to_owned() + ".c")
                    .collect::<Vec<_>>()
                    .join(", "),
                log.display()
            ),
            e => e.into(),
        })
    }

    /// Copies the compiled objects out of the copy before the next compile.
    fn keep(&self, objects: &[String], side: &str) -> Result<()> {
        let root = &self.mirror.root;
        for o in objects {
            let dst = self.object_path(side, o);
            std::fs::create_dir_all(dst.parent().expect("object path has a directory"))?;
            std::fs::copy(root.join(o), &dst).with_context(|| format!("cannot copy {o}"))?;
            // kbuild's record of the object holds the CRCs of its exports.
            let record = graft_kbuild::record::record_of(&root.join(o));
            if record.is_file() {
                std::fs::copy(&record, graft_kbuild::record::record_of(&dst))
                    .with_context(|| format!("cannot copy {}", record.display()))?;
            }
        }
        Ok(())
    }
}

/// Above this many includers to read, graft first scans the sources for
/// the names the change alters (a few seconds for the whole tree).
const SCAN_FROM: usize = 8;

/// Units preprocessed per make run: bounds the disk their text takes
/// (a kernel unit's is 2–6 MB).
const PREPROCESS_CHUNK: usize = 200;

/// Reads and removes the file at `path`.
fn take(path: Option<&Path>) -> Option<Vec<u8>> {
    let path = path?;
    let text = std::fs::read(path).ok();
    let _ = std::fs::remove_file(path);
    text
}

/// `f` of every item, on `jobs` threads, in order.
fn parallel<T: Sync, R: Send>(items: &[T], jobs: usize, f: impl Fn(&T) -> R + Sync) -> Vec<R> {
    let per = items.len().div_ceil(jobs.max(1)).max(1);
    std::thread::scope(|s| {
        let handles: Vec<_> = items
            .chunks(per)
            .map(|c| s.spawn(|| c.iter().map(&f).collect::<Vec<R>>()))
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("a reader thread panicked"))
            .collect()
    })
}

/// Removes the work directories of builds that were killed: their lock is
/// free. A directory without a lock file is left alone (its build may be
/// starting: the lock is renamed into place already held).
fn remove_stale_work(cache: &Path) {
    let Ok(entries) = std::fs::read_dir(cache) else {
        return;
    };
    for e in entries.flatten() {
        if !e.file_name().to_string_lossy().starts_with("work-") {
            continue;
        }
        let Ok(lock) = std::fs::File::open(e.path().join(".lock")) else {
            continue;
        };
        if lock.try_lock().is_ok() {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

/// Locks the work directory `dir` for this build's lifetime.
fn lock_work(dir: &Path) -> Result<std::fs::File> {
    let tmp = dir.join(".lock.new");
    let lock =
        std::fs::File::create(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
    lock.lock()
        .with_context(|| format!("cannot lock {}", tmp.display()))?;
    std::fs::rename(&tmp, dir.join(".lock"))
        .with_context(|| format!("cannot create {}", dir.join(".lock").display()))?;
    Ok(lock)
}
