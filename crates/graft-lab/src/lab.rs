//! Setting up and opening the cached lab (layout: see the crate documentation).

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde::{de::DeserializeOwned, Deserialize, Serialize};

use crate::apt::{self, Apt, Resolved};
use crate::cmd;
use crate::error::LabError;
use crate::kallsyms;

/// Environment variable that overrides [`Lab::default_root`].
pub const ROOT_ENV: &str = "GRAFT_LAB_DIR";
/// Root used when `$GRAFT_LAB_DIR` is unset.
pub const DEFAULT_ROOT: &str = "/var/cache/graft/lab";
/// Object built once after `make prepare` to prove single-object builds work in the tree.
pub const PROBE_OBJECT: &str = "fs/proc/cmdline.o";
/// Budget for the kallsyms capture VM (boot ~7 s plus the serial transfer).
pub const KALLSYMS_TIMEOUT: Duration = Duration::from_secs(600);

/// Config strings that name key/certificate files. Debian's build points them at files of its
/// packaging (`debian/certs/…`) that the source tarball lacks; if so they are reset (see
/// [`adjust_cert_paths`]) because `certs/` would otherwise fail to build.
const CERT_KEYS: &[(&str, &str)] = &[
    ("SYSTEM_TRUSTED_KEYS", ""),
    ("SYSTEM_REVOCATION_KEYS", ""),
    ("MODULE_SIG_KEY", "certs/signing_key.pem"),
];

/// Environment that would change what kbuild does behind our back (inherited from a caller's make
/// or shell); the lab's tree must be built exactly the same way each time.
const MAKE_ENV_REMOVE: &[&str] = &[
    "MAKEFLAGS",
    "MFLAGS",
    "MAKELEVEL",
    "ARCH",
    "CROSS_COMPILE",
    "KBUILD_OUTPUT",
    "LOCALVERSION",
    "KCFLAGS",
    "KCPPFLAGS",
    "KAFLAGS",
    "CC",
    "LLVM",
];

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
struct ImageDone {
    package: String,
    version: String,
}

#[derive(Debug, Serialize, Deserialize)]
struct UnpackDone {
    dir_name: String,
    tarball: PathBuf,
}

#[derive(Debug, Serialize, Deserialize)]
struct KallsymsDone {
    lines: usize,
    capture_seconds: f64,
}

const MARK_IMAGE: &str = "image";
const MARK_UNPACK: &str = "source-unpack";
const MARK_SOURCE: &str = "source";
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

fn remove_dir_if_exists(p: &Path) -> Result<(), LabError> {
    match fs::remove_dir_all(p) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(LabError::io(format!("removing {}", p.display()), e)),
    }
}

fn create_dir(p: &Path) -> Result<(), LabError> {
    fs::create_dir_all(p).map_err(|e| LabError::io(format!("creating {}", p.display()), e))
}

/// `KEY -> value` of a kconfig file; `# CONFIG_X is not set` reads as `n`, strings keep quotes.
pub fn parse_config(text: &str) -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("CONFIG_") {
            if let Some((k, v)) = rest.split_once('=') {
                m.insert(k.to_string(), v.to_string());
            }
        } else if let Some(rest) = line.strip_prefix("# CONFIG_") {
            if let Some(k) = rest.strip_suffix(" is not set") {
                m.insert(k.to_string(), "n".to_string());
            }
        }
    }
    m
}

/// Value of a string option without its quotes.
pub fn config_string(text: &str, key: &str) -> Option<String> {
    let v = parse_config(text).remove(key)?;
    let v = v.strip_prefix('"')?.strip_suffix('"')?;
    Some(v.replace("\\\"", "\"").replace("\\\\", "\\"))
}

/// Replaces (or appends) `CONFIG_<key>="value"`.
pub fn set_config_string(text: &str, key: &str, value: &str) -> String {
    let new_line = format!(
        "CONFIG_{key}=\"{}\"",
        value.replace('\\', "\\\\").replace('"', "\\\"")
    );
    let set = format!("CONFIG_{key}=");
    let unset = format!("# CONFIG_{key} is not set");
    let mut found = false;
    let mut out: Vec<String> = text
        .lines()
        .map(|l| {
            if l.starts_with(&set) || l == unset {
                found = true;
                new_line.clone()
            } else {
                l.to_string()
            }
        })
        .collect();
    if !found {
        out.push(new_line);
    }
    let mut s = out.join("\n");
    s.push('\n');
    s
}

