//! The translation units of a build, pass by pass: read both objects and
//! find the klp object each belongs to → diff → verify the originals →
//! plan what the module carries. Each pass sees every unit, so a unit can
//! use what another defines (a new function shared by two changed files).

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use anyhow::{bail, Result};
use graft_diff::{ObjectDiff, Verdict};
use graft_elf::{Object, SymbolId};
use graft_kbuild::compile::Linkage;
use graft_klp::include::{Plan, Resolver};
use graft_target::{KernelImage, ModuleFile, SymbolTable};
use graft_verify::Verified;

use crate::report::FileReport;
use crate::target::Target;
use crate::workspace::Workspace;
use crate::{BuildError, Refusal};

/// One compiled file, both builds, and where it lives in the target.
pub struct Unit {
    /// The object's path in the tree (`fs/proc/cmdline.o`).
    pub object: String,
    pub orig: Object,
    pub patched: Object,
    /// The target's module the file is built into; `None` for vmlinux.
    pub module: Option<ModuleFile>,
    /// The symbols this unit can reach: vmlinux's, plus its module's.
    symbols: Option<SymbolTable>,
    crcs: graft_diff::Crcs,
}

impl Unit {
    /// The klp object: "vmlinux" or the module's name.
    pub fn klp_object(&self) -> &str {
        self.module
            .as_ref()
            .map_or(graft_elf::klp::VMLINUX, |m| m.name.as_str())
    }

    fn symbols<'a>(&'a self, target: &'a Target) -> &'a SymbolTable {
        self.symbols.as_ref().unwrap_or(&target.symbols)
    }

    /// The source file, for messages.
    pub fn file(&self) -> String {
        self.object.trim_end_matches(".o").to_owned() + ".c"
    }
}

/// Reads both builds of every unit and finds its klp object.
pub fn read(ws: &Workspace, target: &Target) -> Result<Vec<Unit>, BuildError> {
    let mut out = Vec::new();
    for (obj, link) in ws.compiled.iter().zip(&ws.linkage) {
        let orig_path = ws.object_path("orig", obj);
        let patched_path = ws.object_path("patched", obj);
        // Objects are named by their path in the tree in every message.
        let mut orig = Object::read(&orig_path)?;
        let mut patched = Object::read(&patched_path)?;
        orig.path = PathBuf::from(obj);
        patched.path = PathBuf::from(obj);
        // Functions with an explicit section, one section each (as
        // -ffunction-sections gives every other function).
        graft_diff::prefix::demote(&mut orig);
        graft_diff::prefix::demote(&mut patched);
        graft_diff::split::split_pair(&mut orig, &mut patched).map_err(|e| {
            anyhow::anyhow!(
                "{obj}: cannot cut {} into one section per function: {} [rule: explicit-section]; hint: this is a graft limitation",
                e.section,
                e.what
            )
        })?;
        let module = match link {
            Linkage::Module => match graft_target::find_module(&target.paths.modules, obj, &orig) {
                Ok(m) => Some(m),
                // A unit with no function of its own to place it by (a
                // header change reaching a file its config compiles to
                // nearly nothing) that compiled the same both times has
                // nothing to patch and needs no module.
                Err(graft_target::ModuleError::NotFound { .. })
                    if same_contents(&orig, &patched) =>
                {
                    continue
                }
                Err(e) => return Err(e.into()),
            },
            Linkage::BuiltIn => {
                if let Err(e) = check_in_kernel(&orig, &target.symbols, obj) {
                    return Err(composite_part(ws, obj)?.unwrap_or(e.into()));
                }
                None
            }
        };
        let symbols = module.as_ref().map(|m| {
            let mut t = target.symbols.clone();
            t.add_module(m);
            t
        });
        let crcs = graft_diff::Crcs {
            orig: graft_kbuild::record::export_crcs(&orig_path)?,
            patched: graft_kbuild::record::export_crcs(&patched_path)?,
        };
        out.push(Unit {
            object: obj.clone(),
            orig,
            patched,
            module,
            symbols,
            crcs,
        });
    }
    Ok(out)
}

