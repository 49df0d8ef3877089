//! The graft kernel lab: a cached, idempotent environment holding the current Debian 12 distro
//! kernel (image, prepared source tree, headers, symbol table) plus a QEMU runner that boots it with
//! a busybox initramfs and one shell script. Tests, benchmarks and the demo build on it.
//!
//! Which kernel: the release `linux-image-amd64` depends on (`apt-cache depends`), e.g.
//! `6.1.0-56-amd64`; its `-unsigned` image and `linux-source-<major>.<minor>` must have the same
//! Debian version (e.g. `6.1.192-2`) or setup refuses. Nothing is hard-coded to one ABI.
//!
//! # Layout
//!
//! Root: `$GRAFT_LAB_DIR` if set, else `/var/cache/graft/lab`.
//!
//! ```text
//! <root>/
//!   current                    release of the last completed setup (what `Lab::open` follows)
//!   .lock                      flock held while `setup` runs
//!   logs/apt.log               apt-get output
//!   <release>/
//!     lab.json                 the `Lab` of this release (paths, versions, make variables)
//!     image/                   `dpkg-deb -x` of linux-image-<release>-unsigned (not installed):
//!       boot/vmlinuz-<release>, boot/config-<release>, lib/modules/<release>/
//!     src/<tarball dir>/       /usr/src/linux-source-<x.y>.tar.xz unpacked (dir `linux-source-<x.y>`),
//!                              `.config` = image config + the options Debian strips from it (taken
//!                              from the headers' .config) + cert-path fixes, olddefconfig,
//!                              `make modules_prepare` (implies prepare + scripts + objtool)
//!     kallsyms                 /proc/kallsyms of the image booted in QEMU with `nokaslr`
//!     logs/                    build logs (source-prepare.log)
//!     .done-image              completion markers, one per stage, written last (JSON with the
//!     .done-source-unpack        stage's results); a stage without its marker is redone from
//!     .done-source               scratch (unpacking happens in `.tmp-*` and is renamed into place)
//!     .done-kallsyms
//! /usr/src/linux-headers-<release>/   from apt (linux-headers-<release>): `Lab::headers()`
//! ```
//!
//! Building in the source tree: use [`Lab::make_command`], which passes `CC=<the image's compiler>`
//! and `KERNELRELEASE=<release>` (see [`SourceInfo::make_vars`]).

mod apt;
mod cmd;
mod cpio;
mod error;
mod kallsyms;
mod lab;
mod vm;

pub use apt::{
    parse_depends, parse_dpkg_query, parse_policy, source_package_for, upstream_version, Policy,
    Resolved, BASE_PACKAGES,
};
pub use error::LabError;
pub use kallsyms::{
    extract_table as extract_kallsyms, validate as validate_kallsyms, KallsymsStats,
};
pub use lab::{
    adjust_cert_paths, compiler_from_version_text, config_differences, config_string,
    merge_missing_options, parse_config, parse_uts_release, set_config_string, Lab, SourceInfo,
    DEFAULT_ROOT, KALLSYMS_TIMEOUT, PROBE_OBJECT, ROOT_ENV,
};
pub use vm::{
    run_scenario, run_scenario_with, Scenario, ScenarioOutput, VmOptions, BASE_CMDLINE, BUSYBOX,
    DEFAULT_TIMEOUT, QEMU,
};
