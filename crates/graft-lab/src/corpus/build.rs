//! Building corpus items with the `graft` binary, as an operator would:
//! `graft --json build PATCH` against the target kernel's files. A `.c`
//! change that does not compile alone is retried with the changed headers
//! its unit includes. Results are cached by everything they depend on
//! (the patches, the graft binary, the target, the options), so a rerun
//! redoes only what changed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::changes::{error_file, quoted_names, touched_names, Change, ChangedFile};
use super::items::{header_groups, Item};
use super::outcome::{classify, Outcome};
use crate::error::LabError;
use crate::lab::{write_atomic, Lab};

/// One `graft build` of an item.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Attempt {
    pub files: Vec<String>,
    pub outcome: Outcome,
    pub seconds: f64,
}

/// What became of an item.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ItemResult {
    pub id: String,
    /// What the result depends on, hashed.
    pub key: String,
    /// The files of the last attempt (the item's file, plus the headers it
    /// needed).
    pub files: Vec<String>,
    /// Changed lines of those files.
    pub lines: usize,
    pub outcome: Outcome,
    /// Wall time of the last attempt (0 when nothing was built).
    pub seconds: f64,
    /// Every attempt, the last one included.
    pub attempts: Vec<Attempt>,
    /// The module, when built (kept in the corpus directory).
    pub module: Option<PathBuf>,
    /// The version of the item procedure that made it ([`METHOD`]).
    #[serde(default)]
    pub method: u32,
}

/// The version of the item procedure (how attempts are grouped): a result
/// an older one left as "does not compile" or an error is redone, the
/// others stay valid (their builds did not depend on it).
pub const METHOD: u32 = 6;

impl ItemResult {
    /// The item needed headers of the update to compile.
    pub fn with_headers(&self) -> bool {
        self.files.len() > 1
    }
}

/// How to run graft for the corpus.
#[derive(Debug, Clone)]
pub struct Builder {
    pub graft: PathBuf,
    /// sha256 of the graft binary: a new graft is a new result.
    pub graft_id: String,
    pub target: Lab,
    /// Where patches, graft's logs and the modules go.
    pub dir: PathBuf,
    /// The file results are cached in, by key; `None` builds everything
    /// and keeps nothing.
    pub results: Option<PathBuf>,
    /// graft's cache for job 0; job N uses `<cache>/corpus-job-N` (one
    /// private tree copy per job: a copy builds one patch at a time).
    pub cache: PathBuf,
    pub max_units: usize,
    pub jobs: usize,
}

