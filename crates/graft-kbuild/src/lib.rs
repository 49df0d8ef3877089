//! Everything graft asks of kbuild.
//!
//! The user's tree is only ever read. graft keeps a private copy of it (the
//! [`mirror`]), applies the source patch there, compiles the original and
//! patched objects of the changed files there, and reverts the copy. The
//! original objects are kept per tree state ([`objects`]). The module is
//! linked against the kernel's headers ([`module`]).

pub mod buildroot;
pub mod compile;
pub mod compiler;
pub mod config;
pub mod headers;
pub mod index;
pub mod lines;
pub mod mentions;
pub mod mirror;
pub mod module;
pub mod objects;
pub mod patch;
pub mod prepare;
pub mod probe;
pub mod reach;
pub mod record;
pub mod tree;

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum KbuildError {
    #[error("{path}: not a kernel source tree ({why}); hint: pass the top directory of a Linux source tree")]
    NotKernelTree { path: PathBuf, why: String },
    #[error("{path}: the kernel tree is not configured (no .config); hint: copy the target kernel's config to .config and run `make olddefconfig`")]
    NotConfigured { path: PathBuf },
    #[error("{path}: the kernel tree is not prepared ({missing} is missing); hint: run `make prepare` in it")]
    NotPrepared { path: PathBuf, missing: String },
    #[error("{path}: the tree's .config differs from the target's config in {count} option(s), e.g. {example}; hint: copy the target's config to .config and run `make olddefconfig && make prepare`")]
    ConfigMismatch {
        path: PathBuf,
        count: usize,
        example: String,
    },
    #[error("the target kernel was built with {want:?} but the tree's compiler is {have:?}; another compiler makes other code; hint: {hint}")]
    CompilerMismatch {
        want: String,
        have: String,
        hint: String,
    },
    #[error("the kernel was built with {want:?}, which is not on this machine; hint: {hint}")]
    NoCompiler { want: String, hint: String },
    #[error("{path}: not a patch: {why}; hint: pass a unified diff (git diff, diff -u)")]
    BadPatch { path: PathBuf, why: String },
    #[error("the patch does not apply to {tree} ({output}); hint: rebase the fix onto this kernel's source")]
    PatchDoesNotApply { tree: PathBuf, output: String },
    #[error("the patch changes {file}: {why}")]
    UnsupportedFile { file: String, why: String },
    #[error("the patch changes no C file of the kernel build (it touches {files}); hint: graft patches kernel C code")]
    NothingToBuild { files: String },
    #[error("compiling {what} failed: {first_error}; hint: {hint} (full output: {})", log.display())]
    Compile {
        what: String,
        first_error: String,
        log: PathBuf,
        hint: String,
    },
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
}

pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> KbuildError {
    let what = what.into();
    move |source| KbuildError::Io { what, source }
}

/// The line of a tool's output that says what went wrong: the first one
/// mentioning an error, else the last one.
pub(crate) fn first_error(text: &str) -> String {
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    lines
        .iter()
        .find(|l| l.contains("error:") || l.contains("FAILED") || l.contains("ERROR:"))
        .or(lines.last())
        .map_or_else(|| "no output".to_owned(), |l| (*l).to_owned())
}

/// Runs `cmd`; returns whether it succeeded and its whole output.
pub(crate) fn run_captured(cmd: &mut std::process::Command) -> Result<(bool, String), KbuildError> {
    let out = cmd.output().map_err(io(format!(
        "cannot run {:?}; hint: apt-get install build-essential",
        cmd.get_program()
    )))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok((out.status.success(), text))
}

/// Runs `cmd`, keeping its whole output in `log` for the curious.
pub(crate) fn run_logged(
    cmd: &mut std::process::Command,
    log: &std::path::Path,
) -> Result<(bool, String), KbuildError> {
    let (ok, text) = run_captured(cmd)?;
    let _ = std::fs::write(log, &text);
    Ok((ok, text))
}
