//! The kernel's own symbol table, read from the kallsyms tables the image
//! carries (`CONFIG_KALLSYMS`), so that a kernel that is not running needs
//! nothing but its `vmlinuz`: no debuginfo, no `System.map`.
//!
//! `scripts/kallsyms.c` emits, into `.rodata`, each after an 8-byte
//! alignment (`ALGN`):
//!
//! ```text
//! kallsyms_offsets        s32 × n     (CONFIG_KALLSYMS_BASE_RELATIVE)
//! kallsyms_relative_base  u64         address of the first non-absolute symbol
//! kallsyms_num_syms       u32         n
//! kallsyms_names          n × (len: ULEB128 of 1 or 2 bytes, len token indexes)
//! kallsyms_markers        u32 × ⌈n/256⌉  offset into names of every 256th symbol
//! kallsyms_seqs_of_names  3 bytes × n (6.2, and backported to later 6.1 uploads)
//! kallsyms_token_table    256 NUL-terminated strings
//! kallsyms_token_index    u16 × 256   offset of each token in the table
//! ```
//!
//! Since 6.11 (Debian's 6.12 kernels) the order is another, and the offsets
//! are always relative (`CONFIG_KALLSYMS_BASE_RELATIVE` is gone):
//!
//! ```text
//! kallsyms_num_syms, kallsyms_names, kallsyms_markers,
//! kallsyms_token_table, kallsyms_token_index,
//! kallsyms_offsets, kallsyms_relative_base, kallsyms_seqs_of_names
//! ```
//!
//! A stripped vmlinux has no symbol naming them, so they are found by
//! structure: a `relative_base` followed by a count whose names parse to
//! exactly the markers that follow them, then a token table whose index
//! agrees with its strings. Random data does not pass those checks. The
//! later order is found from its token index (256 rising offsets from 0,
//! each just past a NUL of the table before it), the markers that end at
//! the table, and a count before the names that parse to them.
//!
//! A symbol's name is its tokens expanded; the first character is its type
//! letter, as `/proc/kallsyms` prints it (`kernel/kallsyms.c`,
//! `kallsyms_get_symbol_type`).

use crate::KallsymsEntry;

/// One loaded section of the image: its link address and bytes.
#[derive(Debug, Clone, Copy)]
pub struct Section<'a> {
    pub address: u64,
    pub bytes: &'a [u8],
}

/// Why the tables were not found.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EmbeddedError {
    #[error("no kallsyms tables found in the image (the kernel may be built without CONFIG_KALLSYMS, or without CONFIG_KALLSYMS_BASE_RELATIVE, which graft does not read)")]
    NotFound,
}

/// The most symbols a table can have: `kallsyms_seqs_of_names` stores a
/// symbol's index in 3 bytes.
const MAX_SYMBOLS: u32 = 1 << 24;
/// scripts/kallsyms.c aligns every table to 8 bytes on 64-bit kernels.
const ALIGN: u64 = 8;

/// Reads the symbol table the image carries, in table (address) order.
pub fn read_tables(sections: &[Section<'_>]) -> Result<Vec<KallsymsEntry>, EmbeddedError> {
    // The base is the address of a symbol of the kernel proper: within the
    // kernel's sections (which sit in the top 2 GiB on x86-64).
    let kernel = |a: u64| {
        sections.iter().any(|s| {
            s.address >= 0xffff_ffff_8000_0000
                && a >= s.address
                && a - s.address < s.bytes.len() as u64
        })
    };
    for s in sections {
        let mut pos = (align_up(s.address, ALIGN) - s.address) as usize;
        while pos + 12 <= s.bytes.len() {
            if u64_at(s.bytes, pos).is_some_and(kernel) {
                if let Some(entries) = try_at(s, pos) {
                    return Ok(entries);
                }
            }
            pos += ALIGN as usize;
        }
    }
    // The order of 6.11 and later.
    for s in sections {
        let mut pos = (align_up(s.address, ALIGN) - s.address) as usize;
        while pos + 2 * 256 <= s.bytes.len() {
            if let Some(entries) = try_index_at(s, pos, &kernel) {
                return Ok(entries);
            }
            pos += ALIGN as usize;
        }
    }
    Err(EmbeddedError::NotFound)
}

fn align_up(x: u64, a: u64) -> u64 {
    x.div_ceil(a) * a
}

fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(
        b.get(at..at.checked_add(8)?)?.try_into().ok()?,
    ))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(
        b.get(at..at.checked_add(4)?)?.try_into().ok()?,
    ))
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(
        b.get(at..at.checked_add(2)?)?.try_into().ok()?,
    ))
}

