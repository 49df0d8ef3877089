//! The graft kernel lab: a cached, idempotent environment holding Debian 12 distro kernels
//! (image, prepared source tree, headers, symbol table), one or several releases side by side, plus
//! a QEMU runner that boots one with a busybox initramfs and one shell script. Tests, benchmarks and
//! the demo build on it.
//!
//! Which kernel: [`Lab::setup`] takes the release `linux-image-amd64` depends on (`apt-cache
//! depends`), e.g. `6.1.0-56-amd64`, and makes it the lab's current one ([`Lab::open`]);
//! [`Lab::setup_release`] adds another (e.g. an older ABI) beside it, opened with
//! [`Lab::open_release`]; [`Lab::releases`] lists them. Image, headers and source are fetched at the
//! kernel's exact Debian version by graft-debian, the product's own fetch layer (downloaded and
//! unpacked, never installed), and the source is prepared by graft-kbuild. Nothing is hard-coded to
//! one ABI.
//!
//! # Layout
//!
//! Root: `$GRAFT_LAB_DIR` if set, else `/var/cache/graft/lab`.
//!
//! ```text
//! <root>/
//!   current                    release of the last completed `setup` (what `Lab::open` follows)
//!   .lock                      flock held while a setup runs
//!   logs/apt.log               apt-get output (host packages)
//!   <release>/                 a graft-debian kernel directory (see graft_debian::cache), plus:
//!     lab.json                 the `Lab` of this release (paths, versions, make variables)
//!     image/                   boot/vmlinuz-<release>, boot/config-<release>, lib/modules/<release>/
//!     headers/                 the headers packages unpacked; `Lab::headers()` is their kbuild dir
//!     src/<tarball dir>/       the source, configured like the image and prepared with its compiler
//!     kallsyms                 /proc/kallsyms of the image booted in QEMU with `nokaslr`
//!     .done-*                  completion markers, one per stage (image, headers, source-unpack,
//!                              source, kallsyms), written last
//! ```
//!
//! [`corpus`] builds the fixes of a Debian kernel update with graft, one item per changed file, and
//! loads the built ones in a VM booting the kernel they are for (`graft-lab corpus`, `./run corpus`).
//!
//! Building in the source tree: use [`Lab::make_command`], which passes `CC=<the image's compiler>`
//! and `KERNELRELEASE=<release>` (see [`SourceInfo::make_vars`]).

mod apt;
mod cmd;
pub mod corpus;
mod cpio;
mod error;
mod kallsyms;
mod lab;
mod vm;

pub use apt::BASE_PACKAGES;
pub use error::LabError;
pub use kallsyms::{
    extract_table as extract_kallsyms, validate as validate_kallsyms, KallsymsStats,
};
pub use lab::{Lab, SourceInfo, DEFAULT_ROOT, KALLSYMS_TIMEOUT, PROBE_OBJECT, ROOT_ENV};
pub use vm::{
    run_scenario, run_scenario_with, Scenario, ScenarioOutput, VmOptions, BASE_CMDLINE, BUSYBOX,
    DEFAULT_TIMEOUT, QEMU,
};
