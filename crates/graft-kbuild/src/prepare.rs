//! Preparing a distribution's kernel source like the kernel it built:
//! configured with that kernel's config and prepared with its compiler and
//! release, so that objects compiled in it are the kernel's own.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::{compiler, config, io, KbuildError};

/// Object built once after `make modules_prepare` to prove single-object
/// builds work in the tree (and removed again).
pub const PROBE_OBJECT: &str = "fs/proc/cmdline.o";

/// Environment that would change what kbuild does behind our back (inherited
/// from a caller's make or shell): a prepared tree must be built the same way
/// each time.
const MAKE_ENV_REMOVE: &[&str] = &[
    "MAKEFLAGS",
    "MFLAGS",
    "MAKELEVEL",
    "ARCH",
    "CROSS_COMPILE",
    "KBUILD_OUTPUT",
    "LOCALVERSION",
    "KCFLAGS",
    "KCPPFLAGS",
    "KAFLAGS",
    "CC",
    "LLVM",
];

/// What to prepare.
pub struct Inputs<'a> {
    /// The unpacked source tree (prepared in place: kbuild records absolute
    /// paths, so the tree must not move afterwards).
    pub tree: &'a Path,
    /// The kernel's config (`/boot/config-<release>`).
    pub image_config: &'a str,
    /// The configuration the distribution built with, when it differs from
    /// the image's (Debian: the headers' `.config`, which has the options
    /// stripped from `/boot/config-*`). Empty when unknown.
    pub build_config: &'a str,
    /// The kernel's release (`uname -r`), compiled in as `UTS_RELEASE`.
    pub release: &'a str,
    /// Where make's output goes.
    pub log: &'a Path,
    /// A Debian root holding the kernel's compiler, when this machine does
    /// not have it: the tree is prepared (and later built) inside it.
    pub buildroot: Option<&'a Path>,
}

/// A prepared tree's settings.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Prepared {
    /// Variables every `make` in the tree needs (`CC=…`, `KERNELRELEASE=…`):
    /// without them kbuild would reconfigure the tree (another compiler
    /// text, the upstream version as release).
    pub make_vars: Vec<String>,
    /// `UTS_RELEASE` of the prepared tree: the kernel's release.
    pub uts_release: String,
    /// Changes made to the image's config before `olddefconfig`: options
    /// restored from the build config and key paths not in the source.
    pub config_adjustments: Vec<String>,
    /// Options whose value differs between the build config and the final
    /// `.config`.
    pub config_differences: Vec<String>,
}

/// One step of [`prepare`], reported before it runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    Configure,
    Olddefconfig,
    ModulesPrepare,
    Probe,
}

impl Step {
    pub fn describe(self) -> &'static str {
        match self {
            Step::Configure => "writing .config",
            Step::Olddefconfig => "make olddefconfig",
            Step::ModulesPrepare => "make modules_prepare",
            Step::Probe => "probing a single-object build",
        }
    }
}

/// `make -C <tree> <vars>` with a clean environment.
/// Inside the tree's build root, if it has one ([`crate::buildroot`]).
pub fn make_command(tree: &Path, vars: &[String]) -> Command {
    let mut c = crate::buildroot::command_in(tree, "make", &[], None);
    for k in MAKE_ENV_REMOVE {
        c.env_remove(k);
    }
    c.env("LC_ALL", "C").arg("-C").arg(tree).args(vars);
    c
}

fn jobs() -> String {
    let n = std::thread::available_parallelism().map_or(1, |n| n.get());
    format!("-j{n}")
}

