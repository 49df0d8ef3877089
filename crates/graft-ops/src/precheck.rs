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
    Ok(f)
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
