//! Which includers of a changed header compile differently, decided from
//! their preprocessed text (`make foo.i`) before and after the change,
//! without compiling them.
//!
//! An object's code comes from its *emitting* top-level items: function
//! definitions that are not `static inline`, variable definitions,
//! file-scope `asm`. A `static inline` function, a prototype, a type, a
//! typedef or an `extern` declaration makes code only through an emitting
//! item that names it, directly or through other such items. So a unit
//! whose emitting items are the same before and after, and reach no item
//! the change altered, compiles to the same code.
//!
//! Doubt falls on the side of compiling: an item that cannot be classified
//! is emitting, and an item's defined names are over-collected, never
//! under. Preprocessed text has no macros left, so a name built by token
//! pasting is as plain here as any other.

use std::collections::{HashMap, HashSet};

/// What the comparison needs of a unit's original preprocessed text: a hash
/// of every top-level item, in order, and of its emitting items, sorted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    items: Vec<u64>,
    roots: Vec<u64>,
}

impl Summary {
    /// Summarizes preprocessed C `text`.
    pub fn of(text: &[u8]) -> Summary {
        let tokens: Vec<&[u8]> = Tokens::new(text).collect();
        let items = items(&tokens);
        let mut roots: Vec<u64> = items.iter().filter(|i| i.root).map(|i| i.hash).collect();
        roots.sort_unstable();
        Summary {
            items: items.iter().map(|i| i.hash).collect(),
            roots,
        }
    }
}

/// Whether the unit whose original text `original` summarizes can compile
/// to other code from the preprocessed text `patched`.
pub fn differs(original: &Summary, patched: &[u8]) -> bool {
    let tokens: Vec<&[u8]> = Tokens::new(patched).collect();
    let items = items(&tokens);
    if items.len() == original.items.len()
        && items.iter().zip(&original.items).all(|(i, &h)| i.hash == h)
    {
        return false;
    }
    let mut roots: Vec<u64> = items.iter().filter(|i| i.root).map(|i| i.hash).collect();
    roots.sort_unstable();
    if roots != original.roots {
        return true; // an emitting item changed, came or went
    }
    let before: HashSet<u64> = original.items.iter().copied().collect();
    let mut definers: HashMap<&[u8], Vec<usize>> = HashMap::new();
    for (n, item) in items.iter().enumerate() {
        for name in &item.names {
            definers.entry(name).or_default().push(n);
        }
    }
    let mut seen = vec![false; items.len()];
    let mut queue: Vec<usize> = (0..items.len()).filter(|&n| items[n].root).collect();
    for &n in &queue {
        seen[n] = true;
    }
    while let Some(n) = queue.pop() {
        if !before.contains(&items[n].hash) {
            return true;
        }
        for t in &tokens[items[n].span.clone()] {
            let Some(ds) = definers.get(t) else {
                continue;
            };
            for &d in ds {
                if !seen[d] {
                    seen[d] = true;
                    queue.push(d);
                }
            }
        }
    }
    false
}

/// One top-level item: a function definition, or a declaration up to its `;`.
pub(crate) struct Item<'a> {
    pub(crate) span: std::ops::Range<usize>,
    pub(crate) hash: u64,
    /// Emits code or data of its own.
    pub(crate) root: bool,
    /// The names it declares or defines (a superset).
    pub(crate) names: Vec<&'a [u8]>,
}

/// Words that take a parenthesized group which is not a declarator.
pub(crate) const GROUP_WORDS: &[&[u8]] = &[
    b"__attribute__",
    b"__attribute",
    b"__declspec",
    b"asm",
    b"__asm__",
    b"__asm",
    b"typeof",
    b"__typeof__",
    b"__typeof",
    b"_Alignas",
    b"__alignof__",
    b"_Alignof",
    b"sizeof",
    b"_Static_assert",
    b"__builtin_offsetof",
    b"_Generic",
];

