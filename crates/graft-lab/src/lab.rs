//! Setting up and opening the cached lab (layout: see the crate documentation).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use graft_debian::{kernel, Event, KernelDir, Parts, Release};
use serde::{de::DeserializeOwned, Deserialize, Serialize};

use crate::apt;
use crate::error::LabError;
use crate::kallsyms;

/// Environment variable that overrides [`Lab::default_root`].
pub const ROOT_ENV: &str = "GRAFT_LAB_DIR";
/// Root used when `$GRAFT_LAB_DIR` is unset.
pub const DEFAULT_ROOT: &str = "/var/cache/graft/lab";
/// Object built once after `make prepare` to prove single-object builds work in the tree.
pub const PROBE_OBJECT: &str = graft_kbuild::prepare::PROBE_OBJECT;
/// Budget for the kallsyms capture VM (boot ~7 s plus the serial transfer).
pub const KALLSYMS_TIMEOUT: Duration = Duration::from_secs(600);

/// Result of preparing the source tree, kept in its completion marker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceInfo {
    /// Directory name of the unpacked tree under `<root>/<release>/src/`.
    pub dir_name: String,
    /// Variables to pass to every `make` in the tree (`CC=…`, `KERNELRELEASE=…`). Without
    /// `KERNELRELEASE` kbuild regenerates `include/generated/utsrelease.h` with the upstream
    /// version (`6.1.x`), which differs from the image and forces rebuilds of objects using it.
    pub make_vars: Vec<String>,
    /// `UTS_RELEASE` of the prepared tree (should equal the lab's release).
    pub uts_release: String,
    /// Changes made to the image's config before `olddefconfig`, as `KEY: old -> new`: options
    /// restored from the headers' `.config` and key paths that do not exist in the tarball.
    pub config_adjustments: Vec<String>,
    /// Options whose value differs between Debian's build config (the headers' `.config`, which is
    /// the image's plus a few options Debian strips from it) and the tree's final `.config`.
    pub config_differences: Vec<String>,
}

/// The cached lab of one kernel release.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lab {
    pub root: PathBuf,
    /// Kernel release, e.g. `6.1.0-56-amd64` (what `uname -r` prints in the guest).
    pub release: String,
    /// Debian version of the image, source and headers packages, e.g. `6.1.192-2`.
    pub debian_version: String,
    pub image_package: String,
    pub source_package: String,
    pub headers_package: String,
    /// Where the headers package put its kbuild tree.
    pub headers_dir: PathBuf,
    pub source: SourceInfo,
    /// Number of symbols in the captured kallsyms.
    pub kallsyms_lines: usize,
}

#[derive(Debug, Serialize, Deserialize)]
struct KallsymsDone {
    lines: usize,
    capture_seconds: f64,
}

const MARK_KALLSYMS: &str = "kallsyms";

fn marker_path(dir: &Path, stage: &str) -> PathBuf {
    dir.join(format!(".done-{stage}"))
}

fn read_marker<T: DeserializeOwned>(dir: &Path, stage: &str) -> Option<T> {
    let text = fs::read_to_string(marker_path(dir, stage)).ok()?;
    serde_json::from_str(&text).ok()
}

fn write_marker<T: Serialize>(dir: &Path, stage: &str, value: &T) -> Result<(), LabError> {
    let json = serde_json::to_string_pretty(value).map_err(|e| {
        LabError::invalid(
            format!("serialising the {stage} marker: {e}"),
            "this is a bug",
        )
    })?;
    write_atomic(&marker_path(dir, stage), json.as_bytes())
}

fn remove_marker(dir: &Path, stage: &str) -> Result<(), LabError> {
    let p = marker_path(dir, stage);
    match fs::remove_file(&p) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(LabError::io(format!("removing {}", p.display()), e)),
    }
}

/// Writes `path` via a temporary sibling and a rename, so readers never see half a file.
pub(crate) fn write_atomic(path: &Path, data: &[u8]) -> Result<(), LabError> {
    let tmp = path.with_extension("partial");
    fs::write(&tmp, data).map_err(|e| LabError::io(format!("writing {}", tmp.display()), e))?;
    fs::rename(&tmp, path)
        .map_err(|e| LabError::io(format!("renaming {} into place", tmp.display()), e))
}

fn create_dir(p: &Path) -> Result<(), LabError> {
    fs::create_dir_all(p).map_err(|e| LabError::io(format!("creating {}", p.display()), e))
}

fn secs(d: Duration) -> String {
    format!("{:.1} s", d.as_secs_f64())
}

