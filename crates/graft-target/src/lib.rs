//! The target kernel as graft sees it: its symbol table (kallsyms format)
//! and the symbols it exports to modules (`Module.symvers`).

pub mod embedded;
mod image;
mod kallsyms;
mod module;
mod symvers;

pub use image::{ImageError, KernelImage};
pub use kallsyms::{KallsymsEntry, SymbolTable, SymposError};
pub use module::{find_module, ModuleError, ModuleFile};
pub use symvers::{Export, Exports};

#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    #[error("cannot read the symbol table {path}: {source}; hint: pass the target kernel's symbol table with --symbols (a copy of /proc/kallsyms read as root)")]
    Io {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("cannot read the kernel's exports {path}: {source}; hint: pass the target kernel's headers directory (with Module.symvers) with --headers")]
    NoExports {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("{path}:{line}: not a {format} line: {text:?}")]
    Parse {
        path: std::path::PathBuf,
        line: usize,
        format: &'static str,
        text: String,
    },
    #[error("{path} is Debian's stub System.map (the real one is in the -dbg package); hint: use the target's /proc/kallsyms, read as root")]
    StubSystemMap { path: std::path::PathBuf },
    #[error("{path}: the symbol table is empty; hint: read /proc/kallsyms as root (as non-root every address reads 0)")]
    Empty { path: std::path::PathBuf },
    #[error(transparent)]
    Image(#[from] crate::image::ImageError),
}
