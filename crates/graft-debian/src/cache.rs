//! A kernel fetched into a directory of graft's: downloaded, unpacked,
//! prepared, never installed.
//!
//! ```text
//! <dir>/                       <cache>/kernels/<release>/<debian version>/ (or a lab release)
//!   .lock                      flock held while a fetch runs: one preparation per kernel
//!   image/                     dpkg-deb -x of linux-image-<release>-unsigned:
//!     boot/vmlinuz-<release>, boot/config-<release>, lib/modules/<release>/
//!     (usr/lib/modules/<release>/ in Debian 13's merged /usr)
//!   headers/                   dpkg-deb -x of linux-headers-<release>, -<abi>-common, linux-kbuild-<x.y>:
//!     usr/src/linux-headers-<release>/   the kbuild directory (its Makefile rewritten to
//!                                        include this copy's -common Makefile)
//!   src/<dir>/                 the source tree, configured and prepared like the kernel
//!   logs/prepare.log
//!   .done-image .done-headers .done-source-unpack .done-source
//!                              completion markers, written last and atomically (JSON with
//!                              the stage's result); a stage without one is redone from scratch
//!                              (unpacking happens in `.tmp-*` and is renamed into place)
//! ```

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::{de::DeserializeOwned, Deserialize, Serialize};

use crate::apt::{self, Apt};
use crate::kernel::{KernelPackages, Package, Release};
use crate::{DebianError, Event, Stage};

const MARK_IMAGE: &str = "image";
const MARK_HEADERS: &str = "headers";
const MARK_UNPACK: &str = "source-unpack";
const MARK_SOURCE: &str = "source";

/// What to fetch, and where the kernel's configuration comes from when its
/// image is not fetched (the running kernel's `/boot/config-*` and
/// installed headers).
#[derive(Debug, Clone, Default)]
pub struct Parts {
    pub image: bool,
    pub headers: bool,
    pub source: bool,
    /// The kernel's config, when `image` is not fetched.
    pub config: Option<PathBuf>,
    /// The headers' `.config` (Debian's full build configuration), when
    /// `headers` is not fetched.
    pub build_config: Option<PathBuf>,
    /// Where Debian build roots are kept, for a kernel whose compiler this
    /// machine lacks (Debian 13's gcc-14 on Debian 12); without it such a
    /// kernel is refused, naming the compiler.
    pub buildroots: Option<PathBuf>,
}

impl Parts {
    pub fn all() -> Parts {
        Parts {
            image: true,
            headers: true,
            source: true,
            ..Parts::default()
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct ImageDone {
    package: String,
    version: String,
}

#[derive(Debug, Serialize, Deserialize)]
struct HeadersDone {
    packages: Vec<Package>,
}

#[derive(Debug, Serialize, Deserialize)]
struct UnpackDone {
    dir_name: String,
}

/// The prepared tree: its directory and how it was prepared.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceDone {
    pub dir_name: String,
    #[serde(flatten)]
    pub prepared: graft_kbuild::prepare::Prepared,
}

/// One stage's work: reports progress, says whether it did anything.
type StageFn<'a> = dyn FnMut(&mut dyn FnMut(Event)) -> Result<bool, DebianError> + 'a;

/// A kernel's directory (see the module text).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelDir {
    pub dir: PathBuf,
    pub release: String,
}

impl KernelDir {
    pub fn new(dir: impl Into<PathBuf>, release: &str) -> KernelDir {
        KernelDir {
            dir: dir.into(),
            release: release.to_string(),
        }
    }

