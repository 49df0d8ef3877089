//! Everything that can be checked before `finit_module`, so that a module
//! the kernel would refuse (or half-take) is refused with its reason instead.

use serde::Serialize;

use crate::error::read_opt;
use crate::modinfo::ModuleInfo;
use crate::{state, Host, OpsError};

/// Needs root (CAP_SYS_MODULE and root-only procfs files). Checked first so a
/// user gets this error, not a confusing EPERM from deeper down.
pub fn require_root(what: &str, why: &str) -> Result<(), OpsError> {
    if nix::unistd::geteuid().is_root() {
        Ok(())
    } else {
        Err(OpsError::NotRoot {
            what: what.to_owned(),
            why: why.to_owned(),
        })
    }
}

/// What the checks found that does not stop the load.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Findings {
    pub warnings: Vec<String>,
}

/// The checks before loading `m`, in the order an operator would want them
/// answered: is there livepatch at all, is this a live patch, is it for this
/// kernel, will the kernel accept it, does it clash with what is loaded.
pub fn check_load(host: &Host, m: &ModuleInfo) -> Result<Findings, OpsError> {
    let mut f = Findings::default();
    let dir = host.livepatch_dir();
    if !dir.is_dir() {
        return Err(OpsError::NoLivepatch { dir });
    }
    if !m.livepatch {
        return Err(OpsError::NotLivepatch {
            path: m.path.clone(),
            name: m.name.clone(),
        });
    }
    let running = host.release()?;
    let Some(release) = m.release() else {
        return Err(OpsError::NotAModule {
            path: m.path.clone(),
            what: "it has no vermagic, so the kernel it was built for is unknown".into(),
        });
    };
    if release != running {
        return Err(OpsError::WrongRelease {
            path: m.path.clone(),
            module_release: release.to_owned(),
            running,
        });
    }
    if flag(host, "sys/kernel/modules_disabled")? == Some("1".into()) {
        return Err(OpsError::ModulesDisabled);
    }
    match signature_policy(host)? {
        Some(why) if !m.signed => {
            return Err(OpsError::SignatureRequired {
                path: m.path.clone(),
                why,
            })
        }
        Some(why) => f.warnings.push(format!(
            "the kernel checks module signatures ({why}): the module's key must be trusted by the kernel"
        )),
        None if !m.signed => f.warnings.push(
            "the module is unsigned: loading it taints the kernel (E), which is harmless but shows in bug reports".into(),
        ),
        None => {}
    }
    let loaded = state::read(host)?;
    if let Some(p) = loaded.get(&m.name) {
        return Err(OpsError::AlreadyLoaded {
            name: m.name.clone(),
            enabled: p.enabled,
        });
    }
    if state::module_loaded(host, &m.name) {
        return Err(if state::is_livepatch_module(host, &m.name) {
            OpsError::AlreadyLoaded {
                name: m.name.clone(),
                enabled: false,
            }
        } else {
            OpsError::NameTaken {
                name: m.name.clone(),
            }
        });
    }
    if let Some(p) = loaded.in_transition() {
        return Err(OpsError::TransitionBusy {
            busy: p.name.clone(),
        });
    }
    f.warnings.extend(reload_warning(host, m)?);
    Ok(f)
}

/// The kernel function whose presence means the kernel itself clears a
/// patch's relocations to a module that goes away (6.3+).
const KERNEL_CLEARS: &str = "clear_relocate_add";

/// A patch with klp relocations for a module, on a kernel that does not
/// clear them when the module goes away, keeps that module from loading a
/// second time, unless the patch clears them itself (graft's stub does where
/// the kernel lets it; `graft build` said so when it could not).
fn reload_warning(host: &Host, m: &ModuleInfo) -> Result<Option<String>, OpsError> {
    if m.klp_modules.is_empty() {
        return Ok(None);
    }
    let said = m.graft.as_ref().and_then(|g| g.reload.as_deref());
    if said.is_some_and(|r| crate::modinfo::RELOAD_SAFE.contains(&r)) || kernel_clears(host)? {
        return Ok(None);
    }
    let mods = m.klp_modules.join(", ");
    let why = match said {
        Some(_) => "graft could not make the patch clear them itself (see `graft build`'s warning)",
        None => "the patch does not say that it clears them itself",
    };
    Ok(Some(format!(
        "while {} is loaded, {mods} cannot be unloaded and loaded again: this kernel does not clear a patch's relocations to a module that goes away, so it would refuse the second load (\"existing value is nonzero\"), and {why}; unload the patch before reloading {mods}",
        m.name
    )))
}