/// Whether two builds of an object are the same in everything loaded:
/// the same allocated sections, each with the same bytes and relocations.
fn same_contents(a: &Object, b: &Object) -> bool {
    let loaded = |o: &Object| -> Vec<String> {
        o.sections
            .iter()
            .filter(|s| s.is_alloc())
            .map(|s| s.name.clone())
            .collect()
    };
    let names = loaded(a);
    // Sections are compared by name: a name given twice is not compared.
    let unique: BTreeSet<&String> = names.iter().collect();
    unique.len() == names.len()
        && names == loaded(b)
        && names
            .iter()
            .all(|n| graft_diff::split::same_section(a, b, n))
}

/// A changed data layout, found in the units compiled so far, refuses the
/// build before the rest of a header's includers are compiled.
pub fn check_layouts(ws: &Workspace) -> Result<(), BuildError> {
    let mut refusals = Vec::new();
    for obj in &ws.compiled {
        let orig = Object::read(&ws.object_path("orig", obj))?;
        let patched = Object::read(&ws.object_path("patched", obj))?;
        let name = obj.rsplit('/').next().unwrap_or(obj).to_owned();
        for (ty, what) in graft_diff::types::changed_layouts(&orig, &patched) {
            let r = graft_diff::Refusal {
                object: name.clone(),
                symbol: ty,
                rule: graft_diff::Rule::LayoutChanged { what },
            };
            if !refusals.contains(&r) {
                refusals.push(r);
            }
        }
        if !refusals.is_empty() {
            break; // one unit says it; the others would repeat it
        }
    }
    if refusals.is_empty() {
        Ok(())
    } else {
        Err(graft_diff::DiffError::Refused { refusals }.into())
    }
}

