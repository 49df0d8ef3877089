//! Which files of the tree can carry a header change into a unit's code,
//! read from the source text, macros unexpanded: for a header so many units
//! include that preprocessing each ([`crate::reach`]) would take too long.
//!
//! The changed header's items are compared before and after; their names
//! are *hot*. Every file the build reads is cut into items: macro
//! definitions, functions, declarations. An item that names a hot name
//! (or sits under a `#if` that does) makes its own names hot when it only
//! declares (a macro, a `static inline`, a type, a prototype), and makes
//! its file hot when it emits code (anything else; every item of a `.c`
//! file). A unit can compile differently only if it includes a hot file.
//!
//! Names built by token pasting: a macro whose body pastes (`##`), or
//! names such a macro, is a paster; an item naming a paster is taken to
//! name every hot name one of its identifiers (three letters or more) is
//! part of (`helper_##n` with `n` = `one` reaches `helper_one`).
//!
//! Doubt gives up or over-collects, never drops: a changed `#if` or
//! `#include`, or a changed item that is a macro invocation (its names
//! are made by the macro), and the answer is "every includer".

use std::collections::{HashMap, HashSet};
use std::path::Path;

use crate::reach::{self, close, is_ident, is_name};

/// The files among `files` (tree-relative, read from `root`) that can carry
/// the change of `header` from `before` to `after` into a unit's code, or
/// `None` when the change cannot be read this way.
pub fn hot_files(
    root: &Path,
    files: &[&str],
    changed: &[(String, Vec<u8>, Vec<u8>)],
) -> Option<HashSet<String>> {
    let mut names = Names::default();
    let mut hot: Vec<u32> = Vec::new();
    for (_, before, after) in changed {
        for n in changed_names(before, after)? {
            hot.push(names.id(&n));
        }
    }
    // One file's text at a time: the nodes keep interned names only.
    let mut nodes = Vec::new();
    for (i, f) in files.iter().enumerate() {
        // The changed headers count as they are after the change too.
        let own = changed.iter().find(|(h, ..)| h == f).map(|c| c.2.clone());
        let Some(text) = own.or_else(|| std::fs::read(root.join(f)).ok()) else {
            continue;
        };
        let source = f.ends_with(".c");
        nodes.extend(
            file_nodes(&text, source, &mut names)
                .into_iter()
                .map(|n| (i, n)),
        );
    }
    for (h, before, _) in changed {
        if let Some(i) = files.iter().position(|f| f == h) {
            nodes.extend(
                file_nodes(before, false, &mut names)
                    .into_iter()
                    .map(|n| (i, n)),
            );
        }
    }
    let paste = Pasting::new(&nodes, &names);
    let mut is_hot = vec![false; names.len()];
    let mut hot_file = vec![false; files.len()];
    let mut done = vec![false; nodes.len()];
    let mut fresh = hot;
    while !fresh.is_empty() {
        for &h in &fresh {
            is_hot[h as usize] = true;
        }
        // Nodes that can build a fresh name by pasting name it.
        let mut pasted = vec![false; nodes.len()];
        for &h in &fresh {
            for k in paste.builders(names.text(h), &names, &nodes) {
                pasted[k] = true;
            }
        }
        fresh = Vec::new();
        for (k, (file, node)) in nodes.iter().enumerate() {
            if done[k] || hot_file[*file] {
                continue;
            }
            if !pasted[k] && !node.mentions.iter().any(|&m| is_hot[m as usize]) {
                continue;
            }
            done[k] = true;
            if node.emits {
                hot_file[*file] = true;
            } else {
                fresh.extend(node.names.iter().filter(|&&n| !is_hot[n as usize]));
            }
        }
        fresh.sort_unstable();
        fresh.dedup();
    }
    Some(
        files
            .iter()
            .zip(hot_file)
            .filter(|(_, h)| *h)
            .map(|(f, _)| (*f).to_owned())
            .collect(),
    )
}

/// Interned identifiers.
#[derive(Default)]
struct Names {
    ids: HashMap<Vec<u8>, u32>,
    texts: Vec<Vec<u8>>,
}

impl Names {
    fn id(&mut self, t: &[u8]) -> u32 {
        if let Some(&i) = self.ids.get(t) {
            return i;
        }
        let i = self.texts.len() as u32;
        self.ids.insert(t.to_vec(), i);
        self.texts.push(t.to_vec());
        i
    }
    fn text(&self, i: u32) -> &[u8] {
        &self.texts[i as usize]
    }
    fn len(&self) -> usize {
        self.texts.len()
    }
}

