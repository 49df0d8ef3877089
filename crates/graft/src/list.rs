//! `graft list`: the loaded patches in load order (how they stack), their
//! state and functions; `--installed`: what the boot unit would load.

use anyhow::Result;
use graft_ops::install::{installed, InstallRoot};
use graft_ops::modinfo::ModuleInfo;
use graft_ops::state::{self, LoadedPatch};
use graft_ops::Host;
use serde::Serialize;

use crate::opsui;

#[derive(clap::Args)]
pub struct Args {
    /// List the patches installed for boot instead of the loaded ones.
    #[arg(long)]
    installed: bool,
}

#[derive(Serialize)]
struct Listed {
    #[serde(flatten)]
    patch: LoadedPatch,
    /// graft's metadata, when graft loaded it (from /run/graft).
    module: Option<ModuleInfo>,
}

pub fn run(a: Args, json: bool) -> Result<()> {
    if a.installed {
        return list_installed(json);
    }
    let host = Host::default();
    let all = state::read(&host)?;
    let listed: Vec<Listed> = all
        .patches
        .iter()
        .map(|p| Listed {
            module: ModuleInfo::read(&opsui::run_dir().join(format!("{}.ko", p.name))).ok(),
            patch: p.clone(),
        })
        .collect();
    if json {
        println!(
            "{}",
            serde_json::json!({ "patches": listed, "leftovers": all.leftovers })
        );
        return Ok(());
    }
    if listed.is_empty() && all.leftovers.is_empty() {
        println!("no live patches loaded");
    }
    for l in &listed {
        print_patch(&l.patch);
        if let Some(g) = l.module.as_ref().and_then(|m| m.graft.as_ref()) {
            println!(
                "  built by graft {} for {}{}",
                g.version,
                g.kernel.as_deref().unwrap_or("?"),
                g.built
                    .map(|t| format!(" on {}", opsui::utc(t)))
                    .unwrap_or_default()
            );
        }
    }
    for l in &all.leftovers {
        println!("{l}: module loaded, patch replaced or disabled (`graft unload {l}` removes it)");
    }
    Ok(())
}

/// `livepatch_x: enabled` + one line per object with its functions.
pub fn print_patch(p: &LoadedPatch) {
    let state = match (p.enabled, p.transition) {
        (true, false) => "enabled",
        (true, true) => "enabled, in transition (patching)",
        (false, true) => "disabled, in transition (unpatching)",
        (false, false) => "disabled",
    };
    println!("{}: {state}", p.name);
    for o in &p.objects {
        let st = match (o.loaded, o.patched) {
            (false, _) => "not loaded",
            (true, Some(true)) => "patched",
            (true, Some(false)) => "not patched",
            (true, None) => "loaded",
        };
        let funcs: Vec<String> = o
            .functions
            .iter()
            .map(|f| format!("{},{}", f.name, f.sympos))
            .collect();
        println!("  {} ({st}): {}", o.name, funcs.join(" "));
    }
}

fn list_installed(json: bool) -> Result<()> {
    let all = installed(&InstallRoot::default())?;
    if json {
        println!("{}", serde_json::to_string_pretty(&all)?);
        return Ok(());
    }
    if all.is_empty() {
        println!("no live patches installed");
    }
    let running = Host::default().release().unwrap_or_default();
    for i in &all {
        println!(
            "{} for {}{}{}",
            i.name,
            i.release,
            if i.replace { " (cumulative)" } else { "" },
            if i.release == running {
                ""
            } else {
                " — not the running kernel"
            }
        );
    }
    Ok(())
}