/// Section offset of the next 8-byte aligned address at or after `off`.
fn aligned(s: &Section<'_>, off: usize) -> usize {
    (align_up(s.address + off as u64, ALIGN) - s.address) as usize
}

/// Reads one name's length at `at`: ULEB128 of at most two bytes.
/// Returns the length and where the tokens start.
fn name_len(b: &[u8], at: usize) -> Option<(usize, usize)> {
    let first = *b.get(at)? as usize;
    if first & 0x80 == 0 {
        return Some((first, at + 1));
    }
    let second = *b.get(at + 1)? as usize;
    if second & 0x80 != 0 {
        return None;
    }
    Some(((first & 0x7f) | (second << 7), at + 2))
}

/// The tables, if `relative_base` is at section offset `base_at`.
fn try_at(s: &Section<'_>, base_at: usize) -> Option<Vec<KallsymsEntry>> {
    let b = s.bytes;
    let relative_base = u64_at(b, base_at)?;
    let n = u32_at(b, base_at + 8)?;
    if n == 0 || n > MAX_SYMBOLS {
        return None;
    }
    let n = n as usize;

    // Offsets first, the cheapest test: n s32 ending before relative_base,
    // starting 8-aligned, and sorted as the symbols are (by address).
    let offsets_at = {
        let addr = (s.address + base_at as u64).checked_sub(4 * n as u64)?;
        (addr / ALIGN * ALIGN).checked_sub(s.address)? as usize
    };
    let offsets: Vec<i32> = b
        .get(offsets_at..offsets_at + 4 * n)?
        .chunks_exact(4)
        .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    // With CONFIG_KALLSYMS_ABSOLUTE_PERCPU (x86-64 SMP) the absolute
    // (per-cpu) symbols come first with their value, and the others are
    // stored as `relative_base - 1 - address`, negative and falling; without
    // it, every offset is an unsigned distance from the base, which never
    // makes one negative in a kernel smaller than 2 GiB.
    let absolute_percpu = offsets.iter().any(|&o| o < 0);
    if !offsets_sorted(&offsets, absolute_percpu) {
        return None;
    }

    // Names: walk them, noting where every 256th starts; the markers that
    // follow must say the same.
    let names_at = aligned(s, base_at + 12);
    let (spans, after_markers) = names_and_markers(s, names_at, n)?;
    // With kallsyms_seqs_of_names, the token table comes 3n bytes later.
    let tokens = token_table(s, after_markers)
        .or_else(|| token_table(s, aligned(s, after_markers.checked_add(3 * n)?)))?;
    decode(b, spans, &offsets, &tokens, relative_base, absolute_percpu)
}