/// One item of a file, as the closure sees it.
struct Node {
    names: Vec<u32>,
    mentions: Vec<u32>,
    emits: bool,
    /// The numbers it has (pasting can make names of them: `read_4`).
    numbers: Vec<u32>,
    /// A macro whose body pastes tokens.
    pastes: bool,
    /// A macro definition.
    macro_def: bool,
}

/// What token pasting can build: the macros that paste (or name one that
/// does, transitively), the words each can contribute, and the nodes that
/// name one.
struct Pasting {
    /// By name: a pasting macro's words (its body's, and those of the
    /// pasting macros it names), sorted.
    words: HashMap<u32, Vec<u32>>,
    /// By word: the pasting nodes that have it among their own words, or
    /// name a pasting macro that contributes it.
    by_word: HashMap<u32, Vec<usize>>,
    /// By node: its pasting macros.
    uses: HashMap<usize, Vec<u32>>,
}

impl Pasting {
    fn new(nodes: &[(usize, Node)], names: &Names) -> Pasting {
        let mut is = vec![false; names.len()];
        for (_, n) in nodes.iter().filter(|(_, n)| n.pastes) {
            is[n.names[0] as usize] = true;
        }
        let macros: Vec<&Node> = nodes
            .iter()
            .map(|(_, n)| n)
            .filter(|n| n.macro_def)
            .collect();
        loop {
            let mut more = false;
            for n in &macros {
                let name = n.names[0] as usize;
                if !is[name] && n.mentions.iter().any(|&m| is[m as usize]) {
                    is[name] = true;
                    more = true;
                }
            }
            if !more {
                break;
            }
        }
        // A pasting macro's words, through the pasting macros it names.
        let mut own: HashMap<u32, Vec<u32>> = HashMap::new();
        for n in macros.iter().filter(|n| is[n.names[0] as usize]) {
            own.entry(n.names[0])
                .or_default()
                .extend(n.mentions.iter().chain(&n.numbers));
        }
        let mut words: HashMap<u32, Vec<u32>> = HashMap::new();
        for &p in own.keys() {
            let mut seen = HashSet::from([p]);
            let mut stack = vec![p];
            let mut all = Vec::new();
            while let Some(q) = stack.pop() {
                for &w in own.get(&q).into_iter().flatten() {
                    all.push(w);
                    if own.contains_key(&w) && seen.insert(w) {
                        stack.push(w);
                    }
                }
            }
            all.sort_unstable();
            all.dedup();
            words.insert(p, all);
        }
        let mut by_word: HashMap<u32, Vec<usize>> = HashMap::new();
        let mut uses: HashMap<usize, Vec<u32>> = HashMap::new();
        for (k, (_, n)) in nodes.iter().enumerate() {
            let used: Vec<u32> = n
                .mentions
                .iter()
                .copied()
                .filter(|&m| is[m as usize])
                .collect();
            if used.is_empty() {
                continue;
            }
            let mut all: Vec<u32> = n.mentions.iter().chain(&n.numbers).copied().collect();
            for p in &used {
                all.extend(words.get(p).into_iter().flatten());
            }
            all.sort_unstable();
            all.dedup();
            for w in all {
                by_word.entry(w).or_default().push(k);
            }
            uses.insert(k, used);
        }
        Pasting {
            words,
            by_word,
            uses,
        }
    }

    /// Whether node `k` has word `w` to paste with.
    fn has(&self, k: usize, node: &Node, w: u32) -> bool {
        node.mentions.binary_search(&w).is_ok()
            || node.numbers.binary_search(&w).is_ok()
            || self.uses.get(&k).into_iter().flatten().any(|p| {
                self.words
                    .get(p)
                    .is_some_and(|ws| ws.binary_search(&w).is_ok())
            })
    }

    /// The pasting nodes whose words can be pasted into `name`.
    fn builders(&self, name: &[u8], names: &Names, nodes: &[(usize, Node)]) -> Vec<usize> {
        let n = name.len();
        // The known words at each position of the name.
        let pieces: Vec<Vec<(usize, u32)>> = (0..n)
            .map(|a| {
                (a + 1..=n)
                    .filter_map(|b| names.ids.get(&name[a..b]).map(|&id| (b, id)))
                    .collect()
            })
            .collect();
        let mut out = Vec::new();
        let firsts = pieces.first().into_iter().flatten();
        let candidates: HashSet<usize> = firsts
            .flat_map(|&(_, id)| self.by_word.get(&id).into_iter().flatten().copied())
            .collect();
        for k in candidates {
            let node = &nodes[k].1;
            let mut ok = vec![false; n + 1];
            ok[0] = true;
            for a in 0..n {
                if !ok[a] {
                    continue;
                }
                for &(b, id) in &pieces[a] {
                    if !ok[b] && self.has(k, node, id) {
                        ok[b] = true;
                    }
                }
            }
            if ok[n] {
                out.push(k);
            }
        }
        out
    }
}

