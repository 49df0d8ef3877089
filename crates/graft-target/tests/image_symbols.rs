//! The symbol table read from a kernel image's own kallsyms tables equals
//! `/proc/kallsyms` of that kernel booted with `nokaslr`, captured by the
//! lab, for every kernel release the lab holds (at least two ABIs when the
//! lab has them: `graft-lab setup --release`).
//!
//! `/proc/kallsyms` lists, after vmlinux's table, symbols the kernel makes
//! at run time: module symbols, ftrace and BPF trampolines, BPF programs,
//! kprobe instruction pages (`kernel/kallsyms.c`: `get_ksymbol_mod`,
//! `get_ksymbol_ftrace_mod`, `get_ksymbol_bpf`, `get_ksymbol_kprobe`). Each
//! is printed with its owner in brackets (`\t[ext4]`, `\t[bpf]`,
//! `\t[__builtin__ftrace]`, `\t[__builtin__kprobes]`); none can be in the
//! image, so lines with an owner are the only ones left out. (The lab's
//! busybox guest loads no module and no BPF program, so today there are
//! none; per-cpu symbols are in the image's table, as absolute values.)

use graft_lab::Lab;
use graft_target::{KallsymsEntry, SymbolTable};

fn relative(t: &[KallsymsEntry]) -> Vec<(String, char, i128)> {
    let text = t
        .iter()
        .find(|e| e.name == "_text")
        .expect("a kernel table has _text")
        .address as i128;
    t.iter()
        .map(|e| (e.name.clone(), e.kind, e.address as i128 - text))
        .collect()
}

fn check(lab: &Lab) {
    let captured = std::fs::read_to_string(lab.kallsyms()).unwrap();
    let captured = SymbolTable::parse(&captured).unwrap();
    let runtime: Vec<&KallsymsEntry> = captured
        .entries()
        .iter()
        .filter(|e| e.module.is_some())
        .collect();
    let want: Vec<KallsymsEntry> = captured
        .entries()
        .iter()
        .filter(|e| e.module.is_none())
        .cloned()
        .collect();
    let got = SymbolTable::read(&lab.vmlinuz()).unwrap_or_else(|e| panic!("{}: {e}", lab.release));
    let (want, got) = (relative(&want), relative(got.entries()));
    let first_difference = want
        .iter()
        .zip(&got)
        .position(|(a, b)| a != b)
        .map(|i| format!("entry {i}: captured {:?}, image {:?}", want[i], got[i]));
    assert_eq!(
        (want.len(), first_difference),
        (got.len(), None),
        "{}: {} captured entries, {} from the image ({} run-time entries left out)",
        lab.release,
        want.len(),
        got.len(),
        runtime.len()
    );
    // Text and data both: the table is the whole of vmlinux's.
    for kind in ['T', 't', 'D', 'd', 'B', 'b', 'R', 'r', 'A'] {
        assert!(
            got.iter().any(|e| e.1 == kind),
            "{}: no {kind}",
            lab.release
        );
    }
}

#[test]
fn image_symbols_equal_captured_kallsyms_of_every_lab_release() {
    let root = Lab::default_root();
    let releases = Lab::releases(&root).unwrap();
    assert!(
        releases.len() >= 2,
        "the lab holds {releases:?}; two ABIs are checked: run `graft-lab setup --release previous`"
    );
    for release in &releases {
        check(&Lab::open_release(&root, release).unwrap());
    }
}
