//! One error type for operations. Every message names the cause and, where
//! one is known, the fix (`…; hint: …`), on one line.

use std::path::{Path, PathBuf};

use nix::errno::Errno;

#[derive(Debug, thiserror::Error)]
pub enum OpsError {
    // Not a `#[source]`: the message already carries it, and error chains
    // printed in full would say it twice.
    #[error("{}: {error}", path.display())]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },

    #[error("graft {what} needs root (it {why}); hint: run it with sudo")]
    NotRoot { what: String, why: String },

    #[error("this kernel has no livepatch support ({} is missing); hint: boot a kernel built with CONFIG_LIVEPATCH=y (Debian's kernels are)", dir.display())]
    NoLivepatch { dir: PathBuf },

    #[error("{}: not a kernel module ({what}); hint: pass the .ko file that `graft build` wrote", path.display())]
    NotAModule { path: PathBuf, what: String },

    #[error("{}: {name} is a kernel module but not a live patch (its .modinfo has no livepatch=Y); hint: graft loads only live patch modules, load other modules with modprobe", path.display())]
    NotLivepatch { path: PathBuf, name: String },

    #[error("{}: built for kernel {module_release}, but the running kernel is {running}; hint: build the patch against this kernel's headers, or install it for the other kernel with `graft install`", path.display())]
    WrongRelease {
        path: PathBuf,
        module_release: String,
        running: String,
    },

    #[error("{}: the kernel loads only signed modules ({why}) and this module is unsigned; hint: sign it with a key the kernel trusts (scripts/sign-file sha256 KEY CERT {})", path.display(), path.display())]
    SignatureRequired { path: PathBuf, why: String },

    #[error("module loading is disabled on this system (/proc/sys/kernel/modules_disabled is 1); hint: it can only be re-enabled by a reboot")]
    ModulesDisabled,

    #[error("live patch {name} is already loaded{}; hint: unload it first with `graft unload {name}`, or build the new version under another name (a cumulative patch replaces it)", if *.enabled { "" } else { " (disabled, its module still in memory)" })]
    AlreadyLoaded { name: String, enabled: bool },

    #[error("a module named {name} is already loaded and it is not a live patch; hint: rename the patch (graft build --name)")]
    NameTaken { name: String },

    #[error("live patch {busy} is in transition; the kernel moves one patch at a time; hint: wait for it (`graft list`) and retry")]
    TransitionBusy { busy: String },

    #[error("no live patch named {name} is loaded; hint: `graft list` shows the loaded ones")]
    NotLoaded { name: String },

    #[error("{}: {errno}: {hint}", what)]
    Kernel {
        what: String,
        errno: Errno,
        hint: String,
    },

    #[error("{what}; hint: {hint}")]
    Refused { what: String, hint: String },
}

pub(crate) fn io(path: &Path) -> impl FnOnce(std::io::Error) -> OpsError + '_ {
    move |error| OpsError::Io {
        path: path.to_owned(),
        error,
    }
}

pub(crate) fn read(path: &Path) -> Result<String, OpsError> {
    std::fs::read_to_string(path).map_err(io(path))
}

/// Reads a small sysfs/procfs file; `None` when it does not exist (an object
/// or a task that went away between listing and reading is not an error).
pub(crate) fn read_opt(path: &Path) -> Result<Option<String>, OpsError> {
    match std::fs::read_to_string(path) {
        Ok(s) => Ok(Some(s)),
        Err(e)
            // Gone: a file that no longer exists, an exited task (ESRCH), or
            // a sysfs attribute of a patch being freed right now (ENODEV).
            if e.kind() == std::io::ErrorKind::NotFound
                || e.raw_os_error() == Some(libc_esrch())
                || e.raw_os_error() == Some(nix::errno::Errno::ENODEV as i32) =>
        {
            Ok(None)
        }
        Err(e) => Err(OpsError::Io {
            path: path.to_owned(),
            error: e,
        }),
    }
}

fn libc_esrch() -> i32 {
    Errno::ESRCH as i32
}
