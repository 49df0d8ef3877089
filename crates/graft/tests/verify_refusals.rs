//! Run-pre verification refuses builds whose original code is not the
//! target's: another configuration, another source version. And graft needs
//! no debuginfo package for any of it.

mod common;

use common::*;

fn refused(args: Vec<std::ffi::OsString>, expect: &[&str]) -> String {
    let out = graft(&args);
    let err = stderr(&out);
    assert_eq!(
        out.status.code(),
        Some(1),
        "expected a refusal; stderr:\n{err}"
    );
    let line = err
        .lines()
        .find(|l| l.starts_with("error:"))
        .unwrap_or_else(|| panic!("no error line:\n{err}"));
    for e in expect {
        assert!(line.contains(e), "expected {e:?} in {line:?}");
    }
    line.to_owned()
}

/// The tree is configured with return thunks off, and the config passed
/// says so, but the target kernel was built with them: `ret` where the
/// kernel has `jmp __x86_return_thunk`.
#[test]
fn tree_configured_differently_is_refused_naming_function_and_offset() {
    let lab = lab();
    let tree = variant_tree(&lab, "no-rethunk", |root| {
        let config = std::fs::read_to_string(root.join(".config")).unwrap();
        assert!(config.contains("CONFIG_RETHUNK=y"));
        replace_file(
            root,
            ".config",
            &config.replace("CONFIG_RETHUNK=y", "# CONFIG_RETHUNK is not set"),
        );
    });
    let dir = tempfile::tempdir().unwrap();
    let mut args = build_args(
        &lab,
        &repo_file("tests/patches/cmdline.patch"),
        "cfg",
        dir.path(),
    );
    set_arg(&mut args, "--tree", tree.clone());
    set_arg(&mut args, "--config", tree.join(".config"));
    let line = refused(
        args,
        &[
            "cmdline_proc_show differs from the target kernel's code at +0x",
            "hint:",
        ],
    );
    // The message quotes both instructions: ours, then the kernel's. (The
    // line always holds `__x86_return_thunk`, so a bare `ret` substring
    // would prove nothing.)
    let quoted = backquoted(&line);
    assert_eq!(quoted.len(), 2, "two instructions quoted: {line}");
    assert_eq!(
        quoted[0].split_whitespace().next(),
        Some("ret"),
        "ours is the plain return: {line}"
    );
    assert!(
        quoted[1].starts_with("jmp") && quoted[1].contains("__x86_return_thunk"),
        "the kernel's is the jump to the return thunk: {line}"
    );
    assert!(!dir.path().join("livepatch-cfg.ko").exists());
}

/// The spans of `line` between backquotes, in order.
fn backquoted(line: &str) -> Vec<&str> {
    line.split('`').skip(1).step_by(2).collect()
}

#[test]
fn backquoted_spans() {
    assert_eq!(
        backquoted("ours `ret`, the kernel's `jmp x`; `y"),
        ["ret", "jmp x", "y"]
    );
    assert!(backquoted("none").is_empty());
}

/// The lab tree with `cmdline_proc_show` as another version of the source has it.
fn other_version_tree(lab: &graft_lab::Lab) -> std::path::PathBuf {
    variant_tree(lab, "other-version", |root| {
        let rel = "fs/proc/cmdline.c";
        let text = std::fs::read_to_string(root.join(rel)).unwrap();
        let older = text.replace(
            "\tseq_puts(m, saved_command_line);",
            "\tseq_printf(m, \"%s\", saved_command_line);",
        );
        assert_ne!(older, text);
        replace_file(root, rel, &older);
    })
}

/// The cmdline fix with zero lines of context: it still applies to the
/// other version.
fn nocontext_patch(dir: &std::path::Path) -> std::path::PathBuf {
    patch_file(
        dir,
        "nocontext.patch",
        "--- a/fs/proc/cmdline.c\n+++ b/fs/proc/cmdline.c\n@@ -10 +10 @@\n-\tseq_putc(m, '\\n');\n+\tseq_puts(m, \" graft_was_here\\n\");\n",
    )
}

#[test]
fn tree_of_another_source_version_is_refused() {
    let lab = lab();
    let tree = other_version_tree(&lab);
    let dir = tempfile::tempdir().unwrap();
    let p = nocontext_patch(dir.path());
    let mut args = build_args(&lab, &p, "ver", dir.path());
    set_arg(&mut args, "--tree", tree);
    let line = refused(
        args,
        &["cmdline_proc_show", "the target kernel's code", "hint:"],
    );
    // The first instruction that differs: seq_printf takes the command line
    // as its third argument, seq_puts as its second.
    let (ours, theirs) = line
        .split_once("ours `")
        .and_then(|(_, rest)| rest.split_once("`, the kernel's `"))
        .map(|(o, rest)| (o, rest.split('`').next().unwrap_or_default()))
        .unwrap_or_else(|| panic!("no instructions in {line}"));
    assert!(
        ours.contains("%rdx") && ours.ends_with("→ saved_command_line"),
        "{line}"
    );
    assert!(
        theirs.contains("%rsi") && theirs.ends_with("→ saved_command_line"),
        "{line}"
    );
    assert!(!dir.path().join("livepatch-ver.ko").exists());
}

