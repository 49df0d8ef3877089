//! What became of a corpus item: read from what the `graft` binary says
//! (its exit code, its JSON report, its one-line error), and what the
//! report makes of it.

use serde::{Deserialize, Serialize};

/// The outcome of building one item with `graft build`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Outcome {
    /// A module was built and verified against the target's code.
    Built {
        /// `file: function` of every changed or new function carried.
        functions: Vec<String>,
        /// Units compiled for the patch's headers (0 without headers).
        header_units: usize,
    },
    /// graft refused: the rules broken, and its first line.
    Refused { rules: Vec<String>, message: String },
    /// The target's build does not have the code.
    NotInKernel { why: String },
    /// The patched source does not compile (the compiler's first error).
    DoesNotCompile { first_error: String },
    /// The compiled code is the same before and after.
    NoCodeChange { why: String },
    /// Left out before any build, with the reason.
    Skipped { why: String },
    /// Anything else graft said: unexplained, a bug to look at.
    Error { message: String },
}

impl Outcome {
    /// Short name for tables.
    pub fn label(&self) -> &'static str {
        match self {
            Outcome::Built { .. } => "built",
            Outcome::Refused { .. } => "refused",
            Outcome::NotInKernel { .. } => "not in kernel",
            Outcome::DoesNotCompile { .. } => "does not compile",
            Outcome::NoCodeChange { .. } => "no code change",
            Outcome::Skipped { .. } => "skipped",
            Outcome::Error { .. } => "ERROR",
        }
    }

    /// The rule or reason, one line.
    pub fn reason(&self) -> String {
        match self {
            Outcome::Built { functions, .. } => functions.join(", "),
            Outcome::Refused { rules, .. } => rules.join(", "),
            Outcome::NotInKernel { why } | Outcome::NoCodeChange { why } => why.clone(),
            Outcome::Skipped { why } => why.clone(),
            Outcome::DoesNotCompile { first_error } => first_error.clone(),
            Outcome::Error { message } => message.clone(),
        }
    }

    pub fn is_built(&self) -> bool {
        matches!(self, Outcome::Built { .. })
    }

    /// Every outcome but an unexplained error says why.
    pub fn is_explained(&self) -> bool {
        !matches!(self, Outcome::Error { .. })
    }
}

/// Whether a refusal rule names a true change a live patch cannot make
/// (`true`), or a limitation of graft (`false`).
pub fn is_true_change(rule: &str) -> bool {
    matches!(
        rule,
        "init-code" | "data-changed" | "layout-changed" | "export-crc" | "constant-in-data"
    )
}

/// For a limitation: what would lift it.
pub fn lift(rule: &str) -> &'static str {
    match rule {
        "key-in-module" => "register the patch's jump-label entries for a module's keys after its klp relocations are applied (issue 9)",
        "hidden-state" => "a state no original function of the unit uses, or whose users run-pre cannot place: resolve it from another unit's verified code",
        "ambiguous-local" => "pair same-named writable locals (once flags, tracepoint strings) through their verified users in the running kernel",
        "no-fentry" => "patch the callers of the changed notrace/inline function",
        "too-many-units" => "a header change graft cannot read from the source text (a changed #if or #include, a changed macro invocation) over more includers than it preprocesses (20 × --max-units), or more units whose code changes than --max-units: a higher --max-units",
        "unknown-section" | "unreadable-table" => "teach graft-klp the special section",
        "marker" => "fix the patch's graft/kpatch markers",
        "kthread-main" => "patch the functions the thread's loop calls, or stop and restart the thread in callbacks (livepatch's consistency model cannot switch a task that never leaves the function)",
        "composite-module" => "compile the file with the command the kernel's build uses for it (the unit index has it), not kbuild's single-object build",
        _ => "see the rule's message",
    }
}

/// The first `error: …` line of graft's stderr (the whole stderr's first
/// line when none).
fn error_line(stderr: &str) -> String {
    stderr
        .lines()
        .find_map(|l| l.strip_prefix("error: "))
        .or_else(|| stderr.lines().find(|l| !l.trim().is_empty()))
        .unwrap_or("(no output)")
        .trim()
        .to_owned()
}

/// `[rule: NAME]` of every refusal in graft's output, once each, in order.
fn rules(text: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut rest = text;
    while let Some((_, after)) = rest.split_once("[rule: ") {
        if let Some((r, tail)) = after.split_once(']') {
            if !out.iter().any(|x| x == r) {
                out.push(r.to_owned());
            }
            rest = tail;
        } else {
            break;
        }
    }
    out
}

/// The text of `message` between `after` and the next `; hint:`.
fn between<'a>(message: &'a str, after: &str) -> Option<&'a str> {
    let (_, rest) = message.split_once(after)?;
    Some(rest.split_once("; hint:").map_or(rest, |(a, _)| a).trim())
}

