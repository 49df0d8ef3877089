//! `graft build`: source patch → livepatch module.
//!
//! The passes, in order: read inputs → sync the private tree → compile the
//! original objects → patch and compile again → revert → diff each object →
//! plan what the module carries → write patch objects → stub → kbuild the
//! module → convert klp relocations → write `livepatch-<name>.ko`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::Serialize;

use graft_diff::Verdict;
use graft_elf::Object;
use graft_kbuild::compile::{self, Linkage};
use graft_kbuild::mirror::Mirror;
use graft_kbuild::patch::SourcePatch;
use graft_kbuild::tree::KernelTree;
use graft_klp::include::Resolver;
use graft_target::{Exports, KernelImage, SymbolTable};

use crate::output::Steps;
use crate::target::{Overrides, TargetPaths};

#[derive(clap::Args)]
pub struct Args {
    /// The source fix, a unified diff against the kernel tree (-p1).
    patch: PathBuf,
    /// The kernel source tree, configured and prepared like the target kernel.
    #[arg(long, short = 't')]
    tree: PathBuf,
    /// The patch's name: the module is `livepatch-<name>.ko`.
    #[arg(long, short = 'n')]
    name: String,
    /// A directory describing another machine's kernel: release, config,
    /// kallsyms (or System.map or vmlinux), vmlinuz, modules/ and headers/
    /// [default: the running kernel].
    #[arg(long)]
    target: Option<PathBuf>,
    /// The target kernel's config [default: /boot/config-$(uname -r)].
    #[arg(long)]
    config: Option<PathBuf>,
    /// The target kernel's symbol table, kallsyms format [default: /proc/kallsyms].
    #[arg(long)]
    symbols: Option<PathBuf>,
    /// The target kernel's headers, with Module.symvers [default: /lib/modules/$(uname -r)/build].
    #[arg(long)]
    headers: Option<PathBuf>,
    /// Where to write the module.
    #[arg(long, short = 'o', default_value = ".")]
    output: PathBuf,
    /// Where graft keeps its private copy of the tree [default: /var/cache/graft/build as root, else ~/.cache/graft/build].
    #[arg(long, env = "GRAFT_CACHE_DIR")]
    cache_dir: Option<PathBuf>,
    /// The target kernel's modules, for files built into a module [default: /lib/modules/$(uname -r)].
    #[arg(long)]
    modules: Option<PathBuf>,
    /// The target kernel's boot image, to verify the build against [default: /boot/vmlinuz-$(uname -r)].
    #[arg(long)]
    image: Option<PathBuf>,
    /// Skip run-pre verification (the build is then not proven to match the target's code).
    #[arg(long)]
    no_verify: bool,
    /// Build a patch that stacks on loaded ones instead of replacing them.
    #[arg(long)]
    no_replace: bool,
    /// Parallel compile jobs [default: number of CPUs].
    #[arg(long, short = 'j')]
    jobs: Option<usize>,
}

#[derive(Serialize)]
struct Summary {
    module: PathBuf,
    name: String,
    replace: bool,
    files: Vec<FileSummary>,
    /// Functions proven to match the target's code (empty with --no-verify).
    verified: Vec<graft_verify::Match>,
    /// Callbacks wired into the klp objects, and the klp_states declared.
    callbacks: Vec<graft_klp::KlpCallback>,
    states: Vec<graft_diff::markers::State>,
    /// Things graft accepted but that do not do what they may seem to.
    warnings: Vec<String>,
    klp_relocations: usize,
    seconds: f64,
}

#[derive(Serialize)]
struct FileSummary {
    file: String,
    changed: Vec<String>,
    new: Vec<String>,
    /// Changed, but left out by the author's ignore markers.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    ignored: Vec<String>,
}

