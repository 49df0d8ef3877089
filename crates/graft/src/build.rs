//! `graft build`: arguments, progress and output; the pipeline itself is
//! the `graft-build` library, and builds for several kernels are in
//! `kernels.rs`.

use std::path::{Path, PathBuf};

use anyhow::Result;
use graft_build::{BuildReport, Event, TargetPaths};

use crate::output::Steps;

#[derive(clap::Args)]
pub struct Args {
    /// The source fix, a unified diff against the kernel tree (-p1).
    pub(crate) patch: PathBuf,
    /// The kernel source tree, configured and prepared like the target kernel
    /// [default: on Debian, the target's exact source, fetched and prepared
    /// in graft's cache].
    #[arg(long, short = 't', conflicts_with = "kernel")]
    pub(crate) tree: Option<PathBuf>,
    /// Build for this Debian kernel release (e.g. 6.1.0-47-amd64), fetching
    /// its image, headers and source into graft's cache; repeatable; `all`
    /// for every kernel of the series apt serves. Each module is written to
    /// <output>/<release>/.
    #[arg(long, value_name = "RELEASE", conflicts_with_all = ["target", "config", "symbols", "headers", "modules", "image"])]
    pub(crate) kernel: Vec<String>,
    /// The patch's name: the module is `livepatch-<name>.ko`.
    #[arg(long, short = 'n')]
    pub(crate) name: String,
    /// A directory describing another machine's kernel: release, config,
    /// kallsyms (or System.map or vmlinux), vmlinuz, modules/ and headers/
    /// [default: the running kernel].
    #[arg(long)]
    pub(crate) target: Option<PathBuf>,
    /// The target kernel's config [default: /boot/config-$(uname -r)].
    #[arg(long)]
    pub(crate) config: Option<PathBuf>,
    /// The target kernel's symbol table, kallsyms format [default: /proc/kallsyms].
    #[arg(long)]
    pub(crate) symbols: Option<PathBuf>,
    /// The target kernel's headers, with Module.symvers [default: /lib/modules/$(uname -r)/build].
    #[arg(long)]
    pub(crate) headers: Option<PathBuf>,
    /// Where to write the module.
    #[arg(long, short = 'o', default_value = ".")]
    pub(crate) output: PathBuf,
    /// Where graft keeps its private copy of the tree [default: /var/cache/graft/build as root, else ~/.cache/graft/build].
    #[arg(long, env = "GRAFT_CACHE_DIR")]
    pub(crate) cache_dir: Option<PathBuf>,
    /// The target kernel's modules, for files built into a module [default: /lib/modules/$(uname -r)].
    #[arg(long)]
    pub(crate) modules: Option<PathBuf>,
    /// The target kernel's boot image, to verify the build against [default: /boot/vmlinuz-$(uname -r)].
    #[arg(long)]
    pub(crate) image: Option<PathBuf>,
    /// Skip run-pre verification (the build is then not proven to match the target's code).
    #[arg(long)]
    pub(crate) no_verify: bool,
    /// Build a patch that stacks on loaded ones instead of replacing them.
    #[arg(long)]
    pub(crate) no_replace: bool,
    /// Parallel compile jobs [default: number of CPUs].
    #[arg(long, short = 'j')]
    pub(crate) jobs: Option<usize>,
    /// Keep the work directory (original and patched objects, the module's
    /// sources) in DIR when the build ends, for inspection.
    #[arg(long, value_name = "DIR")]
    pub(crate) keep_work: Option<PathBuf>,
    /// The most translation units a header change may make graft compile
    /// (each twice).
    #[arg(long, value_name = "N", default_value_t = graft_build::DEFAULT_MAX_UNITS)]
    pub(crate) max_units: usize,
    /// Compile every unit that includes a changed header, not only those
    /// whose preprocessed code reaches a changed item (slower; a check of
    /// graft's reading).
    #[arg(long)]
    pub(crate) compile_all_includers: bool,
}