/// Walks `n` names from `names_at`, noting where every 256th starts; the
/// markers that follow must say the same. Returns each name's token span
/// and where the markers end (aligned).
fn names_and_markers(
    s: &Section<'_>,
    names_at: usize,
    n: usize,
) -> Option<(Vec<std::ops::Range<usize>>, usize)> {
    let b = s.bytes;
    let mut at = names_at;
    let mut starts = Vec::with_capacity(n.div_ceil(256));
    let mut spans = Vec::with_capacity(n);
    for i in 0..n {
        if i % 256 == 0 {
            starts.push(at - names_at);
        }
        let (len, tokens) = name_len(b, at)?;
        let end = tokens.checked_add(len)?;
        if len == 0 || end > b.len() {
            return None;
        }
        spans.push(tokens..end);
        at = end;
    }
    let markers_at = aligned(s, at);
    for (k, start) in starts.iter().enumerate() {
        if u32_at(b, markers_at + 4 * k)? as usize != *start {
            return None;
        }
    }
    Some((spans, aligned(s, markers_at + 4 * starts.len())))
}

/// The entries: each name's tokens expanded, its address from its offset.
fn decode(
    b: &[u8],
    spans: Vec<std::ops::Range<usize>>,
    offsets: &[i32],
    tokens: &[&[u8]],
    relative_base: u64,
    absolute_percpu: bool,
) -> Option<Vec<KallsymsEntry>> {
    let mut entries = Vec::with_capacity(spans.len());
    let mut name = Vec::new();
    for (span, &off) in spans.into_iter().zip(offsets) {
        name.clear();
        for &t in &b[span] {
            name.extend_from_slice(tokens[t as usize]);
        }
        let address = if !absolute_percpu {
            relative_base.wrapping_add(u64::from(off as u32))
        } else if off >= 0 {
            off as u64
        } else {
            relative_base
                .wrapping_sub(1)
                .wrapping_sub(off as i64 as u64)
        };
        let (&kind, rest) = name.split_first()?;
        if rest.is_empty() {
            return None;
        }
        entries.push(KallsymsEntry {
            address,
            kind: kind as char,
            name: String::from_utf8_lossy(rest).into_owned(),
            module: None,
        });
    }
    Some(entries)
}

/// Whether kallsyms offsets are sorted as their symbols are (by address):
/// see [`try_at`] for the two encodings.
fn offsets_sorted(offsets: &[i32], absolute_percpu: bool) -> bool {
    if absolute_percpu {
        let split = offsets.iter().position(|&o| o < 0).unwrap_or(offsets.len());
        offsets[..split].windows(2).all(|w| w[0] <= w[1])
            && offsets[split..]
                .windows(2)
                .all(|w| w[0] >= w[1] && w[1] < 0)
    } else {
        offsets.windows(2).all(|w| w[0] as u32 <= w[1] as u32)
    }
}

/// The tables in the order of 6.11 and later, if `kallsyms_token_index`
/// is at section offset `index_at`.
fn try_index_at(
    s: &Section<'_>,
    index_at: usize,
    kernel: &dyn Fn(u64) -> bool,
) -> Option<Vec<KallsymsEntry>> {
    let b = s.bytes;
    // The index: 0, then 255 rising offsets, each token at least one
    // character and its NUL long.
    if u16_at(b, index_at)? != 0 {
        return None;
    }
    let mut index = [0usize; 256];
    for (i, slot) in index.iter_mut().enumerate().skip(1) {
        let v = u16_at(b, index_at + 2 * i)? as usize;
        let prev = u16_at(b, index_at + 2 * (i - 1))? as usize;
        if v < prev + 2 {
            return None;
        }
        *slot = v;
    }
    // The table ends with the last token and its NUL, then aligns to the
    // index: try each start that fits.
    let table_at = (0..ALIGN as usize).find_map(|pad| {
        let end = index_at.checked_sub(pad)?;
        let last = b.get(..end)?.iter().rev().skip(1).position(|&c| c == 0)?;
        let at = end.checked_sub(last + 1 + index[255])?;
        (aligned(s, end) == index_at && token_table(s, at).is_some()).then_some(at)
    })?;
    let tokens = token_table(s, table_at)?;
    // The markers end at the table, maybe with 4 bytes of alignment
    // between: rising u32s from 0, read backwards.
    for pad in [0, 4] {
        let k_end = table_at.checked_sub(pad)?;
        if pad > 0 && u32_at(b, k_end)? != 0 {
            continue;
        }
        let Some(markers_at) = markers_before(b, k_end) else {
            continue;
        };
        let k = (k_end - markers_at) / 4;
        let last = u32_at(b, k_end - 4)? as usize;
        // k markers: n is in ((k-1)·256, k·256]; the names before them span
        // at least `last` bytes and at most that plus 256 of the longest.
        let (lo, hi) = ((k - 1) * 256 + 1, (k * 256).min(MAX_SYMBOLS as usize));
        let newest = markers_at.checked_sub(last)?;
        let oldest = newest.saturating_sub(256 * (2 + 0x3fff) + 2 * ALIGN as usize);
        let mut count_at = (align_up(s.address + newest as u64, ALIGN) - s.address) as usize;
        while count_at >= oldest + ALIGN as usize {
            count_at -= ALIGN as usize;
            let n = u32_at(b, count_at)? as usize;
            if n < lo || n > hi {
                continue;
            }
            let Some((spans, end)) = names_and_markers(s, aligned(s, count_at + 4), n) else {
                continue;
            };
            if end != table_at {
                continue;
            }
            if let Some(entries) = tables_after_index(s, index_at, spans, &tokens, kernel) {
                return Some(entries);
            }
        }
    }
    None
}