/// A directive: its word (`define`, `if`…) and the rest of its line.
struct Directive<'a> {
    /// Where it stands among the file's C tokens.
    at: usize,
    word: &'a [u8],
    rest: Vec<&'a [u8]>,
    /// `#define f(x)`: the name is followed by `(` with no space.
    function_like: bool,
}

/// A file's C tokens (directives left out) and its directives.
fn lex(text: &[u8]) -> (Vec<&[u8]>, Vec<Directive<'_>>) {
    let mut l = Lexer {
        t: text,
        pos: 0,
        line_start: true,
    };
    let mut tokens = Vec::new();
    let mut directives = Vec::new();
    while let Some(x) = l.next() {
        match x {
            Lex::Tok(t) => tokens.push(t),
            Lex::Eol => {}
            Lex::Hash => {
                let mut line = Vec::new();
                while let Some(Lex::Tok(t)) = l.next() {
                    line.push(t);
                }
                let Some((&word, rest)) = line.split_first() else {
                    continue;
                };
                let function_like = rest.len() > 1
                    && rest[1] == b"("
                    && rest[0].as_ptr_range().end == rest[1].as_ptr();
                directives.push(Directive {
                    at: tokens.len(),
                    word,
                    rest: rest.to_vec(),
                    function_like,
                });
            }
        }
    }
    (tokens, directives)
}

/// A macro definition's name, parameters and body.
/// Tokens of a source text.
type Words<'a> = Vec<&'a [u8]>;

fn macro_parts<'a>(d: &Directive<'a>) -> Option<(&'a [u8], Words<'a>, Words<'a>)> {
    let (&name, rest) = d.rest.split_first()?;
    if !d.function_like {
        return Some((name, Vec::new(), rest.to_vec()));
    }
    let end = close(rest, 0);
    let params = rest[..end]
        .iter()
        .copied()
        .filter(|t| is_ident(t))
        .collect();
    Some((name, params, rest[end..].to_vec()))
}

/// A top-level item whose names the macros it invokes make: tokens before
/// its first `name(` are only storage classes, qualifiers and attributes.
fn invocation(tokens: &[&[u8]]) -> bool {
    let mut i = 0;
    while i < tokens.len() {
        let t = tokens[i];
        if let Some(end) = reach::word_group_end(tokens, i) {
            i = end;
            continue;
        }
        if is_name(t) {
            return tokens.get(i + 1) == Some(&&b"("[..]);
        }
        if !matches!(
            t,
            b"static" | b"extern" | b"inline" | b"const" | b"volatile" | b"__extension__"
        ) {
            return false;
        }
        i += 1;
    }
    false
}

