//! graft's reading of preprocessed code (graft_kbuild::reach) against gcc:
//! small C units that include a header are preprocessed and compiled by gcc
//! before and after a header change; a unit the reading calls unchanged
//! must compile to the same assembly, and one it calls changed is one whose
//! assembly changed.

use std::path::Path;
use std::process::Command;

use graft_kbuild::reach::{differs, Summary};

const HEADER: &str = r#"
#define SCALE 3
#define CALL(n) helper_##n()
struct cfg { int a; int b; };
static inline int helper_one(void) { return 1; }
static inline int helper_two(void) { return 2; }
static inline int scaled(int x) { return x * SCALE; }
static inline int via(struct cfg *c) { return scaled(c->a) + helper_two(); }
static inline int unused_here(int x) { return x - 1; }
int exported(int x);
"#;

/// Units: (name, body). Each uses a different part of the header.
const UNITS: &[(&str, &str)] = &[
    ("plain", "int f(int x) { return x + 7; }\n"),
    ("pasted", "int f(void) { return CALL(one); }\n"),
    ("chained", "int f(struct cfg *c) { return via(c); }\n"),
    ("direct", "int f(int x) { return scaled(x); }\n"),
    ("field", "int f(struct cfg *c) { return c->b; }\n"),
    (
        "table",
        "static int (*const t[])(void) = { helper_two };\nint f(int i) { return t[i](); }\n",
    ),
];

/// (what changes, header after, the units whose code changes)
fn changes() -> Vec<(&'static str, String, Vec<&'static str>)> {
    vec![
        (
            "a pasted name's body",
            HEADER.replace("return 1;", "return 11;"),
            vec!["pasted"],
        ),
        (
            "a macro used by an inline chain",
            HEADER.replace("#define SCALE 3", "#define SCALE 5"),
            vec!["chained", "direct"],
        ),
        (
            "an inline reached through a pointer table and a chain",
            HEADER.replace("return 2;", "return 22;"),
            vec!["chained", "table"],
        ),
        (
            "a field's position",
            HEADER.replace("int a; int b;", "int b; int a;"),
            vec!["chained", "field"],
        ),
        (
            "an unused inline and a new prototype",
            HEADER.replace("x - 1", "x - 2").replace(
                "int exported(int x);",
                "int exported(int x);\nint added(void);",
            ),
            vec![],
        ),
    ]
}

fn gcc(dir: &Path, args: &[&str], unit: &str) -> Vec<u8> {
    let out = Command::new("gcc")
        .current_dir(dir)
        .args(args)
        .arg(format!("{unit}.c"))
        .args(["-o", "-"])
        .output()
        .expect("gcc runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

#[test]
fn the_reading_agrees_with_gcc() {
    let dir = tempfile::tempdir().unwrap();
    for (name, body) in UNITS {
        std::fs::write(
            dir.path().join(format!("{name}.c")),
            format!("#include \"x.h\"\n{body}"),
        )
        .unwrap();
    }
    let side = |header: &str| -> Vec<(Vec<u8>, Vec<u8>)> {
        std::fs::write(dir.path().join("x.h"), header).unwrap();
        UNITS
            .iter()
            .map(|(u, _)| {
                (
                    gcc(dir.path(), &["-E"], u),
                    gcc(dir.path(), &["-O2", "-S"], u),
                )
            })
            .collect()
    };
    let before = side(HEADER);
    for (what, after, want) in changes() {
        let now = side(&after);
        let mut read = Vec::new();
        let mut compiled = Vec::new();
        for (((name, _), (pp0, asm0)), (pp1, asm1)) in UNITS.iter().zip(&before).zip(&now) {
            if differs(&Summary::of(pp0), pp1) {
                read.push(*name);
            }
            if asm0 != asm1 {
                compiled.push(*name);
            }
        }
        assert_eq!(compiled, want, "gcc, for {what}");
        assert_eq!(read, want, "the reading, for {what}");
    }
}