const KEYWORDS: &[&[u8]] = &[
    b"auto",
    b"char",
    b"const",
    b"double",
    b"enum",
    b"extern",
    b"float",
    b"inline",
    b"int",
    b"long",
    b"register",
    b"restrict",
    b"short",
    b"signed",
    b"static",
    b"struct",
    b"typedef",
    b"union",
    b"unsigned",
    b"void",
    b"volatile",
    b"_Bool",
    b"_Complex",
    b"_Atomic",
    b"_Noreturn",
    b"_Thread_local",
    b"__extension__",
    b"__inline",
    b"__inline__",
    b"__restrict",
    b"__restrict__",
    b"__volatile__",
    b"__volatile",
    b"__const",
    b"__const__",
    b"__signed__",
    b"__signed",
    b"__label__",
    b"__int128",
    b"__auto_type",
    b"__seg_gs",
    b"__seg_fs",
];

pub(crate) fn is_ident(t: &[u8]) -> bool {
    t.first()
        .is_some_and(|&b| b.is_ascii_alphabetic() || b == b'_' || b == b'$')
}

pub(crate) fn is_name(t: &[u8]) -> bool {
    is_ident(t) && !KEYWORDS.contains(&t) && !GROUP_WORDS.contains(&t)
}

/// When `tokens[i]` takes a group that is not a declarator (`__attribute__
/// ((…))`, `typeof(…)`, `asm(…)`): the index just past that group.
pub(crate) fn word_group_end(tokens: &[&[u8]], i: usize) -> Option<usize> {
    (GROUP_WORDS.contains(&tokens[i]) && tokens.get(i + 1) == Some(&&b"("[..]))
        .then(|| close(tokens, i + 1))
}

/// The index just past the group opened at `open` (a `(`, `[` or `{`).
pub(crate) fn close(tokens: &[&[u8]], open: usize) -> usize {
    let mut depth = 0usize;
    for (i, t) in tokens.iter().enumerate().skip(open) {
        match *t {
            b"(" | b"[" | b"{" => depth += 1,
            b")" | b"]" | b"}" => {
                depth = depth.saturating_sub(1);
                if depth == 0 {
                    return i + 1;
                }
            }
            _ => {}
        }
    }
    tokens.len()
}

pub(crate) fn fnv(tokens: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for t in tokens {
        for &b in t.iter().chain(&[0xff]) {
            h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}

/// Cuts the token stream into top-level items and classifies each.
pub(crate) fn items<'a>(tokens: &[&'a [u8]]) -> Vec<Item<'a>> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut depth = 0usize;
    let mut body = false;
    for (i, t) in tokens.iter().enumerate() {
        match *t {
            b"(" | b"[" => depth += 1,
            b")" | b"]" => depth = depth.saturating_sub(1),
            b"{" => {
                if depth == 0 && is_function_head(&tokens[start..i]) {
                    body = true;
                }
                depth += 1;
            }
            b"}" => {
                depth = depth.saturating_sub(1);
                if depth == 0 && body {
                    out.push(function(tokens, start..i + 1));
                    start = i + 1;
                    body = false;
                }
            }
            b";" if depth == 0 => {
                if i > start {
                    out.push(declaration(tokens, start..i + 1));
                }
                start = i + 1;
            }
            _ => {}
        }
    }
    if start < tokens.len() {
        // Unterminated: cannot be classified, so it emits.
        let span = start..tokens.len();
        out.push(Item {
            hash: fnv(&tokens[span.clone()]),
            span,
            root: true,
            names: Vec::new(),
        });
    }
    out
}

/// A head (the tokens before a top-level `{`) of a function definition has
/// a parenthesized group after a name that is not an attribute's, a
/// `typeof`'s or an `asm`'s.
fn is_function_head(head: &[&[u8]]) -> bool {
    let mut i = 0;
    while i < head.len() {
        match head[i] {
            b"(" => {
                if i > 0 && is_ident(head[i - 1]) && !GROUP_WORDS.contains(&head[i - 1]) {
                    return true;
                }
                i = close(head, i);
            }
            b"[" => i = close(head, i),
            _ => i += 1,
        }
    }
    false
}

