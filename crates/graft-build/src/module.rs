//! The module: patch objects and the registration stub, linked against the
//! target's headers (by graft with kbuild's commands, or by kbuild where
//! graft does not link it the same way), with klp relocations made after
//! the link; written through a temporary file and a rename, never
//! half-written.

use std::path::Path;

use anyhow::{Context, Result};
use graft_klp::include::Plan;

use crate::target::Target;
use crate::workspace::Workspace;
use crate::{BuildError, Inputs};

pub struct Linked {
    pub bytes: Vec<u8>,
    pub klp_relocations: usize,
    /// What the module cannot do on this kernel (reload a patched module).
    pub warnings: Vec<String>,
    /// Who linked it: `graft`, or `kbuild (why graft did not)`.
    pub linked_by: String,
}

pub fn link(
    inputs: &Inputs,
    target: &Target,
    ws: &Workspace,
    plans: &[Plan<'_>],
    states: &[graft_diff::markers::State],
) -> Result<Linked, BuildError> {
    let mut objects = Vec::new();
    for (i, plan) in plans.iter().enumerate() {
        let specials = graft_klp::special::filter(plan)?;
        objects.push((
            format!("graft-patch-{i}.o"),
            graft_klp::emit::write(plan, &specials)?,
        ));
    }
    let funcs: Vec<_> = plans.iter().flat_map(|p| p.funcs.iter().cloned()).collect();
    let callbacks: Vec<_> = plans
        .iter()
        .flat_map(|p| p.callbacks.iter().cloned())
        .collect();
    let jumps: Vec<graft_klp::DeferredJumps> = plans
        .iter()
        .flat_map(|p| p.deferred_jumps().cloned())
        .collect();
    let module_name = format!("livepatch-{}", inputs.name);
    // Whether a patched module can be reloaded on this kernel, and how.
    let reload = graft_klp::reload::support(&target.symbols);
    let mut module_info = crate::buildinfo::module_info(
        &inputs.patch,
        &target.paths.headers,
        &funcs,
        !inputs.no_replace,
        &reload,
    )?;
    // The module links against these exports by name: their namespaces
    // must be imported, or modpost and the loader refuse it.
    for ns in import_namespaces(plans, target) {
        module_info.push(("import_ns".into(), ns));
    }
    let stub = graft_klp::stub::generate(
        &funcs,
        &graft_klp::stub::StubOptions {
            replace: !inputs.no_replace,
            description: &format!("graft live patch {}", inputs.name),
            module_info: &module_info,
            callbacks: &callbacks,
            states,
            reload: &reload,
            jumps: &jumps,
            jump_notify: graft_klp::jumps::support(&target.symbols).ok(),
        },
    )?;
    let sources = graft_kbuild::module::ModuleSources {
        name: &module_name,
        stub_c: &stub,
        objects: &objects,
    };
    let exports = |name: &str| target.exports.get(name).cloned();
    let headers = &target.paths.headers;
    let linker = graft_kbuild::module::Linker::open(headers, &inputs.cache, &exports)?;
    let dir = ws.work_dir().join("module");
    std::fs::create_dir_all(&dir)?;
    let (ko, linked_by) = match linker.link(&dir, &sources, &exports)? {
        graft_kbuild::module::Linked::Module(ko) => (ko, "graft".to_owned()),
        graft_kbuild::module::Linked::Unsupported(why) => {
            let dir = ws.work_dir().join("module-kbuild");
            std::fs::create_dir_all(&dir)?;
            let ko = graft_kbuild::module::build(headers, &dir, &sources)?;
            (ko, format!("kbuild ({why})"))
        }
    };
    let linked = std::fs::read(&ko)?;
    // The klp object of each section of a module's code.
    let objects: std::collections::HashMap<String, String> = plans
        .iter()
        .filter(|p| p.object != graft_elf::klp::VMLINUX)
        .flat_map(|p| {
            p.sections
                .iter()
                .map(|&s| (p.patched.section(s).name.clone(), p.object.clone()))
        })
        .collect();
    let (bytes, klp_relocations) =
        graft_klp::postlink::convert(&linked, &ko.display().to_string(), &objects)?;
    let reloaded = graft_klp::postlink::module_objects(&bytes);
    Ok(Linked {
        warnings: graft_klp::reload::warning(&reload, &reloaded)
            .into_iter()
            .collect(),
        bytes,
        klp_relocations,
        linked_by,
    })
}

/// Namespaces of the exports the module links against by name.
fn import_namespaces(plans: &[Plan<'_>], target: &Target) -> Vec<String> {
    let mut out: Vec<String> = plans
        .iter()
        .flat_map(|p| p.targets.values())
        .filter_map(|t| match t {
            graft_klp::include::Target::External(name, _) => {
                target.exports.get(name).and_then(|e| e.namespace.clone())
            }
            _ => None,
        })
        .collect();
    out.sort();
    out.dedup();
    out
}

/// Writes through a temporary file and a rename: never a half-written module.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir)
        .with_context(|| format!("cannot write in {}", dir.display()))?;
    std::io::Write::write_all(&mut tmp, bytes)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}
