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
    args[3] = tree.clone().into();
    args[7] = tree.join(".config").into();
    let line = refused(
        args,
        &[
            "cmdline_proc_show differs from the target kernel's code at +0x",
            "hint:",
        ],
    );
    assert!(
        line.contains("ret"),
        "the differing instruction is the return: {line}"
    );
    assert!(!dir.path().join("livepatch-cfg.ko").exists());
}

/// `cmdline_proc_show` as another version of the source has it.
#[test]
fn tree_of_another_source_version_is_refused() {
    let lab = lab();
    let tree = variant_tree(&lab, "other-version", |root| {
        let rel = "fs/proc/cmdline.c";
        let text = std::fs::read_to_string(root.join(rel)).unwrap();
        let older = text.replace(
            "\tseq_puts(m, saved_command_line);",
            "\tseq_printf(m, \"%s\", saved_command_line);",
        );
        assert_ne!(older, text);
        replace_file(root, rel, &older);
    });
    let dir = tempfile::tempdir().unwrap();
    // Zero lines of context: the fix itself still applies to this version.
    let p = patch_file(
        dir.path(),
        "nocontext.patch",
        "--- a/fs/proc/cmdline.c\n+++ b/fs/proc/cmdline.c\n@@ -10 +10 @@\n-\tseq_putc(m, '\\n');\n+\tseq_puts(m, \" graft_was_here\\n\");\n",
    );
    let mut args = build_args(&lab, &p, "ver", dir.path());
    args[3] = tree.into();
    refused(
        args,
        &["cmdline_proc_show", "the target kernel's code", "hint:"],
    );
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
