//! `graft build`: arguments, progress and output; the pipeline itself is
//! the `graft-build` library.

use std::path::PathBuf;

use anyhow::Result;
use graft_build::{BuildReport, Event, Overrides, TargetPaths};

use crate::output::Steps;

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
    /// Keep the work directory (original and patched objects, the module's
    /// sources) in DIR when the build ends, for inspection.
    #[arg(long, value_name = "DIR")]
    keep_work: Option<PathBuf>,
}

pub fn run(a: Args, json: bool) -> Result<()> {
    let target = TargetPaths::resolve(&Overrides {
        target: a.target.clone(),
        config: a.config.clone(),
        symbols: a.symbols.clone(),
        image: a.image.clone(),
        modules: a.modules.clone(),
        headers: a.headers.clone(),
    })?;
    let inputs = graft_build::Inputs {
        patch: a.patch,
        tree: a.tree,
        name: a.name,
        target,
        output: a.output,
        cache: a.cache_dir.unwrap_or_else(graft_build::default_cache),
        no_verify: a.no_verify,
        no_replace: a.no_replace,
        jobs: a
            .jobs
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get())),
        keep_work: a.keep_work,
    };
    let mut steps = Steps::new(json);
    let report = graft_build::build(&inputs, &mut |e| match e {
        Event::Step(what) => steps.step(what),
    });
    steps.finish();
    let report = match report {
        Ok(r) => r,
        // Refusals keep their type (exit code 3); failures are their cause.
        Err(graft_build::BuildError::Failed(e)) => return Err(e),
        Err(e) => return Err(e.into()),
    };
    for w in &report.warnings {
        eprintln!("graft: warning: {w}");
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_human(&report);
    }
    Ok(())
}

fn print_human(r: &BuildReport) {
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
