//! The `differ` fuzz target's body, shared with the test that replays the
//! inputs kept under `fuzz/regressions/differ/` (graft-diff's
//! `tests/fuzz_regressions.rs`).
//!
//! Input: two length-prefixed halves (original, patched), then the rest
//! seeds the entry layout so that odd sizes and masks are exercised too.

use std::path::Path;

use graft_diff::layout::{Item, Layout};
use graft_elf::Object;

fn split(data: &[u8]) -> (&[u8], &[u8], &[u8]) {
    if data.len() < 4 {
        return (data, data, &[]);
    }
    let n = u16::from_le_bytes([data[0], data[1]]) as usize;
    let rest = &data[2..];
    let n = n.min(rest.len());
    let (a, rest) = rest.split_at(n);
    let m = u16::from_le_bytes([
        rest.first().copied().unwrap_or(0),
        rest.get(1).copied().unwrap_or(0),
    ]) as usize;
    let rest = rest.get(2..).unwrap_or(&[]);
    let m = m.min(rest.len());
    let (b, tail) = rest.split_at(m);
    (a, if b.is_empty() { a } else { b }, tail)
}

fn layout(seed: &[u8]) -> Layout {
    const ITEMS: &[&str] = &[
        "bug_entry",
        "exception_table_entry",
        "jump_entry",
        "alt_instr",
        "paravirt_patch_site",
        "static_call_site",
        "orc_unwind_ip",
        "orc_entry",
        "mcount_loc",
        "printk_index",
        "pi_entry",
        "ddebug",
        "kprobe_blacklist",
        "error_injection_entry",
    ];
    let mut l = Layout::default();
    for (i, name) in ITEMS.iter().enumerate() {
        let size = seed.get(i).copied().map_or(8, |b| b as u64 % 70);
        let mut item = Item {
            size,
            align: 4,
            ..Item::default()
        };
        if let Some(&m) = seed.get(i + ITEMS.len()) {
            let mut mask = vec![0u8; size as usize];
            if let Some(x) = mask.get_mut(m as usize % (size as usize).max(1)) {
                *x = 0xff;
            }
            for f in ["line", "lineno", "replacementlen", "func"] {
                item.masks.insert(f.into(), mask.clone());
            }
        }
        l.items.insert((*name).into(), item);
    }
    l
}

/// Any bytes give an object or an error, and any two objects (with any
/// layout) a diff: never a panic. Returns the verdicts that are not `same`
/// and the refusals' rules, for the replay test.
pub fn run(data: &[u8]) -> Vec<String> {
    let mut out = Vec::new();
    let (a, b, seed) = split(data);
    let Ok(orig) = Object::parse(a, Path::new("orig.o")) else {
        return out;
    };
    let Ok(patched) = Object::parse(b, Path::new("patched.o")) else {
        return out;
    };
    let l = layout(seed);
    let opts = graft_diff::Options {
        layout: Some(&l),
        module: seed.first().map(|_| "m".to_owned()),
        ..Default::default()
    };
    let d = graft_diff::analyze(&orig, &patched, &opts);
    for c in d.functions.iter().chain(&d.data) {
        if c.verdict != graft_diff::Verdict::Same {
            out.push(format!("{} {:?}", c.name, c.verdict));
        }
    }
    for r in &d.refusals {
        let text = r.to_string();
        let rule = text
            .split("[rule: ")
            .nth(1)
            .and_then(|t| t.split(']').next())
            .unwrap_or("?");
        out.push(format!("refused {} [{rule}]", r.symbol));
    }
    out
}