    pub fn vmlinuz(&self) -> PathBuf {
        self.dir
            .join("image/boot")
            .join(format!("vmlinuz-{}", self.release))
    }
    pub fn config(&self) -> PathBuf {
        self.dir
            .join("image/boot")
            .join(format!("config-{}", self.release))
    }
    pub fn modules(&self) -> PathBuf {
        modules_in(&self.dir.join("image"), &self.release)
    }
    /// The kbuild directory of the headers (for out-of-tree modules).
    pub fn headers(&self) -> PathBuf {
        self.dir
            .join("headers/usr/src")
            .join(format!("linux-headers-{}", self.release))
    }
    /// The prepared source tree, once prepared.
    pub fn source(&self) -> Option<(PathBuf, SourceDone)> {
        let done: SourceDone = read_marker(&self.dir, MARK_SOURCE)?;
        Some((self.dir.join("src").join(&done.dir_name), done))
    }
    pub fn has_image(&self) -> bool {
        marker(&self.dir, MARK_IMAGE).is_file() && self.vmlinuz().is_file()
    }
    pub fn has_headers(&self) -> bool {
        marker(&self.dir, MARK_HEADERS).is_file() && self.headers().join("Makefile").is_file()
    }
    pub fn has_source(&self) -> bool {
        self.source()
            .is_some_and(|(t, _)| t.join("Makefile").is_file())
    }
    pub fn log(&self) -> PathBuf {
        self.dir.join("logs/prepare.log")
    }

    /// Fetches what `parts` asks for that is not there yet (idempotent; one
    /// fetch per directory at a time, the others wait).
    pub fn fetch(
        &self,
        apt: &Apt,
        k: &KernelPackages,
        parts: &Parts,
        progress: &mut dyn FnMut(Event),
    ) -> Result<(), DebianError> {
        create_dir(&self.dir)?;
        let _lock = lock(&self.dir, progress)?;
        create_dir(&self.dir.join("logs"))?;
        let stage = |s: Stage,
                     progress: &mut dyn FnMut(Event),
                     f: &mut StageFn<'_>|
         -> Result<(), DebianError> {
            progress(Event::Started(s));
            let did = f(progress)?;
            progress(if did {
                Event::Done(s)
            } else {
                Event::Cached(s)
            });
            Ok(())
        };
        if parts.image {
            stage(Stage::Image, progress, &mut |p| self.fetch_image(apt, k, p))?;
        }
        if parts.headers {
            stage(Stage::Headers, progress, &mut |p| {
                self.fetch_headers(apt, k, p)
            })?;
        }
        if parts.source {
            stage(Stage::Source, progress, &mut |p| {
                self.fetch_source(apt, k, p)
            })?;
            stage(Stage::Prepare, progress, &mut |p| self.prepare(k, parts, p))?;
        }
        Ok(())
    }

    fn fetch_image(
        &self,
        apt: &Apt,
        k: &KernelPackages,
        p: &mut dyn FnMut(Event),
    ) -> Result<bool, DebianError> {
        if let Some(done) = read_marker::<ImageDone>(&self.dir, MARK_IMAGE) {
            if done.version == k.image.version && self.vmlinuz().is_file() {
                return Ok(false);
            }
        }
        remove_marker(&self.dir, MARK_IMAGE)?;
        let tmp = self.fresh_tmp("image")?;
        let deb = apt.download(&k.image.name, &k.image.version, &tmp, p)?;
        let out = tmp.join("image");
        apt::unpack(&deb, &out)?;
        let r = &self.release;
        for need in [
            format!("boot/vmlinuz-{r}"),
            format!("boot/config-{r}"),
            modules_in(Path::new(""), r).display().to_string(),
        ] {
            if !out.join(&need).exists() && !out.join(format!("usr/{need}")).exists() {
                return Err(DebianError::invalid(
                    format!("{} {} has no {need}", k.image.name, k.image.version),
                    "the package layout changed; graft-debian needs updating",
                ));
            }
        }
        replace_dir(&out, &self.dir.join("image"))?;
        remove_dir(&tmp)?;
        write_marker(
            &self.dir,
            MARK_IMAGE,
            &ImageDone {
                package: k.image.name.clone(),
                version: k.image.version.clone(),
            },
        )?;
        Ok(true)
    }

