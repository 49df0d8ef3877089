//! Single-object compiles through kbuild, with one section per function and
//! per data object so that the differ can compare and carry them one by one.

use std::path::Path;

use crate::KbuildError;

/// The flags graft adds to the kernel's own.
pub const KCFLAGS: &str = "-ffunction-sections -fdata-sections";

/// Where kbuild puts an object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Linkage {
    /// Linked into vmlinux.
    BuiltIn,
    /// Part of a loadable module (`CC [M]`).
    Module,
}

/// Compiles `objects` (paths like `fs/proc/cmdline.o`) in `root`, returning
/// how kbuild links each one.
pub fn compile(
    root: &Path,
    make_vars: &[String],
    objects: &[String],
    jobs: usize,
    what: &str,
    log: &Path,
) -> Result<Vec<Linkage>, KbuildError> {
    // Remove earlier outputs so kbuild compiles again, whatever their timestamps.
    for o in objects {
        let p = root.join(o);
        let dir = p.parent().unwrap_or(root);
        let name = p
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        for f in [name.clone(), format!(".{name}.cmd"), format!(".{name}.d")] {
            let _ = std::fs::remove_file(dir.join(f));
        }
    }
    let (ok, text) = crate::run_logged(
        crate::buildroot::command_in(root, "make", &[log], None)
            .arg("-C")
            .arg(root)
            .arg(format!("-j{jobs}"))
            .arg(format!("KCFLAGS={KCFLAGS}"))
            .args(make_vars)
            .args(objects)
            .env_remove("MAKEFLAGS"),
        log,
    )?;
    let failed = |first_error: String, hint: &str| KbuildError::Compile {
        what: what.to_owned(),
        first_error,
        log: log.to_owned(),
        hint: hint.to_owned(),
    };
    if !ok {
        return Err(failed(
            crate::first_error(&text),
            "a file that does not compile with this kernel's config is not part of this kernel's build",
        ));
    }
    objects
        .iter()
        .map(|o| {
            if !root.join(o).is_file() {
                return Err(failed(
                    format!("kbuild did not produce {o}"),
                    "check the tree's Makefiles",
                ));
            }
            let module = text.lines().any(|l| {
                l.trim_start().starts_with("CC [M]") && l.trim_end().ends_with(o.as_str())
            });
            Ok(if module {
                Linkage::Module
            } else {
                Linkage::BuiltIn
            })
        })
        .collect()
}

/// Preprocesses the units of `objects` (`fs/proc/cmdline.o` →
/// `fs/proc/cmdline.i`) in `root` with kbuild's own flags; returns where
/// each unit's text is, `None` for a unit kbuild could not preprocess (`-k`:
/// one unit's failure does not stop the others). The caller removes them.
pub fn preprocess(
    root: &Path,
    make_vars: &[String],
    objects: &[String],
    jobs: usize,
    log: &Path,
) -> Result<Vec<Option<std::path::PathBuf>>, KbuildError> {
    let targets: Vec<String> = objects
        .iter()
        .map(|o| o.trim_end_matches(".o").to_owned() + ".i")
        .collect();
    for t in &targets {
        let _ = std::fs::remove_file(root.join(t));
    }
    crate::run_logged(
        crate::buildroot::command_in(root, "make", &[log], None)
            .arg("-C")
            .arg(root)
            .arg("-k")
            .arg(format!("-j{jobs}"))
            .arg(format!("KCFLAGS={KCFLAGS}"))
            .args(make_vars)
            .args(&targets)
            .env_remove("MAKEFLAGS"),
        log,
    )?;
    Ok(targets
        .iter()
        .map(|t| Some(root.join(t)).filter(|p| p.is_file()))
        .collect())
}
