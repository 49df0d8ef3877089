//! The patch author's markers (`<graft/livepatch.h>`, kpatch's macros mapped
//! onto it) and the refusals that tell an author how to rewrite a patch,
//! on objects compiled like the Debian kernel's.

mod common;

use graft_diff::markers::{CallbackKind, State};
use graft_diff::{ObjectDiff, Options, Rule, Verdict};
use graft_elf::Object;

const HEAD: &str = "#include <linux/kernel.h>\n#include <linux/module.h>\n";

/// Diffs `orig` against `patched` (C sources), compiled as one kernel file.
fn diff(orig: &str, patched: &str) -> ObjectDiff {
    let k = common::kernel();
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("graft_author.c");
    let (o, p) = (dir.path().join("o.o"), dir.path().join("p.o"));
    std::fs::write(&src, format!("{HEAD}{orig}")).unwrap();
    k.compile(&src, &o);
    std::fs::write(&src, format!("{HEAD}{patched}")).unwrap();
    k.compile(&src, &p);
    let never = |_: &str| false;
    graft_diff::analyze(
        &Object::read(&o).unwrap(),
        &Object::read(&p).unwrap(),
        &Options {
            layout: Some(&k.layout),
            vmlinux_has: Some(&never),
            ..Default::default()
        },
    )
}

