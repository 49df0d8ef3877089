//! Debian's kernel packages: what a release is called, which packages make
//! it, which releases apt serves.

use serde::Serialize;

use crate::apt::{parse_depends, Apt, Availability};
use crate::DebianError;

/// The meta package whose dependency names the current kernel ABI.
pub const META_IMAGE_PACKAGE: &str = "linux-image-amd64";

/// A Debian kernel release as `uname -r` prints it: `6.1.0-47-amd64` is
/// series 6.1, ABI `6.1.0-47`, flavour `amd64`. (Backports and trixie name
/// theirs `6.12.95+deb12-amd64`: the ABI is `6.12.95+deb12`.)
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Release {
    pub name: String,
    pub series: String,
    pub abi: String,
    pub flavour: String,
}

impl Release {
    pub fn parse(name: &str) -> Option<Release> {
        let (version, rest) = name.split_once('-')?;
        let mut nums = version.split(['.', '+']);
        let (major, minor) = (nums.next()?, nums.next()?);
        let numeric = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
        if !numeric(major) || !numeric(minor) {
            return None;
        }
        let (abi, flavour) = match rest.split_once('-') {
            Some((n, flavour)) if numeric(n) => (format!("{version}-{n}"), flavour),
            _ => (version.to_string(), rest),
        };
        let ok = |s: &str| {
            !s.is_empty()
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-+.".contains(&b))
        };
        if !ok(flavour) || !ok(&abi) {
            return None;
        }
        Some(Release {
            name: name.to_string(),
            series: format!("{major}.{minor}"),
            abi,
            flavour: flavour.to_string(),
        })
    }

    /// The unsigned image: the same kernel as the signed one, without the
    /// Secure Boot wrapper, so its `vmlinuz` is the plain bzImage.
    pub fn image_package(&self) -> String {
        format!("linux-image-{}-unsigned", self.name)
    }

    pub fn source_package(&self) -> String {
        format!("linux-source-{}", self.series)
    }

    /// The three packages a module build needs: the flavour's headers, the
    /// ABI's common headers, and kbuild's tools, as Debian 12 names them
    /// (`linux-kbuild-6.1`); [`packages`] takes the kbuild package the
    /// flavour's headers depend on when apt says (`linux-kbuild-6.12.95+deb12`
    /// for 6.12: one per ABI).
    pub fn headers_packages(&self) -> [String; 3] {
        [
            format!("linux-headers-{}", self.name),
            format!("linux-headers-{}-common", self.abi),
            format!("linux-kbuild-{}", self.series),
        ]
    }

    /// Sort key: ABI numbers, so that ABI 100 comes after 99.
    pub fn order(&self) -> Vec<u64> {
        self.name
            .split(|c: char| !c.is_ascii_digit())
            .filter(|s| !s.is_empty())
            .map(|s| s.parse().unwrap_or(u64::MAX))
            .collect()
    }
}

/// A package at one version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Package {
    pub name: String,
    pub version: String,
}

/// Everything graft may fetch for one kernel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KernelPackages {
    pub release: Release,
    /// The Debian version of the kernel (of its image, headers and source).
    pub debian_version: String,
    pub image: Package,
    pub headers: Vec<Package>,
    pub source: Package,
}

impl KernelPackages {
    pub fn all(&self) -> Vec<&Package> {
        let mut v = vec![&self.image];
        v.extend(&self.headers);
        v.push(&self.source);
        v
    }
}

/// A kernel apt lists.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ServedKernel {
    pub release: Release,
    pub debian_version: String,
}

/// The release `linux-image-amd64` depends on: Debian's current kernel.
pub fn current_release(apt: &Apt) -> Result<Release, DebianError> {
    let prefix = "linux-image-";
    let dep = parse_depends(&apt.depends(META_IMAGE_PACKAGE)?, prefix).ok_or_else(|| {
        DebianError::Apt {
            what: format!(
                "`apt-cache depends {META_IMAGE_PACKAGE}` names no {prefix}<abi> package"
            ),
            hint: "is this Debian with main in sources.list? try `apt-get update`".into(),
        }
    })?;
    Release::parse(&dep[prefix.len()..]).ok_or_else(|| DebianError::Apt {
        what: format!("`{dep}` does not name a kernel release"),
        hint: "expected linux-image-6.1.0-NN-amd64".into(),
    })
}

