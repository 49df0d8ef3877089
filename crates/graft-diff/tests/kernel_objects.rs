//! The differ on real objects of the Debian 6.1 kernel, compiled by kbuild
//! before and after the patches the VM tests use (in graft's private copy
//! of the lab tree; the lab's tree itself is only read).

mod common;

use graft_diff::{Options, Verdict};
use graft_elf::Object;

fn diff_patch(patch: &str, object: &str) -> graft_diff::ObjectDiff {
    diff_patch_objects(patch, object).2
}

fn diff_patch_objects(patch: &str, object: &str) -> (Object, Object, graft_diff::ObjectDiff) {
    let k = common::kernel();
    let text = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../tests/patches")
            .join(patch),
    )
    .unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let (o, p) = k.kernel_pair(&text, &[object], scratch.path());
    let mut orig = Object::read(&o.join(object)).unwrap();
    let mut patched = Object::read(&p.join(object)).unwrap();
    graft_diff::split::split_shared_sections(&mut orig).unwrap();
    graft_diff::split::split_shared_sections(&mut patched).unwrap();
    let opts = Options {
        layout: Some(&k.layout),
        crcs: graft_diff::Crcs {
            orig: graft_kbuild::record::export_crcs(&o.join(object)).unwrap(),
            patched: graft_kbuild::record::export_crcs(&p.join(object)).unwrap(),
        },
        ..Default::default()
    };
    let d = graft_diff::analyze(&orig, &patched, &opts);
    (orig, patched, d)
}

fn names(d: &graft_diff::ObjectDiff, f: impl Fn(&graft_diff::Change) -> bool) -> Vec<String> {
    let mut v: Vec<String> = d
        .functions
        .iter()
        .chain(&d.data)
        .filter(|c| f(c))
        .map(|c| c.name.clone())
        .collect();
    v.sort();
    v
}

fn changed(d: &graft_diff::ObjectDiff) -> Vec<String> {
    names(d, |c| c.verdict != Verdict::Same)
}

#[test]
fn readdir_change_carries_only_filldir64() {
    let d = diff_patch("differ-readdir.patch", "fs/readdir.o");
    assert_eq!(
        changed(&d),
        vec!["filldir64"],
        "{}",
        serde_json::to_string_pretty(&d).unwrap()
    );
    assert!(d.refusals.is_empty(), "{:?}", d.refusals);
    // filldir64 writes to user memory: its exception table entries come along.
    let ex = d
        .tables
        .iter()
        .find(|t| t.section == "__ex_table")
        .expect("__ex_table");
    let f = d.functions.iter().find(|c| c.name == "filldir64").unwrap();
    assert!(
        ex.entries
            .iter()
            .filter(|e| e.owner == Some(f.symbol))
            .count()
            >= 4
    );
}

#[test]
fn meminfo_string_change_is_one_function() {
    let d = diff_patch("differ-meminfo-string.patch", "fs/proc/meminfo.o");
    assert_eq!(changed(&d), vec!["meminfo_proc_show"]);
    let c = d
        .functions
        .iter()
        .find(|c| c.name == "meminfo_proc_show")
        .unwrap();
    let insn = c.first_insn.as_ref().expect("first differing instruction");
    assert!(
        insn.orig.contains("mov") || insn.orig.contains("lea"),
        "{insn:?}"
    );
    assert!(d.refusals.is_empty());
}

#[test]
fn new_static_function_with_counter() {
    let d = diff_patch("differ-new-function.patch", "fs/proc/version.o");
    assert_eq!(
        names(&d, |c| matches!(c.verdict, Verdict::Changed { .. })),
        vec!["version_proc_show"]
    );
    let new = names(&d, |c| c.verdict == Verdict::New);
    assert!(new.contains(&"graft_count_calls".to_owned()), "{new:?}");
    assert!(new.iter().any(|n| n.starts_with("calls.")), "{new:?}");
    assert!(d.refusals.is_empty());
}

