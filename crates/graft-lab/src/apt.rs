//! Everything the lab asks apt and dpkg: which kernel ABI the archive points at, which Debian versions
//! its image and source have, and installing what the host lacks.
//!
//! The parsers are pure functions over the tools' text output so they can be tested on captured samples.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::cmd;
use crate::error::LabError;

/// Meta package whose dependency names the current kernel ABI.
pub const META_IMAGE_PACKAGE: &str = "linux-image-amd64";

/// Host packages the lab always needs (VM, initramfs, kernel build). The kernel-specific ones
/// (source, headers) are added by [`Resolved::host_packages`].
pub const BASE_PACKAGES: &[&str] = &[
    "qemu-system-x86",
    "busybox-static",
    "cpio",
    "build-essential",
    "bc",
    "flex",
    "bison",
    "libelf-dev",
    "libssl-dev",
    "xz-utils",
    "kmod",
    // pahole: without it `olddefconfig` silently drops DEBUG_INFO_BTF and the tree's config would
    // no longer match the image's.
    "dwarves",
];

/// `apt-cache policy` of one package.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Policy {
    pub installed: Option<String>,
    pub candidate: Option<String>,
}

/// What the archive says the lab should hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    /// Kernel release, e.g. `6.1.0-56-amd64` (what `uname -r` prints).
    pub release: String,
    /// `linux-image-<release>-unsigned`.
    pub image_package: String,
    /// Debian version of the image package, e.g. `6.1.192-2`.
    pub debian_version: String,
    /// `linux-source-<major>.<minor>`.
    pub source_package: String,
    /// `linux-headers-<release>`.
    pub headers_package: String,
}

impl Resolved {
    /// Packages to have installed, with the kernel ones pinned to the image's version.
    pub fn host_packages(&self) -> Vec<(String, Option<String>)> {
        let mut v: Vec<(String, Option<String>)> = BASE_PACKAGES
            .iter()
            .map(|p| (p.to_string(), None))
            .collect();
        v.push((
            self.source_package.clone(),
            Some(self.debian_version.clone()),
        ));
        v.push((
            self.headers_package.clone(),
            Some(self.debian_version.clone()),
        ));
        v
    }
}

/// First dependency of `apt-cache depends` output whose name starts with `prefix` followed by a digit
/// (an ABI-versioned package), e.g. `linux-image-6.1.0-56-amd64` for prefix `linux-image-`.
pub fn parse_depends(text: &str, prefix: &str) -> Option<String> {
    for line in text.lines() {
        let line = line.trim();
        // Alternatives are printed as `|Depends:`; both forms name real candidates.
        let Some(rest) = line
            .strip_prefix("Depends:")
            .or_else(|| line.strip_prefix("|Depends:"))
        else {
            continue;
        };
        let name = rest.trim();
        // `<virtual-package>` entries have no version to pin to.
        if name.starts_with('<') {
            continue;
        }
        if let Some(tail) = name.strip_prefix(prefix) {
            if tail.starts_with(|c: char| c.is_ascii_digit()) {
                return Some(name.to_string());
            }
        }
    }
    None
}

/// Installed and candidate versions from `apt-cache policy PKG` (`(none)` becomes `None`).
pub fn parse_policy(text: &str) -> Policy {
    let mut p = Policy::default();
    for line in text.lines() {
        let line = line.trim();
        let value = |v: &str| {
            let v = v.trim();
            (!v.is_empty() && v != "(none)").then(|| v.to_string())
        };
        if let Some(v) = line.strip_prefix("Installed:") {
            p.installed = value(v);
        } else if let Some(v) = line.strip_prefix("Candidate:") {
            p.candidate = value(v);
        }
    }
    p
}

/// `dpkg-query -W -f='${Package}\t${Version}\t${db:Status-Status}\n'` output → installed packages and
/// their versions. Packages in any other state (e.g. `config-files`) count as missing.
pub fn parse_dpkg_query(text: &str) -> HashMap<String, String> {
    let mut m = HashMap::new();
    for line in text.lines() {
        let mut it = line.split('\t');
        let (Some(pkg), Some(ver), Some(status)) = (it.next(), it.next(), it.next()) else {
            continue;
        };
        if status.trim() == "installed" {
            m.insert(pkg.trim().to_string(), ver.trim().to_string());
        }
    }
    m
}

