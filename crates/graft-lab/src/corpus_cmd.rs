//! `graft-lab corpus`: arguments and output; the work is the library's
//! `graft_lab::corpus`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use graft_lab::corpus::{self, items, report, Corpus, Item, ItemResult};

#[derive(clap::Args)]
pub struct Args {
    /// Debian version (or release) of the target kernel [default: chosen by the rule in
    /// docs/corpus.md]
    #[arg(long, value_name = "VERSION", requires = "to")]
    from: Option<String>,
    /// Debian version (or release) of the update
    #[arg(long, value_name = "VERSION", requires = "from")]
    to: Option<String>,
    /// The graft binary [default: `graft` next to this program]
    #[arg(long, value_name = "PATH")]
    graft: Option<PathBuf>,
    /// graft's cache (its private tree copies) [default: $GRAFT_CACHE_DIR, else graft's]
    #[arg(long, env = "GRAFT_CACHE_DIR", value_name = "DIR")]
    cache_dir: Option<PathBuf>,
    /// Items built at once (each job keeps its own copy of the tree, ~1.5 GB)
    #[arg(long, short = 'j', default_value_t = 1)]
    jobs: usize,
    /// Only the first N items (`.c` items in path order, then headers)
    #[arg(long, value_name = "N", conflicts_with = "subset")]
    only: Option<usize>,
    /// Only the CI subset (the rule is in docs/corpus.md)
    #[arg(long)]
    subset: bool,
    /// Only items whose file path contains this text
    #[arg(long = "match", value_name = "TEXT")]
    matching: Option<String>,
    /// Only these items (ids as in docs/corpus.md: c012,h086)
    #[arg(long, value_name = "ID,…", value_delimiter = ',')]
    ids: Vec<String>,
    /// Choose the pair, fetch both kernels and list the items; build nothing
    #[arg(long)]
    prepare: bool,
    /// Build, but do not load the modules in a VM
    #[arg(long)]
    no_load: bool,
    /// Write the Markdown report here (e.g. docs/corpus.md)
    #[arg(long, value_name = "FILE")]
    write: Option<PathBuf>,
    /// Items of at most this many changed lines
    #[arg(long, default_value_t = corpus::MAX_LINES, value_name = "N")]
    max_lines: usize,
    /// `graft build --max-units` for header changes
    #[arg(long, default_value_t = corpus::MAX_UNITS, value_name = "N")]
    max_units: usize,
    /// Print the results as JSON on stdout
    #[arg(long)]
    json: bool,
}

fn default_graft() -> Result<PathBuf> {
    let me = std::env::current_exe().context("finding this program's path")?;
    let g = me.with_file_name("graft");
    if !g.is_file() {
        bail!(
            "no graft binary next to {} ; hint: cargo build --release, or pass --graft",
            me.display()
        );
    }
    Ok(g)
}

fn say(start: Instant) -> impl Fn(&str) + Sync {
    move |line: &str| eprintln!("[{:7.1}s] {line}", start.elapsed().as_secs_f64())
}