/// Runs one setup stage: reports it, times it, and says whether it was cached.
fn stage<T>(
    name: &str,
    progress: &mut dyn FnMut(&str),
    f: impl FnOnce(&mut dyn FnMut(&str)) -> Result<(T, bool), LabError>,
) -> Result<T, LabError> {
    let t = Instant::now();
    let (v, did_work) = f(progress)?;
    if did_work {
        progress(&format!("{name}: done in {}", secs(t.elapsed())));
    } else {
        progress(&format!("{name}: cached ({})", secs(t.elapsed())));
    }
    Ok(v)
}

/// Holds an exclusive `flock` on `<root>/.lock` while setup runs, so two concurrent setups (e.g.
/// parallel test binaries) do not unpack into the same directories.
fn lock_root(
    root: &Path,
    progress: &mut dyn FnMut(&str),
) -> Result<nix::fcntl::Flock<fs::File>, LabError> {
    use nix::fcntl::{Flock, FlockArg};
    let path = root.join(".lock");
    let file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| LabError::io(format!("opening {}", path.display()), e))?;
    match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(l) => Ok(l),
        Err((file, _)) => {
            progress("waiting for another `graft-lab setup` to finish…");
            Flock::lock(file, FlockArg::LockExclusive)
                .map_err(|(_, e)| LabError::io(format!("locking {}", path.display()), e.into()))
        }
    }
}

impl Lab {
    /// `$GRAFT_LAB_DIR` if set and non-empty, else `/var/cache/graft/lab`.
    pub fn default_root() -> PathBuf {
        match std::env::var_os(ROOT_ENV) {
            Some(v) if !v.is_empty() => PathBuf::from(v),
            _ => PathBuf::from(DEFAULT_ROOT),
        }
    }

    /// `<root>/<release>`.
    pub fn dir(&self) -> PathBuf {
        self.root.join(&self.release)
    }
    pub fn vmlinuz(&self) -> PathBuf {
        self.dir()
            .join("image/boot")
            .join(format!("vmlinuz-{}", self.release))
    }
    pub fn config(&self) -> PathBuf {
        self.dir()
            .join("image/boot")
            .join(format!("config-{}", self.release))
    }
    pub fn modules_dir(&self) -> PathBuf {
        graft_debian::cache::modules_in(&self.dir().join("image"), &self.release)
    }
    /// The prepared kernel source tree; build in it with [`Lab::make_command`].
    pub fn source_tree(&self) -> PathBuf {
        self.dir().join("src").join(&self.source.dir_name)
    }
    /// The kbuild directory of `linux-headers-<release>` (for out-of-tree modules).
    pub fn headers(&self) -> PathBuf {
        self.headers_dir.clone()
    }
    pub fn kallsyms(&self) -> PathBuf {
        self.dir().join("kallsyms")
    }
    pub fn logs_dir(&self) -> PathBuf {
        self.dir().join("logs")
    }

    /// The `graft build` arguments that describe this lab's kernel as the
    /// target and its tree as the source (`--tree`, `--config`, `--symbols`,
    /// `--headers`, `--image`, `--modules`).
    pub fn graft_target_args(&self) -> Vec<std::ffi::OsString> {
        let mut v: Vec<std::ffi::OsString> = Vec::new();
        for (flag, path) in [
            ("--tree", self.source_tree()),
            ("--config", self.config()),
            ("--symbols", self.kallsyms()),
            ("--headers", self.headers()),
            ("--image", self.vmlinuz()),
            ("--modules", self.modules_dir()),
        ] {
            v.push(flag.into());
            v.push(path.into());
        }
        v
    }

    /// `make -C <source tree> <make_vars>` with a clean environment, ready for targets.
    pub fn make_command(&self) -> Command {
        graft_kbuild::prepare::make_command(&self.source_tree(), &self.source.make_vars)
    }

    /// Opens an already set-up lab of the current release: the one the
    /// last plain `setup` made (no apt, no network).
    pub fn open(root: &Path) -> Result<Lab, LabError> {
        let current = root.join("current");
        let release = fs::read_to_string(&current)
            .map_err(|_| LabError::NotSetUp {
                root: root.to_path_buf(),
                missing: format!("{} is missing", current.display()),
            })?
            .trim()
            .to_string();
        Lab::open_release(root, &release)
    }

