//! The difference between two Debian kernel source trees: which kernel
//! `.c` and `.h` files changed, each as a unified diff against the older
//! tree (`-p1`, `a/` and `b/`), with its count of changed lines.
//!
//! Both trees are the lab's prepared trees, so kbuild's own output is left
//! out: the generated directories, and any file kbuild records a `.cmd`
//! for (it writes one next to everything it makes).

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::Path;
use std::process::Command;

use serde::{Deserialize, Serialize};

use crate::error::LabError;

/// How a file differs between the two trees.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Change {
    Modified,
    /// Only in the newer tree.
    Added,
    /// Only in the older tree.
    Removed,
}

/// One changed file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChangedFile {
    /// Tree-relative (`net/sched/sch_pie.c`).
    pub path: String,
    pub change: Change,
    /// Lines added plus lines removed.
    pub lines: usize,
    /// The unified diff, applying to the older tree with `-p1`.
    pub diff: String,
}

impl ChangedFile {
    pub fn is_header(&self) -> bool {
        self.path.ends_with(".h")
    }
}

/// Top-level directories that hold no kernel code.
const NOT_KERNEL: &[&str] = &["tools", "scripts", "samples", "Documentation", "usr"];

/// Directories kbuild fills when it prepares a tree.
const GENERATED: &[&str] = &[
    "include/generated",
    "include/config",
    "arch/x86/include/generated",
];

/// Whether `path` (tree-relative) is kernel code for x86-64: not a tool,
/// script, sample, document or another architecture's code.
pub fn is_kernel_path(path: &str) -> bool {
    let mut parts = path.split('/');
    let top = parts.next().unwrap_or("");
    if NOT_KERNEL.contains(&top) {
        return false;
    }
    if top == "arch" {
        return parts.next() == Some("x86");
    }
    true
}

fn is_source(name: &str) -> bool {
    name.ends_with(".c") || name.ends_with(".h")
}

/// The kernel `.c`/`.h` files of a tree and their sizes.
fn list(root: &Path) -> Result<BTreeMap<String, u64>, LabError> {
    let mut out = BTreeMap::new();
    let mut stack = vec![String::new()];
    while let Some(rel) = stack.pop() {
        let dir = root.join(&rel);
        let entries = fs::read_dir(&dir)
            .map_err(|e| LabError::io(format!("listing {}", dir.display()), e))?;
        let mut names: BTreeSet<String> = BTreeSet::new();
        let mut kinds = Vec::new();
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            names.insert(name.clone());
            kinds.push((name, e.file_type().ok()));
        }
        for (name, kind) in kinds {
            if name.starts_with('.') {
                continue;
            }
            let path = if rel.is_empty() {
                name.clone()
            } else {
                format!("{rel}/{name}")
            };
            if !is_kernel_path(&path) {
                continue;
            }
            match kind {
                Some(k) if k.is_dir() && !GENERATED.contains(&path.as_str()) => stack.push(path),
                Some(k) if k.is_file() => {
                    if !is_source(&name) || names.contains(&format!(".{name}.cmd")) {
                        continue;
                    }
                    let size = fs::metadata(root.join(&path))
                        .map_err(|e| LabError::io(format!("reading {path}"), e))?
                        .len();
                    out.insert(path, size);
                }
                _ => {}
            }
        }
    }
    Ok(out)
}

/// Every kernel `.c`/`.h` file that differs between `from` and `to`, in
/// path order.
pub fn compare(from: &Path, to: &Path) -> Result<Vec<ChangedFile>, LabError> {
    let a = list(from)?;
    let b = list(to)?;
    let mut changed: Vec<(String, Change)> = Vec::new();
    for (path, size) in &a {
        match b.get(path) {
            None => changed.push((path.clone(), Change::Removed)),
            Some(s) if s != size => changed.push((path.clone(), Change::Modified)),
            Some(_) => {
                let read = |root: &Path| {
                    fs::read(root.join(path))
                        .map_err(|e| LabError::io(format!("reading {path}"), e))
                };
                if read(from)? != read(to)? {
                    changed.push((path.clone(), Change::Modified));
                }
            }
        }
    }
    for path in b.keys() {
        if !a.contains_key(path) {
            changed.push((path.clone(), Change::Added));
        }
    }
    changed.sort_by(|a, b| a.0.cmp(&b.0));
    changed
        .into_iter()
        .map(|(path, change)| {
            let diff = unified_diff(from, to, &path, change)?;
            Ok(ChangedFile {
                lines: changed_lines(&diff),
                path,
                change,
                diff,
            })
        })
        .collect()
}

