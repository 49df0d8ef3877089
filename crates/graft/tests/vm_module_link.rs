//! graft links the patch module itself (kbuild's commands replayed, the
//! `.mod.c` written as modpost writes it), and that module is kbuild's in
//! everything the kernel reads of it: sections with their flags, sizes and
//! contents, symbols, relocations, `.modinfo`, `__versions`. kbuild's
//! `make M=… modules` stays the reference it is compared with. The module
//! graft linked loads live.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use graft_elf::Object;
use graft_kbuild::module::{Linked, Linker, ModuleSources};
use graft_lab::{run_scenario, Scenario};

fn cache_root() -> PathBuf {
    std::env::var_os("GRAFT_CACHE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/graft"))
}

/// Builds `patch` keeping the work directory; returns the module, the
/// work directory and the JSON summary.
fn build(
    lab: &graft_lab::Lab,
    patch: &str,
    name: &str,
    out: &Path,
) -> (PathBuf, serde_json::Value) {
    let (ko, s) = build_ok_with(
        lab,
        patch,
        name,
        out,
        &["--keep-work".into(), out.join("work").into()],
    );
    assert_eq!(s["module_linked_by"], "graft", "{s}");
    (ko, s)
}

/// What the kernel's module loader reads of a module: every allocated
/// section (with its relocations), `.modinfo`, `__versions`, and the symbol
/// table. One line per item, for a readable difference.
fn kernel_view(o: &Object) -> Vec<String> {
    let mut out = Vec::new();
    let read = ["__versions", ".modinfo", ".gnu.linkonce.this_module"];
    for s in o.sections.iter().skip(1) {
        if s.is_rela() || !(s.is_alloc() || read.contains(&s.name.as_str())) {
            continue;
        }
        out.push(format!(
            "section {} type {:#x} flags {:#x} align {} entsize {} size {} data {:02x?}",
            s.name, s.sh_type, s.flags, s.align, s.entsize, s.size, s.data
        ));
        for r in &s.relocs {
            out.push(format!(
                "  reloc {}+{:#x} type {} -> {} {:+}",
                s.name,
                r.offset,
                r.r_type,
                o.symbol(r.symbol).name,
                r.addend
            ));
        }
    }
    for sym in &o.symbols {
        out.push(format!(
            "symbol {:?} {:?} {:?} in {} value {:#x} size {} other {}",
            sym.name,
            sym.kind,
            sym.binding,
            sym.section.map_or_else(
                || format!("shndx {:#x}", sym.shndx),
                |id| o.section(id).name.clone()
            ),
            sym.value,
            sym.size,
            sym.other
        ));
    }
    out
}