/// Diffs every unit; the refusals of all units are reported together.
pub fn diff(
    units: &[Unit],
    target: &Target,
    layout: &graft_diff::Layout,
) -> Result<Vec<ObjectDiff>, BuildError> {
    let target_crc = |n: &str| target.exports.get(n).map(|e| e.crc);
    let in_vmlinux = |n: &str| !target.symbols.lookup(graft_elf::klp::VMLINUX, n).is_empty();
    let mut diffs = Vec::new();
    let mut refusals = Vec::new();
    for u in units {
        let symbols = u.symbols(target);
        let object = u.klp_object().to_owned();
        let in_module = |n: &str| !symbols.lookup(&object, n).is_empty();
        let opts = graft_diff::Options {
            layout: Some(layout),
            crcs: u.crcs.clone(),
            target_crc: Some(&target_crc),
            module: u.module.as_ref().map(|m| m.name.clone()),
            vmlinux_has: Some(&in_vmlinux),
            module_has: u
                .module
                .is_some()
                .then_some(&in_module as graft_diff::Lookup<'_, bool>),
        };
        match graft_diff::diff_with(&u.orig, &u.patched, &opts) {
            Ok(d) => diffs.push(d),
            Err(e) => match BuildError::from(e) {
                BuildError::Refused(r) => refusals.extend(r),
                other => return Err(other),
            },
        }
    }
    if !refusals.is_empty() {
        return Err(BuildError::Refused(refusals));
    }
    Ok(diffs)
}

/// Matches the original functions each unit's patch relies on against the
/// target's code (run-pre); `None` image means verification is off.
pub fn verify(
    units: &[Unit],
    diffs: &[ObjectDiff],
    target: &Target,
    image: Option<&KernelImage>,
) -> Result<Vec<Verified>, BuildError> {
    let mut out = Vec::new();
    for (u, d) in units.iter().zip(diffs) {
        let Some(image) = image else {
            out.push(Verified::default());
            continue;
        };
        let check = to_verify(&u.orig, &u.patched, d);
        let v = match &u.module {
            Some(m) => graft_verify::verify_module(&u.orig, &check, m)?,
            None => graft_verify::verify(
                &u.orig,
                &check,
                &graft_verify::Target {
                    symbols: &target.symbols,
                    image,
                    object: graft_elf::klp::VMLINUX,
                },
            )?,
        };
        out.push(v);
    }
    Ok(out)
}

/// Every hidden state carried code shares must be the copy a verified
/// original reaches: that is how graft knows which of the kernel's
/// same-named copies the running code uses.
pub fn check_shared_state(
    units: &[Unit],
    diffs: &[ObjectDiff],
    verified: &[Verified],
    verifying: bool,
) -> Result<(), BuildError> {
    let mut refusals = Vec::new();
    for ((u, d), v) in units.iter().zip(diffs).zip(verified) {
        for s in &d.shared_state {
            if v.sympos.contains_key(&s.state) {
                continue;
            }
            let why = if verifying {
                format!("no original function that run-pre verification matched reaches it, so graft cannot tell which of the kernel's copies named {} the running code uses", s.state)
            } else {
                "verification is off (--no-verify), and only the original function's verified code tells which same-named copy the running kernel uses".to_owned()
            };
            refusals.push(graft_diff::Refusal {
                object: u.object.rsplit('/').next().unwrap_or(&u.object).to_owned(),
                symbol: s.function.clone(),
                rule: graft_diff::Rule::HiddenState {
                    state: s.state.clone(),
                    why,
                },
            });
        }
    }
    if refusals.is_empty() {
        Ok(())
    } else {
        Err(graft_diff::DiffError::Refused { refusals }.into())
    }
}

/// Decides what the module carries of each unit.
pub fn plan<'a>(
    units: &'a [Unit],
    diffs: &[ObjectDiff],
    verified: &[Verified],
    target: &Target,
) -> Result<Vec<Plan<'a>>, BuildError> {
    let defines = patch_defines(units, diffs);
    let mut plans = Vec::new();
    for (i, ((u, d), v)) in units.iter().zip(diffs).zip(verified).enumerate() {
        if d.is_empty() {
            continue;
        }
        let resolver = Resolver {
            symbols: u.symbols(target),
            exports: &target.exports,
            object: u.klp_object(),
            known: &v.sympos,
            patch_defines: &defines,
        };
        let mut plan = graft_klp::include::plan(&u.patched, d, &resolver, i)?;
        if target.objtool_at_link {
            graft_klp::special::objtool_at_link(&mut plan)?;
        }
        plans.push(plan);
    }
    if plans
        .iter()
        .all(|p| p.funcs.is_empty() && p.callbacks.is_empty())
    {
        return Err(anyhow::anyhow!(
            "{} (the compiled code is identical); hint: check that the patch is the fix you meant",
            crate::error::NO_CODE_CHANGE
        )
        .into());
    }
    Ok(plans)
}

