//! `graft info NAME|X.ko`: a module's metadata (offline, from its
//! `.modinfo`) and, when it is loaded, its live state.

use std::path::Path;

use anyhow::Result;
use graft_ops::modinfo::ModuleInfo;
use graft_ops::state::{self, LoadedPatch};
use graft_ops::Host;
use serde::Serialize;

use crate::opsui;

#[derive(clap::Args)]
pub struct Args {
    /// A module file (read offline), or the name of a loaded patch.
    patch: String,
}

#[derive(Serialize)]
struct Info {
    name: String,
    module: Option<ModuleInfo>,
    /// The live state, when loaded.
    loaded: Option<LoadedPatch>,
}

pub fn run(a: Args, json: bool) -> Result<()> {
    let host = Host::default();
    let path = Path::new(&a.patch);
    let (name, module) = if path.is_file() {
        let m = ModuleInfo::read(path)?;
        (m.name.clone(), Some(m))
    } else {
        let name = opsui::resolve_name(&host, &a.patch)?;
        let m = ModuleInfo::read(&opsui::run_dir().join(format!("{name}.ko"))).ok();
        (name, m)
    };
    // Reading live state needs livepatch; offline metadata does not.
    let loaded = if host.livepatch_dir().is_dir() {
        state::read_patch(&host, &name)?
    } else {
        None
    };
    if module.is_none() && loaded.is_none() {
        return Err(graft_ops::OpsError::NotLoaded { name }.into());
    }
    if json {
        let info = Info {
            name,
            module,
            loaded,
        };
        println!("{}", serde_json::to_string_pretty(&info)?);
        return Ok(());
    }
    println!("{name}");
    if let Some(m) = &module {
        println!("  file: {}", m.path.display());
        println!(
            "  kernel: {}",
            m.release().unwrap_or("unknown (no vermagic)")
        );
        println!("  live patch: {}", if m.livepatch { "yes" } else { "no" });
        println!("  signed: {}", if m.signed { "yes" } else { "no" });
        match &m.graft {
            Some(g) => {
                println!("  built by: graft {}", g.version);
                if let Some(t) = g.built {
                    println!("  built: {}", opsui::utc(t));
                }
                if let Some(s) = &g.patch_sha256 {
                    println!("  source patch sha256: {s}");
                }
                if let Some(r) = g.replace {
                    println!(
                        "  kind: {}",
                        if r {
                            "cumulative (replaces loaded patches)"
                        } else {
                            "stacking (--no-replace)"
                        }
                    );
                }
                let funcs: Vec<String> = g
                    .functions
                    .iter()
                    .map(|f| format!("{}:{},{}", f.object, f.name, f.sympos))
                    .collect();
                println!("  functions: {}", funcs.join(" "));
                if !m.klp_modules.is_empty() {
                    let by = match g.reload.as_deref() {
                        Some("graft") => "the patch clears them when the module goes away",
                        Some("kernel") => "the kernel clears them when the module goes away",
                        Some(_) => "nothing clears them: the module cannot be reloaded while the patch is loaded",
                        None => "unknown whether they are cleared when the module goes away",
                    };
                    println!(
                        "  relocations for modules: {} ({by})",
                        m.klp_modules.join(", ")
                    );
                }
            }
            None => println!("  built by: not graft (no graft metadata)"),
        }
    }
    match &loaded {
        Some(p) => {
            print!("  loaded: ");
            crate::list::print_patch(p);
        }
        None => println!("  loaded: no"),
    }
    Ok(())
}