/// Reads one run of `graft --json build`: its exit code, stdout, stderr.
pub fn classify(code: Option<i32>, stdout: &str, stderr: &str) -> Outcome {
    match code {
        Some(0) => built(stdout).unwrap_or_else(|why| Outcome::Error {
            message: format!("graft exited 0 but its JSON report is unreadable: {why}"),
        }),
        Some(3) => {
            let rules = rules(stderr);
            let message = error_line(stderr);
            if rules.is_empty() {
                Outcome::Error {
                    message: format!("refused without a rule: {message}"),
                }
            } else {
                Outcome::Refused { rules, message }
            }
        }
        Some(1) => {
            let message = error_line(stderr);
            if let Some(e) = between(&message, graft_build::DOES_NOT_COMPILE) {
                Outcome::DoesNotCompile {
                    first_error: e.to_owned(),
                }
            } else if message.contains(graft_build::NOT_IN_BUILD) {
                Outcome::NotInKernel {
                    why: format!("graft: {message}"),
                }
            } else if message.contains(graft_build::NO_CODE_CHANGE) {
                Outcome::NoCodeChange {
                    why: "the compiled code is identical".into(),
                }
            } else {
                Outcome::Error { message }
            }
        }
        Some(c) => Outcome::Error {
            message: format!("graft exited {c}: {}", error_line(stderr)),
        },
        None => Outcome::Error {
            message: format!("graft was killed: {}", error_line(stderr)),
        },
    }
}

fn built(stdout: &str) -> Result<Outcome, String> {
    let v: serde_json::Value = serde_json::from_str(stdout).map_err(|e| e.to_string())?;
    let mut functions = Vec::new();
    for f in v["files"].as_array().ok_or("no files")? {
        let file = f["file"].as_str().unwrap_or("?");
        for kind in ["changed", "new"] {
            for name in f[kind].as_array().into_iter().flatten() {
                let name = name.as_str().unwrap_or("?");
                let tag = if kind == "new" { " (new)" } else { "" };
                functions.push(format!("{file}: {name}{tag}"));
            }
        }
    }
    let header_units = v["headers"]
        .as_array()
        .map(|hs| {
            hs.iter()
                .flat_map(|h| h["units"].as_array().into_iter().flatten())
                .filter_map(|u| u.as_str())
                .collect::<std::collections::BTreeSet<_>>()
                .len()
        })
        .unwrap_or(0);
    Ok(Outcome::Built {
        functions,
        header_units,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_report() {
        let json = r#"{"module":"/o/livepatch-c001.ko","files":[{"file":"net/sched/sch_pie.c","changed":["pie_change"],"new":["pie_helper"]}],"headers":[{"header":"include/x.h","units":["a.o","b.o"]},{"header":"include/y.h","units":["b.o"]}],"seconds":4.2}"#;
        assert_eq!(
            classify(Some(0), json, ""),
            Outcome::Built {
                functions: vec![
                    "net/sched/sch_pie.c: pie_change".into(),
                    "net/sched/sch_pie.c: pie_helper (new)".into()
                ],
                header_units: 2,
            }
        );
        assert!(matches!(
            classify(Some(0), "not json", ""),
            Outcome::Error { .. }
        ));
    }

    #[test]
    fn refusals_name_their_rules() {
        let err = "error: xfs_icache.o: xfs_inode_free uses __tracepoint_x from __jump_table [rule: key-in-module]: the key …\nsch_pie.o: b [rule: hidden-state]: …\nc [rule: key-in-module]\n";
        let o = classify(Some(3), "", err);
        assert_eq!(
            o,
            Outcome::Refused {
                rules: vec!["key-in-module".into(), "hidden-state".into()],
                message: "xfs_icache.o: xfs_inode_free uses __tracepoint_x from __jump_table [rule: key-in-module]: the key …".into()
            }
        );
        assert!(!is_true_change("key-in-module") && is_true_change("layout-changed"));
        assert!(matches!(
            classify(Some(3), "", "error: refused\n"),
            Outcome::Error { .. }
        ));
    }

    #[test]
    fn errors_sorted_into_explained_outcomes() {
        // The texts graft prints today.
        let c = classify(Some(1), "", "error: the patch does not compile: fs/x.c:10:5: error: 'FOO' undeclared; hint: a fix may need a change it does not carry (full output: /l)\n");
        assert_eq!(
            c,
            Outcome::DoesNotCompile {
                first_error: "fs/x.c:10:5: error: 'FOO' undeclared".into()
            }
        );
        let n = classify(Some(1), "", "error: fs/ntfs3/super.c is not part of this kernel's build (kbuild does not compile it with this config); hint: …\n");
        assert!(matches!(n, Outcome::NotInKernel { .. }));
        let s = classify(Some(1), "", "error: the patch changes no function of the running kernel (the compiled code is identical); hint: check\n");
        assert!(matches!(s, Outcome::NoCodeChange { .. }));
        let e = classify(
            Some(1),
            "",
            "graft: reading…\nerror: verification failed: x\n",
        );
        assert_eq!(
            e,
            Outcome::Error {
                message: "verification failed: x".into()
            }
        );
        assert!(!e.is_explained() && c.is_explained());
        assert!(matches!(classify(None, "", ""), Outcome::Error { .. }));
    }
}
