//! `graft`: the command line. Argument definitions and dispatch only; each
//! command lives in its own module and calls the library crates.

mod build;
mod diff;
mod info;
mod install;
mod kernels;
mod list;
mod load;
mod opsui;
mod output;
mod unload;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Documented exit codes.
pub mod exit {
    /// The command did what was asked.
    pub const OK: u8 = 0;
    /// Bad input or environment (missing file, patch that does not apply…).
    pub const ERROR: u8 = 1;
    /// Wrong usage (clap's own code).
    pub const USAGE: u8 = 2;
    /// graft refused: the patch cannot be made into a safe live patch.
    pub const REFUSED: u8 = 3;
    /// A transition (load or unload) did not complete in time, or was
    /// interrupted, and was reversed: the system is as it was before.
    pub const REVERTED: u8 = 4;
    /// A transition stalled and so did its reversal: the kernel keeps
    /// trying; the operator must look (`graft list`).
    pub const STUCK: u8 = 5;
    /// `graft build --kernel` with several kernels: some were built, the
    /// others were not (each reported with its reason). When none was
    /// built the code is 3 if every kernel refused the patch, else 1.
    pub const PARTIAL: u8 = 6;
}

#[derive(Parser)]
#[command(
    name = "graft",
    version,
    about = "Turn a kernel source fix into a live patch for the running kernel"
)]
struct Cli {
    /// Machine-readable output (JSON on stdout).
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

// Parsed once per run: the size of the largest variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// Build a livepatch module from a source patch.
    Build(Box<build::Args>),
    /// Compare an original and a patched object, function by function.
    Diff(diff::Args),
    /// Load a live patch and follow its transition; a stall is reversed.
    Load(load::Args),
    /// Disable a live patch, follow the transition back, remove its module.
    Unload(unload::Args),
    /// The loaded live patches, in the order they stack.
    List(list::Args),
    /// A patch's metadata (offline from its .ko) and live state.
    Info(info::Args),
    /// Keep a live patch for boot (/var/lib/graft, graft.service).
    Install(install::InstallArgs),
    /// Remove a live patch kept for boot.
    Uninstall(install::UninstallArgs),
    /// The Debian kernels apt serves (and whether their files can be
    /// downloaded), and those in graft's cache.
    Kernels(kernels::KernelsArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Build(a) => build::run(*a, cli.json),
        Command::Diff(a) => diff::run(a, cli.json),
        Command::Load(a) => load::run(a, cli.json),
        Command::Unload(a) => unload::run(a, cli.json),
        Command::List(a) => list::run(a, cli.json),
        Command::Info(a) => info::run(a, cli.json),
        Command::Install(a) => install::install(a, cli.json),
        Command::Uninstall(a) => install::uninstall(a, cli.json),
        Command::Kernels(a) => kernels::list(a, cli.json),
    };
    match result {
        Ok(()) => ExitCode::from(exit::OK),
        Err(e) => {
            output::error(&e);
            ExitCode::from(output::exit_code(&e))
        }
    }
}
