//! `graft diff ORIG.o PATCHED.o`: the verdicts, the first differing
//! instruction, the refusals (exit 3), the layout options, and kbuild's
//! export-CRC records next to the objects (an unusable one is an error,
//! exit 1, never a silently skipped rule).

mod common;

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

const ORIG: &str =
    "int counter = 1;\nint f(int x) { return x * 3 + counter; }\nint g(int x) { return x * 2; }\n";
const CODE: &str =
    "int counter = 1;\nint f(int x) { return x * 5 + counter; }\nint g(int x) { return x * 2; }\n";
const DATA: &str =
    "int counter = 2;\nint f(int x) { return x * 3 + counter; }\nint g(int x) { return x * 2; }\n";

/// `src` compiled like kernel code graft can patch: one section per
/// function, an `__fentry__` call and its `__mcount_loc` entry.
fn compile(dir: &Path, name: &str, src: &str) -> PathBuf {
    let c = dir.join(format!("{name}.c"));
    let o = dir.join(format!("{name}.o"));
    std::fs::write(&c, src).unwrap();
    let out = Command::new("gcc")
        .args([
            "-O2",
            "-ffunction-sections",
            "-fdata-sections",
            "-pg",
            "-mfentry",
            "-mrecord-mcount",
            "-fno-pie",
            "-mcmodel=kernel",
            "-fno-asynchronous-unwind-tables",
            "-c",
            "-o",
        ])
        .arg(&o)
        .arg(&c)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    o
}

fn diff(args: &[&dyn AsRef<std::ffi::OsStr>]) -> std::process::Output {
    let mut v: Vec<OsString> = vec!["diff".into()];
    v.extend(args.iter().map(|a| a.as_ref().to_owned()));
    graft(&v)
}

#[test]
fn diff_reports_verdicts_refusals_and_crc_records() {
    let lab = lab();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (o, p, data) = (
        compile(d, "o", ORIG),
        compile(d, "p", CODE),
        compile(d, "d", DATA),
    );
    let layout = d.join("layout.json");

    // A changed function: its first differing instruction, both ways; the
    // layout read from the tree is saved for the next runs.
    let out = diff(&[
        &"--tree",
        &lab.source_tree(),
        &"--save-layout",
        &layout,
        &o,
        &p,
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = stdout(&out);
    let lines: Vec<&str> = text.lines().map(str::trim).collect();
    assert!(
        lines[0].starts_with("function f") && lines[0].ends_with("changed at +0x7"),
        "{text}"
    );
    assert_eq!(lines[2], "at +0x5: lea (%rdi,%rdi,2),%eax", "{text}");
    assert_eq!(lines[3], "now: lea (%rdi,%rdi,4),%eax", "{text}");
    assert!(
        !text.contains("function g"),
        "an unchanged function listed without --all: {text}"
    );
    let all = stdout(&diff(&[&"--layout", &layout, &"--all", &o, &p]));
    assert!(
        all.lines()
            .any(|l| l.starts_with("function g") && l.trim_end().ends_with("same")),
        "{all}"
    );
    let mut json_args: Vec<OsString> = vec!["--json".into(), "diff".into(), "--layout".into()];
    json_args.extend([layout.clone().into(), o.clone().into(), p.clone().into()]);
    let j: serde_json::Value = serde_json::from_slice(&graft(&json_args).stdout).unwrap();
    let verdicts: Vec<(String, String)> = j["functions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["name"].as_str().unwrap().into(),
                f["verdict"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert_eq!(
        verdicts,
        [("f".into(), "changed".into()), ("g".into(), "same".into())]
    );
    assert_eq!(j["refusals"], serde_json::json!([]), "{j}");

    // Without a layout the ftrace table of f cannot be read: refused.
    let out = diff(&[&o, &p]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("[rule: unreadable-table]")
            && stderr(&out).contains("hint: pass --tree")
    );

    // Changed data: refused with its rule and the rewrite.
    let out = diff(&[&"--layout", &layout, &o, &data]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("counter") && err.contains("[rule: data-changed]") && err.contains("hint:"),
        "{err}"
    );

    // kbuild's records next to the objects: a changed CRC is refused...
    std::fs::write(graft_kbuild::record::record_of(&o), "#SYMVER f 0x1\n").unwrap();
    std::fs::write(graft_kbuild::record::record_of(&p), "#SYMVER f 0x2\n").unwrap();
    let out = diff(&[&"--layout", &layout, &o, &p]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("[rule: export-crc]"),
        "{}",
        stderr(&out)
    );
    // ...and one that cannot be read stops the diff instead of turning the
    // rule off.
    std::fs::remove_file(graft_kbuild::record::record_of(&p)).unwrap();
    std::fs::create_dir(graft_kbuild::record::record_of(&p)).unwrap();
    let out = diff(&[&"--layout", &layout, &o, &p]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    let errors: Vec<&str> = err.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "{err}");
    assert!(
        errors[0].contains(".p.o.cmd: cannot read kbuild's record of the object")
            && errors[0].contains("hint:"),
        "{err}"
    );
}
