//! A header change compiles only the includers whose code it can alter:
//! graft reads every includer's preprocessed code before and after the
//! change (graft_kbuild::reach). Checked against compiling them all.

mod common;

use std::collections::BTreeSet;

use common::*;

fn functions(summary: &serde_json::Value) -> BTreeSet<String> {
    summary["files"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|f| {
            let file = f["file"].as_str().unwrap().to_owned();
            ["changed", "new"]
                .into_iter()
                .flat_map(move |k| f[k].as_array().unwrap().clone())
                .map(move |n| format!("{file}: {}", n.as_str().unwrap()))
        })
        .collect()
}

/// The includers a header's report says were compiled (read, then found
/// to change).
fn compiled_of(h: &serde_json::Value) -> Vec<&str> {
    h["compiled"]
        .as_array()
        .unwrap_or_else(|| panic!("the includers were read: {h}"))
        .iter()
        .map(|u| u.as_str().unwrap())
        .collect()
}

#[test]
fn a_header_change_compiles_only_the_includers_it_alters() {
    let lab = lab();
    let out = tempfile::tempdir().unwrap();
    let (_, read) = build_ok(&lab, "header-inline.patch", "hread", out.path());
    let (_, all) = build_ok_with(
        &lab,
        "header-inline.patch",
        "hall",
        out.path(),
        &["--compile-all-includers".into()],
    );
    let h = &read["headers"][0];
    let units: Vec<&str> = h["units"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u.as_str().unwrap())
        .collect();
    let compiled = compiled_of(h);
    assert!(
        units.len() >= 20,
        "fs/proc/internal.h's includers: {units:?}"
    );
    assert!(
        compiled.len() < units.len() / 2 && compiled.iter().all(|c| units.contains(c)),
        "compiled {compiled:?} of {units:?}"
    );
    // The same functions change, whichever way the units were found.
    assert_eq!(functions(&read), functions(&all));
    assert!(
        all["headers"][0]["compiled"].is_null(),
        "{}",
        all["headers"][0]
    );
    // Every file with a change was compiled; an includer that was read as
    // unchanged (fs/proc/generic.c includes the header but no get_proc_task
    // user) was not.
    for f in read["files"].as_array().unwrap() {
        let o = f["file"].as_str().unwrap().replace(".c", ".o");
        assert!(compiled.contains(&o.as_str()), "{o} not in {compiled:?}");
    }
    assert!(units.contains(&"fs/proc/generic.o") && !compiled.contains(&"fs/proc/generic.o"));

    // The unit budget counts the units the change can alter, and says so.
    let mut args = build_args(
        &lab,
        &repo_file("tests/patches/header-inline.patch"),
        "hsmall",
        out.path(),
    );
    args.extend(["--max-units".into(), "2".into()]);
    let refused = graft(&args);
    assert_eq!(refused.status.code(), Some(3), "{}", stderr(&refused));
    let e = stderr(&refused);
    assert!(
        e.contains("[rule: too-many-units]")
            && e.contains(&format!(
                "can alter the code of {} of the {} units that include it",
                compiled.len(),
                units.len()
            )),
        "{e}"
    );
}

/// A change to a static inline of include/linux/skbuff.h, which 4,600 units
/// include: graft scans the sources for its name and reads the few that
/// name it. `grep -rlw skb_has_shared_frag` lists the four files that call
/// it; each must be compiled and show the change, and nearly nothing else.
#[test]
fn a_header_in_thousands_of_units_compiles_only_its_users() {
    let lab = lab();
    let out = tempfile::tempdir().unwrap();
    let (_, r) = build_ok(&lab, "header-big-inline.patch", "hbig", out.path());
    let h = &r["headers"][0];
    assert_eq!(h["header"], "include/linux/skbuff.h");
    let units = h["units"].as_array().unwrap().len();
    let compiled = compiled_of(h);
    assert!(units > 4000, "{units} includers");
    let users = [
        "net/core/dev.o",
        "net/core/skbuff.o",
        "net/ipv4/esp4.o",
        "net/ipv6/esp6.o",
    ];
    for u in users {
        assert!(compiled.contains(&u), "{u} not compiled: {compiled:?}");
    }
    // The users, and the one includer compiled first to see layouts.
    assert!(compiled.len() <= users.len() + 1, "{compiled:?}");
    let files: BTreeSet<&str> = r["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["file"].as_str().unwrap())
        .collect();
    assert_eq!(
        files,
        BTreeSet::from([
            "net/core/dev.c",
            "net/core/skbuff.c",
            "net/ipv4/esp4.c",
            "net/ipv6/esp6.c"
        ])
    );
}
