//! Where the target kernel's description comes from: the live host by
//! default, or a directory describing another machine's kernel
//! (`--target DIR`), with any file overridden by its own flag; and what is
//! read from them.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

/// Paths of everything graft reads about the target kernel.
#[derive(Debug, Clone)]
pub struct TargetPaths {
    pub release: String,
    pub config: PathBuf,
    pub symbols: PathBuf,
    pub image: PathBuf,
    pub modules: PathBuf,
    pub headers: PathBuf,
}

/// Per-file overrides given on the command line.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub target: Option<PathBuf>,
    pub config: Option<PathBuf>,
    pub symbols: Option<PathBuf>,
    pub image: Option<PathBuf>,
    pub modules: Option<PathBuf>,
    pub headers: Option<PathBuf>,
}

impl TargetPaths {
    /// A target directory holds `release` (one line), `config`, a symbol
    /// table (`kallsyms`, `System.map` or `vmlinux`), `vmlinuz`, and
    /// optionally `modules/` and `headers/`; without one, the live host.
    pub fn resolve(o: &Overrides) -> Result<TargetPaths> {
        let t = match &o.target {
            Some(dir) => from_dir(dir)?,
            None => live_host()?,
        };
        Ok(TargetPaths {
            config: o.config.clone().unwrap_or(t.config),
            symbols: o.symbols.clone().unwrap_or(t.symbols),
            image: o.image.clone().unwrap_or(t.image),
            modules: o.modules.clone().unwrap_or(t.modules),
            headers: o.headers.clone().unwrap_or(t.headers),
            release: t.release,
        })
    }
}

fn live_host() -> Result<TargetPaths> {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .context("cannot read the running kernel's release")?
        .trim()
        .to_owned();
    Ok(TargetPaths {
        config: PathBuf::from(format!("/boot/config-{release}")),
        symbols: PathBuf::from("/proc/kallsyms"),
        image: PathBuf::from(format!("/boot/vmlinuz-{release}")),
        modules: PathBuf::from(format!("/lib/modules/{release}")),
        headers: PathBuf::from(format!("/lib/modules/{release}/build")),
        release,
    })
}

fn from_dir(dir: &Path) -> Result<TargetPaths> {
    if !dir.is_dir() {
        bail!("the target description {} is not a directory; hint: give a directory with release, config, kallsyms and vmlinuz", dir.display());
    }
    let release = std::fs::read_to_string(dir.join("release"))
        .with_context(|| {
            format!(
                "{}: no release file; hint: write the target's `uname -r` into it",
                dir.display()
            )
        })?
        .trim()
        .to_owned();
    let symbols = ["kallsyms", "System.map", "vmlinux"]
        .iter()
        .map(|n| dir.join(n))
        .find(|p| p.exists())
        .unwrap_or_else(|| dir.join("kallsyms"));
    let headers = [
        dir.join("headers"),
        PathBuf::from(format!("/usr/src/linux-headers-{release}")),
    ]
    .into_iter()
    .find(|p| p.join("Module.symvers").exists())
    .unwrap_or_else(|| PathBuf::from(format!("/lib/modules/{release}/build")));
    Ok(TargetPaths {
        config: dir.join("config"),
        symbols,
        image: dir.join("vmlinuz"),
        modules: dir.join("modules"),
        headers,
        release,
    })
}

/// What graft reads about the target kernel before building.
pub struct Target {
    pub paths: TargetPaths,
    pub symbols: graft_target::SymbolTable,
    pub exports: graft_target::Exports,
    /// kbuild runs objtool on the patch module at its link (IBT kernels:
    /// 6.12), so the patch objects carry objtool's annotations, not its tables.
    pub objtool_at_link: bool,
}

impl Target {
    pub fn read(inputs: &crate::Inputs) -> Result<Target> {
        let paths = inputs.target.clone();
        let symbols = graft_target::SymbolTable::read(&paths.symbols)?;
        let exports = graft_target::Exports::read(&paths.headers.join("Module.symvers"))?;
        let config = std::fs::read_to_string(&paths.config).unwrap_or_default();
        Ok(Target {
            objtool_at_link: graft_kbuild::config::objtool_at_link(&config),
            paths,
            symbols,
            exports,
        })
    }
}