    /// The releases the lab holds, set up completely, oldest ABI first.
    pub fn releases(root: &Path) -> Result<Vec<String>, LabError> {
        let rd = match fs::read_dir(root) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(LabError::io(format!("listing {}", root.display()), e)),
        };
        let mut v: Vec<String> = rd
            .flatten()
            .filter(|e| e.path().join("lab.json").is_file())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|r| Lab::open_release(root, r).is_ok())
            .collect();
        v.sort_by_key(|r| release_order(r));
        Ok(v)
    }

    /// Opens the lab of one release, set up by `setup` or `setup_release`.
    pub fn open_release(root: &Path, release: &str) -> Result<Lab, LabError> {
        let not_set_up = |missing: String| LabError::NotSetUp {
            root: root.to_path_buf(),
            missing,
        };
        if release.is_empty() || release.contains('/') || release.starts_with('.') {
            return Err(not_set_up(format!("`{release}` is not a kernel release")));
        }
        let json_path = root.join(release).join("lab.json");
        let text = fs::read_to_string(&json_path)
            .map_err(|_| not_set_up(format!("{} is missing", json_path.display())))?;
        let mut lab: Lab = serde_json::from_str(&text)
            .map_err(|e| not_set_up(format!("{} is unreadable: {e}", json_path.display())))?;
        // The directory may have been moved or reached through another path.
        lab.root = root.to_path_buf();
        let dir = lab.dir();
        let kdir = KernelDir::new(&dir, &lab.release);
        if !(kdir.has_image() && kdir.has_source() && marker_path(&dir, MARK_KALLSYMS).exists()) {
            return Err(not_set_up(format!(
                "the setup of {} is not complete",
                lab.release
            )));
        }
        for (what, p) in [
            ("kernel image", lab.vmlinuz()),
            ("kernel config", lab.config()),
            ("modules directory", lab.modules_dir()),
            ("source tree", lab.source_tree().join("Makefile")),
            ("headers", lab.headers().join("Makefile")),
            ("kallsyms", lab.kallsyms()),
        ] {
            if !p.exists() {
                return Err(not_set_up(format!("{what} {} is missing", p.display())));
            }
        }
        Ok(lab)
    }

    /// Idempotent: sets up the kernel Debian currently ships (the release
    /// `linux-image-amd64` depends on) with [`Lab::setup_release`], and makes
    /// it the lab's current release (what [`Lab::open`] opens). `progress`
    /// gets one line per stage and one when the stage ends.
    pub fn setup(root: &Path, progress: &mut dyn FnMut(&str)) -> Result<Lab, LabError> {
        progress("resolving the current kernel with apt-cache…");
        let release = kernel::current_release(&graft_debian::Apt::new())?;
        let lab = Lab::setup_release(root, &release.name, progress)?;
        write_atomic(
            &root.join("current"),
            format!("{}\n", lab.release).as_bytes(),
        )?;
        Ok(lab)
    }

    /// Idempotent: sets up the current kernel of another Debian suite
    /// (`backports`: bookworm-backports' 6.12; `trixie`: Debian 13's) with
    /// [`Lab::setup_release`], and records it under the suite's name in
    /// the lab (what [`Lab::open_suite`] opens).
    pub fn setup_suite(
        root: &Path,
        suite: graft_debian::OtherSuite,
        progress: &mut dyn FnMut(&str),
    ) -> Result<Lab, LabError> {
        progress(&format!(
            "resolving the current kernel of {}…",
            suite.name()
        ));
        create_dir(root)?;
        let k = graft_debian::Archive::new(root).suite_kernel(suite)?;
        let lab = Lab::setup_release(root, &k.release.name, progress)?;
        write_atomic(
            &root.join(suite.name()),
            format!("{}\n", lab.release).as_bytes(),
        )?;
        Ok(lab)
    }

    /// Opens the kernel [`Lab::setup_suite`] set up for `suite`.
    pub fn open_suite(root: &Path, suite: graft_debian::OtherSuite) -> Result<Lab, LabError> {
        let file = root.join(suite.name());
        let release = fs::read_to_string(&file).map_err(|_| LabError::NotSetUp {
            root: root.to_path_buf(),
            missing: format!(
                "{} is missing (`graft-lab setup --release {}`)",
                file.display(),
                suite.name()
            ),
        })?;
        Lab::open_release(root, release.trim())
    }

    /// The newest kernel of the current series older than the current one
    /// whose files the archive serves (apt may list kernels whose files are
    /// gone): the lab's second kernel.
    pub fn previous_release() -> Result<String, LabError> {
        let apt = graft_debian::Apt::new();
        let current = kernel::current_release(&apt)?;
        let served = kernel::served(&apt, &current.series, &current.flavour)?;
        for k in served.iter().rev() {
            if k.release.order() >= current.order() {
                continue;
            }
            let Ok(p) = kernel::packages(&apt, &k.release, Some(&k.debian_version)) else {
                continue;
            };
            if !matches!(
                kernel::availability(&apt, &p)?,
                graft_debian::Availability::Missing { .. }
            ) {
                return Ok(k.release.name.clone());
            }
        }
        Err(LabError::invalid(
            format!(
                "apt serves no downloadable kernel older than {}",
                current.name
            ),
            "`graft kernels` shows what apt lists and what the archive serves",
        ))
    }

    /// Idempotent: sets up one release beside the others (image, headers and
    /// source fetched with graft-debian, unpacked, prepared; never
    /// installed), then captures its kallsyms in a VM. Does not change the
    /// current release.
    pub fn setup_release(
        root: &Path,
        release: &str,
        progress: &mut dyn FnMut(&str),
    ) -> Result<Lab, LabError> {
        create_dir(root)?;
        let release = Release::parse(release).ok_or_else(|| {
            LabError::invalid(
                format!("`{release}` is not a kernel release"),
                "give one as `uname -r` prints it, e.g. 6.1.0-47-amd64",
            )
        })?;
        let _lock = lock_root(root, progress)?;
        stage("packages", progress, |p| {
            p("checking host packages…");
            let installed = apt::ensure_installed(&root.join("logs"), p)?;
            Ok(((), !installed.is_empty()))
        })?;
        // The system's apt, else graft's private view of the other Debian
        // releases' kernels (bookworm-backports, trixie), kept in the lab.
        let archive = graft_debian::Archive::new(root);
        let (debian, k) = archive.packages(&release, None)?;
        progress(&format!(
            "kernel {} (Debian {})",
            release.name, k.debian_version
        ));
        let dir = root.join(&release.name);
        let kdir = KernelDir::new(&dir, &release.name);
        let t = Instant::now();
        let mut last_file = String::new();
        let parts = Parts {
            buildroots: Some(root.join("buildroots")),
            ..Parts::all()
        };
        kdir.fetch(debian, &k, &parts, &mut |e| {
            // A download is reported once, when it starts.
            if let Event::Download { file, .. } = &e {
                if *file == last_file {
                    return;
                }
                last_file = file.clone();
            }
            progress(&describe_event(&e));
        })?;
        progress(&format!("kernel files ready in {}", secs(t.elapsed())));
        let (tree, done) = kdir
            .source()
            .ok_or_else(|| LabError::invalid("the source is not prepared", "this is a bug"))?;
        let dir_name = tree
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        let mut lab = Lab {
            root: root.to_path_buf(),
            release: release.name.clone(),
            debian_version: k.debian_version.clone(),
            image_package: k.image.name.clone(),
            source_package: k.source.name.clone(),
            headers_package: k.headers[0].name.clone(),
            headers_dir: kdir.headers(),
            source: SourceInfo {
                dir_name,
                make_vars: done.prepared.make_vars,
                uts_release: done.prepared.uts_release,
                config_adjustments: done.prepared.config_adjustments,
                config_differences: done.prepared.config_differences,
            },
            kallsyms_lines: 0,
        };
        let kallsyms_lines = stage("kallsyms", progress, |p| {
            if let Some(done) = read_marker::<KallsymsDone>(&dir, MARK_KALLSYMS) {
                if lab.kallsyms().is_file() {
                    return Ok((done.lines, false));
                }
            }
            Ok((lab.capture_kallsyms_inner(p)?, true))
        })?;
        lab.kallsyms_lines = kallsyms_lines;
        lab.save()?;
        progress(&format!(
            "lab ready: {} ({}) in {}",
            lab.release,
            lab.debian_version,
            dir.display()
        ));
        Ok(lab)
    }

    /// Boots the kernel again and replaces the captured kallsyms.
    pub fn recapture_kallsyms(&mut self, progress: &mut dyn FnMut(&str)) -> Result<(), LabError> {
        let _lock = lock_root(&self.root, progress)?;
        remove_marker(&self.dir(), MARK_KALLSYMS)?;
        self.kallsyms_lines = self.capture_kallsyms_inner(progress)?;
        self.save()
    }

    fn capture_kallsyms_inner(&self, progress: &mut dyn FnMut(&str)) -> Result<usize, LabError> {
        progress("capturing /proc/kallsyms in a QEMU guest booted with nokaslr…");
        let (stats, took) = kallsyms::capture(&self.vmlinuz(), &self.kallsyms(), KALLSYMS_TIMEOUT)?;
        progress(&format!(
            "captured {} symbols (_text at {:#x}) in {}",
            stats.lines,
            stats.text_address,
            secs(took)
        ));
        write_marker(
            &self.dir(),
            MARK_KALLSYMS,
            &KallsymsDone {
                lines: stats.lines,
                capture_seconds: took.as_secs_f64(),
            },
        )?;
        Ok(stats.lines)
    }

    /// Writes `<release>/lab.json`.
    fn save(&self) -> Result<(), LabError> {
        let json = serde_json::to_string_pretty(self).map_err(|e| {
            LabError::invalid(format!("serialising lab.json: {e}"), "this is a bug")
        })?;
        write_atomic(&self.dir().join("lab.json"), json.as_bytes())
    }

    /// Everything a caller may want to print or hand to other tools, with resolved paths.
    pub fn info_json(&self) -> serde_json::Value {
        serde_json::json!({
            "root": self.root,
            "release": self.release,
            "debian_version": self.debian_version,
            "image_package": self.image_package,
            "source_package": self.source_package,
            "headers_package": self.headers_package,
            "vmlinuz": self.vmlinuz(),
            "config": self.config(),
            "modules_dir": self.modules_dir(),
            "source_tree": self.source_tree(),
            "headers": self.headers(),
            "kallsyms": self.kallsyms(),
            "kallsyms_lines": self.kallsyms_lines,
            "make_vars": self.source.make_vars,
            "uts_release": self.source.uts_release,
            "config_adjustments": self.source.config_adjustments,
            "config_differences": self.source.config_differences,
        })
    }
}