    fn fetch_headers(
        &self,
        apt: &Apt,
        k: &KernelPackages,
        p: &mut dyn FnMut(Event),
    ) -> Result<bool, DebianError> {
        if let Some(done) = read_marker::<HeadersDone>(&self.dir, MARK_HEADERS) {
            if done.packages == k.headers && self.headers().join("Makefile").is_file() {
                return Ok(false);
            }
        }
        remove_marker(&self.dir, MARK_HEADERS)?;
        let tmp = self.fresh_tmp("headers")?;
        let out = tmp.join("headers");
        for pkg in &k.headers {
            let deb = apt.download(&pkg.name, &pkg.version, &tmp, p)?;
            apt::unpack(&deb, &out)?;
        }
        // The include names the directory itself, not a link to it: a
        // cache reached through a symbolic link must not bake the link in.
        let dir = self
            .dir
            .canonicalize()
            .map_err(|e| DebianError::io(format!("resolving {}", self.dir.display()), e))?;
        let final_root = dir.join("headers");
        relocate_headers(&out, &final_root, &k.release)?;
        replace_dir(&out, &final_root)?;
        remove_dir(&tmp)?;
        write_marker(
            &self.dir,
            MARK_HEADERS,
            &HeadersDone {
                packages: k.headers.clone(),
            },
        )?;
        Ok(true)
    }

    fn fetch_source(
        &self,
        apt: &Apt,
        k: &KernelPackages,
        p: &mut dyn FnMut(Event),
    ) -> Result<bool, DebianError> {
        let src = self.dir.join("src");
        if let Some(done) = read_marker::<UnpackDone>(&self.dir, MARK_UNPACK) {
            if src.join(&done.dir_name).join("Makefile").is_file() {
                return Ok(false);
            }
        }
        // Everything after unpacking depends on it.
        remove_marker(&self.dir, MARK_SOURCE)?;
        remove_marker(&self.dir, MARK_UNPACK)?;
        let tmp = self.fresh_tmp("source")?;
        let deb = apt.download(&k.source.name, &k.source.version, &tmp, p)?;
        let pkg = tmp.join("package");
        apt::unpack(&deb, &pkg)?;
        let _ = fs::remove_file(&deb);
        let tarball = fs::read_dir(pkg.join("usr/src"))
            .map_err(|e| DebianError::io(format!("listing {}/usr/src", pkg.display()), e))?
            .flatten()
            .map(|e| e.path())
            .find(|p| p.to_string_lossy().ends_with(".tar.xz"))
            .ok_or_else(|| {
                DebianError::invalid(
                    format!("{} has no /usr/src/*.tar.xz", k.source.name),
                    "the package layout changed; graft-debian needs updating",
                )
            })?;
        p(Event::Unpacking(
            tarball
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into(),
        ));
        let unpacked = tmp.join("tree");
        create_dir(&unpacked)?;
        apt::run_ok(
            Command::new("tar")
                .arg("-xf")
                .arg(&tarball)
                .arg("-C")
                .arg(&unpacked)
                .arg("--no-same-owner"),
            "check free space in graft's cache (a tree needs ~1.5 GB)",
        )?;
        let entries: Vec<fs::DirEntry> = fs::read_dir(&unpacked)
            .map_err(|e| DebianError::io(format!("listing {}", unpacked.display()), e))?
            .flatten()
            .collect();
        let [only] = entries.as_slice() else {
            return Err(DebianError::invalid(
                format!("{} does not unpack into one directory", tarball.display()),
                "the package layout changed; graft-debian needs updating",
            ));
        };
        let dir_name = only.file_name().to_string_lossy().into_owned();
        create_dir(&src)?;
        // The tree is prepared in its final place: kbuild records absolute
        // paths in its dependency files, which a later move would break.
        replace_dir(&only.path(), &src.join(&dir_name))?;
        remove_dir(&tmp)?;
        write_marker(&self.dir, MARK_UNPACK, &UnpackDone { dir_name })?;
        Ok(true)
    }