/// The kernel each listed version of `linux-image-amd64` depends on: the
/// current kernel of every suite apt's sources hold, newest version first
/// (with graft's private sources: `6.12.118-1` → `6.12.118+deb13-amd64` of
/// trixie-security, …, `6.12.95-1~bpo12+1` → `6.12.95+deb12-amd64` of
/// bookworm-backports).
pub fn suite_kernels(apt: &Apt) -> Result<Vec<ServedKernel>, DebianError> {
    let prefix = "linux-image-";
    let mut out = Vec::new();
    for (_, version) in apt.versions(&[META_IMAGE_PACKAGE.to_string()])? {
        let Some(dep) = parse_depends(
            &apt.depends(&format!("{META_IMAGE_PACKAGE}={version}"))?,
            prefix,
        ) else {
            continue;
        };
        if let Some(release) = Release::parse(&dep[prefix.len()..]) {
            out.push(ServedKernel {
                release,
                debian_version: version,
            });
        }
    }
    Ok(out)
}

/// Whether a Debian version is a backport (`6.12.95-1~bpo12+1`).
pub fn is_backport(debian_version: &str) -> bool {
    debian_version.contains("~bpo")
}

/// The kernels of `series` and `flavour` apt lists, oldest ABI first, each
/// at its newest listed version.
pub fn served(apt: &Apt, series: &str, flavour: &str) -> Result<Vec<ServedKernel>, DebianError> {
    let names: Vec<String> = apt
        .names(&format!("linux-image-{series}."))?
        .into_iter()
        .filter(|n| {
            n.strip_prefix("linux-image-")
                .and_then(|r| r.strip_suffix("-unsigned"))
                .and_then(Release::parse)
                .is_some_and(|r| r.series == series && r.flavour == flavour)
        })
        .collect();
    let mut out: Vec<ServedKernel> = Vec::new();
    for (pkg, version) in apt.versions(&names)? {
        let Some(release) = pkg
            .strip_prefix("linux-image-")
            .and_then(|r| r.strip_suffix("-unsigned"))
            .and_then(Release::parse)
        else {
            continue;
        };
        // madison lists the newest version of a package first.
        if !out.iter().any(|k| k.release == release) {
            out.push(ServedKernel {
                release,
                debian_version: version,
            });
        }
    }
    out.sort_by_key(|k| k.release.order());
    Ok(out)
}

/// The packages of `release` at `version` (default: the newest apt lists).
/// The source must be listed at exactly the kernel's version: another
/// version is another kernel.
pub fn packages(
    apt: &Apt,
    release: &Release,
    version: Option<&str>,
) -> Result<KernelPackages, DebianError> {
    let image = release.image_package();
    let [headers, common, kbuild] = release.headers_packages();
    let source = release.source_package();
    let mut listed = apt.versions(&[image.clone(), kbuild.clone(), source.clone()])?;
    // Not Debian 12's kbuild package: the flavour's headers name theirs.
    let kbuild = if listed.iter().any(|(n, _)| *n == kbuild) {
        kbuild
    } else {
        match parse_depends(&apt.depends(&headers)?, "linux-kbuild-") {
            Some(k) => {
                listed.extend(apt.versions(std::slice::from_ref(&k))?);
                k
            }
            None => kbuild,
        }
    };
    let versions_of = |p: &str| -> Vec<String> {
        listed
            .iter()
            .filter(|(n, _)| n == p)
            .map(|(_, v)| v.clone())
            .collect()
    };
    let debian_version = match version {
        Some(v) => v.to_string(),
        None => versions_of(&image)
            .into_iter()
            .next()
            .ok_or_else(|| DebianError::NotServed {
                release: release.name.clone(),
                hint: "`graft kernels` lists the kernels apt serves; `apt-get update` may help"
                    .into(),
            })?,
    };
    let sources = versions_of(&source);
    if !sources.contains(&debian_version) {
        return Err(DebianError::SourceNotServed {
            release: release.name.clone(),
            version: debian_version,
            package: source,
            served: sources,
        });
    }
    // linux-kbuild is only served in its newest versions; older headers
    // accept it (their dependency is `>=`).
    let kbuild_versions = versions_of(&kbuild);
    let kbuild_version = if kbuild_versions.contains(&debian_version) {
        debian_version.clone()
    } else {
        kbuild_versions
            .into_iter()
            .next()
            .ok_or_else(|| DebianError::Apt {
                what: format!("apt lists no version of {kbuild}"),
                hint: "`apt-get update` may help".into(),
            })?
    };
    let at = |name: String, version: &str| Package {
        name,
        version: version.to_string(),
    };
    Ok(KernelPackages {
        release: release.clone(),
        image: at(image, &debian_version),
        headers: vec![
            at(headers, &debian_version),
            at(common, &debian_version),
            at(kbuild, &kbuild_version),
        ],
        source: at(source, &debian_version),
        debian_version,
    })
}