/// Sort key of a release: `6.1.0-47-amd64` → its numbers, so that ABI 100
/// comes after ABI 99.
fn release_order(release: &str) -> (Vec<u64>, String) {
    let nums = release
        .split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().unwrap_or(u64::MAX))
        .collect();
    (nums, release.to_string())
}

/// One progress line of a kernel fetch, for the lab's plain-text log.
fn describe_event(e: &Event) -> String {
    match e {
        Event::Started(s) => format!("{}…", s.describe()),
        Event::Done(s) => format!("{}: done", s.describe()),
        Event::Cached(s) => format!("{}: cached", s.describe()),
        Event::Download { file, total, .. } => {
            format!("downloading {file} ({} MB)…", total / 1_000_000)
        }
        Event::Unpacking(f) => format!("unpacking {f}…"),
        Event::Prepare(step) => format!("{}…", step.describe()),
        Event::Waiting(lock) => format!("waiting for {}…", lock.display()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_root_and_paths() {
        let lab = Lab {
            root: PathBuf::from("/r"),
            release: "6.1.0-56-amd64".into(),
            debian_version: "6.1.192-2".into(),
            image_package: "linux-image-6.1.0-56-amd64-unsigned".into(),
            source_package: "linux-source-6.1".into(),
            headers_package: "linux-headers-6.1.0-56-amd64".into(),
            headers_dir: PathBuf::from("/usr/src/linux-headers-6.1.0-56-amd64"),
            source: SourceInfo {
                dir_name: "linux-source-6.1".into(),
                make_vars: vec!["KERNELRELEASE=6.1.0-56-amd64".into()],
                uts_release: "6.1.0-56-amd64".into(),
                config_adjustments: vec![],
                config_differences: vec![],
            },
            kallsyms_lines: 1,
        };
        assert_eq!(
            lab.vmlinuz(),
            Path::new("/r/6.1.0-56-amd64/image/boot/vmlinuz-6.1.0-56-amd64")
        );
        assert_eq!(
            lab.source_tree(),
            Path::new("/r/6.1.0-56-amd64/src/linux-source-6.1")
        );
        assert_eq!(
            lab.modules_dir(),
            Path::new("/r/6.1.0-56-amd64/image/lib/modules/6.1.0-56-amd64")
        );
        assert_eq!(lab.kallsyms(), Path::new("/r/6.1.0-56-amd64/kallsyms"));
        let json = serde_json::to_string(&lab).unwrap();
        assert_eq!(serde_json::from_str::<Lab>(&json).unwrap(), lab);
    }

    #[test]
    fn open_reports_missing_setup() {
        let root = tempfile::tempdir().unwrap();
        let e = Lab::open(root.path()).unwrap_err().to_string();
        assert!(e.contains("graft-lab setup"), "{e}");
    }
}
