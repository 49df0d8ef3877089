//! Inserting and removing modules: `finit_module(2)` and `delete_module(2)`
//! directly, so graft needs no kmod tools and sees the kernel's exact errno.

use std::ffi::CString;
use std::path::Path;

use nix::errno::Errno;
use nix::kmod::{delete_module, finit_module, DeleteModuleFlags, ModuleInitFlags};

use crate::error::io;
use crate::OpsError;

/// The two system calls, behind a trait so the load logic can be tested
/// against a fake kernel.
pub trait Modules {
    fn insert(&self, path: &Path) -> Result<(), Errno>;
    fn remove(&self, name: &str) -> Result<(), Errno>;
}

/// The real kernel.
pub struct Kernel;

impl Modules for Kernel {
    fn insert(&self, path: &Path) -> Result<(), Errno> {
        let f = std::fs::File::open(path)
            .map_err(|e| Errno::from_raw(e.raw_os_error().unwrap_or(Errno::EIO as i32)))?;
        finit_module(&f, c"", ModuleInitFlags::empty())
    }

    fn remove(&self, name: &str) -> Result<(), Errno> {
        let n = CString::new(name).map_err(|_| Errno::EINVAL)?;
        // O_NONBLOCK: fail with EWOULDBLOCK instead of waiting for users.
        delete_module(&n, DeleteModuleFlags::O_NONBLOCK)
    }
}

/// `finit_module` failed: what the errno means for a live patch.
pub fn insert_error(path: &Path, name: &str, errno: Errno) -> OpsError {
    let hint = match errno {
        Errno::EEXIST => format!("a module named {name} is already loaded; unload it first"),
        Errno::ENOEXEC => "the kernel found the module malformed or built for another kernel (vermagic or symbol versions disagree); rebuild it against the running kernel's headers".into(),
        Errno::EKEYREJECTED | Errno::ENOKEY | Errno::EBADMSG => "the kernel rejected the module's signature; sign it with a key the kernel trusts".into(),
        Errno::EPERM => "the kernel does not allow loading modules here (not root, lockdown, or modules_disabled)".into(),
        Errno::EBUSY => "another live patch is in transition; wait for it and retry".into(),
        Errno::EINVAL | Errno::ENOENT => "livepatch refused the patch: a function or symbol it names is not in this kernel, or it clashes with the loaded patches; `dmesg | grep livepatch` has the kernel's reason".into(),
        Errno::ENODEV => "livepatch is not ready in this kernel".into(),
        _ => "`dmesg` has the kernel's reason".into(),
    };
    OpsError::Kernel {
        what: format!("cannot load {}", path.display()),
        errno,
        hint,
    }
}

pub fn remove_error(name: &str, errno: Errno) -> OpsError {
    let hint = match errno {
        Errno::ENOENT => "it is not loaded".into(),
        Errno::EWOULDBLOCK | Errno::EBUSY => "the module is still in use: a forced transition pins it forever, otherwise retry in a moment".into(),
        Errno::EPERM => "not permitted (root is needed)".into(),
        _ => "`dmesg` has the kernel's reason".into(),
    };
    OpsError::Kernel {
        what: format!("cannot remove module {name}"),
        errno,
        hint,
    }
}

/// Checks that `path` can be opened before any state changes, for a clear
/// error on a typo.
pub fn check_readable(path: &Path) -> Result<(), OpsError> {
    std::fs::File::open(path).map(drop).map_err(io(path))
}
