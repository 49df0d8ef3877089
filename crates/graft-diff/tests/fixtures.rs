//! The fixture corpus: pairs of C files (`tests/fixtures/<case>/orig.c` and
//! `patched.c`) compiled at test time exactly as the Debian kernel compiles
//! its objects (kbuild's own command line, then objtool), diffed, and
//! checked against the exact verdict in `expect`:
//!
//! ```text
//! changed: <symbols whose verdict is changed>   (functions and data)
//! new: <symbols whose verdict is new>
//! removed: <symbols of the original without a twin>
//! line-only: <same symbols that differ only in __LINE__ fields>
//! ignored: <changed symbols left out by the author's ignore markers>
//! refused: <rule>:<symbol> ...                 (exact set of refusals)
//! shared: <function>:<state> ...               (hidden state carried code shares)
//! paired: <symbol>=<strategy>                  (how a twin was found)
//! reason: <symbol>=<text the reason contains>
//! module: <name>                               (the target is a module)
//! ```
//!
//! Numbered statics are named by their base (`count` for `count.3`), since
//! the numbers are the compiler's.

mod common;

use std::collections::BTreeMap;

use graft_diff::{names::family, Options, Verdict};
use graft_elf::Object;

fn base(name: &str) -> String {
    let f = family(name);
    if f.numbered && !f.clone {
        f.base
    } else {
        name.to_owned()
    }
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

fn run_case(case: &str) -> Vec<String> {
    let k = common::kernel();
    let dir = common::fixtures_dir().join(case);
    let scratch = tempfile::tempdir().unwrap();
    let obj = format!("{}.o", case.replace('-', "_"));
    let (o, p) = (scratch.path().join("orig"), scratch.path().join("patched"));
    std::fs::create_dir_all(&o).unwrap();
    std::fs::create_dir_all(&p).unwrap();
    // Both builds compile the same path, as a kernel build does: __FILE__
    // lands in bug entries and dynamic debug descriptors.
    let src = scratch.path().join(format!("{}.c", case.replace('-', "_")));
    std::fs::copy(dir.join("orig.c"), &src).unwrap();
    k.compile(&src, &o.join(&obj));
    std::fs::copy(dir.join("patched.c"), &src).unwrap();
    k.compile(&src, &p.join(&obj));
    let expect = std::fs::read_to_string(dir.join("expect")).unwrap();
    let mut want: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for line in expect.lines() {
        if let Some((key, rest)) = line.split_once(':') {
            want.entry(key.trim())
                .or_default()
                .extend(rest.split_whitespace().map(str::to_owned));
        }
    }
    let mut orig = Object::read(&o.join(&obj)).unwrap();
    let mut patched = Object::read(&p.join(&obj)).unwrap();
    graft_diff::split::split_shared_sections(&mut orig).unwrap();
    graft_diff::split::split_shared_sections(&mut patched).unwrap();
    let module = want.get("module").and_then(|m| m.first().cloned());
    let never = |_: &str| false;
    let opts = Options {
        layout: Some(&k.layout),
        crcs: graft_diff::Crcs {
            orig: graft_kbuild::record::export_crcs(&o.join(&obj)).unwrap(),
            patched: graft_kbuild::record::export_crcs(&p.join(&obj)).unwrap(),
        },
        module,
        vmlinux_has: Some(&never),
        ..Default::default()
    };
    let d = graft_diff::analyze(&orig, &patched, &opts);
    let all = || d.functions.iter().chain(&d.data);
    let got_changed: Vec<String> = all()
        .filter(|c| matches!(c.verdict, Verdict::Changed { .. }))
        .map(|c| base(&c.name))
        .collect();
    let got_new: Vec<String> = all()
        .filter(|c| c.verdict == Verdict::New)
        .map(|c| base(&c.name))
        .collect();
    let got_line: Vec<String> = all()
        .filter(|c| c.verdict == Verdict::Same && c.note.is_some() && !c.ignored)
        .map(|c| base(&c.name))
        .collect();
    let got_ignored: Vec<String> = d.ignored_changes().map(|c| base(&c.name)).collect();
    let got_removed: Vec<String> = d.removed.iter().map(|n| base(n)).collect();
    let got_refused: Vec<String> = d
        .refusals
        .iter()
        .map(|r| {
            let v = serde_json::to_value(&r.rule).unwrap();
            // A type's name has a space (`struct x`): `struct_x` here.
            format!(
                "{}:{}",
                v["rule"].as_str().unwrap(),
                base(&r.symbol).replace(' ', "_")
            )
        })
        .collect();
    let got_shared: Vec<String> = d
        .shared_state
        .iter()
        .map(|s| format!("{}:{}", base(&s.function), base(&s.state)))
        .collect();
    let listing = serde_json::to_string_pretty(&d).unwrap();
    let mut failures = Vec::new();
    let mut check = |what: &str, got: Vec<String>| {
        let w = sorted(want.get(what).cloned().unwrap_or_default());
        let g = sorted(got);
        if w != g {
            failures.push(format!("{case}: {what}: expected {w:?}, got {g:?}"));
        }
    };
    check("changed", got_changed);
    check("new", got_new);
    check("line-only", got_line);
    check("ignored", got_ignored);
    check("removed", got_removed);
    check("refused", got_refused);
    check("shared", got_shared);
    for pair in want.get("paired").into_iter().flatten() {
        let (sym, how) = pair.split_once('=').unwrap();
        let ok = all().any(|c| {
            base(&c.name) == sym
                && c.paired_by
                    .is_some_and(|s| serde_json::to_value(s).unwrap() == how)
        });
        if !ok {
            failures.push(format!("{case}: {sym} was not paired by {how}"));
        }
    }
    for r in want.get("reason").into_iter().flatten() {
        let (sym, text) = r.split_once('=').unwrap();
        let ok = all()
            .any(|c| base(&c.name) == sym && c.reason.as_deref().is_some_and(|x| x.contains(text)));
        if !ok {
            failures.push(format!(
                "{case}: the reason of {sym} does not mention {text}"
            ));
        }
    }
    if !failures.is_empty() {
        failures.push(listing);
    }
    failures
}

#[test]
fn fixture_corpus_gives_the_expected_verdicts() {
    let mut cases: Vec<String> = std::fs::read_dir(common::fixtures_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    cases.sort();
    assert!(cases.len() >= 25, "the corpus has {} cases", cases.len());
    let filter = std::env::var("GRAFT_FIXTURE").ok();
    let mut failures = Vec::new();
    let mut ran = 0;
    for case in cases
        .iter()
        .filter(|c| filter.as_deref().is_none_or(|f| c.contains(f)))
    {
        failures.extend(run_case(case));
        ran += 1;
    }
    assert!(ran > 0);
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
