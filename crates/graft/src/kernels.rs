//! Debian kernels as targets: `graft build --kernel RELEASE…` (fetch each
//! kernel into graft's cache, build one module per kernel), `graft build`
//! without `--tree` (the running kernel's exact source), and `graft
//! kernels` (what apt serves, what is cached).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

use graft_debian::{
    kernel, Apt, Archive, Availability, Event, KernelCache, KernelDir, Parts, Release,
};

use crate::build::{self, Args};
use graft_build::{Overrides, TargetPaths};

#[derive(clap::Args)]
pub struct KernelsArgs {
    /// The kernel series [default: the current kernel's of this system's apt (`linux-image-amd64`), and 6.12's of bookworm-backports and trixie].
    #[arg(long)]
    series: Option<String>,
    /// The kernel flavour.
    #[arg(long, default_value = "amd64")]
    flavour: String,
    /// Do not ask the archive whether each kernel's files can be downloaded.
    #[arg(long)]
    no_check: bool,
    /// Where graft keeps its cache [default: /var/cache/graft as root, else ~/.cache/graft].
    #[arg(long, env = "GRAFT_CACHE_DIR")]
    cache_dir: Option<PathBuf>,
}

/// Progress of a fetch on stderr: bars on a terminal, plain lines
/// otherwise, nothing with `--json`.
struct FetchUi {
    release: String,
    bar: Option<ProgressBar>,
    quiet: bool,
    terminal: bool,
    last_file: String,
}

impl FetchUi {
    fn new(release: &str, quiet: bool) -> FetchUi {
        FetchUi {
            release: release.to_string(),
            bar: None,
            quiet,
            terminal: !ProgressBar::new_spinner().is_hidden(),
            last_file: String::new(),
        }
    }

    fn spinner(&mut self, msg: String) {
        if self.quiet {
            return;
        }
        if !self.terminal {
            eprintln!("graft: {msg}");
            return;
        }
        let bar = self.bar.take().unwrap_or_else(|| {
            let b = ProgressBar::new_spinner();
            b.enable_steady_tick(Duration::from_millis(120));
            b
        });
        bar.set_style(
            ProgressStyle::with_template("{spinner} {msg} ({elapsed})").expect("static template"),
        );
        bar.set_message(msg);
        self.bar = Some(bar);
    }

    fn event(&mut self, e: Event) {
        let r = self.release.clone();
        match e {
            Event::Started(s) => self.spinner(format!("{r}: {}", s.describe())),
            Event::Done(s) => self.line(format!("{r}: {} done", s.describe())),
            Event::Cached(s) => self.line(format!("{r}: {} cached", s.describe())),
            Event::Unpacking(f) => self.spinner(format!("{r}: unpacking {f}")),
            Event::Prepare(step) => self.spinner(format!("{r}: {}", step.describe())),
            Event::Waiting(lock) => self.spinner(format!(
                "{r}: waiting for another graft preparing this kernel ({})",
                lock.display()
            )),
            Event::Download { file, done, total } => {
                if self.quiet {
                    return;
                }
                if !self.terminal {
                    if file != self.last_file {
                        eprintln!("graft: {r}: downloading {file} ({} MB)", total / 1_000_000);
                        self.last_file = file;
                    }
                    return;
                }
                if file != self.last_file {
                    if let Some(b) = self.bar.take() {
                        b.finish_and_clear();
                    }
                    let b = ProgressBar::new(total);
                    b.set_style(
                        ProgressStyle::with_template(
                            "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}",
                        )
                        .expect("static template")
                        .progress_chars("=> "),
                    );
                    b.set_message(format!("{r}: {file}"));
                    self.bar = Some(b);
                    self.last_file = file;
                }
                if let Some(b) = &self.bar {
                    b.set_position(done);
                }
            }
        }
    }

    fn line(&mut self, msg: String) {
        if self.quiet {
            return;
        }
        match &self.bar {
            Some(b) => b.println(format!("graft: {msg}")),
            None => eprintln!("graft: {msg}"),
        }
    }

    fn finish(&mut self) {
        if let Some(b) = self.bar.take() {
            b.finish_and_clear();
        }
    }
}

/// Fetches `release` completely into graft's cache (image, headers,
/// prepared source) and describes it as a build target.
fn fetch_kernel(
    archive: &Archive,
    cache: &KernelCache,
    release: &Release,
    quiet: bool,
) -> Result<(PathBuf, TargetPaths)> {
    let (apt, k) = archive.packages(release, None)?;
    let dir = cache.dir(&release.name, &k.debian_version);
    let mut ui = FetchUi::new(&release.name, quiet);
    let parts = Parts {
        buildroots: Some(buildroots(cache)),
        ..Parts::all()
    };
    let r = dir.fetch(apt, &k, &parts, &mut |e| ui.event(e));
    ui.finish();
    r?;
    target_of(&dir)
}