/// Resets key/certificate paths of `config` that do not exist relative to `tree` (PKCS#11 URIs and
/// empty values are left alone). Returns the new text and one `KEY: "old" -> "new"` per change.
pub fn adjust_cert_paths(config: &str, tree: &Path) -> (String, Vec<String>) {
    let mut text = config.to_string();
    let mut changes = Vec::new();
    for (key, replacement) in CERT_KEYS {
        let Some(value) = config_string(&text, key) else {
            continue;
        };
        if value.is_empty() || value.starts_with("pkcs11:") || value == *replacement {
            continue;
        }
        // The value may be a space-separated list of files (SYSTEM_TRUSTED_KEYS accepts several).
        let all_exist = value.split_whitespace().all(|f| tree.join(f).exists());
        if !all_exist {
            text = set_config_string(&text, key, replacement);
            changes.push(format!("{key}: \"{value}\" -> \"{replacement}\""));
        }
    }
    (text, changes)
}

/// Options whose values differ between two configs, as `KEY: a -> b` (`-` for absent).
pub fn config_differences(a: &str, b: &str) -> Vec<String> {
    let (a, b) = (parse_config(a), parse_config(b));
    let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
    keys.sort();
    keys.dedup();
    keys.into_iter()
        .filter_map(|k| {
            let (x, y) = (a.get(k), b.get(k));
            (x != y).then(|| {
                format!(
                    "{k}: {} -> {}",
                    x.map_or("-", String::as_str),
                    y.map_or("-", String::as_str)
                )
            })
        })
        .collect()
}

/// Adds to `image` the options it lacks but `build` (the headers' `.config`, i.e. the configuration
/// Debian really built with) has. Debian strips a few options from `/boot/config-*` (BUILD_SALT,
/// MODULE_SIG_ALL, MODULE_SIG_KEY, SYSTEM_TRUSTED_KEYS); `olddefconfig` would fill them with
/// upstream defaults (an empty BUILD_SALT, for one). Returns the text and one entry per addition.
pub fn merge_missing_options(image: &str, build: &str) -> (String, Vec<String>) {
    let have = parse_config(image);
    let mut text = image.to_string();
    if !text.is_empty() && !text.ends_with('\n') {
        text.push('\n');
    }
    let mut added = Vec::new();
    for (k, v) in parse_config(build) {
        if have.contains_key(&k) {
            continue;
        }
        if v == "n" {
            text.push_str(&format!("# CONFIG_{k} is not set\n"));
        } else {
            text.push_str(&format!("CONFIG_{k}={v}\n"));
        }
        added.push(format!("{k}: - -> {v} (from the headers' .config)"));
    }
    (text, added)
}

/// Compiler the distro kernel was built with, from `CONFIG_CC_VERSION_TEXT`
/// (`gcc-12 (Debian 12.2.0-14+deb12u1) 12.2.0` → `gcc-12`). Using the same name keeps
/// `olddefconfig` from rewriting the config's compiler text.
pub fn compiler_from_version_text(text: &str) -> Option<String> {
    let first = text.split_whitespace().next()?;
    (first.starts_with("gcc") || first.starts_with("clang")).then(|| first.to_string())
}

fn in_path(program: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|paths| {
        std::env::split_paths(&paths).any(|d| {
            let p = d.join(program);
            p.is_file()
        })
    })
}

