//! Run-pre verification of real Debian objects that differ from the
//! distro kernel's code in how it was linked, not in what it is:
//! - the distro kernel was compiled without `-ffunction-sections`, so a jump
//!   from one function to another of the same file was resolved by the
//!   assembler, in 2 bytes where the target is near (kernel/reboot.c's
//!   `deferred_cad` → `kernel_restart`, kernel/audit.c's
//!   `audit_log_untrustedstring` → `audit_log_n_untrustedstring`);
//! - gcc emitted byte-identical copies of a helper in many files
//!   (`cpumask_weight.constprop.0`, called by fs/aio.c's `ioctx_alloc`);
//! - a function shares its name with data symbols, which livepatch counts
//!   too (fs/namei.c's `set_root`).
//!
//! `vm_verify_matching.rs` loads these patches in the lab kernel.

mod common;

use common::*;
use graft_target::{KernelImage, SymbolTable};
use iced_x86::{Decoder, DecoderOptions, Mnemonic};

fn verified<'a>(summary: &'a serde_json::Value, function: &str) -> &'a serde_json::Value {
    summary["verified"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["function"] == function)
        .unwrap_or_else(|| panic!("{function} not verified: {summary}"))
}

/// Whether the kernel's copy of `function` holds a 2-byte `jmp` to `to`:
/// the premise of the test, read from the image independently of graft.
fn kernel_has_short_jump(function: &str, to: &str) -> bool {
    let lab = lab();
    let symbols = SymbolTable::read(&lab.kallsyms()).unwrap();
    let image = KernelImage::read(&lab.vmlinuz()).unwrap();
    let delta = symbols.lookup("vmlinux", "_text")[0].address - image.text_start;
    let at = symbols.lookup("vmlinux", function)[0].address;
    let target = symbols.lookup("vmlinux", to)[0].address;
    let code = image.bytes_upto(at - delta, 256).unwrap();
    Decoder::with_ip(64, code, at, DecoderOptions::NONE)
        .into_iter()
        .take_while(|i| !i.is_invalid())
        .any(|i| i.mnemonic() == Mnemonic::Jmp && i.len() == 2 && i.near_branch_target() == target)
}

#[test]
fn a_short_jump_to_another_function_of_the_file_verifies() {
    let lab = lab();
    let table = SymbolTable::read(&lab.kallsyms()).unwrap();
    for (patch, function, callee) in [
        ("verify-reboot-cad.patch", "deferred_cad", "kernel_restart"),
        (
            "verify-audit-key.patch",
            "audit_log_untrustedstring",
            "audit_log_n_untrustedstring",
        ),
    ] {
        assert!(
            kernel_has_short_jump(function, callee),
            "the lab kernel's {function} has no 2-byte jump to {callee}: this test no longer tests what it claims"
        );
        let out = tempfile::tempdir().unwrap();
        let (ko, summary) = build_ok(&lab, patch, "relaxed", out.path());
        assert!(ko.is_file());
        let m = verified(&summary, function);
        assert_eq!(
            m["address"].as_u64(),
            Some(table.lookup("vmlinux", function)[0].address),
            "{patch}: {summary}"
        );
        assert_eq!(m["sympos"], 0, "{patch}");
        assert!(m.get("choice").is_none(), "{patch}: {m}");
    }
}

/// fs/aio.c's copy of `cpumask_weight.constprop.0` is found independently
/// of graft: it is the one between two functions only fs/aio.c has.
#[test]
fn of_identical_copies_the_files_own_is_chosen_and_said_why() {
    let lab = lab();
    let table = SymbolTable::read(&lab.kallsyms()).unwrap();
    let copies: Vec<u64> = table
        .lookup("vmlinux", "cpumask_weight.constprop.0")
        .iter()
        .map(|e| e.address)
        .collect();
    assert!(copies.len() > 1, "the scenario needs several copies");
    let (lo, hi) = (
        table.lookup("vmlinux", "aio_ring_mmap")[0].address,
        table.lookup("vmlinux", "ioctx_alloc")[0].address,
    );
    let own: Vec<usize> = (0..copies.len())
        .filter(|&i| copies[i] > lo && copies[i] < hi)
        .collect();
    assert_eq!(
        own.len(),
        1,
        "fs/aio.c has one copy between {lo:#x} and {hi:#x}"
    );
    let sympos = own[0] + 1;

    let out = tempfile::tempdir().unwrap();
    let (ko, summary) = build_ok(&lab, "verify-aio-limit.patch", "copies", out.path());
    let m = verified(&summary, "cpumask_weight.constprop.0");
    assert_eq!(m["address"].as_u64(), Some(copies[own[0]]), "{summary}");
    assert_eq!(m["sympos"].as_u64(), Some(sympos as u64));
    let why = m["choice"].as_str().expect("the choice is explained");
    for needle in [
        format!("{} copies in the target match", copies.len()),
        "identical code reaching the same symbols".into(),
        "fs/aio.o's".into(),
        format!("sympos {sympos}"),
    ] {
        assert!(why.contains(&needle), "no {needle:?} in {why:?}");
    }
    // ioctx_alloc reaches that copy through a klp relocation naming it.
    let module = graft_elf::Object::read(&ko).unwrap();
    let klp = format!(".klp.sym.vmlinux.cpumask_weight.constprop.0,{sympos}");
    assert!(
        module.symbols.iter().any(|s| s.name == klp),
        "no {klp} in the module"
    );
}

/// `set_root` is one function and three data symbols in kallsyms, and
/// livepatch counts them all: `sympos` 0 would be refused at load as
/// ambiguous.
#[test]
fn sympos_counts_every_symbol_of_the_name() {
    let lab = lab();
    let table = SymbolTable::read(&lab.kallsyms()).unwrap();
    let all = table.lookup("vmlinux", "set_root");
    let text: Vec<usize> = (0..all.len()).filter(|&i| all[i].is_text()).collect();
    assert!(
        all.len() > 1 && text.len() == 1,
        "the scenario needs one function and data of that name"
    );
    let sympos = text[0] + 1;
    let out = tempfile::tempdir().unwrap();
    let (ko, summary) = build_ok(&lab, "verify-namei-set-root.patch", "setroot", out.path());
    assert_eq!(
        verified(&summary, "set_root")["sympos"].as_u64(),
        Some(sympos as u64)
    );
    let module = graft_elf::Object::read(&ko).unwrap();
    let klp = format!(".klp.sym.vmlinux.set_root,{sympos}");
    assert!(
        module.symbols.iter().any(|s| s.name == klp),
        "no {klp} in the module"
    );
}