/// `diff -u` of one file, labelled `a/PATH` and `b/PATH`.
fn unified_diff(from: &Path, to: &Path, path: &str, change: Change) -> Result<String, LabError> {
    let side = |root: &Path, present: bool| {
        if present {
            root.join(path)
        } else {
            "/dev/null".into()
        }
    };
    let mut cmd = Command::new("diff");
    // -p names the function (or structure) around each hunk in its header.
    cmd.arg("-up")
        .arg("--label")
        .arg(format!("a/{path}"))
        .arg("--label")
        .arg(format!("b/{path}"))
        .arg(side(from, change != Change::Added))
        .arg(side(to, change != Change::Removed))
        .env("LC_ALL", "C");
    let out = cmd.output().map_err(|e| LabError::Command {
        command: crate::cmd::describe(&cmd),
        status: format!("could not start it: {e}"),
        output_tail: String::new(),
        hint: "install diffutils".into(),
    })?;
    // diff exits 1 when the files differ, 2 on trouble.
    if out.status.code() != Some(1) {
        return Err(LabError::Command {
            command: crate::cmd::describe(&cmd),
            status: out.status.to_string(),
            output_tail: String::from_utf8_lossy(&out.stderr).into_owned(),
            hint: "both trees must be readable".into(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Lines added plus lines removed in a unified diff.
pub fn changed_lines(diff: &str) -> usize {
    diff.lines()
        .filter(|l| {
            (l.starts_with('+') && !l.starts_with("+++ "))
                || (l.starts_with('-') && !l.starts_with("--- "))
        })
        .count()
}

/// C keywords and common type words: names every diff touches, which say
/// nothing about which header a change needs.
const COMMON: &[&str] = &[
    "auto", "break", "case", "char", "const", "continue", "default", "define", "do", "double",
    "else", "endif", "enum", "extern", "false", "float", "for", "goto", "if", "ifdef", "ifndef",
    "include", "inline", "int", "long", "NULL", "register", "return", "short", "signed", "sizeof",
    "static", "struct", "switch", "true", "typedef", "union", "unsigned", "void", "volatile",
    "while", "bool", "u8", "u16", "u32", "u64", "s8", "s16", "s32", "s64", "size_t", "unlikely",
    "likely", "__u8", "__u16", "__u32", "__u64", "err", "ret", "dev",
];

/// The code of a diff line without its comment (`/* … */` on the line,
/// `//`, or a line inside a block comment: ` * …`).
fn code_of(line: &str) -> String {
    let t = line.trim_start();
    if t.starts_with('*') || t.starts_with("/*") || t.starts_with("//") {
        return String::new();
    }
    let mut s = line.to_owned();
    while let Some(a) = s.find("/*") {
        match s[a..].find("*/") {
            Some(b) => s.replace_range(a..a + b + 2, " "),
            None => s.truncate(a),
        }
    }
    if let Some(a) = s.find("//") {
        s.truncate(a);
    }
    s
}

/// The identifiers of a piece of C code, each with whether a `(` follows
/// it (a call or a prototype).
fn words(code: &str) -> Vec<(String, bool)> {
    let mut out = Vec::new();
    let chars: Vec<char> = code.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        if chars[i].is_ascii_alphabetic() || chars[i] == '_' {
            let start = i;
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '_') {
                i += 1;
            }
            let w: String = chars[start..i].iter().collect();
            let call = chars[i..].iter().find(|c| !c.is_whitespace()) == Some(&'(');
            if w.len() >= 3 && !COMMON.contains(&w.as_str()) {
                out.push((w, call));
            }
        } else {
            i += 1;
        }
    }
    out
}

/// The identifiers in the code (not the comments) of a diff's added or
/// removed lines.
fn identifiers(diff: &str, added: bool) -> Vec<(String, bool)> {
    let sign = if added { '+' } else { '-' };
    let header = if added { "+++ " } else { "--- " };
    diff.lines()
        .filter(|l| l.starts_with(sign) && !l.starts_with(header))
        .flat_map(|l| words(&code_of(&l[1..])))
        .collect()
}

/// The names a diff really changes: the ones it adds or removes, and
/// functions or macros whose prototype it rewrites (named on both sides,
/// followed by `(`).
pub fn touched_names(diff: &str) -> BTreeSet<String> {
    let plus = identifiers(diff, true);
    let minus = identifiers(diff, false);
    let p: BTreeSet<&str> = plus.iter().map(|(w, _)| w.as_str()).collect();
    let m: BTreeSet<&str> = minus.iter().map(|(w, _)| w.as_str()).collect();
    let called = |v: &[(String, bool)], w: &str| v.iter().any(|(x, c)| x == w && *c);
    p.symmetric_difference(&m)
        .map(|w| (*w).to_owned())
        .chain(
            p.intersection(&m)
                .filter(|w| called(&plus, w) && called(&minus, w))
                .map(|w| (*w).to_owned()),
        )
        .collect()
}

/// How strongly a `.c` change looks like it needs a header change: the
/// names the `.c` change's new code uses that the header change touches
/// (a new function, field or macro; a changed prototype).
pub fn relatedness(c_diff: &str, h_diff: &str) -> usize {
    let uses: BTreeSet<String> = identifiers(c_diff, true)
        .into_iter()
        .map(|(w, _)| w)
        .collect();
    uses.intersection(&touched_names(h_diff)).count()
}

/// What `diff -p` names before each hunk: the last top-level line above it
/// (a function's or a structure's first line, cut to 40 characters).
pub fn hunk_contexts(diff: &str) -> Vec<&str> {
    diff.lines()
        .filter_map(|l| l.strip_prefix("@@ "))
        .map(|l| l.split_once(" @@").map_or("", |(_, c)| c.trim()))
        .collect()
}

/// Every hunk of a header's diff is inside (or right after the start of)
/// a `static inline` function: a change of inline code, no declaration.
pub fn inline_code_only(diff: &str) -> bool {
    let c = hunk_contexts(diff);
    !c.is_empty()
        && c.iter()
            .all(|l| l.starts_with("static inline ") || l.starts_with("static __always_inline "))
}

/// Some hunk of a diff is inside a structure or union definition: a
/// layout change, most likely.
pub fn in_type_definition(diff: &str) -> bool {
    hunk_contexts(diff).iter().any(|l| {
        let l = l.strip_prefix("typedef ").unwrap_or(l);
        let mut w = l.split_whitespace();
        matches!(w.next(), Some("struct" | "union")) && w.next().is_some() && w.next() == Some("{")
    })
}

/// The file a compiler error is in: `crypto/af_alg.c` of
/// `crypto/af_alg.c:532:14: error: …`.
pub fn error_file(error: &str) -> Option<&str> {
    let f = error.split(':').next()?.trim();
    (f.ends_with(".c") || f.ends_with(".h")).then_some(f)
}

/// The identifiers a compiler error quotes (`‘foo’`, `'struct bar'`,
/// `macro "baz"`).
pub fn quoted_names(error: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = error;
    while let Some(open) = rest.find(['\u{2018}', '\'', '"']) {
        let after = &rest[open + rest[open..].chars().next().map_or(1, char::len_utf8)..];
        let Some(close) = after.find(['\u{2019}', '\'', '"']) else {
            break;
        };
        for (w, _) in words(&after[..close]) {
            out.insert(w);
        }
        rest = &after[close + after[close..].chars().next().map_or(1, char::len_utf8)..];
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_paths() {
        assert!(is_kernel_path("net/sched/sch_pie.c"));
        assert!(is_kernel_path("arch/x86/kvm/x86.c"));
        assert!(!is_kernel_path("arch/arm64/kernel/smp.c"));
        assert!(!is_kernel_path("tools/perf/builtin-top.c"));
        assert!(!is_kernel_path("scripts/kallsyms.c"));
        assert!(is_kernel_path("include/linux/sched.h"));
    }

    #[test]
    fn trees_compared_without_generated_files() {
        let d = tempfile::tempdir().unwrap();
        let w = |p: &str, t: &str| {
            let p = d.path().join(p);
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::write(p, t).unwrap();
        };
        for side in ["a", "b"] {
            w(&format!("{side}/kernel/same.c"), "int x;\n");
            w(&format!("{side}/include/generated/autoconf.h"), side);
            w(&format!("{side}/lib/gen.h"), side);
            w(&format!("{side}/lib/.gen.h.cmd"), "");
            w(&format!("{side}/arch/arm64/a.c"), side);
            w(&format!("{side}/tools/t.c"), side);
        }
        w("a/kernel/fix.c", "int f(void)\n{\n\treturn 0;\n}\n");
        w("b/kernel/fix.c", "int f(void)\n{\n\treturn 1;\n}\n");
        w("a/kernel/gone.c", "x\n");
        w("b/include/linux/new.h", "y\n");
        // Same size, other bytes.
        w("a/mm/s.c", "aaaa\n");
        w("b/mm/s.c", "aaab\n");
        let c = compare(&d.path().join("a"), &d.path().join("b")).unwrap();
        let names: Vec<(&str, Change, usize)> = c
            .iter()
            .map(|f| (f.path.as_str(), f.change, f.lines))
            .collect();
        assert_eq!(
            names,
            vec![
                ("include/linux/new.h", Change::Added, 1),
                ("kernel/fix.c", Change::Modified, 2),
                ("kernel/gone.c", Change::Removed, 1),
                ("mm/s.c", Change::Modified, 2),
            ]
        );
        let fix = &c[1];
        assert!(fix
            .diff
            .starts_with("--- a/kernel/fix.c\n+++ b/kernel/fix.c\n@@ -1,4 +1,4 @@\n"));
        assert!(fix.diff.contains("-\treturn 0;\n+\treturn 1;\n"));
    }

    #[test]
    fn compiler_errors_name_file_and_identifiers() {
        let e = "crypto/af_alg.c:532:14: error: conflicting types for \u{2018}af_alg_count_tsgl\u{2019}; have \u{2018}unsigned int(struct sock *)\u{2019}";
        assert_eq!(error_file(e), Some("crypto/af_alg.c"));
        let names: Vec<String> = quoted_names(e).into_iter().collect();
        assert_eq!(names, vec!["af_alg_count_tsgl", "sock"]);
        let ascii = "fs/x.c:1:2: error: 'struct foo' has no member named 'bar_baz'";
        let names: Vec<String> = quoted_names(ascii).into_iter().collect();
        assert_eq!(names, vec!["bar_baz", "foo"]);
        assert_eq!(error_file("make[3]: *** [x] Error 1"), None);
        let m =
            "d.c:399:33: error: macro \"dvb_vb2_fill_buffer\" passed 5 arguments, but takes just 4";
        assert_eq!(
            quoted_names(m).into_iter().collect::<Vec<_>>(),
            vec!["dvb_vb2_fill_buffer"]
        );
    }

    #[test]
    fn comments_are_not_names() {
        let h = "--- a/x.h\n+++ b/x.h\n@@ -1 +1,4 @@\n+/**\n+ * resource_set_size - the queue request\n+ */\n+static inline void resource_set_size(struct resource *res) /* start */\n";
        let names: Vec<String> = touched_names(h).into_iter().collect();
        assert_eq!(names, vec!["res", "resource", "resource_set_size"]);
        let c = "--- a/y.c\n+++ b/y.c\n@@ -1 +1 @@\n-\t/* put the queue */\n+\tblk_put_queue(q); /* resource */\n";
        assert_eq!(relatedness(c, h), 0);
    }

    #[test]
    fn hunk_shapes() {
        let inline = "--- a/x.h\n+++ b/x.h\n@@ -10,7 +10,7 @@ static inline void foo(int a)\n-\treturn 1;\n+\treturn 2;\n";
        assert_eq!(hunk_contexts(inline), vec!["static inline void foo(int a)"]);
        assert!(inline_code_only(inline) && !in_type_definition(inline));
        let layout = "--- a/x.h\n+++ b/x.h\n@@ -1,3 +1,4 @@ struct ghes {\n+\tint x;\n@@ -20 +21 @@ static inline int g(void)\n-a\n+b\n";
        assert!(in_type_definition(layout) && !inline_code_only(layout));
        let ret =
            "--- a/x.h\n+++ b/x.h\n@@ -1 +1 @@ struct sp_device *sp_get_master(void);\n-a\n+b\n";
        assert!(!in_type_definition(ret));
        assert!(!inline_code_only(
            "--- a/x.h\n+++ b/x.h\n@@ -1 +1 @@\n-a\n+b\n"
        ));
    }

    #[test]
    fn related_names() {
        let h = "--- a/x.h\n+++ b/x.h\n@@ -1 +1,2 @@\n-void foo_bar(int a);\n+void foo_bar(int a, int b);\n+#define NEW_FLAG 4\n";
        let c = "--- a/x.c\n+++ b/x.c\n@@ -1 +1 @@\n-\tfoo_bar(1);\n+\tfoo_bar(1, NEW_FLAG);\n";
        assert_eq!(relatedness(c, h), 2);
        let unrelated =
            "--- a/y.c\n+++ b/y.c\n@@ -1 +1 @@\n-\tint ret = 0;\n+\tint ret = other_call();\n";
        assert_eq!(relatedness(unrelated, h), 0);
    }
}
