//! Compiling a probe against a prepared tree exactly as kbuild compiles
//! there: kbuild records the command it compiled `asm-offsets.c` with (every
//! prepared tree has it), so the probe sees the kernel's own headers,
//! config, compiler and flags. graft-diff's entry layouts are read from such
//! a probe.

use std::path::Path;

use crate::{io, KbuildError};

/// Where kbuild records the command it compiled `asm-offsets.c` with.
const COMMAND_RECORD: &str = "arch/x86/kernel/.asm-offsets.s.cmd";

/// Compiles C `source` against `tree` (only read) with kbuild's own
/// command for asm-offsets, and returns the object's bytes.
pub fn compile(tree: &Path, source: &str) -> Result<Vec<u8>, KbuildError> {
    let record = tree.join(COMMAND_RECORD);
    let bad = |why: &str| KbuildError::NotPrepared {
        path: tree.to_owned(),
        missing: format!("{COMMAND_RECORD} ({why})"),
    };
    let text = std::fs::read_to_string(&record).map_err(|_| bad("unreadable"))?;
    let line = text.lines().next().ok_or_else(|| bad("empty"))?;
    let (_, cmd) = line.split_once(" := ").ok_or_else(|| bad("no command"))?;
    let words = shell_words(cmd).ok_or_else(|| bad("unterminated quote"))?;
    let compiler = words.first().ok_or_else(|| bad("no compiler"))?.clone();
    let mut args = Vec::new();
    let mut skip = false;
    for w in words.iter().skip(1) {
        if skip {
            skip = false;
            continue;
        }
        match w.as_str() {
            "-o" => skip = true,
            "-S" | "-c" | "-fverbose-asm" => {}
            w if w.starts_with("-Wp,") || w.ends_with(".c") => {}
            w => args.push(w.to_owned()),
        }
    }
    let scratch = tempfile::tempdir().map_err(io("cannot create a scratch directory"))?;
    let src = scratch.path().join("graft-probe.c");
    let out = scratch.path().join("graft-probe.o");
    std::fs::write(&src, source).map_err(io("cannot write the probe"))?;
    let run = crate::buildroot::command_in(tree, &compiler, &[scratch.path()], Some(tree))
        .args(&args)
        .arg("-w")
        .arg("-c")
        .arg("-o")
        .arg(&out)
        .arg(&src)
        .current_dir(tree)
        .output()
        .map_err(io(format!("cannot run the compiler {compiler}")))?;
    if !run.status.success() {
        return Err(KbuildError::Compile {
            what: format!("graft's probe against {}", tree.display()),
            first_error: crate::first_error(&String::from_utf8_lossy(&run.stderr)),
            log: record,
            hint: "the tree must be prepared with `make prepare`".into(),
        });
    }
    std::fs::read(&out).map_err(io("cannot read the probe object"))
}

/// Splits a shell command list (`cmd ; cmd`) into its commands' words, for
/// the quoting kbuild uses; `None` when it is more than a list of simple
/// commands (pipes, redirections, substitutions, `&&`), which graft does not
/// replay.
pub fn shell_commands(s: &str) -> Option<Vec<Vec<String>>> {
    split(s, true)
}

/// The words of the first command of `s`, split the way `sh` would for the
/// quoting kbuild uses (`'…'`, `"…"` and backslashes); other shell syntax is
/// taken as text. `None` on an unterminated quote.
pub fn shell_words(s: &str) -> Option<Vec<String>> {
    Some(split(s, false)?.into_iter().next().unwrap_or_default())
}

/// The one splitter behind [`shell_commands`] (`strict`: shell syntax
/// beyond quoting and `;` is refused) and [`shell_words`].
fn split(s: &str, strict: bool) -> Option<Vec<Vec<String>>> {
    let mut commands = Vec::new();
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut chars = s.chars();
    let end_word = |cur: &mut String, in_word: &mut bool, words: &mut Vec<String>| {
        if *in_word {
            words.push(std::mem::take(cur));
            *in_word = false;
        }
    };
    while let Some(c) = chars.next() {
        match c {
            '\'' => {
                in_word = true;
                loop {
                    match chars.next()? {
                        '\'' => break,
                        c => cur.push(c),
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next()? {
                        '"' => break,
                        '\\' => cur.push(chars.next()?),
                        '$' | '`' if strict => return None,
                        c => cur.push(c),
                    }
                }
            }
            '\\' => {
                in_word = true;
                cur.push(chars.next()?);
            }
            ';' | '\n' => {
                end_word(&mut cur, &mut in_word, &mut words);
                if !words.is_empty() {
                    commands.push(std::mem::take(&mut words));
                }
            }
            '|' | '&' | '<' | '>' | '$' | '`' | '(' | ')' | '*' | '?' | '[' | '#' | '~'
                if strict =>
            {
                return None
            }
            c if c.is_whitespace() => end_word(&mut cur, &mut in_word, &mut words),
            c => {
                in_word = true;
                cur.push(c);
            }
        }
    }
    end_word(&mut cur, &mut in_word, &mut words);
    if !words.is_empty() {
        commands.push(words);
    }
    Some(commands)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_kbuild_commands() {
        let w = shell_words(
            r#"gcc-12 -DKBUILD_MODFILE='"./asm-offsets"' -I./include -c x.c ; ./tools/objtool"#,
        )
        .unwrap();
        assert_eq!(
            w,
            vec![
                "gcc-12",
                "-DKBUILD_MODFILE=\"./asm-offsets\"",
                "-I./include",
                "-c",
                "x.c"
            ]
        );
        assert!(shell_words("'open").is_none());
    }

    #[test]
    fn splits_command_lists_and_refuses_the_rest() {
        let c = shell_commands(
            "gcc -DX='\"a b\"' -c -o x.o x.c   ; ./tools/objtool/objtool --module x.o;  true",
        )
        .unwrap();
        assert_eq!(
            c,
            vec![
                vec!["gcc", "-DX=\"a b\"", "-c", "-o", "x.o", "x.c"],
                vec!["./tools/objtool/objtool", "--module", "x.o"],
                vec!["true"],
            ]
        );
        for shell in [
            "a | b", "a > f", "a && b", "a $(b)", "a `b`", "echo ~", "a *.o",
        ] {
            assert!(shell_commands(shell).is_none(), "{shell}");
        }
    }
}