pub fn run(a: Args, json: bool) -> Result<()> {
    validate_name(&a.name)?;
    let mut steps = Steps::new(json);
    let target = TargetPaths::resolve(&Overrides {
        target: a.target.clone(),
        config: a.config.clone(),
        symbols: a.symbols.clone(),
        image: a.image.clone(),
        modules: a.modules.clone(),
        headers: a.headers.clone(),
    })?;
    let (config, headers, image_path, modules_dir, symbols_path) = (
        target.config.clone(),
        target.headers.clone(),
        target.image.clone(),
        target.modules.clone(),
        target.symbols.clone(),
    );

    steps.step("reading inputs");
    let tree = KernelTree::open(&a.tree)?;
    let patch = SourcePatch::read(&a.patch)?;
    let objects = patch.objects()?;
    if !config.is_file() {
        bail!(
            "the target kernel's config {} does not exist; hint: pass it with --config",
            config.display()
        );
    }
    // The compiler first: a config from another compiler differs in its
    // compiler options too, and the compiler is the cause worth naming.
    tree.check_compiler(&config)?;
    tree.check_config(&config)?;
    let symbols = SymbolTable::read(&symbols_path)?;
    let exports = Exports::read(&headers.join("Module.symvers"))?;
    std::fs::create_dir_all(&a.output)
        .with_context(|| format!("cannot create {}", a.output.display()))?;

    steps.step("syncing graft's private copy of the tree");
    let cache = a.cache_dir.clone().unwrap_or_else(default_cache);
    let (mut mirror, _) = Mirror::sync(&tree, &cache.join("build"))?;
    let work = tempfile::Builder::new()
        .prefix("work-")
        .tempdir_in(&cache)
        .with_context(|| format!("cannot create a work directory in {}", cache.display()))?;
    let jobs = a
        .jobs
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()));

    mirror.check(&patch)?;
    // <graft/livepatch.h> and kpatch's headers, in the copy only.
    graft_kbuild::headers::install(&mirror.root)?;

    steps.step("compiling the original objects");
    let linkage = compile::compile(
        &mirror.root,
        &tree.make_vars,
        &objects,
        jobs,
        "the original source",
        &mirror.log_path(),
    )?;
    keep_objects(&mirror.root, &objects, &work.path().join("orig"))?;

    steps.step("compiling the patched objects");
    let patched_build = mirror.apply(&patch).and_then(|()| {
        compile::compile(
            &mirror.root,
            &tree.make_vars,
            &objects,
            jobs,
            "the patched source",
            &mirror.log_path(),
        )
    });
    // Revert whatever happened; the user's tree was never touched.
    mirror.revert()?;
    patched_build?;
    keep_objects(&mirror.root, &objects, &work.path().join("patched"))?;

    let image = if a.no_verify {
        None
    } else {
        steps.step("reading the target kernel's image");
        Some(KernelImage::read(&image_path)?)
    };
    steps.step("diffing and verifying");
    // Entry layouts of the kernel's special sections, from the tree itself.
    let layout = graft_diff::Layout::probe(&mirror.root)?;
    let mut verified = Vec::new();
    let mut patch_objects = Vec::new();
    let mut funcs = Vec::new();
    let mut callbacks = Vec::new();
    let mut states = Vec::new();
    let mut warnings = Vec::new();
    let mut files = Vec::new();
    for (unit, (obj, link)) in objects.iter().zip(&linkage).enumerate() {
        // Objects are named by their path in the tree in every message.
        let mut orig = Object::read(&work.path().join("orig").join(obj))?;
        let mut patched = Object::read(&work.path().join("patched").join(obj))?;
        orig.path = PathBuf::from(obj);
        patched.path = PathBuf::from(obj);
        // The klp object the file belongs to, and the symbols it can reach.
        let module = match link {
            Linkage::Module => Some(graft_target::find_module(&modules_dir, obj, &orig)?),
            Linkage::BuiltIn => {
                check_in_kernel(&orig, &symbols, obj)?;
                None
            }
        };
        let unit_symbols = module.as_ref().map(|m| {
            let mut t = symbols.clone();
            t.add_module(m);
            t
        });
        let klp_object = module
            .as_ref()
            .map_or(graft_elf::klp::VMLINUX, |m| m.name.as_str());
        let target_crc = |n: &str| exports.get(n).map(|e| e.crc);
        let in_vmlinux = |n: &str| !symbols.lookup(graft_elf::klp::VMLINUX, n).is_empty();
        let d = graft_diff::diff_with(
            &orig,
            &patched,
            &graft_diff::Options {
                layout: Some(&layout),
                crcs: graft_diff::Crcs::read_kbuild(
                    &work.path().join("orig").join(obj),
                    &work.path().join("patched").join(obj),
                )?,
                target_crc: Some(&target_crc),
                module: module.as_ref().map(|m| m.name.clone()),
                vmlinux_has: Some(&in_vmlinux),
            },
        )?;
        let check = to_verify(&orig, &patched, &d);
        let known = match (&module, &image) {
            (Some(m), _) if !a.no_verify => {
                let v = graft_verify::verify_module(&orig, &check, m)?;
                verified.extend(v.functions);
                v.sympos
            }
            (None, Some(image)) => {
                let target = graft_verify::Target {
                    symbols: &symbols,
                    image,
                    object: graft_elf::klp::VMLINUX,
                };
                let v = graft_verify::verify(&orig, &check, &target)?;
                verified.extend(v.functions);
                v.sympos
            }
            _ => BTreeMap::new(),
        };
        let resolver = Resolver {
            symbols: unit_symbols.as_ref().unwrap_or(&symbols),
            exports: &exports,
            object: klp_object,
            known: &known,
        };
        let changed: Vec<String> = d.changed_functions().map(|c| c.name.clone()).collect();
        let new: Vec<String> = d
            .functions
            .iter()
            .filter(|c| c.verdict == Verdict::New)
            .map(|c| c.name.clone())
            .collect();
        if !d.is_empty() {
            let plan = graft_klp::include::plan(&patched, &d, &resolver, unit)?;
            let specials = graft_klp::special::filter(&plan)?;
            patch_objects.push((
                format!("graft-patch-{unit}.o"),
                graft_klp::emit::write(&plan, &specials)?,
            ));
            funcs.extend(plan.funcs.iter().cloned());
            callbacks.extend(plan.callbacks.iter().cloned());
        }
        let file = obj.trim_end_matches(".o").to_owned() + ".c";
        states.extend(d.markers.states.iter().copied());
        for f in &d.markers.force_unsafe {
            warnings.push(format!(
                "{file}: KPATCH_FORCE_UNSAFE({}) has no effect: the kernel's livepatch has no per-function bypass of its consistency model (a task switches only when no patched function is on its stack); if the transition stalls on {}, `graft load --force` forces the whole patch (the modules of the patches it replaces can then never be removed)",
                f.function, f.function
            ));
        }
        files.push(FileSummary {
            file,
            changed,
            new,
            ignored: d.ignored_changes().map(|c| c.name.clone()).collect(),
        });
    }
    if funcs.is_empty() && callbacks.is_empty() {
        bail!("the patch changes no function of the running kernel (the compiled code is identical); hint: check that the patch is the fix you meant");
    }

    steps.step("building the module");
    let module_name = format!("livepatch-{}", a.name);
    // Whether a patched module can be reloaded on this kernel, and how.
    let reload = graft_klp::reload::support(&symbols);
    let stub = graft_klp::stub::generate(
        &funcs,
        &graft_klp::stub::StubOptions {
            replace: !a.no_replace,
            description: &format!("graft live patch {}", a.name),
            module_info: &crate::buildinfo::module_info(
                &a.patch,
                &headers,
                &funcs,
                !a.no_replace,
                &reload,
            )?,
            callbacks: &callbacks,
            states: &states,
            reload: &reload,
        },
    )?;
    let mdir = work.path().join("module");
    std::fs::create_dir_all(&mdir)?;
    let ko = graft_kbuild::module::build(
        &headers,
        &mdir,
        &graft_kbuild::module::ModuleSources {
            name: &module_name,
            stub_c: &stub,
            objects: &patch_objects,
        },
    )?;
    let linked = std::fs::read(&ko)?;
    let (bytes, klp_relocations) =
        graft_klp::postlink::convert(&linked, &ko.display().to_string())?;
    let reloaded = graft_klp::postlink::module_objects(&bytes);
    warnings.extend(graft_klp::reload::warning(&reload, &reloaded));
    let out = a.output.join(format!("{module_name}.ko"));
    write_atomic(&out, &bytes)?;
    steps.finish();

    let summary = Summary {
        module: out,
        name: a.name.clone(),
        replace: !a.no_replace,
        files,
        verified,
        callbacks,
        states,
        warnings,
        klp_relocations,
        seconds: steps.elapsed().as_secs_f64(),
    };
    for w in &summary.warnings {
        eprintln!("graft: warning: {w}");
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        for f in &summary.files {
            println!(
                "{}: changed {}{}",
                f.file,
                list(&f.changed),
                if f.new.is_empty() {
                    String::new()
                } else {
                    format!(", new {}", list(&f.new))
                }
            );
            if !f.ignored.is_empty() {
                println!("{}: left out as marked: {}", f.file, list(&f.ignored));
            }
        }
        for cb in &summary.callbacks {
            println!(
                "{} callback of {}: {}",
                cb.kind.field(),
                cb.object.as_deref().unwrap_or(graft_elf::klp::VMLINUX),
                cb.function
            );
        }
        for st in &summary.states {
            println!("klp_state {:#x}, version {}", st.id, st.version);
        }
        if !summary.verified.is_empty() {
            println!(
                "verified against the target kernel: {}",
                summary
                    .verified
                    .iter()
                    .map(|m| format!("{} at {:#x}", m.function, m.address))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        println!(
            "built {} ({} klp relocation{}) in {:.1}s",
            summary.module.display(),
            klp_relocations,
            if klp_relocations == 1 { "" } else { "s" },
            summary.seconds
        );
    }
    Ok(())
}

fn list(v: &[String]) -> String {
    if v.is_empty() {
        "nothing".into()
    } else {
        v.join(", ")
    }
}

fn validate_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 40
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if !ok {
        bail!("invalid patch name {name:?}; hint: use up to 40 letters, digits, '-' or '_'");
    }
    Ok(())
}