fn rules(d: &graft_diff::ObjectDiff) -> Vec<String> {
    d.refusals
        .iter()
        .map(|r| {
            format!(
                "{}:{}",
                serde_json::to_value(&r.rule).unwrap()["rule"]
                    .as_str()
                    .unwrap(),
                r.symbol
            )
        })
        .collect()
}

#[test]
fn init_change_is_refused() {
    let d = diff_patch("differ-init-change.patch", "fs/proc/meminfo.o");
    assert_eq!(rules(&d), vec!["init_code:proc_meminfo_init"]);
}

#[test]
fn global_initial_value_is_refused() {
    let d = diff_patch("differ-global-init.patch", "kernel/sys.o");
    assert_eq!(rules(&d), vec!["data_changed:overflowuid"]);
}

#[test]
fn struct_field_added_is_refused_with_shadow_variables() {
    let d = diff_patch("differ-struct-field.patch", "fs/dcache.o");
    let r = rules(&d);
    assert!(
        r.contains(&"data_changed:dentry_stat".to_owned()),
        "{r:?}\n{}",
        serde_json::to_string_pretty(
            &d.functions
                .iter()
                .filter(|c| c.verdict != Verdict::Same)
                .collect::<Vec<_>>()
        )
        .unwrap()
    );
    let msg = d
        .refusals
        .iter()
        .find(|x| x.symbol == "dentry_stat")
        .unwrap()
        .to_string();
    assert!(
        msg.contains("shadow variable") && msg.contains("48 to 56 bytes"),
        "{msg}"
    );
}

#[test]
fn bug_table_entry_travels_with_its_function() {
    let (_, patched, d) = diff_patch_objects("differ-bug-table.patch", "fs/proc/base.o");
    // gcc moves the BUG() path into the cold part; it travels with its parent.
    assert_eq!(
        changed(&d),
        vec!["proc_pid_cmdline_read", "proc_pid_cmdline_read.cold"]
    );
    let ours: Vec<_> = d
        .functions
        .iter()
        .filter(|c| c.name.starts_with("proc_pid_cmdline_read"))
        .map(|c| c.symbol)
        .collect();
    let bugs = d
        .tables
        .iter()
        .find(|t| t.section == "__bug_table")
        .expect("__bug_table");
    let attributed = bugs
        .entries
        .iter()
        .filter(|e| e.owner.is_some_and(|o| ours.contains(&o)))
        .count();
    // Counted independently from the raw table: entries whose site
    // relocation lands in the function's own sections. (How many BUG sites
    // gcc emits, it decides: BUG_ON(*pos < 0) may be duplicated on two paths.)
    let table = patched.section_by_name("__bug_table").expect("__bug_table");
    let in_function = table
        .relocs
        .iter()
        .filter(|r| {
            let name = match patched.reloc_target(r) {
                graft_elf::RelocTarget::SectionOffset(sec, _) => patched.section(sec).name.clone(),
                graft_elf::RelocTarget::Symbol(id) => patched
                    .symbol(id)
                    .section
                    .map_or_else(String::new, |sec| patched.section(sec).name.clone()),
            };
            name == ".text.proc_pid_cmdline_read" || name == ".text.unlikely.proc_pid_cmdline_read"
        })
        .count();
    assert!(in_function >= 1, "the function has BUG_ON(*pos < 0)");
    assert_eq!(attributed, in_function);
    assert!(d.refusals.is_empty(), "{:?}", d.refusals);
}

#[test]
fn line_shift_only_function_is_the_same() {
    // The patch adds lines above proc_create_reg's WARN. graft's patched
    // copy gets `#line` directives after each change, so the WARN keeps its
    // line: same, and no line moved at all (the differ's own masking of
    // line fields is covered by the line-shift fixtures).
    let d = diff_patch("differ-line-shift.patch", "fs/proc/generic.o");
    assert_eq!(changed(&d), vec!["proc_readdir_de"]);
    let reg = d
        .functions
        .iter()
        .find(|c| c.name == "proc_create_reg")
        .unwrap();
    assert_eq!(reg.verdict, Verdict::Same);
    assert_eq!(reg.note, None, "{reg:?}");
}