/// Where rising u32 markers from 0 start, if they end at `end`.
fn markers_before(b: &[u8], end: usize) -> Option<usize> {
    let mut at = end.checked_sub(4)?;
    loop {
        let v = u32_at(b, at)?;
        if v == 0 {
            return Some(at);
        }
        let prev = u32_at(b, at.checked_sub(4)?)?;
        if prev >= v {
            return None;
        }
        at -= 4;
    }
}

/// The offsets and base that follow the token index (6.11 and later), and
/// the entries they give the names.
fn tables_after_index(
    s: &Section<'_>,
    index_at: usize,
    spans: Vec<std::ops::Range<usize>>,
    tokens: &[&[u8]],
    kernel: &dyn Fn(u64) -> bool,
) -> Option<Vec<KallsymsEntry>> {
    let b = s.bytes;
    let n = spans.len();
    let offsets_at = aligned(s, index_at + 2 * 256);
    let offsets: Vec<i32> = b
        .get(offsets_at..offsets_at.checked_add(4 * n)?)?
        .chunks_exact(4)
        .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    let base_at = aligned(s, offsets_at + 4 * n);
    let relative_base = u64_at(b, base_at)?;
    if !kernel(relative_base) {
        return None;
    }
    let absolute_percpu = offsets.iter().any(|&o| o < 0);
    if !offsets_sorted(&offsets, absolute_percpu) {
        return None;
    }
    decode(b, spans, &offsets, tokens, relative_base, absolute_percpu)
}