fn function<'a>(tokens: &[&'a [u8]], span: std::ops::Range<usize>) -> Item<'a> {
    let all = &tokens[span.clone()];
    let head_len = all.iter().position(|t| *t == b"{").unwrap_or(all.len());
    let head = &all[..head_len];
    let mut names = Vec::new();
    let mut i = 0;
    while i < head.len() {
        let t = head[i];
        if let Some(end) = word_group_end(head, i) {
            i = end;
            continue;
        }
        if is_name(t) && head.get(i + 1) == Some(&&b"("[..]) {
            names.push(t);
        }
        i += 1;
    }
    let inline = all[..head_len].iter().any(|t| {
        matches!(
            *t,
            b"inline"
                | b"__inline"
                | b"__inline__"
                | b"always_inline"
                | b"__always_inline__"
                | b"__always_inline"
        )
    });
    let linkage = head.iter().any(|t| matches!(*t, b"static" | b"extern"));
    let alias = head.iter().any(|t| matches!(*t, b"alias" | b"__alias__"));
    Item {
        hash: fnv(all),
        root: !(inline && linkage) || alias || names.is_empty(),
        names,
        span,
    }
}

fn declaration<'a>(tokens: &[&'a [u8]], span: std::ops::Range<usize>) -> Item<'a> {
    let all = &tokens[span.clone()];
    let mut names = Vec::new();
    let (mut variable, mut typedef, mut external, mut initialized) = (false, false, false, false);
    let mut pragma = false;
    // (depth in (), [] and {}; whether the brace group is an enum's body)
    let mut parens = 0usize;
    let mut braces: Vec<bool> = Vec::new();
    // Per open paren: whether its group starts with `*` (a declarator).
    let mut groups: Vec<bool> = Vec::new();
    let mut enum_next = false;
    let mut i = 0;
    while i < all.len() {
        let t = all[i];
        let next = all.get(i + 1).copied().unwrap_or(b"");
        if let Some(end) = word_group_end(all, i) {
            i = end;
            continue;
        }
        match t {
            b"(" | b"[" => {
                parens += 1;
                groups.push(t == b"(" && matches!(next, b"*" | b"^"));
            }
            b")" | b"]" => {
                parens = parens.saturating_sub(1);
                groups.pop();
            }
            b"{" => {
                braces.push(enum_next);
                enum_next = false;
            }
            b"}" => {
                braces.pop();
            }
            b"=" if parens == 0 && braces.is_empty() => initialized = true,
            b"typedef" if braces.is_empty() => typedef = true,
            b"extern" if braces.is_empty() => external = true,
            b"struct" | b"union" | b"enum" if parens == 0 => {
                // A tag is a name when this item defines it.
                let skip = |mut j: usize| {
                    while let Some(end) = all.get(j).and_then(|_| word_group_end(all, j)) {
                        j = end;
                    }
                    j
                };
                let j = skip(i + 1);
                let tag = all.get(j).copied().filter(|t| is_name(t));
                let k = skip(j + usize::from(tag.is_some()));
                if all.get(k) == Some(&&b"{"[..]) {
                    names.extend(tag.filter(|_| braces.is_empty()));
                    enum_next = t == b"enum";
                }
                i = k;
                continue;
            }
            _ if t.starts_with(b"#") => pragma = true,
            _ if is_name(t) => {
                // Inside parentheses only a `(*name)` declarator, never a
                // parameter list.
                let declarator = braces.is_empty() && groups.iter().all(|&g| g);
                let enumerator = braces.last() == Some(&true) && parens == 0;
                if enumerator && matches!(next, b"=" | b"," | b"}") {
                    names.push(t);
                } else if declarator {
                    match next {
                        b"(" => names.push(t),
                        b";" | b"," | b"=" | b"[" | b":" | b")" => {
                            names.push(t);
                            variable = true;
                        }
                        n if GROUP_WORDS.contains(&n) => {
                            names.push(t);
                            variable = true;
                        }
                        _ => {}
                    }
                }
            }
            _ => {}
        }
        i += 1;
    }
    let assertion = matches!(all.first().copied(), Some(b"_Static_assert"))
        || all.starts_with(&[b"__extension__", b"_Static_assert"]);
    let alias = all.iter().any(|t| matches!(*t, b"alias" | b"__alias__"));
    let declares_only = typedef || (external && !initialized) || (!variable && !names.is_empty());
    Item {
        hash: fnv(all),
        root: pragma || alias || !(assertion || declares_only),
        names,
        span,
    }
}

/// The tokens of preprocessed C: identifiers, numbers, literals and
/// punctuators; line markers dropped; a `#pragma` line kept as one token.
struct Tokens<'a> {
    text: &'a [u8],
    pos: usize,
    line_start: bool,
}