    fn prepare(
        &self,
        k: &KernelPackages,
        parts: &Parts,
        p: &mut dyn FnMut(Event),
    ) -> Result<bool, DebianError> {
        let unpack: UnpackDone = read_marker(&self.dir, MARK_UNPACK)
            .ok_or_else(|| DebianError::invalid("the source is not unpacked", "this is a bug"))?;
        if let Some(done) = read_marker::<SourceDone>(&self.dir, MARK_SOURCE) {
            if done.dir_name == unpack.dir_name {
                return Ok(false);
            }
        }
        let read = |p: &Path| {
            fs::read_to_string(p)
                .map_err(|e| DebianError::io(format!("reading {}", p.display()), e))
        };
        let config = match &parts.config {
            Some(c) if !parts.image => c.clone(),
            _ => self.config(),
        };
        let build = match &parts.build_config {
            Some(c) if !parts.headers => Some(c.clone()),
            _ => Some(self.headers().join(".config")),
        };
        let image_config = read(&config)?;
        let build_config = build
            .as_deref()
            .and_then(|b| fs::read_to_string(b).ok())
            .unwrap_or_default();
        let tree = self.dir.join("src").join(&unpack.dir_name);
        let buildroot = self.buildroot(k, parts, &image_config, p)?;
        let prepared = graft_kbuild::prepare::prepare(
            &graft_kbuild::prepare::Inputs {
                tree: &tree,
                image_config: &image_config,
                build_config: &build_config,
                release: &k.release.name,
                log: &self.log(),
                buildroot: buildroot.as_deref(),
            },
            &mut |s| p(Event::Prepare(s)),
        )?;
        // The headers build the patch module: with the same compiler.
        if self.headers().is_dir() {
            match &buildroot {
                Some(root) => graft_kbuild::buildroot::record(&self.headers(), root)?,
                None => {
                    let _ = fs::remove_file(self.headers().join(graft_kbuild::buildroot::MARKER));
                }
            }
        }
        write_marker(
            &self.dir,
            MARK_SOURCE,
            &SourceDone {
                dir_name: unpack.dir_name,
                prepared,
            },
        )?;
        Ok(true)
    }

    /// The Debian root to build in, when this machine lacks the compiler
    /// the kernel names (and the kernel says which Debian it is for).
    fn buildroot(
        &self,
        k: &KernelPackages,
        parts: &Parts,
        image_config: &str,
        p: &mut dyn FnMut(Event),
    ) -> Result<Option<PathBuf>, DebianError> {
        let Some(want) = graft_kbuild::config::string(image_config, "CC_VERSION_TEXT") else {
            return Ok(None);
        };
        if graft_kbuild::compiler::choose(&want).is_some() {
            return Ok(None);
        }
        let (Some(dir), Some(suite), Some(package)) = (
            &parts.buildroots,
            crate::buildroot::suite_of(&k.release),
            graft_kbuild::compiler::package_for(&want),
        ) else {
            // graft-kbuild's refusal names the compiler and the package.
            return Ok(None);
        };
        crate::buildroot::ensure(dir, suite, &package, p).map(Some)
    }

