//! `graft build` on bad input: a one-line cause with a hint, a non-zero
//! exit code, and the kernel tree exactly as it was.

mod common;

use std::ffi::OsString;
use std::path::Path;

use common::*;

/// Runs `args`, expects failure with `expect` in a single `error:` line that
/// carries a hint, and checks `tree` was not modified.
fn assert_refused(args: &[OsString], tree: &Path, expect: &str) {
    let before = fingerprint(tree);
    let out = graft(args);
    let err = stderr(&out);
    assert!(!out.status.success(), "graft succeeded; stderr:\n{err}");
    assert_eq!(out.status.code(), Some(1), "exit code; stderr:\n{err}");
    let lines: Vec<&str> = err.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(lines.len(), 1, "expected one error line; stderr:\n{err}");
    let line = lines[0];
    assert!(line.contains(expect), "expected {expect:?} in {line:?}");
    assert!(line.contains("hint:"), "no hint in {line:?}");
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(fingerprint(tree), before, "the kernel tree was modified");
}

#[test]
fn patch_that_does_not_apply() {
    let lab = lab();
    let dir = tempfile::tempdir().unwrap();
    let p = patch_file(
        dir.path(),
        "stale.patch",
        "--- a/fs/proc/cmdline.c\n+++ b/fs/proc/cmdline.c\n@@ -7,7 +7,7 @@\n static int cmdline_proc_show(struct seq_file *m, void *v)\n {\n-\tseq_puts(m, no_such_line);\n+\tseq_puts(m, other_line);\n \tseq_putc(m, '\\n');\n \treturn 0;\n }\n",
    );
    assert_refused(
        &build_args(&lab, &p, "stale", dir.path()),
        &lab.source_tree(),
        "does not apply",
    );
    assert!(!dir.path().join("livepatch-stale.ko").exists());
}

#[test]
fn directory_that_is_not_a_kernel_tree() {
    let lab = lab();
    let dir = tempfile::tempdir().unwrap();
    let fake = dir.path().join("tree");
    std::fs::create_dir(&fake).unwrap();
    std::fs::write(fake.join("Makefile"), "all:\n\ttrue\n").unwrap();
    let mut args = build_args(
        &lab,
        &repo_file("tests/patches/cmdline.patch"),
        "x",
        dir.path(),
    );
    set_arg(&mut args, "--tree", fake.clone());
    assert_refused(&args, &fake, "not a kernel source tree");
}

#[test]
fn patch_touching_only_assembly() {
    let lab = lab();
    let dir = tempfile::tempdir().unwrap();
    let p = patch_file(
        dir.path(),
        "asm.patch",
        "--- a/arch/x86/lib/memcpy_64.S\n+++ b/arch/x86/lib/memcpy_64.S\n@@ -1,2 +1,3 @@\n /* SPDX-License-Identifier: GPL-2.0-only */\n+/* graft */\n /* Copyright 2002 Andi Kleen */\n",
    );
    assert_refused(
        &build_args(&lab, &p, "asm", dir.path()),
        &lab.source_tree(),
        "assembly is not supported",
    );
}

#[test]
fn patch_touching_a_file_outside_the_kernel_build() {
    let lab = lab();
    let dir = tempfile::tempdir().unwrap();
    let p = patch_file(
        dir.path(),
        "tools.patch",
        "--- a/tools/perf/builtin-version.c\n+++ b/tools/perf/builtin-version.c\n@@ -1,2 +1,3 @@\n // SPDX-License-Identifier: GPL-2.0\n+/* graft */\n #include \"builtin.h\"\n",
    );
    assert_refused(
        &build_args(&lab, &p, "tools", dir.path()),
        &lab.source_tree(),
        "changes no C file of the kernel build",
    );
}