pub fn run(lab_root: &Path, a: Args) -> Result<ExitCode> {
    if a.jobs == 0 {
        bail!("--jobs must be at least 1");
    }
    let start = Instant::now();
    let progress = say(start);
    let cache = a
        .cache_dir
        .clone()
        .unwrap_or_else(graft_build::default_cache);
    let c = Corpus::prepare(
        lab_root,
        &cache,
        a.from.as_deref(),
        a.to.as_deref(),
        &mut |l| progress(l),
    )?;
    progress(&format!(
        "{} items ({} in the target's build); prepared in {:.1} s{}",
        c.items.len(),
        c.items.iter().filter(|i| i.place.in_build()).count(),
        c.prepare_seconds,
        c.index_seconds
            .map_or(String::new(), |s| format!(", unit index built in {s:.1} s"))
    ));
    if a.prepare {
        if a.json {
            println!("{}", serde_json::to_string_pretty(&c.items)?);
        }
        print_prepared(&c, a.max_lines);
        return Ok(ExitCode::SUCCESS);
    }
    let graft = match &a.graft {
        Some(g) => g.clone(),
        None => default_graft()?,
    };
    let keep = |i: &&Item| {
        a.matching.as_deref().is_none_or(|m| i.file.contains(m))
            && (a.ids.is_empty() || a.ids.contains(&i.id))
    };
    let builder = c.builder(&graft, &cache, a.max_units, a.jobs)?;
    let build_start = Instant::now();
    let mut results: Vec<ItemResult>;
    if a.subset {
        let chosen: Vec<&Item> = items::subset(&c.items, &c.changes, a.max_lines)
            .into_iter()
            .filter(keep)
            .collect();
        results = builder.run(&chosen, &c.changes, &progress)?;
    } else {
        let mut first: Vec<&Item> = c.c_items(a.max_lines).into_iter().filter(keep).collect();
        if let Some(n) = a.only {
            first.truncate(n);
        }
        results = builder.run(&first, &c.changes, &progress)?;
        // Headers no .c item needed, by what every .c item needed so far.
        let mut known = builder.cached().into_values().collect::<Vec<_>>();
        known.extend(results.iter().cloned());
        let mut headers: Vec<&Item> = c
            .header_items(a.max_lines, &known)
            .into_iter()
            .filter(keep)
            .collect();
        if let Some(n) = a.only {
            headers.truncate(n.saturating_sub(first.len()));
        }
        results.extend(builder.run(&headers, &c.changes, &progress)?);
    }
    let build_seconds = build_start.elapsed().as_secs_f64();
    results.sort_by_key(|r| corpus::id_order(&r.id));
    corpus::dedupe(&mut results);
    let load_start = Instant::now();
    let loads = if a.no_load {
        Default::default()
    } else {
        c.load(&results, true, &mut |l| progress(l))?
    };
    let load_seconds = load_start.elapsed().as_secs_f64();
    let t = report::totals(&results, &loads);
    if a.json {
        let v: Vec<serde_json::Value> = results
            .iter()
            .map(|r| serde_json::json!({"result": r, "load": loads.get(&r.id)}))
            .collect();
        println!("{}", serde_json::to_string_pretty(&v)?);
    }
    eprintln!(
        "corpus {} → {} on {}: {} items, {} in the kernel: {} built ({} loaded cleanly), {} refused as true changes, {} refused by graft's limitations, {} do not compile, {} no code change, {} UNEXPLAINED",
        c.pair.from.debian_version,
        c.pair.to.debian_version,
        c.target.release,
        t.items,
        t.in_kernel,
        t.built,
        t.loaded_clean,
        t.refused_true,
        t.refused_limit,
        t.does_not_compile,
        t.no_code_change,
        t.unexplained
    );
    if let Some(path) = &a.write {
        let mut command = String::from("graft-lab corpus");
        for arg in std::env::args().skip(2) {
            // Paths of this machine say nothing to a reader.
            if arg.starts_with('/') {
                command.push_str(" …");
            } else {
                command.push(' ');
                command.push_str(&arg);
            }
        }
        let facts = report::RunFacts {
            max_lines: a.max_lines,
            max_units: a.max_units,
            command,
            build_seconds,
            load_seconds,
        };
        std::fs::write(path, report::markdown(&c, &results, &loads, &facts))
            .with_context(|| format!("writing {}", path.display()))?;
        eprintln!("wrote {}", path.display());
    }
    let load_failures = loads.values().filter(|l| !l.is_clean()).count();
    Ok(if t.unexplained == 0 && load_failures == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn print_prepared(c: &Corpus, max_lines: usize) {
    println!(
        "pair      {} → {} (target {})",
        c.pair.from.debian_version, c.pair.to.debian_version, c.target.release
    );
    println!("directory {}", c.dir.display());
    for k in &c.considered {
        println!(
            "looked at {} → {}: {} changed kernel .c files",
            k.pair.from.debian_version, k.pair.to.debian_version, k.c_files
        );
    }
    let small = |i: &&Item| i.lines <= max_lines;
    let c_items = c.items.iter().filter(|i| !i.is_header()).filter(small);
    let h_items = c.items.iter().filter(|i| i.is_header()).filter(small);
    println!(
        ".c items  {} ({} in the build)",
        c_items.clone().count(),
        c_items.filter(|i| i.place.in_build()).count()
    );
    println!(
        "headers   {} ({} in the build)",
        h_items.clone().count(),
        h_items.filter(|i| i.place.in_build()).count()
    );
    for i in items::subset(&c.items, &c.changes, max_lines) {
        println!(
            "subset    {} {} ({} lines, {}; related headers: {})",
            i.id,
            i.file,
            i.lines,
            i.place.describe(),
            i.related
                .iter()
                .filter(|r| r.score > 0)
                .map(|r| format!("{} [{} units]", r.header, r.units))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
}