/// Where graft keeps Debian build roots: beside the kernels of its cache.
fn buildroots(cache: &KernelCache) -> PathBuf {
    cache.root.with_file_name("buildroots")
}

fn target_of(dir: &KernelDir) -> Result<(PathBuf, TargetPaths)> {
    let (tree, _) = dir
        .source()
        .context("the fetched kernel has no prepared source")?;
    Ok((
        tree,
        TargetPaths {
            release: dir.release.clone(),
            config: dir.config(),
            // The image carries the kernel's symbol table.
            symbols: dir.vmlinuz(),
            image: dir.vmlinuz(),
            modules: dir.modules(),
            headers: dir.headers(),
        },
    ))
}

/// The tree and target of a build without `--kernel`: the given tree and
/// target, or, without `--tree`, the exact source of the target kernel
/// fetched and prepared in graft's cache (Debian kernels only).
pub fn single_target(a: &Args, json: bool) -> Result<(PathBuf, TargetPaths)> {
    let target = TargetPaths::resolve(&Overrides {
        target: a.target.clone(),
        config: a.config.clone(),
        symbols: a.symbols.clone(),
        image: a.image.clone(),
        modules: a.modules.clone(),
        headers: a.headers.clone(),
    })?;
    if let Some(tree) = &a.tree {
        return Ok((tree.clone(), target));
    }
    let no_tree = "hint: pass a kernel tree prepared like the target with --tree";
    let release = Release::parse(&target.release).with_context(|| {
        format!(
            "the target kernel {} is not a Debian kernel release, so graft cannot fetch its source; {no_tree}",
            target.release
        )
    })?;
    let banner = if a.target.is_none() && a.image.is_none() {
        std::fs::read_to_string("/proc/version").ok()
    } else {
        graft_target::KernelImage::read(&target.image)
            .ok()
            .and_then(|i| i.banner())
    };
    let version = banner
        .as_deref()
        .and_then(kernel::version_from_banner)
        .with_context(|| {
            format!(
                "cannot tell the Debian version of kernel {} from its banner; {no_tree}",
                target.release
            )
        })?;
    let archive = Archive::new(&build::cache_dir(a));
    let (apt, k) = archive.packages(&release, Some(&version))?;
    let cache = KernelCache::new(&build::cache_dir(a));
    let dir = cache.dir(&release.name, &version);
    // The source, and the headers when the target's are not at hand (their
    // .config is Debian's full build configuration).
    let build_config = target.headers.join(".config");
    let parts = Parts {
        image: false,
        headers: !build_config.is_file(),
        source: true,
        config: Some(target.config.clone()),
        build_config: Some(build_config),
        buildroots: Some(buildroots(&cache)),
    };
    let mut ui = FetchUi::new(&release.name, json);
    let r = dir.fetch(apt, &k, &parts, &mut |e| ui.event(e));
    ui.finish();
    r?;
    let (tree, _) = dir
        .source()
        .context("the fetched kernel has no prepared source")?;
    let mut target = target;
    if parts.headers && a.headers.is_none() {
        target.headers = dir.headers();
    }
    Ok((tree, target))
}

/// The releases `--kernel` names: each as given, or `all`: every kernel of
/// the current series and flavour apt serves.
fn releases(apt: &Apt, specs: &[String]) -> Result<Vec<Release>> {
    let mut v: Vec<Release> = Vec::new();
    for s in specs {
        if s == "all" {
            let current = kernel::current_release(apt)?;
            for k in kernel::served(apt, &current.series, &current.flavour)? {
                v.push(k.release);
            }
        } else {
            v.push(Release::parse(s).with_context(|| {
                format!("`{s}` is not a kernel release; hint: give one as `uname -r` prints it (6.1.0-47-amd64), or `all`")
            })?);
        }
    }
    let mut seen = Vec::new();
    v.retain(|r| {
        let new = !seen.contains(&r.name);
        seen.push(r.name.clone());
        new
    });
    Ok(v)
}

#[derive(Serialize)]
struct KernelOutcome {
    release: String,
    built: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    module: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    summary: Option<graft_build::BuildReport>,
}