/// Links the module of a kept work directory with kbuild and with graft,
/// in the same directory, and compares what the kernel reads of both.
fn graft_links_what_kbuild_links(lab: &graft_lab::Lab, work: &Path, name: &str) {
    let module = work.join("module");
    let stub_c = std::fs::read_to_string(module.join(format!("{name}-stub.c"))).unwrap();
    let mut objects: Vec<(String, Vec<u8>)> = std::fs::read_dir(&module)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|f| f.starts_with("graft-patch-") && f.ends_with(".o"))
        .map(|f| (f.clone(), std::fs::read(module.join(&f)).unwrap()))
        .collect();
    objects.sort();
    assert!(
        !objects.is_empty(),
        "no patch objects in {}",
        module.display()
    );
    let src = ModuleSources {
        name,
        stub_c: &stub_c,
        objects: &objects,
    };
    let symvers = graft_target::Exports::read(&lab.headers().join("Module.symvers")).unwrap();
    let exports = |n: &str| symvers.get(n).cloned();
    let dir = tempfile::tempdir_in(cache_root()).unwrap();
    let kbuild_ko = graft_kbuild::module::build(&lab.headers(), dir.path(), &src).unwrap();
    let kbuild = std::fs::read(&kbuild_ko).unwrap();
    for e in std::fs::read_dir(dir.path()).unwrap() {
        std::fs::remove_file(e.unwrap().path()).unwrap();
    }
    let linker = Linker::open(&lab.headers(), &cache_root(), &exports).unwrap();
    assert_eq!(linker.unsupported(), None);
    let ours = match linker.link(dir.path(), &src, &exports).unwrap() {
        Linked::Module(p) => std::fs::read(p).unwrap(),
        Linked::Unsupported(why) => panic!("graft does not link {name}: {why}"),
    };
    let view = |b: &[u8]| kernel_view(&Object::parse(b, Path::new(name)).unwrap());
    let (theirs, mine) = (view(&kbuild), view(&ours));
    let differences: Vec<String> = theirs
        .iter()
        .zip(&mine)
        .filter(|(a, b)| a != b)
        .map(|(a, b)| format!("kbuild: {a}\ngraft:  {b}"))
        .collect();
    assert!(
        differences.is_empty() && theirs.len() == mine.len(),
        "{name}: the module graft links differs from kbuild's ({} and {} items):\n{}",
        theirs.len(),
        mine.len(),
        differences.join("\n")
    );
    assert!(
        theirs.iter().any(|l| l.starts_with("section __versions")),
        "nothing of __versions compared"
    );
    // Linked in the same directory from the same inputs, the files are the same.
    assert!(kbuild == ours, "{name}: same view, other bytes");
}

#[test]
fn the_module_graft_links_is_kbuilds_and_loads_live() {
    let lab = lab();
    let out = tempfile::tempdir().unwrap();
    let (ko, _) = build(&lab, "version.patch", "link", out.path());
    graft_links_what_kbuild_links(&lab, &out.path().join("work"), "livepatch-link");

    let script = format!(
        r#"{SH_PRELUDE}
p=/sys/kernel/livepatch/livepatch_link
echo "BEFORE: $(cat /proc/version)"
insmod /livepatch-link.ko || echo "STEP: insmod failed"
wait_for '[ "$(cat $p/transition 2>/dev/null)" = 0 ]' && echo "STEP: transition done"
echo "DURING: $(cat /proc/version)"
echo 0 > $p/enabled
wait_for '[ ! -d $p ]' && echo "STEP: unpatched"
rmmod livepatch_link && echo "STEP: rmmod ok"
echo "AFTER: $(cat /proc/version)"
problems
true
"#
    );
    let run = run_scenario(
        &lab,
        &Scenario::new("module-link", script)
            .with_file("/livepatch-link.ko", &ko)
            .with_timeout(Duration::from_secs(180)),
    )
    .unwrap_or_else(|e| panic!("VM run failed: {e}"));
    let console = &run.console;
    let before = line_value(&run, "BEFORE:");
    assert!(before.starts_with("Linux version"), "console:\n{console}");
    assert_eq!(
        line_value(&run, "DURING:"),
        format!("graft_was_here {before}"),
        "console:\n{console}"
    );
    assert_eq!(line_value(&run, "AFTER:"), before, "console:\n{console}");
    assert_eq!(
        run.lines_with_prefix("STEP:"),
        vec!["STEP: transition done", "STEP: unpatched", "STEP: rmmod ok"],
        "console:\n{console}"
    );
    assert!(
        run.lines_with_prefix("KERNEL-PROBLEM:").is_empty(),
        "kernel warnings:\n{console}"
    );
}

/// A module that imports a symbol namespace and uses GPL-only exports:
/// `.modinfo`, `__versions` and modpost's namespace check as kbuild's.
#[test]
fn a_module_importing_a_namespace_is_linked_as_kbuild_links_it() {
    let lab = lab();
    let out = tempfile::tempdir().unwrap();
    build(&lab, "namespaced-export.patch", "linkns", out.path());
    graft_links_what_kbuild_links(&lab, &out.path().join("work"), "livepatch-linkns");
}