/// IBT: the patch must not take the address of a kernel function whose
/// ENDBR the kernel sealed at boot (vmlinux never took its address, so
/// objtool listed it in `.ibt_endbr_seal`): an indirect call through that
/// address faults on a CPU that enforces IBT ("Missing ENDBR"). A direct
/// call or jump needs no ENDBR; new functions of the patch keep theirs
/// (the module link's objtool sees their address taken). A module's own
/// sealed functions are carried instead, as the differ sees their seal
/// entry go (`.ibt_endbr_seal` of the module's object).
pub fn check_sealed(
    plans: &[Plan<'_>],
    target: &Target,
    image: Option<&KernelImage>,
) -> Result<(), BuildError> {
    let Some(image) = image else { return Ok(()) };
    let sealed = image.sealed_endbr();
    if sealed.is_empty() {
        // No IBT: no ENDBR needed anywhere.
        return Ok(());
    }
    let mut refusals = Vec::new();
    for plan in plans {
        let obj = plan.patched;
        let code = graft_diff::code::CodeMap::new(obj);
        for (&(sec, off), t) in &plan.targets {
            let graft_klp::include::Target::External(name, addend) = t else {
                continue;
            };
            let section = obj.section(sec);
            if section.is_exec() && code.is_direct_branch(obj, sec, off) {
                continue;
            }
            let (kname, sympos) = match graft_elf::klp::parse_sym_name(name) {
                Some((graft_elf::klp::VMLINUX, n, p)) => (n, p),
                Some(_) => continue,
                None => (name.as_str(), 0),
            };
            let entries = target.symbols.lookup(graft_elf::klp::VMLINUX, kname);
            let entry = match sympos {
                0 if entries.len() == 1 => entries[0],
                0 => continue,
                p => match entries.get(p as usize - 1) {
                    Some(e) => e,
                    None => continue,
                },
            };
            let Some(r) = section.relocs_in(off, off + 1).first() else {
                continue;
            };
            let at = (entry.address as i64)
                .wrapping_add(*addend)
                .wrapping_add(code.bias(section, r)) as u64;
            if !entry.is_text() || at != entry.address {
                continue;
            }
            // gcc gives a static function an ENDBR only where its address is
            // taken: the kernel's copy may have none at all.
            const ENDBR64: [u8; 4] = [0xf3, 0x0f, 0x1e, 0xfa];
            let why = if sealed.contains(&at) {
                "whose ENDBR the running kernel seals at boot [rule: ibt-sealed]: vmlinux never takes its address, so objtool listed it in .ibt_endbr_seal and the kernel replaced its ENDBR"
            } else if image.bytes(at, 4) != Some(&ENDBR64[..]) {
                "which has no ENDBR in the running kernel [rule: ibt-sealed]: its address is never taken there, so the compiler gave it none"
            } else {
                continue;
            };
            let user = obj
                .symbol_covering(sec, off as i64)
                .map_or_else(|| section.name.clone(), |s| s.name.clone());
            let message = format!(
                "{}: {user} takes the address of {kname} (at +{:#x}), {why}, and an indirect call through that address faults on a CPU that enforces IBT (\"Missing ENDBR\"); hint: call {kname} directly, or from a new function in the patch and take that one's address (new functions keep their ENDBR)",
                obj.path.display(),
                off.saturating_sub(
                    obj.symbol_covering(sec, off as i64).map_or(0, |s| s.value)
                ),
            );
            let r = Refusal {
                rule: "ibt-sealed".into(),
                message,
            };
            if !refusals.contains(&r) {
                refusals.push(r);
            }
        }
    }
    if refusals.is_empty() {
        Ok(())
    } else {
        Err(BuildError::Refused(refusals))
    }
}

/// Global functions and data the patch adds: carried by the unit that
/// defines them, reached by name from the others.
fn patch_defines(units: &[Unit], diffs: &[ObjectDiff]) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for (u, d) in units.iter().zip(diffs) {
        for c in d.functions.iter().chain(&d.data) {
            if c.verdict == Verdict::New && u.patched.symbol(c.symbol).is_global() {
                out.insert(c.name.clone());
            }
        }
    }
    out
}

pub fn file_reports(units: &[Unit], diffs: &[ObjectDiff]) -> Vec<FileReport> {
    units
        .iter()
        .zip(diffs)
        // A header's includers that did not change are no news.
        .filter(|(_, d)| {
            d.included_functions().next().is_some() || d.ignored_changes().next().is_some()
        })
        .map(|(u, d)| FileReport {
            file: u.file(),
            changed: d.changed_functions().map(|c| c.name.clone()).collect(),
            new: d
                .functions
                .iter()
                .filter(|c| c.verdict == Verdict::New)
                .map(|c| c.name.clone())
                .collect(),
            ignored: d.ignored_changes().map(|c| c.name.clone()).collect(),
        })
        .collect()
}

