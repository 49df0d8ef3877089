//! Recognizing a usable kernel tree.

use std::path::{Path, PathBuf};

use crate::{compiler, config, KbuildError};

/// A configured and prepared kernel source tree (read only).
#[derive(Debug, Clone)]
pub struct KernelTree {
    pub root: PathBuf,
    /// `VERSION.PATCHLEVEL.SUBLEVEL` from the top Makefile.
    pub version: String,
    /// Variables every make run in (a copy of) this tree needs so that kbuild
    /// sees the same compiler and release it was prepared with.
    pub make_vars: Vec<String>,
}

impl KernelTree {
    pub fn open(path: &Path) -> Result<KernelTree, KbuildError> {
        let not = |why: &str| KbuildError::NotKernelTree {
            path: path.to_owned(),
            why: why.to_owned(),
        };
        if !path.is_dir() {
            return Err(not("no such directory"));
        }
        let root = path
            .canonicalize()
            .map_err(crate::io(path.display().to_string()))?;
        let makefile =
            std::fs::read_to_string(root.join("Makefile")).map_err(|_| not("no Makefile"))?;
        let field = |key: &str| {
            makefile.lines().find_map(|l| {
                let (k, v) = l.split_once('=')?;
                (k.trim() == key).then(|| v.trim().to_owned())
            })
        };
        let (Some(v), Some(p), Some(s)) =
            (field("VERSION"), field("PATCHLEVEL"), field("SUBLEVEL"))
        else {
            return Err(not("its Makefile has no VERSION/PATCHLEVEL/SUBLEVEL"));
        };
        if !root.join("Kbuild").is_file() || !root.join("arch/x86").is_dir() {
            return Err(not("no Kbuild or arch/x86"));
        }
        if !root.join(".config").is_file() {
            return Err(KbuildError::NotConfigured { path: root });
        }
        for missing in [
            "include/generated/autoconf.h",
            "scripts/basic/fixdep",
            "include/config/auto.conf",
        ] {
            if !root.join(missing).exists() {
                return Err(KbuildError::NotPrepared {
                    path: root,
                    missing: missing.into(),
                });
            }
        }
        let make_vars = make_vars(&root);
        Ok(KernelTree {
            root,
            version: format!("{v}.{p}.{s}"),
            make_vars,
        })
    }

    /// Checks that the tree is configured like the target kernel: every
    /// option the target sets has the same value here (an option the target
    /// leaves unset may be absent). The compiler's own options are
    /// [`KernelTree::check_compiler`]'s: an equivalent compiler records
    /// another name in `CC_VERSION_TEXT`.
    pub fn check_config(&self, target_config: &Path) -> Result<(), KbuildError> {
        let read =
            |p: &Path| std::fs::read_to_string(p).map_err(crate::io(p.display().to_string()));
        let want = config::parse(&read(target_config)?);
        let have = config::parse(&read(&self.root.join(".config"))?);
        let diffs: Vec<String> = want
            .iter()
            .filter(|(k, _)| k.as_str() != "CC_VERSION_TEXT")
            .filter(|(k, v)| match have.get(*k) {
                Some(h) => h != *v,
                None => v.as_str() != "n",
            })
            .map(|(k, v)| {
                format!(
                    "CONFIG_{k}={v} in the target, {} in the tree",
                    have.get(k).map_or("unset".to_owned(), |h| h.clone())
                )
            })
            .collect();
        if let Some(example) = diffs.first() {
            return Err(KbuildError::ConfigMismatch {
                path: self.root.clone(),
                count: diffs.len(),
                example: example.clone(),
            });
        }
        Ok(())
    }
}

impl KernelTree {
    /// The compiler kbuild will run in (a copy of) this tree: `CC=` of its
    /// make variables, else `gcc`.
    pub fn compiler(&self) -> String {
        self.make_vars
            .iter()
            .find_map(|v| v.strip_prefix("CC="))
            .unwrap_or("gcc")
            .to_owned()
    }