    fn fresh_tmp(&self, what: &str) -> Result<PathBuf, DebianError> {
        let tmp = self.dir.join(format!(".tmp-{what}"));
        remove_dir(&tmp)?;
        create_dir(&tmp)?;
        Ok(tmp)
    }
}

/// The modules directory of an unpacked image: `lib/modules/<release>`, or
/// `usr/lib/modules/<release>` where Debian merged /usr into it (Debian 13).
pub fn modules_in(image: &Path, release: &str) -> PathBuf {
    let plain = image.join("lib/modules").join(release);
    let merged = image.join("usr/lib/modules").join(release);
    if !plain.exists() && merged.exists() {
        merged
    } else {
        plain
    }
}

/// Points the unpacked headers at themselves: the flavour's Makefile
/// includes `/usr/src/linux-headers-<abi>-common/Makefile` by absolute
/// path, which is the installed package's, not this copy's. The `scripts`
/// and `tools` links are relative (`../../lib/linux-kbuild-<x.y>/…`) and
/// resolve inside the copy as they are.
fn relocate_headers(unpacked: &Path, final_root: &Path, r: &Release) -> Result<(), DebianError> {
    let makefile = unpacked
        .join("usr/src")
        .join(format!("linux-headers-{}", r.name))
        .join("Makefile");
    let text = fs::read_to_string(&makefile)
        .map_err(|e| DebianError::io(format!("reading {}", makefile.display()), e))?;
    let installed = format!("/usr/src/linux-headers-{}-common/", r.abi);
    let ours = format!(
        "{}/usr/src/linux-headers-{}-common/",
        final_root.display(),
        r.abi
    );
    let mut found = false;
    let rewritten: String = text
        .lines()
        .map(|l| match l.trim_start().strip_prefix("include ") {
            Some(path) if path.trim_start().starts_with(&installed) => {
                found = true;
                format!(
                    "include {}\n",
                    path.trim_start().replacen(&installed, &ours, 1)
                )
            }
            _ => format!("{l}\n"),
        })
        .collect();
    if !found {
        return Err(DebianError::invalid(
            format!(
                "{} does not include {installed}Makefile",
                makefile.display()
            ),
            "the headers' layout changed; graft-debian needs updating",
        ));
    }
    write_atomic(&makefile, rewritten.as_bytes())
}

/// The kernels a cache holds: `<root>/<release>/<version>/`.
#[derive(Debug, Clone)]
pub struct KernelCache {
    pub root: PathBuf,
}

/// A kernel found in the cache, and what of it is there.
#[derive(Debug, Clone, Serialize)]
pub struct CachedKernel {
    pub release: String,
    pub debian_version: String,
    pub dir: PathBuf,
    pub image: bool,
    pub headers: bool,
    pub source: bool,
}

impl KernelCache {
    /// `<cache>/kernels`.
    pub fn new(cache: &Path) -> KernelCache {
        KernelCache {
            root: cache.join("kernels"),
        }
    }

    pub fn dir(&self, release: &str, debian_version: &str) -> KernelDir {
        KernelDir::new(self.root.join(release).join(debian_version), release)
    }

    /// Every kernel with at least one part complete.
    pub fn cached(&self) -> Vec<CachedKernel> {
        let mut v = Vec::new();
        for r in read_dir_names(&self.root) {
            for version in read_dir_names(&self.root.join(&r)) {
                let d = self.dir(&r, &version);
                let (image, headers, source) = (d.has_image(), d.has_headers(), d.has_source());
                if image || headers || source {
                    v.push(CachedKernel {
                        release: r.clone(),
                        debian_version: version,
                        dir: d.dir,
                        image,
                        headers,
                        source,
                    });
                }
            }
        }
        v.sort_by_key(|k| {
            Release::parse(&k.release)
                .map(|r| r.order())
                .unwrap_or_default()
        });
        v
    }
}

fn read_dir_names(dir: &Path) -> Vec<String> {
    let Ok(rd) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut v: Vec<String> = rd
        .flatten()
        .filter(|e| e.path().is_dir())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with('.'))
        .collect();
    v.sort();
    v
}

fn marker(dir: &Path, stage: &str) -> PathBuf {
    dir.join(format!(".done-{stage}"))
}

fn read_marker<T: DeserializeOwned>(dir: &Path, stage: &str) -> Option<T> {
    serde_json::from_str(&fs::read_to_string(marker(dir, stage)).ok()?).ok()
}

fn write_marker<T: Serialize>(dir: &Path, stage: &str, value: &T) -> Result<(), DebianError> {
    let json = serde_json::to_string_pretty(value).map_err(|e| {
        DebianError::invalid(
            format!("serialising the {stage} marker: {e}"),
            "this is a bug",
        )
    })?;
    write_atomic(&marker(dir, stage), json.as_bytes())
}