/// Whether every package of `k` can be downloaded: the first that cannot,
/// else downloadable (or unchecked when the archive cannot be asked).
pub fn availability(apt: &Apt, k: &KernelPackages) -> Result<Availability, DebianError> {
    let mut result = Availability::Downloadable;
    let pkgs: Vec<(&str, &str)> = k
        .all()
        .into_iter()
        .map(|p| (p.name.as_str(), p.version.as_str()))
        .collect();
    for uri in apt.uris(&pkgs)? {
        match apt.availability(&uri) {
            Availability::Downloadable => {}
            missing @ Availability::Missing { .. } => return Ok(missing),
            unchecked @ Availability::Unchecked { .. } => result = unchecked,
        }
    }
    Ok(result)
}

/// The Debian version in a kernel banner (`/proc/version`, or the image's
/// `linux_banner`): `… #1 SMP PREEMPT_DYNAMIC Debian 6.1.172-1 (2026-05-15)`.
pub fn version_from_banner(banner: &str) -> Option<String> {
    let words: Vec<&str> = banner.split_whitespace().collect();
    words.windows(2).rev().find_map(|w| {
        (w[0] == "Debian" && w[1].starts_with(|c: char| c.is_ascii_digit()) && w[1].contains('-'))
            .then(|| w[1].to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn releases() {
        let r = Release::parse("6.1.0-47-amd64").unwrap();
        assert_eq!(
            (r.series.as_str(), r.abi.as_str(), r.flavour.as_str()),
            ("6.1", "6.1.0-47", "amd64")
        );
        assert_eq!(r.image_package(), "linux-image-6.1.0-47-amd64-unsigned");
        assert_eq!(r.source_package(), "linux-source-6.1");
        assert_eq!(
            r.headers_packages(),
            [
                "linux-headers-6.1.0-47-amd64".to_string(),
                "linux-headers-6.1.0-47-common".into(),
                "linux-kbuild-6.1".into()
            ]
        );
        let c = Release::parse("6.1.0-47-cloud-amd64").unwrap();
        assert_eq!(c.flavour, "cloud-amd64");
        let b = Release::parse("6.12.95+deb12-amd64").unwrap();
        assert_eq!(
            (b.series.as_str(), b.abi.as_str()),
            ("6.12", "6.12.95+deb12")
        );
        assert!(Release::parse("amd64").is_none());
        assert!(Release::parse("6.1.0-47-amd64/../x").is_none());
        assert!(Release::parse("6.1.0-100-amd64").unwrap().order() > r.order());
    }

    #[test]
    fn banner_version() {
        let b = "Linux version 6.1.0-48-amd64 (debian-kernel@lists.debian.org) (gcc-12 (Debian 12.2.0-14+deb12u1) 12.2.0, GNU ld (GNU Binutils for Debian) 2.40) #1 SMP PREEMPT_DYNAMIC Debian 6.1.172-1 (2026-05-15)";
        assert_eq!(version_from_banner(b).as_deref(), Some("6.1.172-1"));
        assert_eq!(version_from_banner("Linux version 6.18.44 #1 SMP"), None);
    }
}
