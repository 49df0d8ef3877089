//! The metadata `graft build` embeds in the module's `.modinfo`, read back
//! offline by `graft info X.ko` (keys in `graft_ops::modinfo::keys`).

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use graft_ops::modinfo::{format_functions, keys};
use graft_ops::FuncRef;
use sha2::{Digest, Sha256};

/// `(key, value)` pairs for the stub's `MODULE_INFO` lines.
pub fn module_info(
    patch: &Path,
    headers: &Path,
    funcs: &[graft_klp::KlpFunc],
    replace: bool,
    reload: &graft_klp::reload::Reload,
) -> Result<Vec<(String, String)>> {
    let text = std::fs::read(patch).with_context(|| format!("cannot read {}", patch.display()))?;
    let sha = Sha256::digest(&text)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<String>();
    let refs: Vec<FuncRef> = funcs
        .iter()
        .map(|f| FuncRef {
            object: f
                .object
                .clone()
                .unwrap_or_else(|| graft_elf::klp::VMLINUX.to_owned()),
            name: f.old_name.clone(),
            sympos: f.old_sympos,
        })
        .collect();
    // SOURCE_DATE_EPOCH: the reproducible-builds convention for "now".
    let built = std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .unwrap_or_else(|| {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs())
        });
    Ok(vec![
        (keys::VERSION.into(), env!("CARGO_PKG_VERSION").into()),
        (keys::KERNEL.into(), headers_release(headers)?),
        (keys::PATCH_SHA256.into(), sha),
        (keys::FUNCTIONS.into(), format_functions(&refs)),
        (keys::BUILT.into(), built.to_string()),
        (keys::REPLACE.into(), if replace { "1" } else { "0" }.into()),
        (keys::RELOAD.into(), reload.modinfo().into()),
    ])
}

/// The release the headers build modules for: `UTS_RELEASE`, the string the
/// module's vermagic starts with. (Debian's `include/config/kernel.release`
/// holds the upstream version, `6.1.192`, not `uname -r`.)
pub fn headers_release(headers: &Path) -> Result<String> {
    let p = headers.join("include/generated/utsrelease.h");
    let text = std::fs::read_to_string(&p).with_context(|| {
        format!(
            "cannot read the target kernel's release from {}; hint: pass the headers of the target kernel with --headers",
            p.display()
        )
    })?;
    graft_kbuild::config::uts_release(&text).with_context(|| {
        format!(
            "{} has no UTS_RELEASE; hint: pass prepared kernel headers with --headers",
            p.display()
        )
    })
}
