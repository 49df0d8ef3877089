//! Debian kernels as targets, without a VM: what `graft kernels` lists, the
//! one-line errors for a kernel or a source version apt does not serve, and
//! a tree prepared with plain `gcc` where the kernel names `gcc-12`.

mod common;

use std::process::Command;

use common::*;

#[test]
fn kernels_lists_the_lab_kernels_as_served_and_downloadable() {
    let labs = lab_kernels();
    let cache = kernel_cache(&labs);
    let out = graft(&[
        "--json".into(),
        "kernels".into(),
        "--cache-dir".into(),
        cache.into(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    for l in &labs {
        let row = rows
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["release"] == l.release.as_str())
            .unwrap_or_else(|| panic!("{} not listed: {rows:#}", l.release));
        assert_eq!(row["debian_version"], l.debian_version.as_str());
        assert_eq!(row["served"], true);
        assert_eq!(row["availability"]["state"], "downloadable", "{row:#}");
        assert_eq!(
            row["cached"],
            serde_json::json!(["image", "headers", "source"]),
            "{row:#}"
        );
    }
}

#[test]
fn a_kernel_apt_does_not_list_is_one_line_error() {
    let lab = lab();
    let (version, rest) = lab.release.split_once('-').unwrap();
    let flavour = rest.split_once('-').unwrap().1;
    let missing = format!("{version}-9999-{flavour}");
    let out = tempfile::tempdir().unwrap();
    let r = graft(&[
        "build".into(),
        repo_file("tests/patches/cmdline.patch").into(),
        "--name".into(),
        "x".into(),
        "--kernel".into(),
        missing.clone().into(),
        "--output".into(),
        out.path().into(),
    ]);
    assert_eq!(r.status.code(), Some(1), "{}", stderr(&r));
    let err = stderr(&r);
    assert!(
        err.contains(&format!("apt does not list kernel {missing}")),
        "{err}"
    );
    assert!(err.contains("graft kernels"), "{err}");
}

/// A target whose image says it is a Debian version apt has no source of:
/// the image is a small ELF carrying the kernel banner.
#[test]
fn a_source_version_apt_does_not_serve_is_one_line_error_naming_tree() {
    let lab = lab();
    let dir = tempfile::tempdir().unwrap();
    let c = dir.path().join("banner.c");
    std::fs::write(
        &c,
        format!(
            "const char banner[] = \"Linux version {} (debian-kernel@lists.debian.org) (gcc-12) #1 SMP PREEMPT_DYNAMIC Debian 0.0.1-1 (2020-01-01)\\n\";\nint main(void) {{ return banner[0]; }}\n",
            lab.release
        ),
    )
    .unwrap();
    let target = dir.path().join("target");
    std::fs::create_dir(&target).unwrap();
    let st = Command::new("gcc")
        .arg("-o")
        .arg(target.join("vmlinuz"))
        .arg(&c)
        .status()
        .unwrap();
    assert!(st.success());
    std::fs::write(target.join("release"), format!("{}\n", lab.release)).unwrap();
    std::fs::copy(lab.config(), target.join("config")).unwrap();
    std::fs::copy(lab.kallsyms(), target.join("kallsyms")).unwrap();
    let r = graft(&[
        "build".into(),
        repo_file("tests/patches/cmdline.patch").into(),
        "--name".into(),
        "x".into(),
        "--target".into(),
        target.clone().into(),
        "--output".into(),
        dir.path().into(),
        "--cache-dir".into(),
        dir.path().join("cache").into(),
    ]);
    assert_eq!(r.status.code(), Some(1), "{}", stderr(&r));
    let err = stderr(&r);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(
        err.contains(&format!("kernel {} (Debian 0.0.1-1)", lab.release)),
        "{err}"
    );
    // The versions apt has, and the way out.
    assert!(err.contains(&lab.debian_version), "{err}");
    assert!(err.contains("--tree"), "{err}");
}

/// The tree a new user makes: the kernel's config, `make olddefconfig
/// prepare` with the default compiler (`gcc`, a link to the `gcc-12` the
/// kernel names). A hard-linked copy of the lab tree whose generated files
/// are copies (make rewrites them), prepared again with `gcc`.
#[test]
fn a_tree_prepared_with_plain_gcc_builds_the_cmdline_fix() {
    let lab = lab();
    let root = variant_tree(&lab, "prepared-with-gcc", |root| {
        let makefile = std::fs::metadata(root.join("Makefile"))
            .unwrap()
            .modified()
            .unwrap();
        fn unlink_newer(dir: &std::path::Path, than: std::time::SystemTime) {
            for e in std::fs::read_dir(dir).unwrap().flatten() {
                let meta = std::fs::symlink_metadata(e.path()).unwrap();
                if meta.is_dir() {
                    unlink_newer(&e.path(), than);
                } else if meta.is_file() && meta.modified().unwrap() > than {
                    let bytes = std::fs::read(e.path()).unwrap();
                    std::fs::remove_file(e.path()).unwrap();
                    std::fs::write(e.path(), bytes).unwrap();
                    std::fs::set_permissions(e.path(), meta.permissions()).unwrap();
                }
            }
        }
        // Generated files are newer than the unpacked sources.
        unlink_newer(root, makefile);
        std::fs::remove_file(root.join(".config")).unwrap();
        std::fs::copy(lab.config(), root.join(".config")).unwrap();
        for targets in [&["olddefconfig"][..], &["-j2", "prepare"][..]] {
            let st = Command::new("make")
                .arg("-C")
                .arg(root)
                .args(targets)
                .env_remove("MAKEFLAGS")
                .env_remove("CC")
                .stdout(std::process::Stdio::null())
                .status()
                .unwrap();
            assert!(st.success(), "make {targets:?} failed");
        }
    });
    let config = std::fs::read_to_string(root.join(".config")).unwrap();
    assert!(
        config.contains("CONFIG_CC_VERSION_TEXT=\"gcc (Debian"),
        "the variant was not prepared with plain gcc"
    );
    let out = tempfile::tempdir().unwrap();
    let mut args = build_args(
        &lab,
        &repo_file("tests/patches/cmdline.patch"),
        "plaingcc",
        out.path(),
    );
    set_arg(&mut args, "--tree", &root);
    args.insert(0, "--json".into());
    let built = graft(&args);
    assert!(
        built.status.success(),
        "graft build failed:\n{}",
        stderr(&built)
    );
    let summary: serde_json::Value = serde_json::from_slice(&built.stdout).unwrap();
    assert_eq!(summary["verified"][0]["function"], "cmdline_proc_show");
}

/// `graft build` without `--tree`: a target described by its files (here
/// the lab's older kernel, as another machine's would be) gets its exact
/// source, found by the Debian version in its image's banner, from graft's
/// cache, and its headers fetched beside it.
#[test]
fn a_target_without_a_tree_builds_from_its_own_fetched_source() {
    let labs = lab_kernels();
    let old = labs.last().unwrap();
    let cache = kernel_cache(&labs);
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("target");
    std::fs::create_dir(&target).unwrap();
    std::fs::write(target.join("release"), format!("{}\n", old.release)).unwrap();
    std::fs::copy(old.config(), target.join("config")).unwrap();
    std::fs::copy(old.vmlinuz(), target.join("vmlinuz")).unwrap();
    std::os::unix::fs::symlink(old.modules_dir(), target.join("modules")).unwrap();
    // No symbol table but the image: its own kallsyms tables.
    std::fs::copy(old.vmlinuz(), target.join("kallsyms")).unwrap();
    let r = graft(&[
        "--json".into(),
        "build".into(),
        repo_file("tests/patches/cmdline.patch").into(),
        "--name".into(),
        "notree".into(),
        "--target".into(),
        target.clone().into(),
        "--output".into(),
        dir.path().into(),
        "--cache-dir".into(),
        cache.into(),
    ]);
    assert!(r.status.success(), "{}", stderr(&r));
    let summary: serde_json::Value = serde_json::from_slice(&r.stdout).unwrap();
    assert_eq!(summary["verified"][0]["function"], "cmdline_proc_show");
    // Built against the old kernel's headers: its release in vermagic.
    let ko = std::fs::read(dir.path().join("livepatch-notree.ko")).unwrap();
    let vermagic = format!("vermagic={} ", old.release);
    assert!(
        ko.windows(vermagic.len()).any(|w| w == vermagic.as_bytes()),
        "the module is not built for {}",
        old.release
    );
}
