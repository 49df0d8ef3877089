//! `graft install X.ko` keeps a patch for boot under
//! /var/lib/graft/<release>/ and enables graft.service; `graft uninstall`
//! undoes it. Neither loads nor unloads anything now.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, Result};
use graft_ops::install::{self, InstallRoot};
use graft_ops::{precheck, Host};

#[derive(clap::Args)]
pub struct InstallArgs {
    /// The live patch module to keep.
    module: PathBuf,
}

#[derive(clap::Args)]
pub struct UninstallArgs {
    /// The patch's name (livepatch_x, livepatch-x or x).
    patch: String,
    /// Only for this kernel release [default: every release].
    #[arg(long)]
    release: Option<String>,
}

pub fn install(a: InstallArgs, json: bool) -> Result<()> {
    precheck::require_root("install", "writes /var/lib/graft and /etc/systemd/system")?;
    let graft = std::env::current_exe().context("cannot tell where the graft binary is")?;
    let running = Host::default().release()?;
    let r = install::install(&InstallRoot::default(), &a.module, &graft, &running)?;
    reload_systemd();
    if json {
        println!("{}", serde_json::to_string_pretty(&r)?);
        return Ok(());
    }
    println!(
        "installed {} for {} as {}",
        r.installed.name,
        r.installed.release,
        r.installed.path.display()
    );
    if r.other_release {
        println!(
            "  not for the running kernel ({running}): it loads when {} boots",
            r.installed.release
        );
    }
    println!(
        "  {} loads it at boot; `graft load {}` loads it now",
        install::UNIT_NAME,
        r.installed.path.display()
    );
    Ok(())
}

pub fn uninstall(a: UninstallArgs, json: bool) -> Result<()> {
    precheck::require_root("uninstall", "writes /var/lib/graft and /etc/systemd/system")?;
    let name = graft_ops::module_name(&a.patch);
    let root = InstallRoot::default();
    let names = install::installed(&root)?;
    // Accept `x` for `livepatch_x`, as the other commands do.
    let name = if !names.iter().any(|i| i.name == name)
        && names.iter().any(|i| i.name == format!("livepatch_{name}"))
    {
        format!("livepatch_{name}")
    } else {
        name
    };
    let r = install::uninstall(&root, &name, a.release.as_deref())?;
    reload_systemd();
    if json {
        println!("{}", serde_json::to_string_pretty(&r)?);
        return Ok(());
    }
    for i in &r.removed {
        println!("uninstalled {} for {}", i.name, i.release);
    }
    if r.unit_removed {
        println!(
            "  nothing is installed any more: {} removed",
            install::UNIT_NAME
        );
    }
    if graft_ops::state::read_patch(&Host::default(), &name)
        .ok()
        .flatten()
        .is_some()
    {
        println!("  {name} is still loaded: `graft unload {name}` removes it now");
    }
    Ok(())
}

/// Tells a running systemd about the changed unit; without systemd (a
/// container, the test VM) the files alone are the whole job.
fn reload_systemd() {
    if std::path::Path::new("/run/systemd/system").is_dir() {
        let _ = Command::new("systemctl").arg("daemon-reload").status();
    }
}