    /// Checks that the compiler kbuild will run is the one the target was
    /// built with (`CONFIG_CC_VERSION_TEXT`): another compiler makes other
    /// code. The same compiler run by another name is the same compiler
    /// (see [`compiler`]).
    pub fn check_compiler(&self, target_config: &Path) -> Result<(), KbuildError> {
        let text = std::fs::read_to_string(target_config)
            .map_err(crate::io(target_config.display().to_string()))?;
        let Some(want) = config::string(&text, "CC_VERSION_TEXT") else {
            return Ok(());
        };
        let cc = self.compiler();
        let have = compiler::version_text_in(crate::buildroot::of(&self.root).as_deref(), &cc);
        if have.as_deref().is_some_and(|h| compiler::same(&want, h)) {
            return Ok(());
        }
        Err(KbuildError::CompilerMismatch {
            hint: compiler::hint(&want),
            want,
            have: have.unwrap_or_else(|| format!("no working {cc}")),
        })
    }
}

/// The Rust compiler of a tree prepared like a kernel built without one:
/// a program that fails, so Kconfig reads version 0 (`false --version`
/// prints nothing).
pub const NO_RUSTC: &str = "false";

/// kbuild records the compiler as `$(CC) --version | head -1` and the
/// release in `include/config/kernel.release`; running make without the
/// same `CC` and `KERNELRELEASE` would silently reconfigure the tree. Since
/// 6.12 Kconfig also records the Rust compiler (`RUSTC`): a tree configured
/// with another one than `rustc` (graft's [`NO_RUSTC`]) needs it again.
fn make_vars(root: &Path) -> Vec<String> {
    let mut vars = Vec::new();
    let text = std::fs::read_to_string(root.join(".config")).unwrap_or_default();
    let cfg = config::parse(&text);
    if cfg.get("CC_IS_GCC").map(String::as_str) == Some("y") {
        if let Some(cc) = config::string(&text, "CC_VERSION_TEXT")
            .as_deref()
            .and_then(compiler::program)
        {
            if cc != "gcc" {
                vars.push(format!("CC={cc}"));
            }
        }
    } else if cfg.get("CC_IS_CLANG").map(String::as_str) == Some("y") {
        vars.push("CC=clang".into());
    }
    let cmd =
        std::fs::read_to_string(root.join("include/config/auto.conf.cmd")).unwrap_or_default();
    if let Some(rustc) = recorded_env(&cmd, "RUSTC").filter(|r| r != "rustc") {
        vars.push(format!("RUSTC={rustc}"));
    }
    // The release the tree was prepared with is the one compiled in
    // (`UTS_RELEASE`); `include/config/kernel.release` may differ when the
    // tree was prepared with KERNELRELEASE= on the command line, as distros do.
    let uts =
        std::fs::read_to_string(root.join("include/generated/utsrelease.h")).unwrap_or_default();
    if let Some(rel) = config::uts_release(&uts) {
        vars.push(format!("KERNELRELEASE={rel}"));
    }
    vars
}

/// The value of environment variable `var` Kconfig recorded in
/// `include/config/auto.conf.cmd` (`ifneq "$(RUSTC)" "false"`).
fn recorded_env(cmd: &str, var: &str) -> Option<String> {
    let head = format!("ifneq \"$({var})\" \"");
    cmd.lines().find_map(|l| {
        l.trim()
            .strip_prefix(&head)?
            .strip_suffix('"')
            .map(str::to_owned)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recorded_rust_compiler() {
        let cmd = "ifneq \"$(CC)\" \"gcc-12\"\n$(autoconfig): FORCE\nendif\n\nifneq \"$(RUSTC)\" \"false\"\n$(autoconfig): FORCE\nendif\n";
        assert_eq!(recorded_env(cmd, "RUSTC").as_deref(), Some("false"));
        assert_eq!(recorded_env(cmd, "CC").as_deref(), Some("gcc-12"));
        assert_eq!(recorded_env(cmd, "BINDGEN"), None);
    }
}