/// The 256 tokens, if a token table starts at `at` and its index follows.
fn token_table<'a>(s: &Section<'a>, at: usize) -> Option<Vec<&'a [u8]>> {
    let b = s.bytes;
    let mut tokens = Vec::with_capacity(256);
    let mut offsets = Vec::with_capacity(256);
    let mut p = at;
    for _ in 0..256 {
        let rest = b.get(p..)?;
        let len = rest.iter().position(|&c| c == 0)?;
        // Tokens are pieces of symbol names: never empty, always printable.
        if len == 0 || !rest[..len].iter().all(|c| c.is_ascii_graphic()) {
            return None;
        }
        offsets.push(p - at);
        tokens.push(&rest[..len]);
        p += len + 1;
    }
    let index_at = aligned(s, p);
    for (i, off) in offsets.iter().enumerate() {
        if u16_at(b, index_at + 2 * i)? as usize != *off {
            return None;
        }
    }
    Some(tokens)
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: u64 = 0xffff_ffff_8100_0000;

    /// The order scripts/kallsyms.c lays its tables out in.
    #[derive(Clone, Copy)]
    enum Order {
        /// Before 6.11: offsets, base, count, names, markers, (seqs), token
        /// table and index.
        Classic { seqs: bool },
        /// 6.11 and later: count, names, markers, token table and index,
        /// offsets, base, seqs of names.
        Since611,
    }

    /// Builds tables the way scripts/kallsyms.c lays them out in `order`,
    /// with one token per byte value (token i is the character i, for
    /// printable i; others are two-letter pairs so that every token is
    /// non-empty).
    fn tables_in(order: Order, syms: &[(u64, &str)], absolute: &[&str]) -> (u64, Vec<u8>) {
        let addr = 0xffff_ffff_8200_0000u64;
        let mut out = vec![0xaa_u8; 40]; // unrelated data before
        let pad = |out: &mut Vec<u8>| {
            while !(addr + out.len() as u64).is_multiple_of(8) {
                out.push(0);
            }
        };
        let offsets = |out: &mut Vec<u8>| {
            pad(out);
            for (a, name) in syms {
                let off: i32 = if absolute.contains(name) {
                    *a as i32
                } else {
                    (BASE as i64 - *a as i64 - 1) as i32
                };
                out.extend_from_slice(&off.to_le_bytes());
            }
            pad(out);
            out.extend_from_slice(&BASE.to_le_bytes());
        };
        let count = |out: &mut Vec<u8>| {
            out.extend_from_slice(&(syms.len() as u32).to_le_bytes());
            pad(out);
        };
        let names = |out: &mut Vec<u8>| {
            let names_at = out.len();
            let mut markers = Vec::new();
            for (i, (_, name)) in syms.iter().enumerate() {
                if i % 256 == 0 {
                    markers.push((out.len() - names_at) as u32);
                }
                let len = name.len();
                if len <= 0x7f {
                    out.push(len as u8);
                } else {
                    out.push((len as u8 & 0x7f) | 0x80);
                    out.push((len >> 7) as u8);
                }
                out.extend_from_slice(name.as_bytes());
            }
            pad(out);
            for m in markers {
                out.extend_from_slice(&m.to_le_bytes());
            }
            pad(out);
        };
        let seqs = |out: &mut Vec<u8>| out.extend(std::iter::repeat_n(7u8, 3 * syms.len()));
        let tokens = |out: &mut Vec<u8>| {
            let mut index = Vec::new();
            let table_at = out.len();
            for i in 0..256 {
                index.push((out.len() - table_at) as u16);
                let c = i as u8;
                if c.is_ascii_graphic() {
                    out.push(c);
                } else {
                    out.extend([b'A' + (i % 26) as u8, b'a' + (i / 26) as u8]);
                }
                out.push(0);
            }
            pad(out);
            for i in index {
                out.extend_from_slice(&i.to_le_bytes());
            }
        };
        match order {
            Order::Classic { seqs: with_seqs } => {
                offsets(&mut out);
                count(&mut out);
                names(&mut out);
                if with_seqs {
                    seqs(&mut out);
                    pad(&mut out);
                }
                tokens(&mut out);
            }
            Order::Since611 => {
                pad(&mut out);
                count(&mut out);
                names(&mut out);
                tokens(&mut out);
                offsets(&mut out);
                pad(&mut out);
                seqs(&mut out);
            }
        }
        out.extend_from_slice(&[0x55; 16]);
        (addr, out)
    }

    fn tables(syms: &[(u64, &str)], seqs: bool, absolute: &[&str]) -> (u64, Vec<u8>) {
        tables_in(Order::Classic { seqs }, syms, absolute)
    }

    fn tables_611(syms: &[(u64, &str)], absolute: &[&str]) -> (u64, Vec<u8>) {
        tables_in(Order::Since611, syms, absolute)
    }

    /// The tables read from an image of kernel text at `BASE` and `bytes`
    /// at `addr`.
    fn find_in(addr: u64, bytes: &[u8]) -> Result<Vec<KallsymsEntry>, EmbeddedError> {
        let text = vec![0xcc_u8; 0x100100];
        read_tables(&[
            Section {
                address: BASE,
                bytes: &text,
            },
            Section {
                address: addr,
                bytes,
            },
        ])
    }

    #[test]
    fn reads_tables_in_the_order_of_6_11() {
        let owned = syms();
        let s: Vec<(u64, &str)> = owned.iter().map(|(a, n)| (*a, n.as_str())).collect();
        let (addr, bytes) = tables_611(&s, &["Afixed_percpu_data"]);
        let find = |bytes: &[u8]| find_in(addr, bytes);
        let e = find(&bytes).unwrap();
        assert_eq!(e.len(), owned.len());
        for (got, (a, n)) in e.iter().zip(&owned) {
            assert_eq!(got.address, *a, "{n}");
            assert_eq!(got.name, n[1..]);
        }
        // Cut anywhere before the base: never a panic, never "found".
        for cut in (0..bytes.len() - 16 - 3 * owned.len()).step_by(97) {
            assert!(find(&bytes[..cut]).is_err(), "cut at {cut}");
        }
    }

    fn syms() -> Vec<(u64, String)> {
        let mut v = vec![(0, "Afixed_percpu_data".to_string())];
        v.push((BASE, "T_text".into()));
        for i in 0..600u64 {
            v.push((BASE + 0x10 * (i + 1), format!("tfunction_{i}")));
        }
        v.push((BASE + 0x100000, format!("d{}", "x".repeat(300))));
        v
    }

    fn check(seqs: bool) {
        let owned = syms();
        let s: Vec<(u64, &str)> = owned.iter().map(|(a, n)| (*a, n.as_str())).collect();
        let (addr, bytes) = tables(&s, seqs, &["Afixed_percpu_data"]);
        let e = find_in(addr, &bytes).unwrap();
        assert_eq!(e.len(), owned.len());
        for (got, (a, n)) in e.iter().zip(&owned) {
            assert_eq!(got.address, *a, "{n}");
            assert_eq!(got.kind, n.chars().next().unwrap());
            assert_eq!(got.name, n[1..]);
            assert_eq!(got.module, None);
        }
    }

    #[test]
    fn reads_tables_without_seqs_of_names() {
        check(false);
    }

    #[test]
    fn reads_tables_with_seqs_of_names() {
        check(true);
    }

    #[test]
    fn garbage_and_truncation_are_not_found() {
        let owned = syms();
        let s: Vec<(u64, &str)> = owned.iter().map(|(a, n)| (*a, n.as_str())).collect();
        let (addr, bytes) = tables(&s, false, &["Afixed_percpu_data"]);
        let find = |bytes: &[u8]| find_in(addr, bytes);
        assert!(find(&bytes).is_ok());
        // Cut anywhere: never a panic, and a cut table is never "found".
        // (The last 16 bytes are unrelated data after the token index.)
        for cut in (0..bytes.len() - 16).step_by(97) {
            assert!(find(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        // A name one byte longer than the markers say is not accepted.
        let mut bad = bytes.clone();
        let at = bad
            .windows(11)
            .position(|w| w == b"\x0btfunction_")
            .unwrap();
        bad[at] += 1;
        assert!(find(&bad).is_err());
        // Nor a token index that disagrees with its table.
        let mut bad = bytes.clone();
        let n = bad.len();
        bad[n - 16 - 2] ^= 1;
        assert!(find(&bad).is_err());
        // Noise that holds kernel addresses everywhere.
        let noise: Vec<u8> = (0..20000u64)
            .flat_map(|i| (BASE + (i * 2654435761) % 0x100000).to_le_bytes())
            .collect();
        assert!(find(&noise).is_err());
    }
}
