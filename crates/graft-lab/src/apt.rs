//! The host packages the lab needs (VM, initramfs, kernel build), installed
//! with apt when missing. The kernel itself (image, headers, source) is
//! never installed: graft-debian fetches it into the lab's directory.

use std::path::Path;
use std::process::Command;

use crate::cmd;
use crate::error::LabError;

/// Host packages the lab needs.
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
    // graft asks the archive whether a kernel's files can be downloaded.
    "curl",
    // A kernel whose compiler Debian 12 lacks (Debian 13's gcc-14) is built
    // in a Debian root graft makes.
    "debootstrap",
];

fn apt_command(program: &str) -> Command {
    let mut c = Command::new(program);
    c.env("DEBIAN_FRONTEND", "noninteractive")
        .env("LC_ALL", "C");
    c
}

/// Installs whatever of [`BASE_PACKAGES`] is missing; returns what it installed.
pub(crate) fn ensure_installed(
    logs: &Path,
    progress: &mut dyn FnMut(&str),
) -> Result<Vec<String>, LabError> {
    let names: Vec<String> = BASE_PACKAGES.iter().map(|p| p.to_string()).collect();
    let have = graft_debian::Apt::new().installed(&names)?;
    let missing: Vec<String> = names
        .into_iter()
        .filter(|n| !have.contains_key(n))
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
    std::fs::create_dir_all(logs)
        .map_err(|e| LabError::io(format!("creating {}", logs.display()), e))?;
    let log = logs.join("apt.log");
    progress(&format!("installing {}…", missing.join(" ")));
    let install = || {
        cmd::logged(
            apt_command("apt-get")
                .args(["install", "-y", "--no-install-recommends"])
                .args(&missing),
            &log,
            "apt-get install failed; see the log; `apt-get update` may help",
        )
    };
    if install().is_err() {
        // Stale lists are the usual cause ("Unable to locate package").
        progress("refreshing apt package lists (apt-get update)…");
        cmd::logged(
            apt_command("apt-get").arg("update"),
            &log,
            "apt-get update failed; check network access to the Debian mirror",
        )?;
        install()?;
    }
    Ok(missing)
}