/// `--no-verify` builds what verification refuses (the tree of another
/// source version), without reading the image at all, and proves nothing:
/// no function is listed as verified. What only verification can decide is
/// then refused, not guessed: which of two same-named functions a call
/// reaches.
#[test]
fn no_verify_skips_the_check_and_guesses_nothing() {
    let lab = lab();
    let tree = other_version_tree(&lab);
    let dir = tempfile::tempdir().unwrap();
    let p = nocontext_patch(dir.path());
    let mut args = build_args(&lab, &p, "nover", dir.path());
    set_arg(&mut args, "--tree", tree);
    // Not read with --no-verify.
    set_arg(&mut args, "--image", dir.path().join("no-such-vmlinuz"));
    args.insert(0, "--json".into());
    args.push("--no-verify".into());
    let out = graft(&args);
    assert!(out.status.success(), "{}", stderr(&out));
    let s: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(s["verified"], serde_json::json!([]), "{s}");
    assert_eq!(
        s["files"][0]["changed"],
        serde_json::json!(["cmdline_proc_show"])
    );
    assert!(dir.path().join("livepatch-nover.ko").is_file());

    let mut args = build_args(
        &lab,
        &repo_file("tests/patches/smt-active-calls-control.patch"),
        "smtnv",
        dir.path(),
    );
    args.push("--no-verify".into());
    let line = refused(
        args,
        &["control_show", "occurs 2 times", "cannot tell which one"],
    );
    assert!(line.contains("hint:"), "{line}");
    assert!(!dir.path().join("livepatch-smtnv.ko").exists());
}

#[test]
fn no_debuginfo_package_is_installed() {
    let out = std::process::Command::new("dpkg-query")
        .args(["-W", "-f", "${Package} ${Status}\n", "linux-image-*-dbg"])
        .output()
        .unwrap();
    let installed: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.ends_with("install ok installed"))
        .map(str::to_owned)
        .collect();
    assert!(
        installed.is_empty(),
        "graft must not need debuginfo, yet {installed:?} is installed"
    );
}

/// Another machine's kernel, described by a directory, booted with KASLR:
/// every address in its symbol table is shifted. Verification works on
/// addresses relative to `_text`, so the build is proven all the same.
#[test]
fn offline_target_directory_with_kaslr_shifted_symbols() {
    let lab = lab();
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("target");
    std::fs::create_dir(&target).unwrap();
    const SHIFT: u64 = 0x1e20_0000;
    let table = std::fs::read_to_string(lab.kallsyms()).unwrap();
    let shifted: String = table
        .lines()
        .map(|l| {
            let (addr, rest) = l.split_once(' ').unwrap();
            let a = u64::from_str_radix(addr, 16).unwrap();
            format!("{:016x} {rest}\n", a.wrapping_add(SHIFT))
        })
        .collect();
    std::fs::write(target.join("kallsyms"), shifted).unwrap();
    std::fs::write(target.join("release"), format!("{}\n", lab.release)).unwrap();
    std::os::unix::fs::symlink(lab.config(), target.join("config")).unwrap();
    std::os::unix::fs::symlink(lab.vmlinuz(), target.join("vmlinuz")).unwrap();
    std::os::unix::fs::symlink(lab.modules_dir(), target.join("modules")).unwrap();
    let out = dir.path().join("out");
    let args: Vec<std::ffi::OsString> = vec![
        "--json".into(),
        "build".into(),
        repo_file("tests/patches/cmdline.patch").into(),
        "--tree".into(),
        lab.source_tree().into(),
        "--name".into(),
        "kaslr".into(),
        "--target".into(),
        target.into(),
        "--output".into(),
        out.clone().into(),
    ];
    let built = graft(&args);
    assert!(built.status.success(), "{}", stderr(&built));
    let summary: serde_json::Value = serde_json::from_slice(&built.stdout).unwrap();
    let real = graft_target::SymbolTable::read(&lab.kallsyms())
        .unwrap()
        .lookup("vmlinux", "cmdline_proc_show")[0]
        .address;
    assert_eq!(summary["verified"][0]["function"], "cmdline_proc_show");
    assert_eq!(
        summary["verified"][0]["address"].as_u64(),
        Some(real + SHIFT)
    );
    assert!(out.join("livepatch-kaslr.ko").is_file());
}