/// sha256 of a file, hex.
pub fn file_sha256(path: &Path) -> Result<String, LabError> {
    let bytes =
        std::fs::read(path).map_err(|e| LabError::io(format!("reading {}", path.display()), e))?;
    Ok(hex(&Sha256::digest(&bytes)))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl Builder {
    fn cache_for(&self, job: usize) -> PathBuf {
        if job == 0 {
            self.cache.clone()
        } else {
            self.cache.join(format!("corpus-job-{job}"))
        }
    }

    /// The key of an item's result: the diffs it may use, graft, the
    /// target and the options.
    fn key(&self, item: &Item, changes: &BTreeMap<&str, &ChangedFile>) -> String {
        let mut h = Sha256::new();
        for part in [
            self.graft_id.as_str(),
            self.target.release.as_str(),
            self.target.debian_version.as_str(),
            &self.max_units.to_string(),
            item.id.as_str(),
        ] {
            h.update(part.as_bytes());
            h.update([0]);
        }
        let files = std::iter::once(item.file.as_str())
            .chain(item.related.iter().map(|r| r.header.as_str()));
        for f in files {
            h.update(f.as_bytes());
            h.update([0]);
            if let Some(c) = changes.get(f) {
                h.update(c.diff.as_bytes());
            }
        }
        hex(&h.finalize())
    }

    /// The cached results of earlier runs, by key.
    pub fn cached(&self) -> BTreeMap<String, ItemResult> {
        self.results
            .as_ref()
            .and_then(|p| std::fs::read(p).ok())
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    /// Builds `items` (cached results are reused), `jobs` at a time.
    /// `progress` gets one line per finished item.
    pub fn run(
        &self,
        items: &[&Item],
        changes: &[ChangedFile],
        progress: &(dyn Fn(&str) + Sync),
    ) -> Result<Vec<ItemResult>, LabError> {
        let by_path: BTreeMap<&str, &ChangedFile> =
            changes.iter().map(|c| (c.path.as_str(), c)).collect();
        let store = Mutex::new(self.cached());
        let next = AtomicUsize::new(0);
        let done = AtomicUsize::new(0);
        let results: Mutex<Vec<Option<ItemResult>>> = Mutex::new(vec![None; items.len()]);
        let failure: Mutex<Option<LabError>> = Mutex::new(None);
        let total = items.len();
        std::thread::scope(|s| {
            for job in 0..self.jobs.max(1) {
                let (store, next, done, results, failure, by_path) =
                    (&store, &next, &done, &results, &failure, &by_path);
                s.spawn(move || loop {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    if i >= total || failure.lock().expect("lock").is_some() {
                        return;
                    }
                    let item = items[i];
                    let key = self.key(item, by_path);
                    let hit = store.lock().expect("lock").get(&key).cloned();
                    let (r, cached) = match hit {
                        Some(r)
                            if r.module.as_ref().is_none_or(|m| m.is_file())
                                && (r.method == METHOD
                                    || !matches!(
                                        r.outcome,
                                        Outcome::DoesNotCompile { .. } | Outcome::Error { .. }
                                    )) =>
                        {
                            (r, true)
                        }
                        _ => match self.run_item(job, item, key.clone(), by_path) {
                            Ok(r) => (r, false),
                            Err(e) => {
                                *failure.lock().expect("lock") = Some(e);
                                return;
                            }
                        },
                    };
                    if let (false, Some(path)) = (cached, &self.results) {
                        let mut st = store.lock().expect("lock");
                        st.insert(key, r.clone());
                        let json = serde_json::to_vec_pretty(&*st).expect("serializes");
                        if let Err(e) = write_atomic(path, &json) {
                            *failure.lock().expect("lock") = Some(e);
                            return;
                        }
                    }
                    let n = done.fetch_add(1, Ordering::SeqCst) + 1;
                    progress(&format!(
                        "[{n}/{total}] {} {}: {}{} ({:.1} s{})",
                        r.id,
                        r.files.join(" + "),
                        r.outcome.label(),
                        match &r.outcome {
                            Outcome::Built { .. } => String::new(),
                            o => format!(" — {}", first_chars(&o.reason(), 160)),
                        },
                        r.seconds,
                        if cached { ", cached" } else { "" }
                    ));
                    results.lock().expect("lock")[i] = Some(r);
                });
            }
        });
        if let Some(e) = failure.into_inner().expect("lock") {
            return Err(e);
        }
        Ok(results
            .into_inner()
            .expect("lock")
            .into_iter()
            .flatten()
            .collect())
    }

    /// One item, from the first attempt to its outcome.
    fn run_item(
        &self,
        job: usize,
        item: &Item,
        key: String,
        changes: &BTreeMap<&str, &ChangedFile>,
    ) -> Result<ItemResult, LabError> {
        let done = |files: Vec<String>, outcome: Outcome, attempts: Vec<Attempt>, module| {
            let lines = files
                .iter()
                .filter_map(|f| changes.get(f.as_str()))
                .map(|c| c.lines)
                .sum();
            ItemResult {
                id: item.id.clone(),
                key: key.clone(),
                seconds: attempts.last().map_or(0.0, |a: &Attempt| a.seconds),
                files,
                lines,
                outcome,
                attempts,
                module,
                method: METHOD,
            }
        };
        let own = vec![item.file.clone()];
        if !item.place.in_build() {
            let why = if item.change == Change::Added {
                "the update adds the file; the target's build has no such unit".to_owned()
            } else if item.is_header() {
                "no unit of the target's build includes it (unit index)".to_owned()
            } else {
                "kbuild does not compile it with the target's config (unit index)".to_owned()
            };
            return Ok(done(own, Outcome::NotInKernel { why }, Vec::new(), None));
        }
        if item.change == Change::Removed {
            let why = "the update removes the file (a build change, not a live patch)".to_owned();
            return Ok(done(own, Outcome::Skipped { why }, Vec::new(), None));
        }
        let out = self.dir.join("modules").join(&key[..16]);
        let mut files = own.clone();
        let mut attempts = vec![self.attempt(job, item, &files, changes, &out)?];
        let mut fallback = header_groups(item).into_iter();
        while attempts.len() < MAX_ATTEMPTS {
            let next: Vec<String> = match &attempts.last().expect("one").outcome {
                Outcome::DoesNotCompile { first_error } => {
                    let more = needed_by(first_error, &files, item, changes);
                    if !more.is_empty() {
                        files.iter().cloned().chain(more).collect()
                    } else if let Some(g) = fallback.next() {
                        own.iter().cloned().chain(g).collect()
                    } else {
                        break;
                    }
                }
                // A function new in another changed file of the update.
                Outcome::Error { message } => match defined_by(message, &files, changes) {
                    Some(f) => files.iter().cloned().chain([f]).collect(),
                    None => break,
                },
                _ => break,
            };
            if next == files {
                break;
            }
            files = next;
            attempts.push(self.attempt(job, item, &files, changes, &out)?);
        }
        let last = attempts.last().expect("one attempt").clone();
        // Without a group that compiles, the item is the .c alone.
        let (files, outcome) = if matches!(last.outcome, Outcome::DoesNotCompile { .. }) {
            (own, attempts[0].outcome.clone())
        } else {
            (last.files.clone(), last.outcome.clone())
        };
        let module = outcome
            .is_built()
            .then(|| out.join(format!("livepatch-{}.ko", item.id)));
        let mut r = done(files, outcome, attempts, module);
        if matches!(r.outcome, Outcome::DoesNotCompile { .. }) {
            r.seconds = r.attempts[0].seconds;
        }
        Ok(r)
    }

    /// One `graft build` of `files`' diffs as patch `item.id`.
    fn attempt(
        &self,
        job: usize,
        item: &Item,
        files: &[String],
        changes: &BTreeMap<&str, &ChangedFile>,
        out: &Path,
    ) -> Result<Attempt, LabError> {
        let patches = self.dir.join("patches");
        std::fs::create_dir_all(&patches)
            .map_err(|e| LabError::io(format!("creating {}", patches.display()), e))?;
        let mut text = String::new();
        for f in files {
            let c = changes.get(f.as_str()).ok_or_else(|| {
                LabError::invalid(
                    format!("{f} is not a change of the update"),
                    "this is a bug",
                )
            })?;
            text.push_str(&c.diff);
        }
        let suffix = if files.len() > 1 {
            format!("-{}", files.len())
        } else {
            String::new()
        };
        let patch = patches.join(format!("{}{suffix}.patch", item.id));
        write_atomic(&patch, text.as_bytes())?;
        let compile_jobs =
            (std::thread::available_parallelism().map_or(2, |n| n.get()) / self.jobs.max(1)).max(1);
        let mut cmd = Command::new(&self.graft);
        cmd.arg("--json")
            .arg("build")
            .arg(&patch)
            .args(["--name", &item.id])
            .args(self.target.graft_target_args())
            .arg("--output")
            .arg(out)
            .arg("--cache-dir")
            .arg(self.cache_for(job))
            .arg("--jobs")
            .arg(compile_jobs.to_string())
            .arg("--max-units")
            .arg(self.max_units.to_string())
            .stdin(Stdio::null());
        let start = Instant::now();
        let o = cmd.output().map_err(|e| LabError::Command {
            command: crate::cmd::describe(&cmd),
            status: format!("could not start it: {e}"),
            output_tail: String::new(),
            hint: "pass the graft binary with --graft (cargo build --release)".into(),
        })?;
        let seconds = start.elapsed().as_secs_f64();
        let stderr = String::from_utf8_lossy(&o.stderr);
        let outcome = classify(
            o.status.code(),
            &String::from_utf8_lossy(&o.stdout),
            &stderr,
        );
        // The whole of what graft said, for whoever looks into an outcome.
        let log = patch.with_extension("log");
        let _ = std::fs::write(&log, stderr.as_bytes());
        Ok(Attempt {
            files: files.to_vec(),
            outcome,
            seconds,
        })
    }
}

/// The most `graft build`s of one item (the `.c` alone, then with what
/// its compile errors ask for, a file at a time: a header change whose
/// callers all changed with it, such as a new argument, takes one attempt
/// per caller).
const MAX_ATTEMPTS: usize = 16;

/// The files of the update a patch that does not compile asks for: the
/// changed file the compiler's first error is in (another `.c` of a
/// multi-file fix, including the changed header it shares), else the
/// changed headers whose change touches a name the error quotes (the
/// item's related headers first).
fn needed_by(
    error: &str,
    files: &[String],
    item: &Item,
    changes: &BTreeMap<&str, &ChangedFile>,
) -> Vec<String> {
    if let Some(f) = error_file(error) {
        if !files.iter().any(|x| x == f) && changes.contains_key(f) {
            return vec![f.to_owned()];
        }
    }
    let names = quoted_names(error);
    if names.is_empty() {
        return Vec::new();
    }
    let related = item.related.iter().map(|r| r.header.as_str());
    let others = changes
        .values()
        .filter(|c| c.is_header())
        .map(|c| c.path.as_str());
    let mut out: Vec<String> = Vec::new();
    for h in related.chain(others) {
        if out.len() >= 3 || files.iter().any(|x| x == h) || out.iter().any(|x| x == h) {
            continue;
        }
        let Some(c) = changes.get(h) else { continue };
        if !touched_names(&c.diff).is_disjoint(&names) {
            out.push(h.to_owned());
        }
    }
    out
}

/// The changed `.c` file of the update that adds the symbol graft says the
/// target does not have (`… references X, which the target kernel's symbol
/// table does not have`): the patch's own new code, in a file the item
/// lacks.
fn defined_by(
    message: &str,
    files: &[String],
    changes: &BTreeMap<&str, &ChangedFile>,
) -> Option<String> {
    let (before, _) =
        message.split_once(", which the target kernel's symbol table does not have")?;
    let symbol = before.rsplit_once(" references ")?.1.trim();
    changes
        .values()
        .filter(|c| !c.is_header() && !files.contains(&c.path))
        .find(|c| {
            c.diff.lines().any(|l| {
                l.starts_with('+')
                    && !l.starts_with("+++")
                    && l.contains(&format!("{symbol}("))
                    && !l[1..].starts_with([' ', '\t'])
            })
        })
        .map(|c| c.path.clone())
}

/// `s` cut to `n` characters.
pub fn first_chars(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_owned()
    } else {
        s.chars().take(n).collect::<String>() + "…"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_functions_are_found_in_other_changed_files() {
        let ec = ChangedFile {
            path: "drivers/acpi/ec.c".into(),
            change: Change::Modified,
            lines: 4,
            diff: "--- a/drivers/acpi/ec.c\n+++ b/drivers/acpi/ec.c\n@@ -1 +1,4 @@\n+void acpi_ec_register_opregions(struct acpi_device *adev)\n+{\n+\tacpi_ec_register_opregions_x(adev);\n+}\n".into(),
        };
        let caller = ChangedFile {
            path: "drivers/acpi/scan.c".into(),
            change: Change::Modified,
            lines: 1,
            diff: "--- a/drivers/acpi/scan.c\n+++ b/drivers/acpi/scan.c\n@@ -1 +1 @@\n+\tacpi_ec_register_opregions(adev);\n".into(),
        };
        let changes: BTreeMap<&str, &ChangedFile> =
            [(ec.path.as_str(), &ec), (caller.path.as_str(), &caller)].into();
        let msg = "scan.o: acpi_bus_attach references acpi_ec_register_opregions, which the target kernel's symbol table does not have; hint: …";
        let files = vec!["drivers/acpi/scan.c".to_string()];
        assert_eq!(
            defined_by(msg, &files, &changes).as_deref(),
            Some("drivers/acpi/ec.c")
        );
        assert_eq!(defined_by("other error", &files, &changes), None);
    }
}
