//! The original objects are built once per tree state and kept: a second
//! fix to the same file compiles only the patched side. Any change to the
//! tree (an edited file, another config) makes graft compile them again.

mod common;

use std::path::Path;

use common::*;

fn build(lab: &graft_lab::Lab, tree: &Path, patch: &str, out: &Path) -> serde_json::Value {
    let mut args = build_args(
        lab,
        &repo_file(&format!("tests/patches/{patch}")),
        "kept",
        out,
    );
    set_arg(&mut args, "--tree", tree);
    args.insert(0, "--json".into());
    let o = graft(&args);
    assert!(o.status.success(), "graft build {patch}:\n{}", stderr(&o));
    serde_json::from_slice(&o.stdout).unwrap()
}

fn kept(s: &serde_json::Value) -> Vec<String> {
    s["kept_originals"]
        .as_array()
        .map(|a| a.iter().map(|v| v.as_str().unwrap().to_owned()).collect())
        .unwrap_or_default()
}

#[test]
fn originals_are_kept_per_tree_state() {
    let lab = lab();
    let tree = variant_tree(&lab, "kept-originals", |_| {});
    let read = |rel: &str| std::fs::read_to_string(lab.source_tree().join(rel)).unwrap();
    let (version_c, config) = (read("fs/proc/version.c"), read(".config"));
    // A state no earlier run kept objects for: the files rewritten now.
    replace_file(&tree, "fs/proc/version.c", &version_c);
    replace_file(&tree, ".config", &config);
    let out = tempfile::tempdir().unwrap();
    let unit = vec!["fs/proc/version.o".to_owned()];

    let s = build(&lab, &tree, "version.patch", out.path());
    assert_eq!(
        kept(&s),
        Vec::<String>::new(),
        "first build of this state: {s}"
    );
    let s = build(&lab, &tree, "version-2.patch", out.path());
    assert_eq!(kept(&s), unit, "a second fix to the same file: {s}");
    assert_eq!(
        s["files"][0]["changed"],
        serde_json::json!(["version_proc_show"])
    );

    // An edited file of the tree: compiled again, then kept again.
    replace_file(
        &tree,
        "fs/proc/version.c",
        &format!("{version_c}/* edited after the first build */\n"),
    );
    let s = build(&lab, &tree, "version-2.patch", out.path());
    assert_eq!(kept(&s), Vec::<String>::new(), "after an edit: {s}");
    let s = build(&lab, &tree, "version.patch", out.path());
    assert_eq!(kept(&s), unit, "{s}");

    // Another config (an option the target's config leaves to the tree).
    assert!(config.contains("CONFIG_BUILD_SALT="), "the lab's .config");
    let salted: String = config
        .lines()
        .map(|l| {
            if l.starts_with("CONFIG_BUILD_SALT=") {
                "CONFIG_BUILD_SALT=\"graft-test\"".to_owned()
            } else {
                l.to_owned()
            }
        })
        .map(|l| l + "\n")
        .collect();
    replace_file(&tree, ".config", &salted);
    let s = build(&lab, &tree, "version.patch", out.path());
    assert_eq!(kept(&s), Vec::<String>::new(), "after a config change: {s}");

    replace_file(&tree, "fs/proc/version.c", &version_c);
    replace_file(&tree, ".config", &config);
}