/// The items of a file for the closure. In a `.c` file (`source`) every
/// item emits.
fn file_nodes(text: &[u8], source: bool, names: &mut Names) -> Vec<Node> {
    let (tokens, directives) = lex(text);
    let mut out = Vec::new();
    // Identifiers of the enclosing conditions, per #if level.
    let mut conditions: Vec<Vec<&[u8]>> = Vec::new();
    let items = reach::items(&tokens);
    let mut d = 0;
    let mut item = 0;
    // Walk directives and items in text order.
    while d < directives.len() || item < items.len() {
        let next_item_start = items.get(item).map_or(usize::MAX, |i| i.span.start);
        if d < directives.len() && directives[d].at <= next_item_start {
            let dir = &directives[d];
            d += 1;
            let ids = || dir.rest.iter().copied().filter(|t| is_ident(t));
            match dir.word {
                b"if" | b"ifdef" | b"ifndef" => conditions.push(ids().collect()),
                b"elif" | b"elifdef" | b"elifndef" => {
                    if let Some(top) = conditions.last_mut() {
                        top.extend(ids());
                    }
                }
                b"endif" => {
                    conditions.pop();
                }
                b"define" => {
                    let Some((name, params, body)) = macro_parts(dir) else {
                        continue;
                    };
                    let pastes = body.contains(&&b"##"[..]);
                    if !pastes
                        && !conditions
                            .iter()
                            .flatten()
                            .chain(&body)
                            .any(|t| is_ident(t))
                    {
                        continue; // a constant: nothing reaches it
                    }
                    let mentions = conditions
                        .iter()
                        .flatten()
                        .copied()
                        .chain(body.iter().copied().filter(|t| !params.contains(t)));
                    out.push(node(names, &[name], mentions, source, Some(pastes)));
                }
                _ => {}
            }
            continue;
        }
        let it = &items[item];
        item += 1;
        let span = &tokens[it.span.clone()];
        // Conditions inside the item (a function body's #ifdef) count too.
        let inner = directives[d..]
            .iter()
            .take_while(|x| x.at < it.span.end)
            .flat_map(|x| x.rest.iter().copied());
        let mentions = conditions
            .iter()
            .flatten()
            .copied()
            .chain(span.iter().copied())
            .chain(inner);
        let guessed = !it.names.is_empty() && !invocation(span);
        let item_names: Vec<&[u8]> = if guessed {
            it.names.clone()
        } else {
            span.iter().copied().filter(|t| is_name(t)).collect()
        };
        let emits = source || it.root || !guessed;
        out.push(node(names, &item_names, mentions, emits, None));
    }
    out
}

fn node<'a>(
    names: &mut Names,
    own: &[&[u8]],
    words: impl Iterator<Item = &'a [u8]>,
    emits: bool,
    pastes: Option<bool>,
) -> Node {
    let (mut m, mut numbers) = (Vec::new(), Vec::new());
    for w in words {
        if is_ident(w) {
            m.push(names.id(w));
        } else if w.first().is_some_and(u8::is_ascii_digit) {
            numbers.push(names.id(w));
        }
    }
    m.sort_unstable();
    m.dedup();
    numbers.sort_unstable();
    numbers.dedup();
    Node {
        names: own.iter().map(|t| names.id(t)).collect(),
        mentions: m,
        numbers,
        emits,
        pastes: pastes == Some(true),
        macro_def: pastes.is_some(),
    }
}

/// The names the change of a header from `before` to `after` alters, or
/// `None` when it cannot be told from the text (a changed `#if` or
/// `#include`, or a changed macro invocation).
fn changed_names(before: &[u8], after: &[u8]) -> Option<Vec<Vec<u8>>> {
    let (b, a) = (header_items(before)?, header_items(after)?);
    let count = |items: &[(u64, Option<Vec<Vec<u8>>>)]| {
        let mut m: HashMap<u64, i64> = HashMap::new();
        for (h, _) in items {
            *m.entry(*h).or_default() += 1;
        }
        m
    };
    let (cb, ca) = (count(&b), count(&a));
    let mut out = Vec::new();
    for (items, this, other) in [(&b, &cb, &ca), (&a, &ca, &cb)] {
        for (h, names) in items.iter() {
            if other.get(h).copied().unwrap_or(0) < this[h] {
                out.extend(names.clone()?);
            }
        }
    }
    out.sort();
    out.dedup();
    Some(out)
}

