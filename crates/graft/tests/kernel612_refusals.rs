//! Debian's 6.12 (bookworm-backports): what graft refuses, and why. IBT:
//! taking the address of a function whose ENDBR the kernel seals at boot;
//! run-pre verification: a tree configured without IBT, another version of
//! a function's source.

mod common;
mod kernel612;
mod ops;

use common::*;
use graft_debian::OtherSuite;

fn lab612() -> graft_lab::Lab {
    kernel612::suite_lab(OtherSuite::Backports)
}

/// The one `error:` line of a refused build, and its exit code.
fn refusal(args: Vec<std::ffi::OsString>) -> (i32, String) {
    let out = graft(&args);
    let err = stderr(&out);
    let line = err
        .lines()
        .find(|l| l.starts_with("error:"))
        .unwrap_or_else(|| panic!("no error line:\n{err}"))
        .to_owned();
    (out.status.code().unwrap_or(-1), line)
}

/// fs/proc/stat.c's global `get_idle_time` is only ever called directly
/// in vmlinux, so objtool listed its ENDBR for sealing and the kernel
/// poisons it at boot. A patch calling it through a pointer would fault on
/// a CPU that enforces IBT (QEMU's TCG does not, so the rule is what is
/// tested): refused, naming function, offset and rule. The file's static
/// `get_iowait_time` has no ENDBR in the kernel at all (nothing takes its
/// address); taken in the patched file, gcc gives it one, so the differ
/// sees it changed and the patch carries its own copy, which the pointer
/// reaches: that one builds, and the kernel's copy is never reached
/// indirectly.
#[test]
fn address_of_a_sealed_function_is_refused_and_of_an_unsealed_one_builds() {
    let lab = lab612();
    let image = graft_target::KernelImage::read(&lab.vmlinuz()).unwrap();
    let sealed = image.sealed_endbr();
    let table = graft_target::SymbolTable::read(&lab.kallsyms()).unwrap();
    let addr = |n: &str| table.lookup("vmlinux", n)[0].address;
    assert!(sealed.len() > 1000, "{} sealed ENDBRs", sealed.len());
    // Every sealed place is a function's start, as objtool lists them.
    let starts: std::collections::BTreeSet<u64> = table
        .entries()
        .iter()
        .filter(|e| e.is_text())
        .map(|e| e.address)
        .collect();
    assert!(sealed.iter().all(|a| starts.contains(a)));
    assert!(sealed.contains(&addr("get_idle_time")));
    assert!(!sealed.contains(&addr("get_iowait_time")));
    assert_ne!(
        image.bytes(addr("get_iowait_time"), 4),
        Some(&[0xf3, 0x0f, 0x1e, 0xfa][..]),
        "get_iowait_time has no ENDBR in the kernel"
    );

    let dir = tempfile::tempdir().unwrap();
    let args = build_args(
        &lab,
        &repo_file("tests/patches/6.12/ibt-sealed-address.patch"),
        "sealed",
        dir.path(),
    );
    let (code, line) = refusal(args);
    assert_eq!(code, 3, "{line}");
    for part in [
        "fs/proc/stat.o: show_stat takes the address of get_idle_time (at +0x",
        "[rule: ibt-sealed]",
        ".ibt_endbr_seal",
        "Missing ENDBR",
        "hint: call get_idle_time directly, or from a new function in the patch",
    ] {
        assert!(line.contains(part), "expected {part:?} in {line}");
    }
    assert!(!dir.path().join("livepatch-sealed.ko").exists());

    let (ko, summary) = build_ok(&lab, "6.12/ibt-address-taken.patch", "taken", dir.path());
    assert_eq!(
        summary["files"][0]["changed"],
        serde_json::json!(["show_stat", "get_iowait_time"]),
        "{summary}"
    );
    // The carried copy starts with its ENDBR; nothing reaches the kernel's.
    let m = graft_elf::Object::read(&ko).unwrap();
    let f = m.functions().find(|f| f.name == "get_iowait_time").unwrap();
    let code = &m.section(f.section.unwrap()).data[f.value as usize..][..4];
    assert_eq!(code, [0xf3, 0x0f, 0x1e, 0xfa]);
    assert!(kernel612::klp_symbols(&ko)
        .iter()
        .all(|s| !s.contains("get_iowait_time")));
}

/// The tree is configured without IBT, and the config passed says so, but
/// the target kernel was built with it: no `endbr64` at the function's
/// start in graft's copy.
#[test]
fn tree_configured_without_ibt_is_refused_naming_function_and_offset() {
    let lab = lab612();
    let tree = variant_tree(&lab, "no-ibt", |root| {
        let config = std::fs::read_to_string(root.join(".config")).unwrap();
        assert!(config.contains("CONFIG_X86_KERNEL_IBT=y"));
        replace_file(
            root,
            ".config",
            &config.replace(
                "CONFIG_X86_KERNEL_IBT=y",
                "# CONFIG_X86_KERNEL_IBT is not set",
            ),
        );
    });
    let dir = tempfile::tempdir().unwrap();
    let mut args = build_args(
        &lab,
        &repo_file("tests/patches/cmdline.patch"),
        "noibt",
        dir.path(),
    );
    set_arg(&mut args, "--tree", tree.clone());
    set_arg(&mut args, "--config", tree.join(".config"));
    let (code, line) = refusal(args);
    assert_eq!(code, 1, "{line}");
    assert!(
        line.contains("cmdline_proc_show differs from the target kernel's code at +0x0:"),
        "{line}"
    );
    assert!(line.contains("the kernel's `endbr64"), "{line}");
    assert!(!dir.path().join("livepatch-noibt.ko").exists());
}

/// `cmdline_proc_show` as another version of the source has it.
#[test]
fn tree_of_another_source_version_is_refused() {
    let lab = lab612();
    let tree = variant_tree(&lab, "other-version", |root| {
        let rel = "fs/proc/cmdline.c";
        let text = std::fs::read_to_string(root.join(rel)).unwrap();
        let other = text.replace(
            "\tseq_puts(m, saved_command_line);",
            "\tseq_printf(m, \"%s\", saved_command_line);",
        );
        assert_ne!(other, text);
        replace_file(root, rel, &other);
    });
    let dir = tempfile::tempdir().unwrap();
    // Zero lines of context: the fix itself still applies to this version.
    let p = patch_file(
        dir.path(),
        "nocontext.patch",
        "--- a/fs/proc/cmdline.c\n+++ b/fs/proc/cmdline.c\n@@ -10 +10 @@\n-\tseq_putc(m, '\\n');\n+\tseq_puts(m, \" graft_was_here\\n\");\n",
    );
    let mut args = build_args(&lab, &p, "ver", dir.path());
    set_arg(&mut args, "--tree", tree);
    let (code, line) = refusal(args);
    assert_eq!(code, 1, "{line}");
    assert!(
        line.contains("cmdline_proc_show differs from the target kernel's code at +0x"),
        "{line}"
    );
    // seq_printf takes the command line as its third argument, seq_puts as
    // its second.
    let (ours, theirs) = line
        .split_once("ours `")
        .and_then(|(_, rest)| rest.split_once("`, the kernel's `"))
        .map(|(o, rest)| (o, rest.split('`').next().unwrap_or_default()))
        .unwrap_or_else(|| panic!("no instructions in {line}"));
    assert!(ours.contains("%rdx"), "{line}");
    assert!(theirs.contains("%rsi"), "{line}");
    assert!(!dir.path().join("livepatch-ver.ko").exists());
}