impl<'a> Tokens<'a> {
    fn new(text: &'a [u8]) -> Self {
        Tokens {
            text,
            pos: 0,
            line_start: true,
        }
    }
}

impl<'a> Iterator for Tokens<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        let t = self.text;
        loop {
            let b = *t.get(self.pos)?;
            if b == b'\n' {
                self.line_start = true;
                self.pos += 1;
                continue;
            }
            if b.is_ascii_whitespace() {
                self.pos += 1;
                continue;
            }
            let start = self.pos;
            if b == b'#' && self.line_start {
                let end = t[start..]
                    .iter()
                    .position(|&c| c == b'\n')
                    .map_or(t.len(), |n| start + n);
                self.pos = end;
                let rest = t[start + 1..end].trim_ascii_start();
                if rest.first().is_some_and(u8::is_ascii_digit) || rest.starts_with(b"line") {
                    continue; // a line marker
                }
                return Some(t[start..end].trim_ascii_end());
            }
            self.line_start = false;
            let end = token_end(t, start);
            self.pos = end;
            return Some(&t[start..end]);
        }
    }
}

/// Where the token of C text `t` starting at `start` ends: identifiers,
/// pp-numbers (an exponent's sign included), string and character literals,
/// `##`, an operator with `=`, else one byte. Source and preprocessed text
/// alike ([`crate::mentions`] reads the source).
pub(crate) fn token_end(t: &[u8], start: usize) -> usize {
    let b = t[start];
    let word = |c: u8| c.is_ascii_alphanumeric() || c == b'_' || c == b'$';
    if word(b) && !b.is_ascii_digit() {
        return start + t[start..].iter().take_while(|&&c| word(c)).count();
    }
    if b.is_ascii_digit() || (b == b'.' && t.get(start + 1).is_some_and(u8::is_ascii_digit)) {
        let mut e = start + 1;
        while e < t.len() {
            let c = t[e];
            let exponent =
                matches!(c, b'+' | b'-') && matches!(t[e - 1], b'e' | b'E' | b'p' | b'P');
            if !(exponent || word(c) || c == b'.') {
                break;
            }
            e += 1;
        }
        return e;
    }
    if b == b'"' || b == b'\'' {
        let mut e = start + 1;
        while e < t.len() && t[e] != b && t[e] != b'\n' {
            e += if t[e] == b'\\' { 2 } else { 1 };
        }
        return (e + 1).min(t.len());
    }
    if b == b'#' && t.get(start + 1) == Some(&b'#') {
        return start + 2;
    }
    if t.get(start + 1) == Some(&b'=') && b"=!<>+-*/%&|^".contains(&b) {
        return start + 2;
    }
    start + 1
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toks(s: &str) -> Vec<String> {
        Tokens::new(s.as_bytes())
            .map(|t| String::from_utf8_lossy(t).into_owned())
            .collect()
    }

    fn names(s: &str) -> Vec<(Vec<String>, bool)> {
        let tokens: Vec<&[u8]> = Tokens::new(s.as_bytes()).collect();
        items(&tokens)
            .iter()
            .map(|i| {
                (
                    i.names
                        .iter()
                        .map(|n| String::from_utf8_lossy(n).into_owned())
                        .collect(),
                    i.root,
                )
            })
            .collect()
    }

    #[test]
    fn tokens_drop_line_markers_and_keep_pragmas() {
        let t = toks(
            "# 1 \"a.h\" 1\nint a == b;\n#pragma GCC diagnostic push\nx=\"s;\\\"\" 'c' 1.5e+3 a->b",
        );
        assert_eq!(
            t,
            [
                "int",
                "a",
                "==",
                "b",
                ";",
                "#pragma GCC diagnostic push",
                "x",
                "=",
                "\"s;\\\"\"",
                "'c'",
                "1.5e+3",
                "a",
                "-",
                ">",
                "b"
            ]
        );
    }

    #[test]
    fn items_are_named_and_classified() {
        let s = "static inline __attribute__((always_inline)) int foo(struct sk_buff *skb) { return bar(skb); }\n\
                 int baz(struct net_device *dev, int (*cb)(int));\n\
                 extern int counter;\n\
                 struct point { int x; struct inner { int y; } in; };\n\
                 enum mode { MODE_A = 1, MODE_B, };\n\
                 typedef int (*handler_t)(int);\n\
                 static const int table[2] = { 1, 2 };\n\
                 int plain(void) { return 0; }\n\
                 void (*hook)(void);\n\
                 _Static_assert(sizeof(int) == 4, \"x\");\n\
                 asm(\".pushsection .foo\");\n\
                 struct __attribute__((packed)) wire { int a; };\n\
                 extern inline int gnu(void) { return 1; }\n\
                 inline int outofline(void) { return 1; }\n";
        let n = names(s);
        let want: Vec<(Vec<&str>, bool)> = vec![
            (vec!["foo"], false),
            (vec!["baz"], false),
            (vec!["counter"], false),
            (vec!["point"], false),
            (vec!["mode", "MODE_A", "MODE_B"], false),
            (vec!["handler_t"], false),
            (vec!["table"], true),
            (vec!["plain"], true),
            (vec!["hook"], true),
            (vec![], false),
            (vec![], true),
            (vec!["wire"], false),
            (vec!["gnu"], false),
            (vec!["outofline"], true),
        ];
        let got: Vec<(Vec<&str>, bool)> = n
            .iter()
            .map(|(v, r)| (v.iter().map(String::as_str).collect(), *r))
            .collect();
        assert_eq!(got, want);
    }

    const BASE: &str = "static inline int helper(int x) { return x + 1; }\n\
                        static inline int unused(int x) { return x * 2; }\n\
                        struct cfg { int a; };\n\
                        static inline int via(struct cfg *c) { return helper(c->a); }\n";

    fn unit(header: &str, body: &str) -> String {
        format!("# 1 \"x.h\" 1\n{header}# 3 \"x.c\" 2\n{body}")
    }

    #[test]
    fn a_change_reaches_only_the_units_that_use_it() {
        let changed = BASE.replace("x * 2", "x * 3");
        let user = "int f(struct cfg *c) { return unused(c->a); }\n";
        let other = "int g(struct cfg *c) { return via(c); }\n";
        let o = Summary::of(unit(BASE, other).as_bytes());
        assert!(!differs(&o, unit(&changed, other).as_bytes()));
        let o = Summary::of(unit(BASE, user).as_bytes());
        assert!(differs(&o, unit(&changed, user).as_bytes()));
        // Through another inline: helper ← via ← g.
        let changed = BASE.replace("x + 1", "x + 2");
        let o = Summary::of(unit(BASE, other).as_bytes());
        assert!(differs(&o, unit(&changed, other).as_bytes()));
        // A type change reaches the users of the type.
        let changed = BASE.replace("int a;", "long a;");
        assert!(differs(&o, unit(&changed, other).as_bytes()));
        let none = "int h(void) { return 0; }\n";
        let o = Summary::of(unit(BASE, none).as_bytes());
        assert!(!differs(&o, unit(&changed, none).as_bytes()));
    }

    #[test]
    fn emitting_items_of_a_header_count() {
        let with_table = format!("{BASE}static int seen[4] = {{ 0 }};\n");
        let changed = with_table.replace("{ 0 }", "{ 1 }");
        let body = "int h(void) { return 0; }\n";
        let o = Summary::of(unit(&with_table, body).as_bytes());
        assert!(differs(&o, unit(&changed, body).as_bytes()));
        // An added out-of-line function emits code.
        let added = format!("{BASE}int extra(void) {{ return 1; }}\n");
        let o = Summary::of(unit(BASE, body).as_bytes());
        assert!(differs(&o, unit(&added, body).as_bytes()));
        // An added prototype or macro-free declaration alone does not.
        let declared = format!("{BASE}int extra(int x);\n");
        assert!(!differs(&o, unit(&declared, body).as_bytes()));
    }

    #[test]
    fn an_enumerator_reaches_its_users() {
        let e = "enum { LIMIT = 4, OTHER };\n";
        let body = "int h(void) { return LIMIT; }\n";
        let o = Summary::of(unit(e, body).as_bytes());
        assert!(differs(&o, unit(&e.replace("= 4", "= 5"), body).as_bytes()));
        let body = "int h(void) { return 0; }\n";
        let o = Summary::of(unit(e, body).as_bytes());
        assert!(!differs(
            &o,
            unit(&e.replace("= 4", "= 5"), body).as_bytes()
        ));
    }
}
