//! Operating live patches on a running kernel.
//!
//! Everything graft knows about loaded patches comes from the kernel's own
//! interfaces, read through a [`Host`] whose `/sys` and `/proc` roots are
//! parameters (unit tests run against a fake tree in a temporary directory):
//!
//! - [`state`]: `/sys/kernel/livepatch/<patch>/…` and `/proc/modules` as an
//!   owned model (patches, objects, functions with sympos, load order);
//! - [`tasks`]: `/proc/<pid>/task/<tid>/patch_state` (who has switched) and
//!   `…/stack` (which patched function a straggler sleeps in);
//! - [`modinfo`]: a module file's `.modinfo`, read offline (graft's metadata);
//! - [`precheck`]: everything that can be checked before `finit_module`;
//! - [`watch`]: follows a transition, reports progress and blockers, and
//!   stops at a deadline or on cancel;
//! - [`ops`]: load and unload, with the reverse-on-timeout guarantee and the
//!   hand-over report of an atomic replace;
//! - [`install`]: keeping modules per kernel release and the boot unit.
//!
//! Libraries never print: progress goes to a callback as [`watch::Event`]s.

pub mod error;
pub mod install;
pub mod kmod;
pub mod modinfo;
pub mod ops;
pub mod precheck;
pub mod state;
pub mod tasks;
pub mod watch;

use std::path::{Path, PathBuf};

pub use error::OpsError;

/// Where the kernel's interfaces are mounted. `Host::default()` is the real
/// system; tests point it at a fake tree.
#[derive(Debug, Clone)]
pub struct Host {
    pub sys: PathBuf,
    pub proc: PathBuf,
}

impl Default for Host {
    fn default() -> Self {
        Host {
            sys: PathBuf::from("/sys"),
            proc: PathBuf::from("/proc"),
        }
    }
}

impl Host {
    /// A host rooted at `root` (`root/sys`, `root/proc`), for tests.
    pub fn under(root: &Path) -> Host {
        Host {
            sys: root.join("sys"),
            proc: root.join("proc"),
        }
    }

    /// `/sys/kernel/livepatch`: present exactly when the kernel has CONFIG_LIVEPATCH.
    pub fn livepatch_dir(&self) -> PathBuf {
        self.sys.join("kernel/livepatch")
    }

    pub fn patch_dir(&self, name: &str) -> PathBuf {
        self.livepatch_dir().join(name)
    }

    pub fn module_dir(&self, name: &str) -> PathBuf {
        self.sys.join("module").join(name)
    }

    /// The running kernel's release (`uname -r`).
    pub fn release(&self) -> Result<String, OpsError> {
        let p = self.proc.join("sys/kernel/osrelease");
        Ok(error::read(&p)?.trim().to_owned())
    }
}

/// A function as livepatch names it: object (`vmlinux` or a module), name,
/// and its position among same-named symbols of that object (0 = unique).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
pub struct FuncRef {
    pub object: String,
    pub name: String,
    pub sympos: u32,
}

impl std::fmt::Display for FuncRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.name)?;
        if self.sympos != 0 {
            write!(f, ",{}", self.sympos)?;
        }
        if self.object != "vmlinux" {
            write!(f, " [{}]", self.object)?;
        }
        Ok(())
    }
}

/// The kernel's module name for a file or a user's spelling: `-` becomes
/// `_`, as the kernel does (`livepatch-x.ko` loads as `livepatch_x`).
pub fn module_name(s: &str) -> String {
    s.replace('-', "_")
}
