//! `graft diff ORIG.o PATCHED.o`

use std::path::PathBuf;

use anyhow::Result;
use graft_diff::Verdict;
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
}

pub fn run(a: Args, json: bool) -> Result<()> {
    let orig = Object::read(&a.orig)?;
    let patched = Object::read(&a.patched)?;
    let d = graft_diff::diff(&orig, &patched)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&d)?);
        return Ok(());
    }
    for (kind, list) in [("function", &d.functions), ("data", &d.data)] {
        for c in list.iter().filter(|c| a.all || c.verdict != Verdict::Same) {
            let v = match c.verdict {
                Verdict::Same => "same".to_owned(),
                Verdict::New => "new".to_owned(),
                Verdict::Changed { offset } => format!("changed at +{offset:#x}"),
            };
            println!("{kind:8} {:40} {v}", c.name);
        }
    }
    for r in &d.removed {
        println!("function {r:40} removed");
    }
    Ok(())
}