/// A header's items: hash, and the names it defines (`None`: the item is
/// not one whose names the text tells). An item's hash covers the
/// conditions it sits under, so a changed `#if` changes the items under it,
/// and an `#if` added around new lines changes nothing else.
#[allow(clippy::type_complexity)]
fn header_items(text: &[u8]) -> Option<Vec<(u64, Option<Vec<Vec<u8>>>)>> {
    let (tokens, directives) = lex(text);
    let items = reach::items(&tokens);
    let line_hash = |d: &Directive| {
        let mut line = vec![d.word];
        line.extend(&d.rest);
        reach::fnv(&line) ^ 0x9e37_79b9_7f4a_7c15
    };
    // A directive inside an item (an #ifdef in a function body) is part of
    // that item.
    let inside = |d: &Directive| {
        items
            .iter()
            .position(|it| it.span.start < d.at && d.at < it.span.end)
    };
    let mut out = Vec::new();
    let mut conditions: Vec<u64> = Vec::new();
    let context = |c: &[u64]| c.iter().fold(0u64, |h, &x| h.rotate_left(13) ^ x);
    let (mut d, mut n) = (0, 0);
    while d < directives.len() || n < items.len() {
        let next_item = items.get(n).map_or(usize::MAX, |i| i.span.start);
        if d < directives.len() && directives[d].at <= next_item {
            let dir = &directives[d];
            d += 1;
            if inside(dir).is_some() {
                continue;
            }
            match dir.word {
                b"if" | b"ifdef" | b"ifndef" => conditions.push(line_hash(dir)),
                b"elif" | b"elifdef" | b"elifndef" | b"else" => {
                    if let Some(top) = conditions.last_mut() {
                        *top = top.rotate_left(3) ^ line_hash(dir);
                    }
                }
                b"endif" => {
                    conditions.pop();
                }
                b"define" | b"undef" => out.push((
                    line_hash(dir) ^ context(&conditions),
                    dir.rest.first().map(|n| vec![n.to_vec()]),
                )),
                // graft's own `#line` directives (the patched copy keeps its
                // numbering), #error and #warning make no code.
                b"line" | b"error" | b"warning" => {}
                // #include, #pragma…: a change the text cannot tell.
                _ => out.push((line_hash(dir) ^ context(&conditions), None)),
            }
            continue;
        }
        let it = &items[n];
        let span = &tokens[it.span.clone()];
        let names = (!it.names.is_empty() && !invocation(span))
            .then(|| it.names.iter().map(|n| n.to_vec()).collect());
        let hash = directives
            .iter()
            .filter(|x| x.word != b"line" && inside(x) == Some(n))
            .fold(it.hash, |h, x| h.rotate_left(7) ^ line_hash(x));
        out.push((hash ^ context(&conditions).rotate_left(1), names));
        n += 1;
    }
    Some(out)
}

enum Lex<'a> {
    Tok(&'a [u8]),
    Eol,
    /// A `#` that starts a line: a directive follows.
    Hash,
}

/// Source text: comments dropped, line continuations joined.
struct Lexer<'a> {
    t: &'a [u8],
    pos: usize,
    line_start: bool,
}