fn default_cache() -> PathBuf {
    let root = std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
        .unwrap_or(false);
    if root {
        PathBuf::from("/var/cache/graft")
    } else if let Some(x) = std::env::var_os("XDG_CACHE_HOME") {
        PathBuf::from(x).join("graft")
    } else {
        PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/tmp".into()))
            .join(".cache/graft")
    }
}

/// Copies the compiled objects out of the mirror before the next compile.
fn keep_objects(root: &Path, objects: &[String], to: &Path) -> Result<()> {
    for o in objects {
        let dst = to.join(o);
        std::fs::create_dir_all(dst.parent().expect("object path has a directory"))?;
        std::fs::copy(root.join(o), &dst).with_context(|| format!("cannot copy {o}"))?;
        // kbuild's record of the object holds the CRCs of its exports.
        let record = graft_diff::crc::record_of(&root.join(o));
        if record.is_file() {
            std::fs::copy(&record, graft_diff::crc::record_of(&dst))
                .with_context(|| format!("cannot copy {}", record.display()))?;
        }
    }
    Ok(())
}

/// The original functions run-pre verification must match: the ones the
/// patch replaces, and the ones of the same file that carried code calls or
/// references (their identity in the target decides their `sympos`).
fn to_verify(
    orig: &Object,
    patched: &Object,
    d: &graft_diff::ObjectDiff,
) -> Vec<graft_elf::SymbolId> {
    // Twins, not names: a renumbered clone is found under its original name.
    let mut ids: Vec<graft_elf::SymbolId> = d
        .changed_functions()
        .filter(|c| !graft_diff::rules::is_part(&c.name))
        .filter_map(|c| c.twin)
        .collect();
    // What carried code reaches, as the differ resolves it (decoded
    // instruction targets, not assumed addends).
    let refs = graft_diff::correlate::references(patched, &graft_diff::code::CodeMap::new(patched));
    for c in d.included_functions() {
        for t in refs.get(&c.symbol).into_iter().flatten() {
            let twin = d
                .functions
                .iter()
                .find(|f| f.symbol == *t && f.verdict == Verdict::Same)
                .and_then(|f| f.twin);
            let Some(o) = twin else { continue };
            // A weak definition that is only called may be overridden in the
            // target (the call then reaches the override, by name): nothing
            // of it to verify.
            let weak = orig.symbol(o).binding == graft_elf::Binding::Weak;
            if !weak && !graft_diff::rules::is_part(&patched.symbol(*t).name) && !ids.contains(&o) {
                ids.push(o);
            }
        }
    }
    ids
}

/// A file whose functions the target kernel does not have is not built into it.
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

/// Writes through a temporary file and a rename: never a half-written module.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir)
        .with_context(|| format!("cannot write in {}", dir.display()))?;
    std::io::Write::write_all(&mut tmp, bytes)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}