/// `UTS_RELEASE` from `include/generated/utsrelease.h`.
pub fn parse_uts_release(header: &str) -> Option<String> {
    let rest = header
        .lines()
        .find_map(|l| l.trim().strip_prefix("#define UTS_RELEASE"))?;
    Some(rest.trim().trim_matches('"').to_string())
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
        self.dir().join("image/lib/modules").join(&self.release)
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
        make_command(&self.source_tree(), &self.source.make_vars)
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
        for stage in [MARK_IMAGE, MARK_UNPACK, MARK_SOURCE, MARK_KALLSYMS] {
            if !marker_path(&dir, stage).exists() {
                return Err(not_set_up(format!("stage `{stage}` is not complete")));
            }
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

    /// Idempotent: installs/caches everything (see the crate documentation). `progress` gets one
    /// line per stage and one when the stage ends.
    pub fn setup(root: &Path, progress: &mut dyn FnMut(&str)) -> Result<Lab, LabError> {
        create_dir(root)?;
        let _lock = lock_root(root, progress)?;
        let root_logs = root.join("logs");
        create_dir(&root_logs)?;
        let mut apt = Apt::new(&root_logs.join("apt.log"));

        let resolved = stage("resolve", progress, |p| {
            p("resolving the kernel ABI with apt-cache…");
            let r = apt.resolve(p)?;
            p(&format!(
                "kernel {} ({} {})",
                r.release, r.image_package, r.debian_version
            ));
            Ok((r, true))
        })?;
        let dir = root.join(&resolved.release);
        let logs = dir.join("logs");
        create_dir(&logs)?;

        stage("packages", progress, |p| {
            p("checking host packages…");
            let installed = apt.ensure_installed(&resolved.host_packages(), p)?;
            Ok(((), !installed.is_empty()))
        })?;
        let headers_dir = find_headers(&resolved)?;

        stage("image", progress, |p| {
            setup_image(&mut apt, &resolved, &dir, p)
        })?;
        let unpack = stage("source-unpack", progress, |p| {
            setup_unpack(&resolved, &dir, p)
        })?;
        let source = stage("source-prepare", progress, |p| {
            setup_prepare(&resolved, &dir, &headers_dir, &unpack, &logs, p)
        })?;
        let mut lab = Lab {
            root: root.to_path_buf(),
            release: resolved.release.clone(),
            debian_version: resolved.debian_version.clone(),
            image_package: resolved.image_package.clone(),
            source_package: resolved.source_package.clone(),
            headers_package: resolved.headers_package.clone(),
            headers_dir,
            source,
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

    /// Writes `<release>/lab.json` and then `<root>/current`, which is what [`Lab::open`] follows.
    fn save(&self) -> Result<(), LabError> {
        let json = serde_json::to_string_pretty(self).map_err(|e| {
            LabError::invalid(format!("serialising lab.json: {e}"), "this is a bug")
        })?;
        write_atomic(&self.dir().join("lab.json"), json.as_bytes())?;
        write_atomic(
            &self.root.join("current"),
            format!("{}\n", self.release).as_bytes(),
        )
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

fn make_command(tree: &Path, vars: &[String]) -> Command {
    let mut c = Command::new("make");
    for k in MAKE_ENV_REMOVE {
        c.env_remove(k);
    }
    c.env("LC_ALL", "C").arg("-C").arg(tree).args(vars);
    c
}

fn jobs() -> String {
    let n = std::thread::available_parallelism().map_or(1, |n| n.get());
    format!("-j{n}")
}

fn find_headers(r: &Resolved) -> Result<PathBuf, LabError> {
    let want = format!("/linux-headers-{}", r.release);
    let files = apt::package_files(&r.headers_package)?;
    // The package also owns /usr/share/doc/linux-headers-<release>: pick the kbuild directory.
    let dir = files
        .iter()
        .filter(|f| f.ends_with(&want))
        .map(PathBuf::from)
        .find(|d| d.join("Makefile").is_file())
        .unwrap_or_else(|| PathBuf::from(format!("/usr/src{want}")));
    if !dir.join("Makefile").exists() {
        return Err(LabError::invalid(
            format!(
                "{} has no kbuild tree at {}",
                r.headers_package,
                dir.display()
            ),
            format!(
                "reinstall it: apt-get install --reinstall {}",
                r.headers_package
            ),
        ));
    }
    Ok(dir)
}

fn setup_image(
    apt: &mut Apt,
    r: &Resolved,
    dir: &Path,
    p: &mut dyn FnMut(&str),
) -> Result<((), bool), LabError> {
    let image = dir.join("image");
    let vmlinuz = image.join(format!("boot/vmlinuz-{}", r.release));
    if let Some(done) = read_marker::<ImageDone>(dir, MARK_IMAGE) {
        if done.version == r.debian_version && vmlinuz.is_file() {
            return Ok(((), false));
        }
    }
    remove_marker(dir, MARK_IMAGE)?;
    let tmp = dir.join(".tmp-image");
    remove_dir_if_exists(&tmp)?;
    create_dir(&tmp)?;
    p(&format!(
        "downloading {} {}…",
        r.image_package, r.debian_version
    ));
    let deb = apt.download(&r.image_package, &r.debian_version, &tmp, p)?;
    p("unpacking the image package (dpkg-deb -x)…");
    let out = tmp.join("image");
    cmd::capture(
        Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&out),
        "the downloaded .deb may be corrupt; re-run setup",
    )?;
    for need in [
        format!("boot/vmlinuz-{}", r.release),
        format!("boot/config-{}", r.release),
        format!("lib/modules/{}", r.release),
    ] {
        if !out.join(&need).exists() {
            return Err(LabError::invalid(
                format!("{} has no {need}", r.image_package),
                "the package layout changed; graft-lab needs updating",
            ));
        }
    }
    remove_dir_if_exists(&image)?;
    fs::rename(&out, &image)
        .map_err(|e| LabError::io(format!("moving the image into {}", image.display()), e))?;
    remove_dir_if_exists(&tmp)?;
    write_marker(
        dir,
        MARK_IMAGE,
        &ImageDone {
            package: r.image_package.clone(),
            version: r.debian_version.clone(),
        },
    )?;
    Ok(((), true))
}

fn setup_unpack(
    r: &Resolved,
    dir: &Path,
    p: &mut dyn FnMut(&str),
) -> Result<(UnpackDone, bool), LabError> {
    let src = dir.join("src");
    if let Some(done) = read_marker::<UnpackDone>(dir, MARK_UNPACK) {
        if src.join(&done.dir_name).join("Makefile").is_file() {
            return Ok((done, false));
        }
    }
    // Everything after unpacking depends on it.
    remove_marker(dir, MARK_SOURCE)?;
    remove_marker(dir, MARK_UNPACK)?;
    let tarball = apt::package_files(&r.source_package)?
        .into_iter()
        .find(|f| f.starts_with("/usr/src/") && f.ends_with(".tar.xz"))
        .map(PathBuf::from)
        .ok_or_else(|| {
            LabError::invalid(
                format!("{} installed no /usr/src/*.tar.xz", r.source_package),
                format!(
                    "reinstall it: apt-get install --reinstall {}",
                    r.source_package
                ),
            )
        })?;
    let tmp = dir.join(".tmp-src");
    remove_dir_if_exists(&tmp)?;
    create_dir(&tmp)?;
    p(&format!("unpacking {}…", tarball.display()));
    cmd::capture(
        Command::new("tar")
            .arg("-xf")
            .arg(&tarball)
            .arg("-C")
            .arg(&tmp)
            .arg("--no-same-owner"),
        "check free space in the lab directory (the tree needs ~1.5 GB)",
    )?;
    let entries: Vec<fs::DirEntry> = fs::read_dir(&tmp)
        .map_err(|e| LabError::io(format!("listing {}", tmp.display()), e))?
        .flatten()
        .collect();
    let [only] = entries.as_slice() else {
        return Err(LabError::invalid(
            format!(
                "{} does not unpack into a single directory",
                tarball.display()
            ),
            "the source package layout changed; graft-lab needs updating",
        ));
    };
    let dir_name = only.file_name().to_string_lossy().into_owned();
    create_dir(&src)?;
    let dest = src.join(&dir_name);
    remove_dir_if_exists(&dest)?;
    // The tree is built in its final place (not in the temp dir): kbuild and tools/ record absolute
    // paths in their dependency files, which a later move would break.
    fs::rename(only.path(), &dest)
        .map_err(|e| LabError::io(format!("moving the source into {}", dest.display()), e))?;
    remove_dir_if_exists(&tmp)?;
    let done = UnpackDone { dir_name, tarball };
    write_marker(dir, MARK_UNPACK, &done)?;
    Ok((done, true))
}

fn setup_prepare(
    r: &Resolved,
    dir: &Path,
    headers_dir: &Path,
    unpack: &UnpackDone,
    logs: &Path,
    p: &mut dyn FnMut(&str),
) -> Result<(SourceInfo, bool), LabError> {
    let tree = dir.join("src").join(&unpack.dir_name);
    if let Some(done) = read_marker::<SourceInfo>(dir, MARK_SOURCE) {
        if done.dir_name == unpack.dir_name {
            return Ok((done, false));
        }
    }
    // Every step below is safe to redo, so an interrupted prepare simply starts over here.
    let log = logs.join("source-prepare.log");
    let _ = fs::remove_file(&log);
    let image_config_path = dir.join(format!("image/boot/config-{}", r.release));
    let image_config = fs::read_to_string(&image_config_path)
        .map_err(|e| LabError::io(format!("reading {}", image_config_path.display()), e))?;
    // The headers' .config is the complete build configuration; the image's lacks a few options.
    let build_config_path = headers_dir.join(".config");
    let build_config = fs::read_to_string(&build_config_path).unwrap_or_else(|_| {
        p(&format!(
            "warning: cannot read {}; options missing from the image's config get upstream defaults",
            build_config_path.display()
        ));
        String::new()
    });
    let (merged, mut config_adjustments) = merge_missing_options(&image_config, &build_config);
    let (config, cert_changes) = adjust_cert_paths(&merged, &tree);
    config_adjustments.extend(cert_changes);
    for a in &config_adjustments {
        p(&format!("config adjusted: {a}"));
    }
    write_atomic(&tree.join(".config"), config.as_bytes())?;

    let mut make_vars = Vec::new();
    match config_string(&image_config, "CC_VERSION_TEXT")
        .as_deref()
        .and_then(compiler_from_version_text)
    {
        Some(cc) if in_path(&cc) => make_vars.push(format!("CC={cc}")),
        Some(cc) => p(&format!(
            "warning: the image was built with {cc}, which is not installed; using the default gcc"
        )),
        None => p("warning: cannot tell the image's compiler from CONFIG_CC_VERSION_TEXT"),
    }
    make_vars.push(format!("KERNELRELEASE={}", r.release));

    p("make olddefconfig…");
    let hint = format!("see {}", log.display());
    cmd::logged(
        make_command(&tree, &make_vars).arg("olddefconfig"),
        &log,
        &hint,
    )?;
    let final_config = fs::read_to_string(tree.join(".config"))
        .map_err(|e| LabError::io(format!("reading {}/.config", tree.display()), e))?;
    let reference = if build_config.is_empty() {
        &image_config
    } else {
        &build_config
    };
    let config_differences = config_differences(reference, &final_config);
    if !config_differences.is_empty() {
        p(&format!(
            "note: {} config options differ from Debian's build config (see `graft-lab info`)",
            config_differences.len()
        ));
    }

    p(&format!("make {} modules_prepare…", jobs()));
    cmd::logged(
        make_command(&tree, &make_vars)
            .arg(jobs())
            .arg("modules_prepare"),
        &log,
        &hint,
    )?;

    p(&format!("probing a single-object build ({PROBE_OBJECT})…"));
    cmd::logged(
        make_command(&tree, &make_vars)
            .arg(jobs())
            .arg(PROBE_OBJECT),
        &log,
        &hint,
    )?;
    // Leave the tree as `prepare` left it: the probe object is not part of the lab.
    let obj = tree.join(PROBE_OBJECT);
    if !obj.is_file() {
        return Err(LabError::invalid(
            format!("make {PROBE_OBJECT} succeeded but produced no object"),
            hint,
        ));
    }
    let _ = fs::remove_file(&obj);
    if let (Some(parent), Some(name)) = (obj.parent(), obj.file_name()) {
        let _ = fs::remove_file(parent.join(format!(".{}.cmd", name.to_string_lossy())));
    }

    let uts_path = tree.join("include/generated/utsrelease.h");
    let uts_release = fs::read_to_string(&uts_path)
        .ok()
        .as_deref()
        .and_then(parse_uts_release)
        .unwrap_or_default();
    if uts_release != r.release {
        p(&format!(
            "warning: the tree's UTS_RELEASE is `{uts_release}`, not `{}`",
            r.release
        ));
    }
    let info = SourceInfo {
        dir_name: unpack.dir_name.clone(),
        make_vars,
        uts_release,
        config_adjustments,
        config_differences,
    };
    write_marker(dir, MARK_SOURCE, &info)?;
    Ok((info, true))
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: &str = "#\n# Automatically generated file; DO NOT EDIT.\n\
CONFIG_CC_VERSION_TEXT=\"gcc-12 (Debian 12.2.0-14+deb12u1) 12.2.0\"\n\
CONFIG_LIVEPATCH=y\n\
CONFIG_MODULE_SIG_KEY=\"certs/signing_key.pem\"\n\
CONFIG_SYSTEM_TRUSTED_KEYS=\"debian/certs/debian-uefi-certs.pem\"\n\
# CONFIG_SYSTEM_REVOCATION_LIST is not set\n\
CONFIG_HZ=250\n";

    #[test]
    fn parses_config() {
        let m = parse_config(CONFIG);
        assert_eq!(m["LIVEPATCH"], "y");
        assert_eq!(m["SYSTEM_REVOCATION_LIST"], "n");
        assert_eq!(m["HZ"], "250");
        assert_eq!(
            config_string(CONFIG, "SYSTEM_TRUSTED_KEYS").as_deref(),
            Some("debian/certs/debian-uefi-certs.pem")
        );
        assert_eq!(config_string(CONFIG, "HZ"), None);
    }

    #[test]
    fn compiler_name() {
        let t = config_string(CONFIG, "CC_VERSION_TEXT").unwrap();
        assert_eq!(compiler_from_version_text(&t).as_deref(), Some("gcc-12"));
        assert_eq!(
            compiler_from_version_text("Debian clang version 14.0.6").as_deref(),
            None
        );
        assert_eq!(compiler_from_version_text(""), None);
    }

    #[test]
    fn adjusts_missing_cert_paths_only() {
        let tree = tempfile::tempdir().unwrap();
        fs::create_dir_all(tree.path().join("certs")).unwrap();
        // MODULE_SIG_KEY already has the kernel default: it is generated on demand, keep it.
        let (text, changes) = adjust_cert_paths(CONFIG, tree.path());
        assert_eq!(
            changes,
            vec!["SYSTEM_TRUSTED_KEYS: \"debian/certs/debian-uefi-certs.pem\" -> \"\"".to_string()]
        );
        assert_eq!(
            config_string(&text, "SYSTEM_TRUSTED_KEYS").as_deref(),
            Some("")
        );
        assert_eq!(parse_config(&text)["LIVEPATCH"], "y");

        // An existing file is kept.
        fs::create_dir_all(tree.path().join("debian/certs")).unwrap();
        fs::write(tree.path().join("debian/certs/debian-uefi-certs.pem"), "x").unwrap();
        let (_, changes) = adjust_cert_paths(CONFIG, tree.path());
        assert!(changes.is_empty());
    }

    #[test]
    fn merges_stripped_options() {
        let build = format!(
            "{CONFIG}CONFIG_BUILD_SALT=\"6.1.0-56-amd64\"\n# CONFIG_FOO is not set\nCONFIG_LIVEPATCH=n\n"
        );
        let (text, added) = merge_missing_options(CONFIG, &build);
        assert_eq!(added.len(), 2, "{added:?}");
        let m = parse_config(&text);
        assert_eq!(m["BUILD_SALT"], "\"6.1.0-56-amd64\"");
        assert_eq!(m["FOO"], "n");
        // Options present in the image's config keep the image's value.
        assert_eq!(m["LIVEPATCH"], "y");
        assert_eq!(merge_missing_options(CONFIG, "").0, CONFIG);
    }

    #[test]
    fn set_string_appends_or_replaces() {
        let t = set_config_string("# CONFIG_X is not set\n", "X", "a\"b");
        assert_eq!(t, "CONFIG_X=\"a\\\"b\"\n");
        assert_eq!(config_string(&t, "X").as_deref(), Some("a\"b"));
        let t = set_config_string("CONFIG_Y=y\n", "X", "");
        assert_eq!(t, "CONFIG_Y=y\nCONFIG_X=\"\"\n");
    }

    #[test]
    fn differences() {
        let b = CONFIG.replace("CONFIG_HZ=250", "CONFIG_HZ=1000") + "CONFIG_NEW=y\n";
        assert_eq!(
            config_differences(CONFIG, &b),
            vec!["HZ: 250 -> 1000".to_string(), "NEW: - -> y".to_string()]
        );
        assert!(config_differences(CONFIG, CONFIG).is_empty());
    }

    #[test]
    fn uts_release() {
        assert_eq!(
            parse_uts_release("#define UTS_RELEASE \"6.1.0-56-amd64\"\n").as_deref(),
            Some("6.1.0-56-amd64")
        );
        assert_eq!(parse_uts_release(""), None);
    }

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