/// Whether the running kernel has [`KERNEL_CLEARS`], from `/proc/kallsyms`.
fn kernel_clears(host: &Host) -> Result<bool, OpsError> {
    let text = read_opt(&host.proc.join("kallsyms"))?.unwrap_or_default();
    Ok(text
        .lines()
        .any(|l| l.split_whitespace().nth(2) == Some(KERNEL_CLEARS)))
}

/// Why the kernel would insist on a signature, if it does: the
/// `module.sig_enforce` parameter, or lockdown (integrity or stronger), which
/// Secure Boot turns on in Debian's kernels.
fn signature_policy(host: &Host) -> Result<Option<String>, OpsError> {
    let enforce = read_opt(&host.module_dir("module").join("parameters/sig_enforce"))?;
    if enforce.as_deref().map(str::trim) == Some("Y") {
        return Ok(Some("module.sig_enforce=1".into()));
    }
    let lockdown = read_opt(&host.sys.join("kernel/security/lockdown"))?.unwrap_or_default();
    for level in ["integrity", "confidentiality"] {
        if lockdown.contains(&format!("[{level}]")) {
            return Ok(Some(format!("lockdown={level}, as under Secure Boot")));
        }
    }
    Ok(None)
}

fn flag(host: &Host, rel: &str) -> Result<Option<String>, OpsError> {
    Ok(read_opt(&host.proc.join(rel))?.map(|s| s.trim().to_owned()))
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::modinfo::tests::module_bytes;
    use crate::state::fake::*;

    fn module(entries: &[&str], signed: bool) -> ModuleInfo {
        ModuleInfo::parse(
            Path::new("/m/livepatch-x.ko"),
            &module_bytes(entries, signed),
        )
        .unwrap()
    }

    fn lp() -> ModuleInfo {
        module(
            &[
                "livepatch=Y",
                "name=livepatch_x",
                "vermagic=6.1.0-56-amd64 SMP preempt mod_unload modversions ",
            ],
            false,
        )
    }

    #[test]
    fn a_good_module_passes_with_a_taint_warning() {
        let (_t, h) = host();
        let f = check_load(&h, &lp()).unwrap();
        assert_eq!(f.warnings.len(), 1);
        assert!(f.warnings[0].contains("unsigned"));
    }

    /// A patch with relocations for a module warns unless the patch or the
    /// kernel clears them when that module goes away.
    #[test]
    fn a_patch_that_keeps_a_module_from_reloading_is_warned_about() {
        let (_t, h) = host();
        write(&h.proc.join("kallsyms"), "ffffffff8103ca20 T text_poke\n");
        let with = |reload: Option<&str>, sections: &[&str]| {
            let r = reload.map(|r| format!("graft_reload={r}"));
            let mut entries = vec![
                "livepatch=Y",
                "name=livepatch_x",
                "vermagic=6.1.0-56-amd64 SMP",
                "graft_version=0.1.0",
            ];
            entries.extend(r.as_deref());
            let m = ModuleInfo::parse(
                Path::new("/m/livepatch-x.ko"),
                &crate::modinfo::tests::module_bytes_with(&entries, true, sections),
            )
            .unwrap();
            check_load(&h, &m)
                .unwrap()
                .warnings
                .into_iter()
                .filter(|w| w.contains("reload"))
                .collect::<Vec<_>>()
        };
        let rela = [".klp.rela.binfmt_misc..text.bm_status_read"];
        let w = with(Some("unsupported"), &rela);
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(
            w[0].contains(
                "while livepatch_x is loaded, binfmt_misc cannot be unloaded and loaded again"
            ) && w[0].contains("graft could not make the patch clear them"),
            "{w:?}"
        );
        assert!(with(None, &rela)[0].contains("does not say that it clears them"));
        assert!(with(Some("graft"), &rela).is_empty());
        assert!(with(Some("kernel"), &rela).is_empty());
        assert!(with(Some("unsupported"), &[".klp.rela.vmlinux..text.f"]).is_empty());
        // A kernel that clears them itself.
        write(
            &h.proc.join("kallsyms"),
            "ffffffff8103ca20 T text_poke\nffffffff8107b3d0 T clear_relocate_add\n",
        );
        assert!(with(Some("unsupported"), &rela).is_empty());
        assert!(with(None, &rela).is_empty());
    }

    #[test]
    fn each_bad_input_has_its_error() {
        let (t, h) = host();
        // Not a live patch.
        let e = check_load(
            &h,
            &module(&["name=dummy", "vermagic=6.1.0-56-amd64 SMP"], false),
        )
        .unwrap_err();
        assert!(matches!(e, OpsError::NotLivepatch { .. }), "{e}");
        // Another kernel.
        let other = module(
            &[
                "livepatch=Y",
                "name=livepatch_x",
                "vermagic=6.1.0-99-amd64 SMP",
            ],
            false,
        );
        let e = check_load(&h, &other).unwrap_err();
        assert!(
            e.to_string().contains(
                "built for kernel 6.1.0-99-amd64, but the running kernel is 6.1.0-56-amd64"
            ),
            "{e}"
        );
        // Lockdown and an unsigned module.
        write(
            &h.sys.join("kernel/security/lockdown"),
            "none [integrity] confidentiality\n",
        );
        let e = check_load(&h, &lp()).unwrap_err();
        assert!(matches!(e, OpsError::SignatureRequired { .. }), "{e}");
        assert!(e.to_string().contains("lockdown=integrity"));
        write(
            &h.sys.join("kernel/security/lockdown"),
            "[none] integrity confidentiality\n",
        );
        write(&h.sys.join("module/module/parameters/sig_enforce"), "Y\n");
        let e = check_load(&h, &lp()).unwrap_err();
        assert!(e.to_string().contains("sig_enforce"), "{e}");
        // Signed passes with a warning.
        let signed = module(
            &[
                "livepatch=Y",
                "name=livepatch_x",
                "vermagic=6.1.0-56-amd64 SMP",
            ],
            true,
        );
        assert!(check_load(&h, &signed).unwrap().warnings[0].contains("trusted"));
        write(&h.sys.join("module/module/parameters/sig_enforce"), "N\n");
        // Modules disabled.
        write(&h.proc.join("sys/kernel/modules_disabled"), "1\n");
        assert!(matches!(
            check_load(&h, &lp()),
            Err(OpsError::ModulesDisabled)
        ));
        write(&h.proc.join("sys/kernel/modules_disabled"), "0\n");
        // Already loaded, as a patch or as a leftover module.
        add_patch(&h, "livepatch_x", &[("vmlinux", "f", 0)], false);
        let e = check_load(&h, &lp()).unwrap_err();
        assert!(
            e.to_string()
                .contains("already loaded; hint: unload it first"),
            "{e}"
        );
        std::fs::remove_dir_all(h.patch_dir("livepatch_x")).unwrap();
        let e = check_load(&h, &lp()).unwrap_err();
        assert!(
            e.to_string()
                .contains("disabled, its module still in memory"),
            "{e}"
        );
        std::fs::remove_dir_all(h.module_dir("livepatch_x")).unwrap();
        add_module(&h, "livepatch_x", false);
        std::fs::write(h.module_dir("livepatch_x").join("taint"), "").unwrap();
        assert!(matches!(
            check_load(&h, &lp()),
            Err(OpsError::NameTaken { .. })
        ));
        std::fs::remove_dir_all(h.module_dir("livepatch_x")).unwrap();
        // Another patch in transition.
        add_patch(&h, "livepatch_busy", &[("vmlinux", "g", 0)], true);
        let e = check_load(&h, &lp()).unwrap_err();
        assert!(matches!(e, OpsError::TransitionBusy { .. }), "{e}");
        // No livepatch at all comes first.
        std::fs::remove_dir_all(h.livepatch_dir()).unwrap();
        assert!(matches!(
            check_load(&h, &lp()),
            Err(OpsError::NoLivepatch { .. })
        ));
        drop(t);
    }
}