impl<'a> Lexer<'a> {
    fn next(&mut self) -> Option<Lex<'a>> {
        let t = self.t;
        loop {
            let b = *t.get(self.pos)?;
            let next = t.get(self.pos + 1).copied();
            match b {
                b'\n' => {
                    self.pos += 1;
                    self.line_start = true;
                    return Some(Lex::Eol);
                }
                b'\\' if next == Some(b'\n') => self.pos += 2,
                b'\\' if next == Some(b'\r') && t.get(self.pos + 2) == Some(&b'\n') => {
                    self.pos += 3
                }
                b'/' if next == Some(b'*') => {
                    let end = t[self.pos + 2..].windows(2).position(|w| w == b"*/");
                    self.pos = end.map_or(t.len(), |e| self.pos + 2 + e + 2);
                }
                b'/' if next == Some(b'/') => {
                    let end = t[self.pos..].iter().position(|&c| c == b'\n');
                    self.pos = end.map_or(t.len(), |e| self.pos + e);
                }
                b'#' if self.line_start => {
                    self.pos += 1;
                    self.line_start = false;
                    return Some(Lex::Hash);
                }
                _ if b.is_ascii_whitespace() => self.pos += 1,
                _ => {
                    self.line_start = false;
                    let start = self.pos;
                    let end = reach::token_end(t, start);
                    self.pos = end;
                    return Some(Lex::Tok(&t[start..end]));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strs(v: Option<Vec<Vec<u8>>>) -> Option<Vec<String>> {
        v.map(|v| {
            v.into_iter()
                .map(|n| String::from_utf8(n).unwrap())
                .collect()
        })
    }

    #[test]
    fn the_changed_names_of_a_header() {
        let before = b"/* c */\n#define LIMIT 4\n#define CALL(n) \\\n  helper_##n()\nstatic inline int helper_one(void) { return LIMIT; }\nint proto(struct dev *d);\n#ifdef CONFIG_X\nstruct s { int a; };\n#endif\n";
        let same = b"/* other comment */\n#define LIMIT 4\n#define CALL(n) helper_##n()\nstatic inline int helper_one(void)\n{\n\treturn LIMIT;\n}\nint proto(struct dev *d);\n#ifdef CONFIG_X\nstruct s { int a; };\n#endif\n";
        assert_eq!(strs(changed_names(before, same)), Some(vec![]));
        let body = String::from_utf8_lossy(before).replace("return LIMIT", "return LIMIT + 1");
        assert_eq!(
            strs(changed_names(before, body.as_bytes())),
            Some(vec!["helper_one".into()])
        );
        let added = String::from_utf8_lossy(before)
            .replace("#define LIMIT 4", "#define LIMIT 4\n#define NEW_ID 0x1234");
        assert_eq!(
            strs(changed_names(before, added.as_bytes())),
            Some(vec!["NEW_ID".into()])
        );
        let layout = String::from_utf8_lossy(before).replace("int a;", "int a; int b;");
        assert_eq!(
            strs(changed_names(before, layout.as_bytes())),
            Some(vec!["s".into()])
        );
        // A changed condition changes what it holds.
        let cond = String::from_utf8_lossy(before).replace("CONFIG_X", "CONFIG_Y");
        assert_eq!(
            strs(changed_names(before, cond.as_bytes())),
            Some(vec!["s".into()])
        );
        // A condition added around new lines changes only those.
        let guarded = String::from_utf8_lossy(before).replace(
            "int proto(struct dev *d);",
            "int proto(struct dev *d);\n#ifdef __KERNEL__\n#define NEW_MASK (LIMIT | 1)\n#endif",
        );
        assert_eq!(
            strs(changed_names(before, guarded.as_bytes())),
            Some(vec!["NEW_MASK".into()])
        );
        // A changed #include or an invocation cannot be read.
        let inc = format!(
            "#include <linux/other.h>\n{}",
            String::from_utf8_lossy(before)
        );
        assert_eq!(strs(changed_names(before, inc.as_bytes())), None);
        let inv = format!("{}DECLARE_THING(foo);\n", String::from_utf8_lossy(before));
        assert_eq!(strs(changed_names(before, inv.as_bytes())), None);
        // An #ifdef inside a new function's body is the function's.
        let inner = format!(
            "{}static inline int added(void)\n{{\n#ifdef CONFIG_Z\n\treturn 1;\n#else\n\treturn 0;\n#endif\n}}\n",
            String::from_utf8_lossy(before)
        );
        assert_eq!(
            strs(changed_names(before, inner.as_bytes())),
            Some(vec!["added".into()])
        );
        // And a change to it changes the function.
        let flipped = inner.replace("#ifdef CONFIG_Z", "#ifndef CONFIG_Z");
        assert_eq!(
            strs(changed_names(inner.as_bytes(), flipped.as_bytes())),
            Some(vec!["added".into()])
        );
    }

    fn hot(files: &[(&str, &str)], after: &str) -> Vec<String> {
        let dir = tempfile::tempdir().unwrap();
        for (f, t) in files {
            std::fs::write(dir.path().join(f), t).unwrap();
        }
        let names: Vec<&str> = files.iter().map(|(f, _)| *f).collect();
        let before = files[0].1.as_bytes().to_vec();
        let mut h: Vec<String> = hot_files(
            dir.path(),
            &names,
            &[(files[0].0.into(), before, after.as_bytes().to_vec())],
        )
        .expect("readable")
        .into_iter()
        .collect();
        h.sort();
        h
    }

    const X: &str = "#define SCALE 3\n#define CALL(n) helper_##n()\n#define PASTE(a, b) a##b\nstatic inline int helper_one(void) { return 1; }\nstatic inline int scaled(int x) { return x * SCALE; }\n";

    #[test]
    fn hot_files_follow_names_through_headers_and_pasting() {
        let files = [
            ("x.h", X),
            ("y.h", "static inline int twice(int x) { return scaled(x) * 2; }\n#define TWICE(x) twice(x)\n"),
            ("z.h", "static const int table[] = { 0 };\n"),
            ("a.c", "int f(void) { return TWICE(2); }\n"),
            ("b.c", "int f(void) { return CALL(one); }\n"),
            ("c.c", "int f(void) { return PASTE(helper_, one)(); }\n"),
            ("d.c", "int f(void) { return 0; }\n"),
            ("e.c", "#if SCALE > 2\nint f(void) { return 0; }\n#endif\n"),
        ];
        assert_eq!(
            hot(&files, &X.replace("SCALE 3", "SCALE 4")),
            ["a.c", "e.c"]
        );
        assert_eq!(
            hot(&files, &X.replace("return 1", "return 2")),
            ["b.c", "c.c"]
        );
        // A header that emits code from a hot name is hot itself.
        let emitting = [
            ("x.h", X),
            ("w.h", "static int seen = SCALE;\n"),
            ("d.c", "int g;\n"),
        ];
        assert_eq!(hot(&emitting, &X.replace("SCALE 3", "SCALE 4")), ["w.h"]);
    }
}