fn messages(d: &ObjectDiff) -> String {
    d.refusals
        .iter()
        .map(|r| r.to_string())
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn callbacks_states_and_markers_are_read() {
    let orig = "int graft_fx_fix(int x) { return x + 1; }\n";
    let patched = r#"#include <graft/livepatch.h>
#include "kpatch-macros.h"
int graft_fx_fix(int x) { return x + 2; }
static int graft_fx_pre(struct klp_object *obj) { return obj->name ? 0 : 1; }
static void graft_fx_post(struct klp_object *obj) { pr_info("post\n"); }
static void graft_fx_pre_un(patch_object *obj) { pr_info("pre-unpatch\n"); }
static void graft_fx_post_un(patch_object *obj) { pr_info("post-unpatch\n"); }
GRAFT_PRE_PATCH_CALLBACK(graft_fx_pre);
GRAFT_POST_PATCH_CALLBACK(graft_fx_post);
KPATCH_PRE_UNPATCH_CALLBACK(graft_fx_pre_un);
KPATCH_POST_UNPATCH_CALLBACK(graft_fx_post_un);
GRAFT_STATE(0x6772616674UL, 3);
GRAFT_STATE(0x6772616674UL, 3);
GRAFT_STATE(7, 1);
KPATCH_FORCE_UNSAFE(graft_fx_fix);
"#;
    let d = diff(orig, patched);
    assert!(d.refusals.is_empty(), "{}", messages(&d));
    let mut cbs: Vec<(CallbackKind, &str)> = d
        .markers
        .callbacks
        .iter()
        .map(|c| (c.kind, c.function.as_str()))
        .collect();
    cbs.sort();
    assert_eq!(
        cbs,
        vec![
            (CallbackKind::PrePatch, "graft_fx_pre"),
            (CallbackKind::PostPatch, "graft_fx_post"),
            (CallbackKind::PreUnpatch, "graft_fx_pre_un"),
            (CallbackKind::PostUnpatch, "graft_fx_post_un"),
        ]
    );
    assert_eq!(
        d.markers.states,
        vec![
            State { id: 7, version: 1 },
            State {
                id: 0x6772616674,
                version: 3
            }
        ]
    );
    assert_eq!(d.markers.force_unsafe[0].function, "graft_fx_fix");
    // The callbacks are new code the module carries; the records are not.
    for f in [
        "graft_fx_pre",
        "graft_fx_post",
        "graft_fx_pre_un",
        "graft_fx_post_un",
    ] {
        assert!(
            d.functions
                .iter()
                .any(|c| c.name == f && c.verdict == Verdict::New),
            "{f} is not new"
        );
    }
    assert!(d.data.iter().all(|c| !c.section.starts_with(".graft.")));
}

#[test]
fn an_ignored_section_leaves_its_function_out() {
    let orig = "noinline int graft_fx_a(int x) { return x + 1; }\nnoinline int graft_fx_b(int x) { return x + 1; }\n";
    let patched = "#include \"kpatch-macros.h\"\nnoinline int graft_fx_a(int x) { return x + 2; }\nnoinline int graft_fx_b(int x) { return x + 2; }\nKPATCH_IGNORE_SECTION(\".text.graft_fx_b\");\n";
    let d = diff(orig, patched);
    assert!(d.refusals.is_empty(), "{}", messages(&d));
    let b = d.functions.iter().find(|c| c.name == "graft_fx_b").unwrap();
    assert_eq!(b.verdict, Verdict::Same);
    assert!(b.ignored && b.reason.is_some(), "{b:?}");
    assert!(b.note.as_deref().unwrap().contains("GRAFT_IGNORE_SECTION"));
    assert_eq!(
        d.changed_functions()
            .map(|c| c.name.as_str())
            .collect::<Vec<_>>(),
        vec!["graft_fx_a"]
    );
}

#[test]
fn misused_markers_are_refused_with_the_fix() {
    // Ignoring a function the patch adds; a section that does not exist; a
    // callback defined in another file.
    let orig = "int graft_fx_a(int x) { return x + 1; }\n";
    let patched = r#"#include <graft/livepatch.h>
noinline int graft_fx_new(int x) { return x * 9; }
int graft_fx_a(int x) { return graft_fx_new(x) + 1; }
extern void graft_fx_elsewhere(struct klp_object *obj);
GRAFT_IGNORE_FUNCTION(graft_fx_new);
GRAFT_IGNORE_SECTION(".text.graft_fx_missing");
GRAFT_POST_PATCH_CALLBACK(graft_fx_elsewhere);
"#;
    let d = diff(orig, patched);
    let m = messages(&d);
    assert!(
        d.refusals
            .iter()
            .all(|r| matches!(r.rule, Rule::Marker { .. })),
        "{m}"
    );
    assert_eq!(d.refusals.len(), 3, "{m}");
    assert!(
        m.contains("graft_fx_new is new: the running kernel has no graft_fx_new to keep"),
        "{m}"
    );
    assert!(m.contains("remove the GRAFT_IGNORE_FUNCTION marker"), "{m}");
    assert!(
        m.contains("the file has no section .text.graft_fx_missing"),
        "{m}"
    );
    assert!(
        m.contains("the post_patch callback graft_fx_elsewhere is not defined in this file"),
        "{m}"
    );
    assert!(m.contains("[rule: marker]"), "{m}");
}

#[test]
fn no_fentry_refusals_say_why_the_callers_cannot_be_patched() {
    // Stored in data: the kernel may call the old copy through the pointer.
    let d = diff(
        "static notrace noinline int graft_fx_h(int x) { barrier(); return x; }\nint (*graft_fx_ops)(int) = graft_fx_h;\nint graft_fx_e(int x) { return graft_fx_h(x) + 1; }\n",
        "static notrace noinline int graft_fx_h(int x) { barrier(); return x + 1; }\nint (*graft_fx_ops)(int) = graft_fx_h;\nint graft_fx_e(int x) { return graft_fx_h(x) + 1; }\n",
    );
    let m = messages(&d);
    assert!(
        m.contains("graft_fx_h changed but has no __fentry__ call [rule: no-fentry]"),
        "{m}"
    );
    assert!(
        m.contains("its address is stored in graft_fx_ops (.data.graft_fx_ops)"),
        "{m}"
    );
    assert!(
        m.contains(
            "hint: keep graft_fx_h as it is and make the change in a function with __fentry__"
        ),
        "{m}"
    );
    // An address taken in code escapes the same way.
    let d = diff(
        "static notrace noinline int graft_fx_h(int x) { barrier(); return x; }\nvoid *graft_fx_get(void) { return graft_fx_h; }\n",
        "static notrace noinline int graft_fx_h(int x) { barrier(); return x + 1; }\nvoid *graft_fx_get(void) { return graft_fx_h; }\n",
    );
    let m = messages(&d);
    assert!(
        m.contains("its address is taken in graft_fx_get (+0x"),
        "{m}"
    );
    // A global hookless function: other files may call it.
    let d = diff(
        "notrace noinline int graft_fx_g(int x) { return x; }\n",
        "notrace noinline int graft_fx_g(int x) { return x + 1; }\n",
    );
    let m = messages(&d);
    assert!(
        m.contains("graft_fx_g is global, so code in other files may call it directly"),
        "{m}"
    );
    assert!(
        m.contains("hint: make the change in the callers of graft_fx_g instead"),
        "{m}"
    );
}

#[test]
fn an_ignored_caller_keeps_calling_the_old_callee() {
    // The author keeps graft_fx_debug; only graft_fx_e is patched to reach
    // the new copy of the hookless helper.
    let orig = "static notrace noinline int graft_fx_h(int x) { barrier(); return x; }\nint graft_fx_e(int x) { return graft_fx_h(x) + 1; }\nint graft_fx_debug(int x) { return graft_fx_h(x) + 2; }\n";
    let patched = "#include <graft/livepatch.h>\nstatic notrace noinline int graft_fx_h(int x) { barrier(); return x + 1; }\nint graft_fx_e(int x) { return graft_fx_h(x) + 1; }\nint graft_fx_debug(int x) { return graft_fx_h(x) + 2; }\nGRAFT_IGNORE_FUNCTION(graft_fx_debug);\n";
    let d = diff(orig, patched);
    assert!(d.refusals.is_empty(), "{}", messages(&d));
    let v = |n: &str| d.functions.iter().find(|c| c.name == n).unwrap().verdict;
    assert_eq!(v("graft_fx_h"), Verdict::New);
    assert!(matches!(v("graft_fx_e"), Verdict::Changed { .. }));
    assert_eq!(v("graft_fx_debug"), Verdict::Same);
}

#[test]
fn records_graft_cannot_read_are_refused_not_skipped() {
    let orig = "int graft_fx_a(int x) { return x + 1; }\n";
    let patched = "int graft_fx_a(int x) { return x + 2; }\nstatic int graft_fx_bogus __used __section(\".graft.bogus\") = 1;\nstatic char graft_fx_short __used __section(\".graft.ignore.functions\") = 1;\n";
    let d = diff(orig, patched);
    let m = messages(&d);
    assert_eq!(d.refusals.len(), 2, "{m}");
    assert!(
        m.contains("graft does not know the marker section .graft.bogus"),
        "{m}"
    );
    assert!(
        m.contains(
            ".graft.ignore.functions: 1 bytes are not a whole number of 8-byte pointer records"
        ),
        "{m}"
    );
}