#[test]
fn c_file_not_built_into_the_target_kernel() {
    let lab = lab();
    let dir = tempfile::tempdir().unwrap();
    // CONFIG_X86_32 only: does not compile for x86-64.
    let p = patch_file(
        dir.path(),
        "bigsmp.patch",
        "--- a/arch/x86/kernel/apic/bigsmp_32.c\n+++ b/arch/x86/kernel/apic/bigsmp_32.c\n@@ -1,2 +1,3 @@\n // SPDX-License-Identifier: GPL-2.0\n+/* graft */\n /*\n",
    );
    assert_refused(
        &build_args(&lab, &p, "bigsmp", dir.path()),
        &lab.source_tree(),
        "not part of this kernel's build",
    );
}

/// drivers/gpu/drm/bridge/panel.c is part of the drm_kms_helper module,
/// listed in drivers/gpu/drm/Makefile (`drm_kms_helper-$(CONFIG_DRM_PANEL_BRIDGE)
/// += bridge/panel.o`): kbuild's single-object build compiles it as
/// built-in code with other flags than the kernel's. Refused with its rule,
/// not reported as "not built into the kernel".
#[test]
fn part_of_a_module_listed_by_another_directory_is_refused_with_its_rule() {
    let lab = lab();
    let dir = tempfile::tempdir().unwrap();
    let out = graft(&build_args(
        &lab,
        &repo_file("tests/patches/composite-module.patch"),
        "composite",
        dir.path(),
    ));
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(3), "exit code; stderr:\n{err}");
    let line = err.lines().find(|l| l.starts_with("error:")).unwrap_or("");
    assert!(
        line.starts_with("error: drivers/gpu/drm/bridge/panel.c: the kernel's build compiles it as part of a module")
            && line.contains("[rule: composite-module]"),
        "{err}"
    );
    assert!(!dir.path().join("livepatch-composite.ko").exists());
}

#[test]
fn patch_that_does_not_compile_says_so_with_the_first_error() {
    let lab = lab();
    let dir = tempfile::tempdir().unwrap();
    let p = patch_file(
        dir.path(),
        "broken.patch",
        "--- a/fs/proc/cmdline.c\n+++ b/fs/proc/cmdline.c\n@@ -7,7 +7,7 @@\n static int cmdline_proc_show(struct seq_file *m, void *v)\n {\n \tseq_puts(m, saved_command_line);\n-\tseq_putc(m, '\\n');\n+\tseq_putc(m, graft_undeclared_thing);\n \treturn 0;\n }\n \n",
    );
    assert_refused(
        &build_args(&lab, &p, "broken", dir.path()),
        &lab.source_tree(),
        "the patch does not compile: fs/proc/cmdline.c:10",
    );
}

#[test]
fn missing_symbol_table() {
    let lab = lab();
    let dir = tempfile::tempdir().unwrap();
    let mut args = build_args(
        &lab,
        &repo_file("tests/patches/cmdline.patch"),
        "x",
        dir.path(),
    );
    set_arg(&mut args, "--symbols", dir.path().join("no-such-kallsyms"));
    assert_refused(&args, &lab.source_tree(), "cannot read the symbol table");
}

#[test]
fn target_built_by_another_compiler() {
    let lab = lab();
    let dir = tempfile::tempdir().unwrap();
    let config = std::fs::read_to_string(lab.config()).unwrap();
    let line = config
        .lines()
        .find(|l| l.starts_with("CONFIG_CC_VERSION_TEXT="))
        .unwrap();
    let other = config.replace(
        line,
        "CONFIG_CC_VERSION_TEXT=\"gcc-13 (Debian 13.2.0-25) 13.2.0\"",
    );
    let cfg = patch_file(dir.path(), "config", &other);
    let mut args = build_args(
        &lab,
        &repo_file("tests/patches/cmdline.patch"),
        "cc",
        dir.path(),
    );
    set_arg(&mut args, "--config", cfg);
    assert_refused(
        &args,
        &lab.source_tree(),
        "was built with \"gcc-13 (Debian 13.2.0-25) 13.2.0\"",
    );
}