pub fn run(a: Args, json: bool) -> Result<()> {
    if !a.kernel.is_empty() {
        return crate::kernels::build_each(&a, json);
    }
    let (tree, target) = crate::kernels::single_target(&a, json)?;
    let report = build(&a, &tree, &target, &a.output, json)?;
    print(&report, json)
}

/// Builds the module for one target kernel from `tree` into `output`.
pub(crate) fn build(
    a: &Args,
    tree: &Path,
    target: &TargetPaths,
    output: &Path,
    json: bool,
) -> Result<BuildReport> {
    let inputs = graft_build::Inputs {
        patch: a.patch.clone(),
        tree: tree.to_owned(),
        name: a.name.clone(),
        target: target.clone(),
        output: output.to_owned(),
        cache: cache_dir(a),
        no_verify: a.no_verify,
        no_replace: a.no_replace,
        jobs: a
            .jobs
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get())),
        keep_work: a.keep_work.clone(),
        max_units: a.max_units,
        compile_all_includers: a.compile_all_includers,
    };
    let mut steps = Steps::new(json);
    let report = graft_build::build(&inputs, &mut |e| match e {
        Event::Step(what) => steps.step(what),
    });
    steps.finish();
    match report {
        Ok(r) => Ok(r),
        // Refusals keep their type (exit code 3); failures are their cause.
        Err(graft_build::BuildError::Failed(e)) => Err(e),
        Err(e) => Err(e.into()),
    }
}

/// Prints what was built: text, or the JSON report.
pub(crate) fn print(report: &BuildReport, json: bool) -> Result<()> {
    for w in &report.warnings {
        eprintln!("graft: warning: {w}");
    }
    if json {
        println!("{}", serde_json::to_string_pretty(report)?);
    } else {
        print_human(report);
    }
    Ok(())
}

/// graft's cache: `--cache-dir` / `GRAFT_CACHE_DIR`, else the default.
pub(crate) fn cache_dir(a: &Args) -> PathBuf {
    a.cache_dir
        .clone()
        .unwrap_or_else(graft_build::default_cache)
}

fn print_human(r: &BuildReport) {
    for h in &r.headers {
        let plural = |n: usize| if n == 1 { "" } else { "s" };
        let n = h.units.len();
        match &h.compiled {
            Some(c) => println!(
                "{}: included by {n} unit{} of the target; the change can alter the code of {} (compiled), not of the other {}",
                h.header,
                plural(n),
                c.len(),
                n - c.len()
            ),
            None => println!("{}: included by {n} unit{} of the target", h.header, plural(n)),
        }
    }
    if let Some(s) = r.index_seconds {
        println!("indexed the tree's units and includes in {s:.1}s (kept for later builds)");
    }
    for f in &r.files {
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
    for cb in &r.callbacks {
        println!(
            "{} callback of {}: {}",
            cb.kind.field(),
            cb.object.as_deref().unwrap_or(graft_elf::klp::VMLINUX),
            cb.function
        );
    }
    for st in &r.states {
        println!("klp_state {:#x}, version {}", st.id, st.version);
    }
    if !r.verified.is_empty() {
        println!(
            "verified against the target kernel: {}",
            r.verified
                .iter()
                .map(|m| format!("{} at {:#x}", m.function, m.address))
                .collect::<Vec<_>>()
                .join(", ")
        );
        for m in &r.verified {
            if let Some(why) = &m.choice {
                println!("{}: {why}", m.function);
            }
        }
    }
    println!(
        "built {} ({} klp relocation{}) in {:.1}s",
        r.module.display(),
        r.klp_relocations,
        if r.klp_relocations == 1 { "" } else { "s" },
        r.seconds
    );
}

fn list(v: &[String]) -> String {
    if v.is_empty() {
        "nothing".into()
    } else {
        v.join(", ")
    }
}