pub fn warnings(units: &[Unit], diffs: &[ObjectDiff]) -> Vec<String> {
    let mut out = Vec::new();
    for (u, d) in units.iter().zip(diffs) {
        let file = u.file();
        for f in &d.markers.force_unsafe {
            out.push(format!(
                "{file}: KPATCH_FORCE_UNSAFE({}) has no effect: the kernel's livepatch has no per-function bypass of its consistency model (a task switches only when no patched function is on its stack); if the transition stalls on {}, `graft load --force` forces the whole patch (the modules of the patches it replaces can then never be removed)",
                f.function, f.function
            ));
        }
    }
    out
}

/// The original functions run-pre verification must match: the ones the
/// patch replaces, and the ones of the same file that carried code calls or
/// references (their identity in the target decides their `sympos`).
fn to_verify(orig: &Object, patched: &Object, d: &ObjectDiff) -> Vec<SymbolId> {
    // Twins, not names: a renumbered clone is found under its original name.
    let mut ids: Vec<SymbolId> = d
        .changed_functions()
        .filter(|c| !graft_diff::rules::is_part(&c.name))
        .filter_map(|c| c.twin)
        .collect();
    // What carried code reaches, as the differ resolves it (decoded
    // instruction targets, not assumed addends).
    let refs = &d.references;
    let same_twin: BTreeMap<SymbolId, SymbolId> = d
        .functions
        .iter()
        .filter(|f| f.verdict == Verdict::Same)
        .filter_map(|f| f.twin.map(|t| (f.symbol, t)))
        .collect();
    for c in d.included_functions() {
        for t in refs.get(&c.symbol).into_iter().flatten() {
            let Some(&o) = same_twin.get(t) else { continue };
            // A weak definition that is only called may be overridden in the
            // target (the call then reaches the override, by name): nothing
            // of it to verify.
            let weak = orig.symbol(o).binding == graft_elf::Binding::Weak;
            if !weak && !graft_diff::rules::is_part(&patched.symbol(*t).name) && !ids.contains(&o) {
                ids.push(o);
            }
        }
    }
    // Hidden state the carried code shares is found through an original
    // function that uses it: verify one when no function verified above
    // does (the carried function's original may not use it: a renamed or
    // newly split function).
    for s in &d.shared_state {
        if !s.users.iter().any(|u| ids.contains(u)) {
            if let Some(&u) = s.users.first() {
                ids.push(u);
            }
        }
    }
    ids
}

/// A file whose functions the target kernel does not have is not built into it.
/// The refusal for `obj` when the kernel's build compiles it as part of a
/// module another directory's Makefile lists (`drm_kms_helper-y +=
/// bridge/panel.o`): kbuild's single-object build then compiles it as
/// built-in code, with other flags than the kernel's, so graft's original
/// is not the kernel's code. The tree's unit index tells (made once per
/// tree state; only asked on this error path).
fn composite_part(ws: &Workspace, obj: &str) -> Result<Option<BuildError>> {
    let index = ws.index()?;
    if !index.unit(obj).is_some_and(|u| u.module) {
        return Ok(None);
    }
    let file = obj.trim_end_matches(".o").to_owned() + ".c";
    Ok(Some(BuildError::Refused(vec![Refusal {
        rule: "composite-module".into(),
        message: format!(
            "{file}: the kernel's build compiles it as part of a module that another directory's Makefile lists, and kbuild's build of the single object compiles it as built-in code with other flags, so graft cannot compile the kernel's code of it [rule: composite-module]; hint: this is a graft limitation: a fix to this file cannot be built yet"
        ),
    }])))
}

fn check_in_kernel(orig: &Object, symbols: &SymbolTable, obj: &str) -> Result<()> {
    let mut any = false;
    for f in orig.functions().filter(|f| {
        !graft_diff::rules::is_init_section(&orig.section(f.section.expect("defined")).name)
    }) {
        any = true;
        if !symbols.lookup(graft_elf::klp::VMLINUX, &f.name).is_empty() {
            return Ok(());
        }
    }
    if any {
        bail!(
            "{} is not built into the target kernel: none of its functions is in the target's symbol table; hint: check the config (the file may be disabled, or built as a module)",
            obj.trim_end_matches(".o").to_owned() + ".c"
        );
    }
    Ok(())
}