/// Upstream part of a Debian version: `1:6.1.192-2` → `6.1.192`.
pub fn upstream_version(debian_version: &str) -> &str {
    let v = debian_version
        .split_once(':')
        .map_or(debian_version, |(_, v)| v);
    v.rsplit_once('-').map_or(v, |(u, _)| u)
}

/// `6.1.0-56-amd64` → `linux-source-6.1`: Debian names the source package after major.minor.
pub fn source_package_for(release: &str) -> Option<String> {
    let mut parts = release.split(['.', '-']);
    let major = parts.next()?;
    let minor = parts.next()?;
    let numeric = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    (numeric(major) && numeric(minor)).then(|| format!("linux-source-{major}.{minor}"))
}

/// Talks to apt on the host. Remembers whether it already refreshed the package lists, so that
/// `apt-get update` runs at most once and only when a look-up came back empty.
pub(crate) struct Apt {
    updated: bool,
    log: PathBuf,
}

const APT_HINT: &str = "check that apt works on this host (`apt-get update`) and that you are root";

fn apt_command(program: &str) -> Command {
    let mut c = Command::new(program);
    c.env("DEBIAN_FRONTEND", "noninteractive")
        .env("LC_ALL", "C");
    c
}

impl Apt {
    pub(crate) fn new(log: &Path) -> Self {
        Apt {
            updated: false,
            log: log.to_path_buf(),
        }
    }

    fn update(&mut self, progress: &mut dyn FnMut(&str)) -> Result<bool, LabError> {
        if self.updated {
            return Ok(false);
        }
        progress("refreshing apt package lists (apt-get update)…");
        cmd::logged(
            apt_command("apt-get").arg("update"),
            &self.log,
            "apt-get update failed; check network access to the Debian mirror",
        )?;
        self.updated = true;
        Ok(true)
    }

    fn depends(&self, pkg: &str) -> Result<String, LabError> {
        Ok(cmd::capture_status(apt_command("apt-cache").args(["depends", pkg]), APT_HINT)?.1)
    }

    fn policy(&self, pkg: &str) -> Result<Policy, LabError> {
        let (_, out) =
            cmd::capture_status(apt_command("apt-cache").args(["policy", pkg]), APT_HINT)?;
        Ok(parse_policy(&out))
    }

    /// Asks apt which kernel the archive currently ships and checks that image and source agree.
    pub(crate) fn resolve(&mut self, progress: &mut dyn FnMut(&str)) -> Result<Resolved, LabError> {
        let prefix = "linux-image-";
        let mut dep = parse_depends(&self.depends(META_IMAGE_PACKAGE)?, prefix);
        if dep.is_none() && self.update(progress)? {
            dep = parse_depends(&self.depends(META_IMAGE_PACKAGE)?, prefix);
        }
        let dep = dep.ok_or_else(|| LabError::Apt {
            what: format!(
                "`apt-cache depends {META_IMAGE_PACKAGE}` names no {prefix}<abi> package"
            ),
            hint: "is this Debian with main enabled in sources.list? try `apt-get update`".into(),
        })?;
        let release = dep[prefix.len()..].to_string();
        let image_package = format!("{dep}-unsigned");

        let mut image = self.policy(&image_package)?;
        if image.candidate.is_none() && self.update(progress)? {
            image = self.policy(&image_package)?;
        }
        let debian_version = image.candidate.ok_or_else(|| LabError::Apt {
            what: format!("apt has no candidate version of {image_package}"),
            hint: "run `apt-get update`; the ABI may have just moved".into(),
        })?;

        let source_package = source_package_for(&release).ok_or_else(|| LabError::Apt {
            what: format!("cannot derive the source package from kernel release `{release}`"),
            hint: "expected a release like 6.1.0-NN-amd64".into(),
        })?;
        let source = self.policy(&source_package)?;
        // The installed version is only acceptable if it is the image's; otherwise we will install
        // the candidate, so that is what must match.
        let source_version = match (&source.installed, &source.candidate) {
            (Some(i), _) if *i == debian_version => i.clone(),
            (_, Some(c)) => c.clone(),
            (Some(i), None) => i.clone(),
            (None, None) => {
                return Err(LabError::Apt {
                    what: format!("apt has no candidate version of {source_package}"),
                    hint: "run `apt-get update`".into(),
                })
            }
        };
        if source_version != debian_version {
            return Err(LabError::VersionMismatch {
                image_package,
                image_version: debian_version,
                source_package,
                source_version,
            });
        }
        Ok(Resolved {
            headers_package: format!("linux-headers-{release}"),
            release,
            image_package,
            debian_version,
            source_package,
        })
    }