/// Configures and prepares `inputs.tree` (see the module text). Every step
/// can be redone, so an interrupted preparation starts again from the top.
pub fn prepare(inputs: &Inputs<'_>, step: &mut dyn FnMut(Step)) -> Result<Prepared, KbuildError> {
    let tree = inputs.tree;
    step(Step::Configure);
    let (merged, mut config_adjustments) =
        config::merge_missing(inputs.image_config, inputs.build_config);
    let (text, cert_changes) = config::adjust_cert_paths(&merged, tree);
    config_adjustments.extend(cert_changes);
    write_atomic(&tree.join(".config"), text.as_bytes())?;

    match inputs.buildroot {
        Some(root) => crate::buildroot::record(tree, root)?,
        None => {
            let _ = std::fs::remove_file(tree.join(crate::buildroot::MARKER));
        }
    }
    let mut make_vars = Vec::new();
    if let Some(want) = config::string(inputs.image_config, "CC_VERSION_TEXT") {
        match compiler::choose_in(inputs.buildroot, &want) {
            Some(cc) => make_vars.push(format!("CC={cc}")),
            None => {
                return Err(KbuildError::NoCompiler {
                    hint: compiler::hint(&want),
                    want,
                })
            }
        }
    }
    // Kconfig asks the Rust compiler on PATH for its version (6.12:
    // `RUSTC_VERSION`); a kernel built without one records 0, and so must the
    // tree, whatever rustc this machine has.
    if config::parse(inputs.image_config)
        .get("RUSTC_VERSION")
        .is_some_and(|v| v == "0")
    {
        make_vars.push(format!("RUSTC={}", crate::tree::NO_RUSTC));
    }
    make_vars.push(format!("KERNELRELEASE={}", inputs.release));

    let _ = std::fs::remove_file(inputs.log);
    let run = |what: &str, args: &[&str]| -> Result<(), KbuildError> {
        let mut cmd = make_command(tree, &make_vars);
        cmd.args(args);
        let (ok, text) = run_appending(&mut cmd, inputs.log)?;
        if !ok {
            return Err(KbuildError::Compile {
                what: format!("{what} in {}", tree.display()),
                first_error: crate::first_error(&text),
                log: inputs.log.to_owned(),
                hint: "the kernel source, its config and this machine's build tools must agree (apt-get install build-essential bc flex bison libelf-dev libssl-dev dwarves)".into(),
            });
        }
        Ok(())
    };
    step(Step::Olddefconfig);
    run("make olddefconfig", &["olddefconfig"])?;
    let final_config = std::fs::read_to_string(tree.join(".config"))
        .map_err(io(format!("cannot read {}/.config", tree.display())))?;
    let reference = if inputs.build_config.is_empty() {
        inputs.image_config
    } else {
        inputs.build_config
    };
    let config_differences = config::differences(reference, &final_config);

    step(Step::ModulesPrepare);
    let j = jobs();
    run("make modules_prepare", &[&j, "modules_prepare"])?;

    step(Step::Probe);
    run(&format!("make {PROBE_OBJECT}"), &[&j, PROBE_OBJECT])?;
    let obj = tree.join(PROBE_OBJECT);
    if !obj.is_file() {
        return Err(KbuildError::Compile {
            what: format!("make {PROBE_OBJECT}"),
            first_error: "make succeeded but produced no object".into(),
            log: inputs.log.to_owned(),
            hint: "check the tree's Makefiles".into(),
        });
    }
    // Leave the tree as `modules_prepare` left it.
    let _ = std::fs::remove_file(&obj);
    if let (Some(parent), Some(name)) = (obj.parent(), obj.file_name()) {
        let _ = std::fs::remove_file(parent.join(format!(".{}.cmd", name.to_string_lossy())));
    }

    let uts = std::fs::read_to_string(tree.join("include/generated/utsrelease.h"))
        .ok()
        .as_deref()
        .and_then(config::uts_release)
        .unwrap_or_default();
    if uts != inputs.release {
        return Err(KbuildError::NotPrepared {
            path: tree.to_owned(),
            missing: format!(
                "UTS_RELEASE {}, not the kernel's {}",
                if uts.is_empty() { "missing" } else { &uts },
                inputs.release
            ),
        });
    }
    Ok(Prepared {
        make_vars,
        uts_release: uts,
        config_adjustments,
        config_differences,
    })
}

/// Runs `cmd` with its output appended to `log`; returns success and the
/// output.
fn run_appending(cmd: &mut Command, log: &Path) -> Result<(bool, String), KbuildError> {
    let (ok, text) = crate::run_captured(cmd)?;
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(io(format!("cannot write {}", log.display())))?;
    let _ = writeln!(f, "$ {cmd:?}\n{text}");
    Ok((ok, text))
}

fn write_atomic(path: &Path, data: &[u8]) -> Result<(), KbuildError> {
    let tmp: PathBuf = path.with_extension("graft-tmp");
    std::fs::write(&tmp, data).map_err(io(format!("cannot write {}", tmp.display())))?;
    std::fs::rename(&tmp, path).map_err(io(format!("cannot write {}", path.display())))
}