fn remove_marker(dir: &Path, stage: &str) -> Result<(), DebianError> {
    let p = marker(dir, stage);
    match fs::remove_file(&p) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(DebianError::io(format!("removing {}", p.display()), e)),
    }
}

/// Writes `path` via a temporary sibling and a rename: readers never see
/// half a file.
pub(crate) fn write_atomic(path: &Path, data: &[u8]) -> Result<(), DebianError> {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".partial");
    let tmp = path.with_file_name(name);
    fs::write(&tmp, data).map_err(|e| DebianError::io(format!("writing {}", tmp.display()), e))?;
    fs::rename(&tmp, path)
        .map_err(|e| DebianError::io(format!("renaming {} into place", tmp.display()), e))
}

fn remove_dir(p: &Path) -> Result<(), DebianError> {
    match fs::remove_dir_all(p) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(DebianError::io(format!("removing {}", p.display()), e)),
    }
}

fn create_dir(p: &Path) -> Result<(), DebianError> {
    fs::create_dir_all(p).map_err(|e| DebianError::io(format!("creating {}", p.display()), e))
}

fn replace_dir(from: &Path, to: &Path) -> Result<(), DebianError> {
    remove_dir(to)?;
    fs::rename(from, to)
        .map_err(|e| DebianError::io(format!("moving {} to {}", from.display(), to.display()), e))
}

/// An exclusive `flock` on `<dir>/.lock`, so that two builds do not fetch
/// or prepare one kernel at once; the second waits, then finds it done.
pub(crate) fn lock(
    dir: &Path,
    progress: &mut dyn FnMut(Event),
) -> Result<nix::fcntl::Flock<fs::File>, DebianError> {
    use nix::fcntl::{Flock, FlockArg};
    let path = dir.join(".lock");
    let file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| DebianError::io(format!("opening {}", path.display()), e))?;
    match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(l) => Ok(l),
        Err((file, _)) => {
            progress(Event::Waiting(path.clone()));
            Flock::lock(file, FlockArg::LockExclusive)
                .map_err(|(_, e)| DebianError::io(format!("locking {}", path.display()), e.into()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_point_at_their_own_common_dir() {
        let t = tempfile::tempdir().unwrap();
        let r = Release::parse("6.1.0-47-amd64").unwrap();
        let mk = t.path().join("usr/src/linux-headers-6.1.0-47-amd64");
        fs::create_dir_all(&mk).unwrap();
        fs::write(
            mk.join("Makefile"),
            "include /usr/src/linux-headers-6.1.0-47-common/Makefile\n",
        )
        .unwrap();
        relocate_headers(t.path(), Path::new("/c/headers"), &r).unwrap();
        assert_eq!(
            fs::read_to_string(mk.join("Makefile")).unwrap(),
            "include /c/headers/usr/src/linux-headers-6.1.0-47-common/Makefile\n"
        );
        // A Makefile that does not say so is a layout graft does not know.
        assert!(relocate_headers(t.path(), Path::new("/c/headers"), &r).is_err());
    }

    #[test]
    fn cache_lists_complete_parts_only() {
        let t = tempfile::tempdir().unwrap();
        let c = KernelCache::new(t.path());
        assert!(c.cached().is_empty());
        let d = c.dir("6.1.0-47-amd64", "6.1.170-3");
        fs::create_dir_all(d.vmlinuz().parent().unwrap()).unwrap();
        fs::write(d.vmlinuz(), "x").unwrap();
        // No marker: an interrupted fetch is not a cached kernel.
        assert!(c.cached().is_empty());
        write_marker(
            &d.dir,
            MARK_IMAGE,
            &ImageDone {
                package: "p".into(),
                version: "6.1.170-3".into(),
            },
        )
        .unwrap();
        let k = c.cached();
        assert_eq!(k.len(), 1);
        assert!(k[0].image && !k[0].headers && !k[0].source);
        assert_eq!(k[0].debian_version, "6.1.170-3");
    }
}