    /// Installed version of each package that is installed.
    pub(crate) fn installed(&self, pkgs: &[String]) -> Result<HashMap<String, String>, LabError> {
        let (_, out) = cmd::capture_status(
            Command::new("dpkg-query")
                .arg("-W")
                .arg("-f=${Package}\t${Version}\t${db:Status-Status}\n")
                .args(pkgs),
            "dpkg-query is part of dpkg and should always exist on Debian",
        )?;
        Ok(parse_dpkg_query(&out))
    }

    /// Installs whatever in `wanted` is missing or at another version than pinned. Returns the
    /// package specs it installed (empty when nothing was needed).
    pub(crate) fn ensure_installed(
        &mut self,
        wanted: &[(String, Option<String>)],
        progress: &mut dyn FnMut(&str),
    ) -> Result<Vec<String>, LabError> {
        let names: Vec<String> = wanted.iter().map(|(n, _)| n.clone()).collect();
        let have = self.installed(&names)?;
        let missing: Vec<String> = wanted
            .iter()
            .filter(|(n, pin)| match (have.get(n), pin) {
                (None, _) => true,
                (Some(v), Some(p)) => v != p,
                (Some(_), None) => false,
            })
            .map(|(n, pin)| match pin {
                Some(v) => format!("{n}={v}"),
                None => n.clone(),
            })
            .collect();
        if missing.is_empty() {
            return Ok(missing);
        }
        if !nix::unistd::geteuid().is_root() {
            return Err(LabError::Apt {
                what: format!("missing host packages: {}", missing.join(" ")),
                hint: "run `graft-lab setup` as root, or install them with apt-get first".into(),
            });
        }
        progress(&format!("installing {}…", missing.join(" ")));
        let install = |log: &Path| {
            cmd::logged(
                apt_command("apt-get")
                    .args([
                        "install",
                        "-y",
                        "--no-install-recommends",
                        "--allow-downgrades",
                    ])
                    .args(&missing),
                log,
                "apt-get install failed; see the log; `apt-get update` may help",
            )
        };
        if let Err(first) = install(&self.log) {
            // Stale lists are the usual cause ("Unable to locate package", 404 on an old version).
            if !self.update(progress)? {
                return Err(first);
            }
            install(&self.log)?;
        }
        Ok(missing)
    }

    /// Downloads the `.deb` of `pkg=version` into `dir` (without installing it) and returns its path.
    pub(crate) fn download(
        &mut self,
        pkg: &str,
        version: &str,
        dir: &Path,
        progress: &mut dyn FnMut(&str),
    ) -> Result<PathBuf, LabError> {
        let spec = format!("{pkg}={version}");
        let run = |log: &Path| {
            cmd::logged(
                apt_command("apt-get")
                    .args(["download", &spec])
                    .current_dir(dir),
                log,
                "apt-get download failed; `apt-get update` may help",
            )
        };
        if let Err(first) = run(&self.log) {
            if !self.update(progress)? {
                return Err(first);
            }
            run(&self.log)?;
        }
        let rd = std::fs::read_dir(dir)
            .map_err(|e| LabError::io(format!("listing {}", dir.display()), e))?;
        for entry in rd.flatten() {
            let p = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with(&format!("{pkg}_")) && name.ends_with(".deb") {
                return Ok(p);
            }
        }
        Err(LabError::Apt {
            what: format!("apt-get download {spec} left no .deb in {}", dir.display()),
            hint: "see the apt log in the lab's logs directory".into(),
        })
    }
}

