//! `graft`: the command line. Argument definitions and dispatch only; each
//! command lives in its own module and calls the library crates.

mod build;
mod diff;
mod output;

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

#[derive(Subcommand)]
enum Command {
    /// Build a livepatch module from a source patch.
    Build(build::Args),
    /// Compare an original and a patched object, function by function.
    Diff(diff::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Build(a) => build::run(a, cli.json),
        Command::Diff(a) => diff::run(a, cli.json),
    };
    match result {
        Ok(()) => ExitCode::from(exit::OK),
        Err(e) => {
            output::error(&e);
            ExitCode::from(output::exit_code(&e))
        }
    }
}
