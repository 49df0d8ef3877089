//! Keeping `__LINE__` where it was. WARN/BUG sites, `btrfs_abort_transaction`
//! and many other macros compile the line number into code or tables, so a
//! fix that adds two lines near the top of a file would make every function
//! below it look changed. After each change, the patched file gets a
//! `#line` directive giving the next line its original number back (the
//! trick klp-build uses), so only the changed region has new numbers.

/// Where to insert directives: `(after, line)` means "after line `after` of
/// the patched file, continue numbering at `line`", from `diff -U0 old new`.
pub fn directives(diff_u0: &str) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    for l in diff_u0.lines() {
        let Some(rest) = l.strip_prefix("@@ -") else {
            continue;
        };
        let Some((old, rest)) = rest.split_once(" +") else {
            continue;
        };
        let Some((new, _)) = rest.split_once(" @@") else {
            continue;
        };
        let (Some((a, b)), Some((c, d))) = (range(old), range(new)) else {
            continue;
        };
        if b == d {
            continue; // same number of lines: numbering unchanged after it
        }
        // The hunk covers old lines [a, a+b) and new lines [c, c+d); a
        // count of 0 means "after line a" (resp. c).
        let old_next = if b == 0 { a + 1 } else { a + b };
        let new_last = if d == 0 { c } else { c + d - 1 };
        out.push((new_last, old_next));
    }
    out
}

fn range(s: &str) -> Option<(usize, usize)> {
    match s.split_once(',') {
        Some((a, b)) => Some((a.parse().ok()?, b.parse().ok()?)),
        None => Some((s.parse().ok()?, 1)),
    }
}

/// `text` with the directives inserted. A directive only works at the
/// start of a line that is in no comment and continues no macro (`\`), so
/// it moves down to the next such line (each line passed adds one to its
/// number); one that would move past the next change is dropped, leaving
/// only that region's numbers new. Bytes, not text: a kernel source file
/// need not be UTF-8.
pub fn insert(text: &[u8], directives: &[(usize, usize)]) -> Vec<u8> {
    let lines: Vec<&[u8]> = text.split_inclusive(|&b| b == b'\n').collect();
    let free = free_line_starts(&lines);
    let mut sorted: Vec<(usize, usize)> = directives.to_vec();
    sorted.sort();
    let mut at: Vec<(usize, usize)> = Vec::new();
    for (k, &(after, line)) in sorted.iter().enumerate() {
        let limit = sorted.get(k + 1).map_or(lines.len(), |n| n.0);
        let (mut after, mut line) = (after.min(lines.len()), line);
        while after < lines.len() && !free[after] && after < limit {
            after += 1;
            line += 1;
        }
        if after < lines.len() && !free[after] {
            continue;
        }
        at.push((after, line));
    }
    let mut out = Vec::with_capacity(text.len() + at.len() * 16);
    let mut next = at.iter().peekable();
    for (i, l) in lines.iter().enumerate() {
        out.extend_from_slice(l);
        while let Some(&&(after, line)) = next.peek() {
            if after != i + 1 {
                break;
            }
            if !l.ends_with(b"\n") {
                out.push(b'\n');
            }
            out.extend_from_slice(format!("#line {line}\n").as_bytes());
            next.next();
        }
    }
    out
}

/// For each line index `i`, whether the start of line `i` (0-based) is
/// outside any block comment and not the continuation of a line ending in
/// `\`; `free[lines.len()]` is the end of the file.
fn free_line_starts(lines: &[&[u8]]) -> Vec<bool> {
    let mut free = Vec::with_capacity(lines.len() + 1);
    let (mut comment, mut continued) = (false, false);
    for l in lines {
        free.push(!comment && !continued);
        let mut i = 0;
        let mut quote: Option<u8> = None;
        while i < l.len() {
            let (c, n) = (l[i], l.get(i + 1).copied());
            if comment {
                if c == b'*' && n == Some(b'/') {
                    comment = false;
                    i += 1;
                }
            } else if let Some(q) = quote {
                if c == b'\\' {
                    i += 1;
                } else if c == q {
                    quote = None;
                }
            } else if c == b'/' && n == Some(b'*') {
                comment = true;
                i += 1;
            } else if c == b'/' && n == Some(b'/') {
                break;
            } else if c == b'"' || c == b'\'' {
                quote = Some(c);
            }
            i += 1;
        }
        continued = l.trim_ascii_end().ends_with(b"\\");
    }
    free.push(!comment && !continued);
    free
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directives_restore_the_numbering_after_each_change() {
        // Two lines added after old line 3, one removed at old line 10.
        let d =
            "--- a\n+++ b\n@@ -3,0 +4,2 @@\n+x\n+y\n@@ -10 +11,0 @@\n-z\n@@ -20 +21 @@\n-p\n+q\n";
        assert_eq!(directives(d), vec![(5, 4), (11, 11)]);
    }

    #[test]
    fn inserted_text_keeps_old_numbers() {
        let old = "a\nb\nc\nd\n";
        let new = "a\nNEW1\nNEW2\nb\nc\nd\n";
        // diff -U0 old new
        let d = "@@ -1,0 +2,2 @@\n+NEW1\n+NEW2\n";
        let out = insert(new.as_bytes(), &directives(d));
        assert_eq!(out, b"a\nNEW1\nNEW2\n#line 2\nb\nc\nd\n");
        let _ = old;
    }

    #[test]
    fn never_inside_a_comment() {
        let new = "x\n/*\n * a\n */\ny\n";
        // After line 2, inside the comment: moved below its end.
        assert_eq!(
            insert(new.as_bytes(), &[(2, 10)]),
            b"x\n/*\n * a\n */\n#line 12\ny\n"
        );
        // A comment marker inside a string is no comment.
        let new = "s = \"/*\";\nz\n";
        assert_eq!(
            insert(new.as_bytes(), &[(1, 5)]),
            b"s = \"/*\";\n#line 5\nz\n"
        );
        // A move that would reach the next change is dropped.
        let new = "/*\n\n\n*/\nq\n";
        assert_eq!(
            insert(new.as_bytes(), &[(1, 9), (2, 20)]).len(),
            new.len() + "#line 22\n".len()
        );
    }

    #[test]
    fn never_inside_a_continued_macro() {
        let new = "#define X \\\n  1 + \\\n  2\nint y;\n";
        let out = insert(new.as_bytes(), &[(1, 5)]);
        assert_eq!(out, b"#define X \\\n  1 + \\\n  2\n#line 7\nint y;\n");
    }
}
