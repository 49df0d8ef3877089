//! `graft diff ORIG.o PATCHED.o`: the differ's verdict for every function
//! and data object, why each changed (with the first differing instruction
//! disassembled), how each was paired, and what a live patch would refuse.

use std::path::PathBuf;

use anyhow::{Context, Result};
use graft_diff::{Change, Verdict};
use graft_elf::Object;

#[derive(clap::Args)]
pub struct Args {
    /// The object built from the original source.
    orig: PathBuf,
    /// The same object built from the patched source.
    patched: PathBuf,
    /// Also list functions and data that did not change.
    #[arg(long)]
    all: bool,
    /// The prepared kernel tree the objects were built from: the layout of
    /// its special-section entries is read from it (without it, tables
    /// describing changed code are refused as unreadable).
    #[arg(long, short = 't')]
    tree: Option<PathBuf>,
    /// A layout saved by `--save-layout` instead of `--tree`.
    #[arg(long, conflicts_with = "tree")]
    layout: Option<PathBuf>,
    /// Write the layout read from `--tree` to this file (JSON).
    #[arg(long, requires = "tree")]
    save_layout: Option<PathBuf>,
}

pub fn run(a: Args, json: bool) -> Result<()> {
    let mut orig = Object::read(&a.orig)?;
    let mut patched = Object::read(&a.patched)?;
    graft_diff::prefix::demote(&mut orig);
    graft_diff::prefix::demote(&mut patched);
    graft_diff::split::split_pair(&mut orig, &mut patched).map_err(|e| {
        anyhow::anyhow!(
            "cannot cut {} into one section per function: {}",
            e.section,
            e.what
        )
    })?;
    let layout = match (&a.tree, &a.layout) {
        (Some(tree), _) => Some(graft_build::probe_layout(tree).map_err(|e| match e {
            graft_build::BuildError::Failed(e) => e,
            e => e.into(),
        })?),
        (None, Some(file)) => {
            let text = std::fs::read_to_string(file)
                .with_context(|| format!("cannot read {}", file.display()))?;
            Some(
                serde_json::from_str(&text)
                    .with_context(|| format!("{}: not a graft layout", file.display()))?,
            )
        }
        (None, None) => None,
    };
    if let (Some(path), Some(l)) = (&a.save_layout, &layout) {
        std::fs::write(path, serde_json::to_string_pretty(l)?)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    let opts = graft_diff::Options {
        layout: layout.as_ref(),
        crcs: graft_diff::Crcs {
            orig: graft_kbuild::record::export_crcs(&a.orig)?,
            patched: graft_kbuild::record::export_crcs(&a.patched)?,
        },
        ..Default::default()
    };
    let d = graft_diff::analyze(&orig, &patched, &opts);
    if json {
        println!("{}", serde_json::to_string_pretty(&d)?);
    } else {
        print_human(&d, a.all);
    }
    if d.refusals.is_empty() {
        Ok(())
    } else {
        Err(graft_diff::DiffError::Refused {
            refusals: d.refusals,
        }
        .into())
    }
}

fn print_human(d: &graft_diff::ObjectDiff, all: bool) {
    for (kind, list) in [("function", &d.functions), ("data", &d.data)] {
        for c in list
            .iter()
            .filter(|c| all || c.verdict != Verdict::Same || c.note.is_some())
        {
            println!("{kind:8} {:40} {}", c.name, verdict(c));
            if let Some(r) = &c.reason {
                println!("         {:40} because {r}", "");
            }
            if let Some(i) = &c.first_insn {
                println!("         {:40} at +{:#x}: {}", "", i.offset, i.orig);
                println!("         {:40}     now: {}", "", i.patched);
            }
            if let Some(n) = &c.note {
                println!("         {:40} {n}", "");
            }
        }
    }
    for r in &d.removed {
        println!("{:8} {r:40} removed", "");
    }
    for r in &d.refusals {
        println!("refused: {r}");
    }
}

fn verdict(c: &Change) -> String {
    let paired = match (&c.orig_name, c.paired_by) {
        (Some(o), Some(s)) if *o != c.name => format!(" (was {o}, paired by {s:?})"),
        (_, Some(s)) if s != graft_diff::Strategy::Name => format!(" (paired by {s:?})"),
        _ => String::new(),
    };
    match c.verdict {
        Verdict::Same => format!("same{paired}"),
        Verdict::New => "new".to_owned(),
        Verdict::Changed { offset } => format!("changed at +{offset:#x}{paired}"),
    }
}