/// `graft build --kernel …`: one module per kernel, in
/// `<output>/<release>/`; a kernel that fails is reported with its reason
/// and the others are built. Exit code: see [`crate::exit`].
pub fn build_each(a: &Args, json: bool) -> Result<()> {
    let archive = Archive::new(&build::cache_dir(a));
    let cache = KernelCache::new(&build::cache_dir(a));
    let kernels = releases(archive.system(), &a.kernel)?;
    if kernels.is_empty() {
        bail!("apt serves no kernel to build for; hint: `graft kernels` lists them");
    }
    let mut outcomes = Vec::new();
    let mut codes = Vec::new();
    for r in &kernels {
        if !json {
            eprintln!("graft: == {} ==", r.name);
        }
        let out_dir = a.output.join(&r.name);
        let result = fetch_kernel(&archive, &cache, r, json)
            .and_then(|(tree, target)| build::build(a, &tree, &target, &out_dir, json));
        match result {
            Ok(summary) => {
                if !json {
                    build::print(&summary, false)?;
                }
                outcomes.push(KernelOutcome {
                    release: r.name.clone(),
                    built: true,
                    module: Some(summary.module.clone()),
                    error: None,
                    summary: Some(summary),
                });
            }
            Err(e) => {
                let code = crate::output::exit_code(&e);
                codes.push(code);
                let msg = chain(&e);
                if !json {
                    eprintln!("graft: {}: not built: {msg}", r.name);
                }
                outcomes.push(KernelOutcome {
                    release: r.name.clone(),
                    built: false,
                    module: None,
                    error: Some(msg),
                    summary: None,
                });
            }
        }
    }
    let built = outcomes.iter().filter(|o| o.built).count();
    if json {
        println!("{}", serde_json::to_string_pretty(&outcomes)?);
    } else {
        for o in &outcomes {
            match (&o.module, &o.error) {
                (Some(m), _) => println!("{}: built {}", o.release, m.display()),
                (None, Some(e)) => println!("{}: NOT BUILT: {e}", o.release),
                _ => {}
            }
        }
    }
    if codes.is_empty() {
        return Ok(());
    }
    let code = if built > 0 {
        crate::exit::PARTIAL
    } else if codes.iter().all(|&c| c == crate::exit::REFUSED) {
        crate::exit::REFUSED
    } else {
        crate::exit::ERROR
    };
    Err(crate::opsui::Coded {
        code,
        message: format!(
            "{built} of {} kernels built; the others are reported above",
            outcomes.len()
        ),
    }
    .into())
}

fn chain(e: &anyhow::Error) -> String {
    let mut msg = e.to_string();
    for cause in e.chain().skip(1) {
        msg.push_str(&format!(": {cause}"));
    }
    msg
}

#[derive(Serialize)]
struct Listed {
    release: String,
    debian_version: String,
    served: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    availability: Option<Availability>,
    cached: Vec<String>,
}

/// `graft kernels`: the kernels apt serves (and whether their files can be
/// downloaded), and those in graft's cache.
pub fn list(a: KernelsArgs, json: bool) -> Result<()> {
    let cache_root = a.cache_dir.clone().unwrap_or_else(|| {
        // The same default as `graft build`.
        graft_build::default_cache()
    });
    let archive = Archive::new(&cache_root);
    let cache = KernelCache::new(&cache_root);
    let series = match a.series {
        Some(s) => vec![s],
        None => archive.series()?,
    };
    let mut rows: Vec<Listed> = Vec::new();
    for (apt, k) in series
        .iter()
        .map(|s| archive.served(s, &a.flavour))
        .collect::<Result<Vec<_>, _>>()?
        .into_iter()
        .flatten()
    {
        let availability = if a.no_check {
            None
        } else {
            Some(
                match kernel::packages(apt, &k.release, Some(&k.debian_version)) {
                    Ok(p) => kernel::availability(apt, &p)?,
                    Err(e) => Availability::Missing {
                        url: String::new(),
                        status: e.to_string(),
                    },
                },
            )
        };
        rows.push(Listed {
            release: k.release.name.clone(),
            debian_version: k.debian_version,
            served: true,
            availability,
            cached: Vec::new(),
        });
    }
    for c in cache.cached() {
        let parts: Vec<String> = [
            ("image", c.image),
            ("headers", c.headers),
            ("source", c.source),
        ]
        .iter()
        .filter(|(_, on)| *on)
        .map(|(n, _)| n.to_string())
        .collect();
        match rows
            .iter_mut()
            .find(|r| r.release == c.release && r.debian_version == c.debian_version)
        {
            Some(r) => r.cached = parts,
            None => rows.push(Listed {
                release: c.release,
                debian_version: c.debian_version,
                served: false,
                availability: None,
                cached: parts,
            }),
        }
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    println!("{:<22} {:<18} {:<34} cached", "release", "debian", "served");
    for r in &rows {
        let served = match (&r.served, &r.availability) {
            (false, _) => "no".to_string(),
            (true, None) => "listed (not checked)".to_string(),
            (true, Some(Availability::Downloadable)) => "yes".to_string(),
            (true, Some(Availability::Missing { status, .. })) => {
                format!("listed, not downloadable: {status}")
            }
            (true, Some(Availability::Unchecked { why })) => format!("listed ({why})"),
        };
        println!(
            "{:<22} {:<18} {:<34} {}",
            r.release,
            r.debian_version,
            served,
            if r.cached.is_empty() {
                "-".to_string()
            } else {
                r.cached.join(", ")
            }
        );
    }
    println!("cache: {}", cache.root.display());
    Ok(())
}