/// Files a package installed, from `dpkg -L`.
pub(crate) fn package_files(pkg: &str) -> Result<Vec<String>, LabError> {
    let out = cmd::capture(
        Command::new("dpkg").args(["-L", pkg]),
        "the package should be installed by the setup's package stage",
    )?;
    Ok(out.lines().map(str::to_string).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    // Captured on Debian 12 (bookworm) in 2025.
    const DEPENDS: &str = "linux-image-amd64\n  Depends: linux-image-6.1.0-56-amd64\n";
    const DEPENDS_ALTS: &str = "linux-image-amd64\n  |Depends: <linux-image-virtual>\n  |Depends: linux-image-6.1.0-41-amd64\n  Depends: linux-image-6.1.0-42-amd64\n  Recommends: firmware-linux-free\n";
    const POLICY_NOT_INSTALLED: &str = "linux-image-6.1.0-56-amd64-unsigned:
  Installed: (none)
  Candidate: 6.1.192-2
  Version table:
     6.1.192-2 500
        500 http://deb.debian.org/debian-security bookworm-security/main amd64 Packages
";
    const POLICY_INSTALLED: &str = "linux-source-6.1:
  Installed: 6.1.192-2
  Candidate: 6.1.192-2
  Version table:
 *** 6.1.192-2 500
        500 http://deb.debian.org/debian-security bookworm-security/main amd64 Packages
        100 /var/lib/dpkg/status
     6.1.192-1 500
        500 http://deb.debian.org/debian-security bookworm-security/main amd64 Packages
     6.1.190-1 500
";
    const DPKG_QUERY: &str = "build-essential\t12.9\tinstalled\ncpio\t2.13+dfsg-7.1\tinstalled\nlinux-source-6.1\t6.1.190-1\tconfig-files\n";

    #[test]
    fn depends_picks_abi_package() {
        assert_eq!(
            parse_depends(DEPENDS, "linux-image-").as_deref(),
            Some("linux-image-6.1.0-56-amd64")
        );
        assert_eq!(
            parse_depends(DEPENDS_ALTS, "linux-image-").as_deref(),
            Some("linux-image-6.1.0-41-amd64")
        );
        assert_eq!(parse_depends("", "linux-image-"), None);
        assert_eq!(
            parse_depends("E: No packages found\n", "linux-image-"),
            None
        );
    }

    #[test]
    fn policy_versions() {
        let p = parse_policy(POLICY_NOT_INSTALLED);
        assert_eq!(p.installed, None);
        assert_eq!(p.candidate.as_deref(), Some("6.1.192-2"));
        let p = parse_policy(POLICY_INSTALLED);
        assert_eq!(p.installed.as_deref(), Some("6.1.192-2"));
        assert_eq!(p.candidate.as_deref(), Some("6.1.192-2"));
        // apt-cache prints nothing at all for an unknown package.
        assert_eq!(parse_policy(""), Policy::default());
    }

    #[test]
    fn dpkg_query_installed_only() {
        let m = parse_dpkg_query(DPKG_QUERY);
        assert_eq!(m.get("cpio").map(String::as_str), Some("2.13+dfsg-7.1"));
        assert!(m.contains_key("build-essential"));
        assert!(!m.contains_key("linux-source-6.1"));
    }

    #[test]
    fn version_helpers() {
        assert_eq!(upstream_version("6.1.192-2"), "6.1.192");
        assert_eq!(upstream_version("1:7.2+dfsg-7+deb12u18+b3"), "7.2+dfsg");
        assert_eq!(upstream_version("12.9"), "12.9");
        assert_eq!(
            source_package_for("6.1.0-56-amd64").as_deref(),
            Some("linux-source-6.1")
        );
        assert_eq!(
            source_package_for("6.12.9-amd64").as_deref(),
            Some("linux-source-6.12")
        );
        assert_eq!(source_package_for("amd64"), None);
    }

    #[test]
    fn host_packages_pin_kernel_versions() {
        let r = Resolved {
            release: "6.1.0-56-amd64".into(),
            image_package: "linux-image-6.1.0-56-amd64-unsigned".into(),
            debian_version: "6.1.192-2".into(),
            source_package: "linux-source-6.1".into(),
            headers_package: "linux-headers-6.1.0-56-amd64".into(),
        };
        let pk = r.host_packages();
        assert!(pk.contains(&("linux-source-6.1".into(), Some("6.1.192-2".into()))));
        assert!(pk.contains(&(
            "linux-headers-6.1.0-56-amd64".into(),
            Some("6.1.192-2".into())
        )));
        assert!(pk.contains(&("qemu-system-x86".into(), None)));
    }
}
