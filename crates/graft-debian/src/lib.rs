//! Debian's kernel packages, for graft: which kernels apt serves, and a
//! kernel fetched into graft's cache (image, headers, exact source),
//! unpacked and prepared like the kernel, never installed: nothing here
//! changes the system's package state.
//!
//! [`kernel`] names packages and asks apt what it lists; [`apt`] talks to
//! apt and dpkg (look-ups, `apt-get download`, `dpkg-deb -x`), with the
//! system's sources or a private set of graft's; [`archive`] routes a
//! release to the apt that serves it (the system's, else the private view
//! of bookworm-backports and trixie, for Linux 6.12); [`cache`]
//! lays a kernel out on disk, stage by stage, with completion markers and a
//! lock per kernel. Progress reaches the caller as [`Event`]s.

pub mod apt;
pub mod archive;
pub mod buildroot;
pub mod cache;
pub mod kernel;

use std::path::PathBuf;

pub use apt::{Apt, Availability};
pub use archive::{Archive, OtherSuite};
pub use cache::{CachedKernel, KernelCache, KernelDir, Parts, SourceDone};
pub use kernel::{KernelPackages, Package, Release, ServedKernel};

/// A stage of fetching a kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    Image,
    Headers,
    Source,
    Prepare,
    /// A Debian root with the kernel's compiler ([`buildroot`]).
    BuildRoot,
}

impl Stage {
    pub fn describe(self) -> &'static str {
        match self {
            Stage::Image => "image",
            Stage::Headers => "headers",
            Stage::Source => "source",
            Stage::Prepare => "preparing the source",
            Stage::BuildRoot => {
                "making a Debian build root with the kernel's compiler (debootstrap)"
            }
        }
    }
}

/// What a fetch reports while it runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Started(Stage),
    /// The stage did its work.
    Done(Stage),
    /// The stage was complete already.
    Cached(Stage),
    /// Bytes of `file` on disk so far, of `total`.
    Download {
        file: String,
        done: u64,
        total: u64,
    },
    /// Unpacking the source tarball.
    Unpacking(String),
    Prepare(graft_kbuild::prepare::Step),
    /// Another process holds the kernel's lock; waiting for it.
    Waiting(PathBuf),
}

#[derive(Debug, thiserror::Error)]
pub enum DebianError {
    #[error("{context}: {source}; hint: check permissions and free space of graft's cache (GRAFT_CACHE_DIR)")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("`{command}` {status}{}; hint: {hint}", if output.is_empty() { String::new() } else { format!(":\n{output}") })]
    Command {
        command: String,
        status: String,
        output: String,
        hint: String,
    },
    #[error("{what}; hint: {hint}")]
    Apt { what: String, hint: String },
    #[error("apt does not list kernel {release} (linux-image-{release}-unsigned); hint: {hint}")]
    NotServed { release: String, hint: String },
    /// The one-line error of a kernel whose exact source apt no longer has.
    #[error("the source of kernel {release} (Debian {version}) is not served by apt: {package} is listed at {}; hint: pass a tree prepared like the kernel with --tree", if served.is_empty() { "no version".to_string() } else { served.join(", ") })]
    SourceNotServed {
        release: String,
        version: String,
        package: String,
        served: Vec<String>,
    },
    #[error("{package} {version} is listed by apt but the archive does not serve it ({status} for {url}); hint: choose another kernel (`graft kernels`), or run `apt-get update`")]
    Unavailable {
        package: String,
        version: String,
        url: String,
        status: String,
    },
    #[error("{what}; hint: {hint}")]
    Invalid { what: String, hint: String },
    #[error(transparent)]
    Kbuild(#[from] graft_kbuild::KbuildError),
}

impl DebianError {
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        DebianError::Io {
            context: context.into(),
            source,
        }
    }

    pub(crate) fn invalid(what: impl Into<String>, hint: impl Into<String>) -> Self {
        DebianError::Invalid {
            what: what.into(),
            hint: hint.into(),
        }
    }
}
