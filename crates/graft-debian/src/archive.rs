//! Where a Debian kernel's packages come from: the system's apt first (its
//! sources serve the host's own release), then graft's private view of the
//! other Debian releases' kernels ([`OTHER_SOURCES`]: bookworm-backports,
//! trixie and trixie-security, for Linux 6.12), kept in graft's cache and
//! updated when older than [`MAX_AGE`]. Neither view changes the system.

use std::cell::OnceCell;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::apt::{Apt, OTHER_SOURCES};
use crate::kernel::{self, KernelPackages, Release, ServedKernel};
use crate::DebianError;

/// How old the private lists may be before a look-up updates them.
pub const MAX_AGE: Duration = Duration::from_secs(6 * 3600);

/// The system's apt and graft's private one, consulted in that order.
#[derive(Debug)]
pub struct Archive {
    system: Apt,
    dir: PathBuf,
    other: OnceCell<Apt>,
}

impl Archive {
    /// The private configuration lives in `<cache>/apt/`.
    pub fn new(cache: &Path) -> Archive {
        Archive {
            system: Apt::new(),
            dir: cache.join("apt"),
            other: OnceCell::new(),
        }
    }

    pub fn system(&self) -> &Apt {
        &self.system
    }

    /// The private apt, its lists updated when missing or stale.
    pub fn other(&self) -> Result<&Apt, DebianError> {
        if let Some(a) = self.other.get() {
            return Ok(a);
        }
        let apt = Apt::private(&self.dir, OTHER_SOURCES)?;
        apt.update_if_older(MAX_AGE)?;
        Ok(self.other.get_or_init(|| apt))
    }

    /// The packages of `release` (at `version`, default the newest listed)
    /// and the apt that serves them: the system's when it lists the
    /// kernel's image, else the private one (updated once more when it
    /// does not list it either, in case the lists predate the kernel).
    pub fn packages(
        &self,
        release: &Release,
        version: Option<&str>,
    ) -> Result<(&Apt, KernelPackages), DebianError> {
        let system = kernel::packages(&self.system, release, version);
        match &system {
            Ok(_) => return system.map(|k| (&self.system, k)),
            Err(e) if !not_listed(e) => return system.map(|k| (&self.system, k)),
            Err(_) => {}
        }
        let other = self.other()?;
        let mut found = kernel::packages(other, release, version);
        if found.as_ref().is_err_and(not_listed) && other.updated().is_some() {
            other.update()?;
            found = kernel::packages(other, release, version);
        }
        match found {
            Ok(k) => Ok((other, k)),
            // The system's answer names the system's versions, which is what
            // an operator of a Debian 12 kernel expects to read.
            Err(e) if not_listed(&e) => match system {
                Err(DebianError::NotServed { .. }) => Err(e),
                s => s.map(|k| (&self.system, k)),
            },
            Err(e) => Err(e),
        }
    }

    /// The kernels of `series` and `flavour` either view lists, oldest
    /// first, each with the apt that lists it (the system's listing wins
    /// for a release both list).
    pub fn served(
        &self,
        series: &str,
        flavour: &str,
    ) -> Result<Vec<(&Apt, ServedKernel)>, DebianError> {
        let mut v: Vec<(&Apt, ServedKernel)> = kernel::served(&self.system, series, flavour)?
            .into_iter()
            .map(|k| (&self.system, k))
            .collect();
        let other = self.other()?;
        for k in kernel::served(other, series, flavour)? {
            if !v.iter().any(|(_, s)| s.release == k.release) {
                v.push((other, k));
            }
        }
        v.sort_by_key(|(_, k)| k.release.order());
        Ok(v)
    }

    /// The series of the current kernel of each view: the system's first
    /// (Debian 12: 6.1), then the private view's (6.12).
    pub fn series(&self) -> Result<Vec<String>, DebianError> {
        let mut v = vec![kernel::current_release(&self.system)?.series];
        let other = kernel::current_release(self.other()?)?.series;
        if !v.contains(&other) {
            v.push(other);
        }
        Ok(v)
    }
}

/// The current kernel of a suite of the private view.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OtherSuite {
    /// bookworm-backports: 6.12 built for Debian 12, with Debian 12's gcc-12.
    Backports,
    /// trixie (and trixie-security): Debian 13's own 6.12, built with gcc-14.
    Trixie,
}

impl OtherSuite {
    pub fn name(self) -> &'static str {
        match self {
            OtherSuite::Backports => "backports",
            OtherSuite::Trixie => "trixie",
        }
    }

    pub fn parse(name: &str) -> Option<OtherSuite> {
        [OtherSuite::Backports, OtherSuite::Trixie]
            .into_iter()
            .find(|s| s.name() == name)
    }
}

impl Archive {
    /// The newest kernel of `suite` the private view lists.
    pub fn suite_kernel(&self, suite: OtherSuite) -> Result<ServedKernel, DebianError> {
        let backport = suite == OtherSuite::Backports;
        kernel::suite_kernels(self.other()?)?
            .into_iter()
            .find(|k| kernel::is_backport(&k.debian_version) == backport)
            .ok_or_else(|| DebianError::Apt {
                what: format!(
                    "graft's private apt view lists no kernel of {}",
                    suite.name()
                ),
                hint: format!(
                    "`graft kernels` lists what it serves; its sources: {}",
                    OTHER_SOURCES.join("; ")
                ),
            })
    }
}

/// Whether `e` says the kernel (or its exact source) is not listed.
fn not_listed(e: &DebianError) -> bool {
    matches!(
        e,
        DebianError::NotServed { .. } | DebianError::SourceNotServed { .. }
    )
}
