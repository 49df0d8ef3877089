//! The target kernel's code, read from its boot image (`vmlinuz`) rather
//! than from debuginfo: the compressed payload is found and unpacked, and the
//! resulting vmlinux ELF maps kernel addresses to bytes.
//!
//! The image holds the code as linked, before boot-time patching
//! (alternatives, ftrace NOPs, static calls), which is exactly what an object
//! compiled from the same source is comparable with.

use std::io::Read;
use std::path::{Path, PathBuf};

use graft_elf::exec::Executable;

use crate::embedded::{read_tables, Section};
use crate::SymbolTable;

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("cannot read the kernel image {path}: {source}; hint: pass the target's vmlinuz with --image")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: no kernel found inside (looked for xz, gzip and zstd payloads and a plain ELF); hint: pass the vmlinuz the target booted, or a vmlinux")]
    NoPayload { path: PathBuf },
    #[error("{path}: the kernel inside is not a valid ELF: {what}")]
    BadElf { path: PathBuf, what: String },
    #[error("{path}: {why}; hint: pass the target's symbol table with --symbols (its /proc/kallsyms, read as root)")]
    NoSymbols { path: PathBuf, why: String },
}

/// A contiguous range of kernel memory with its bytes.
#[derive(Debug, Clone)]
struct Range {
    addr: u64,
    bytes: std::ops::Range<usize>,
    /// `.rodata` holds the kallsyms tables: searched first.
    rodata: bool,
}

/// The decompressed kernel, addressable by link-time virtual address.
pub struct KernelImage {
    pub path: PathBuf,
    elf: Vec<u8>,
    ranges: Vec<Range>,
    /// Link address of `_text` (start of `.text`).
    pub text_start: u64,
    /// Where `.ibt_endbr_seal` is: its address and its bytes in `elf`.
    seal: Option<(u64, std::ops::Range<usize>)>,
}

const XZ_MAGIC: &[u8] = b"\xfd7zXZ\x00";
const GZIP_MAGIC: &[u8] = b"\x1f\x8b\x08";
/// Debian's 6.12 images are zstd-compressed (`CONFIG_KERNEL_ZSTD`).
const ZSTD_MAGIC: &[u8] = b"\x28\xb5\x2f\xfd";

impl KernelImage {
    pub fn read(path: &Path) -> Result<KernelImage, ImageError> {
        let data = std::fs::read(path).map_err(|source| ImageError::Io {
            path: path.to_owned(),
            source,
        })?;
        KernelImage::parse(path, data)
    }

    /// The kernel in `data`, the contents of the boot image or vmlinux at
    /// `path` (named in errors).
    pub fn parse(path: &Path, data: Vec<u8>) -> Result<KernelImage, ImageError> {
        let elf = if data.starts_with(b"\x7fELF") {
            data
        } else {
            find_payload(&data).ok_or_else(|| ImageError::NoPayload {
                path: path.to_owned(),
            })?
        };
        KernelImage::from_elf(path, elf)
    }

    fn from_elf(path: &Path, elf: Vec<u8>) -> Result<KernelImage, ImageError> {
        let bad = |what: String| ImageError::BadElf {
            path: path.to_owned(),
            what,
        };
        let file = Executable::parse(&elf, path).map_err(|e| bad(e.to_string()))?;
        let mut ranges = Vec::new();
        let mut text_start = None;
        let mut seal = None;
        for s in &file.sections {
            let Some((off, size)) = s.file_range.filter(|_| s.address != 0) else {
                continue;
            };
            let (off, size) = (off as usize, size as usize);
            if s.name == ".text" {
                text_start = Some(s.address);
            }
            if s.name == ".ibt_endbr_seal" {
                seal = Some((s.address, off..off + size));
            }
            ranges.push(Range {
                addr: s.address,
                bytes: off..off + size,
                rodata: s.name == ".rodata",
            });
        }
        let text_start = file
            .symbols
            .iter()
            .find(|s| s.name == "_text")
            .map(|s| s.address)
            .or(text_start)
            .ok_or_else(|| bad("no .text section".into()))?;
        Ok(KernelImage {
            path: path.to_owned(),
            elf,
            ranges,
            text_start,
            seal,
        })
    }

    /// The decompressed kernel (a vmlinux ELF): what [`KernelImage::parse`]
    /// takes back without decompressing again.
    pub fn elf(&self) -> &[u8] {
        &self.elf
    }

    /// The kernel's symbol table, from the kallsyms tables the image carries
    /// (see [`crate::embedded`]): what `/proc/kallsyms` of this kernel booted
    /// with `nokaslr` lists for vmlinux.
    pub fn symbols(&self) -> Result<SymbolTable, ImageError> {
        let mut sections: Vec<Section<'_>> = self
            .ranges
            .iter()
            .map(|r| Section {
                address: r.addr,
                bytes: &self.elf[r.bytes.clone()],
            })
            .collect();
        // .rodata first: that is where scripts/kallsyms.c puts them.
        sections.sort_by_key(|s| !self.ranges.iter().any(|r| r.rodata && r.addr == s.address));
        let entries = read_tables(&sections).map_err(|e| ImageError::NoSymbols {
            path: self.path.clone(),
            why: e.to_string(),
        })?;
        Ok(SymbolTable::from_entries(entries))
    }

    /// The kernel's banner (`linux_banner`, what `/proc/version` prints):
    /// `Linux version 6.1.0-48-amd64 (…) #1 SMP PREEMPT_DYNAMIC Debian 6.1.172-1 (…)`.
    pub fn banner(&self) -> Option<String> {
        const START: &[u8] = b"Linux version ";
        self.ranges.iter().filter(|r| r.rodata).find_map(|r| {
            let bytes = &self.elf[r.bytes.clone()];
            bytes.windows(START.len()).enumerate().find_map(|(i, w)| {
                if w != START {
                    return None;
                }
                let rest = &bytes[i..];
                let end = rest.iter().position(|&c| c == 0 || c == b'\n')?;
                let text = std::str::from_utf8(&rest[..end]).ok()?;
                // The banner names a release and a build: `#<n>`.
                text.contains(" #").then(|| text.to_owned())
            })
        })
    }

    /// Where the ENDBRs the kernel seals at boot are: `.ibt_endbr_seal`
    /// (objtool's list, at the kernel's link, of the ENDBR of every function
    /// vmlinux never takes the address of), whose entries `apply_seal_endbr`
    /// poisons on every machine, IBT-capable or not: an indirect call there
    /// faults on a CPU that enforces IBT. Empty for a kernel without IBT.
    pub fn sealed_endbr(&self) -> std::collections::BTreeSet<u64> {
        let mut out = std::collections::BTreeSet::new();
        let Some((address, bytes)) = &self.seal else {
            return out;
        };
        for (i, c) in self.elf[bytes.clone()].chunks_exact(4).enumerate() {
            let rel = i32::from_le_bytes([c[0], c[1], c[2], c[3]]);
            let at = address + 4 * i as u64;
            out.insert(at.wrapping_add(rel as i64 as u64));
        }
        out
    }

    /// `len` bytes at link address `addr`, if the image holds them all.
    pub fn bytes(&self, addr: u64, len: usize) -> Option<&[u8]> {
        let r = self
            .ranges
            .iter()
            .find(|r| addr >= r.addr && addr - r.addr < r.bytes.len() as u64)?;
        let start = r.bytes.start + (addr - r.addr) as usize;
        let end = start.checked_add(len)?;
        if end > r.bytes.end {
            return None;
        }
        Some(&self.elf[start..end])
    }

    /// Up to `len` bytes at link address `addr`: fewer where the image's
    /// range ends first, `None` if it does not hold `addr`.
    pub fn bytes_upto(&self, addr: u64, len: usize) -> Option<&[u8]> {
        let r = self
            .ranges
            .iter()
            .find(|r| addr >= r.addr && addr - r.addr < r.bytes.len() as u64)?;
        let start = r.bytes.start + (addr - r.addr) as usize;
        let end = start.saturating_add(len).min(r.bytes.end);
        Some(&self.elf[start..end])
    }
}

/// Tries every compressed payload the boot image may carry, first match wins.
fn find_payload(data: &[u8]) -> Option<Vec<u8>> {
    let candidates = |magic: &'static [u8]| {
        data.windows(magic.len())
            .enumerate()
            .filter(move |(_, w)| *w == magic)
            .map(|(i, _)| i)
    };
    for at in candidates(XZ_MAGIC) {
        let mut out = Vec::new();
        let mut dec = liblzma::read::XzDecoder::new(&data[at..]);
        if dec.read_to_end(&mut out).is_ok() && out.starts_with(b"\x7fELF") {
            return Some(out);
        }
    }
    for at in candidates(ZSTD_MAGIC) {
        let mut out = Vec::new();
        let Ok(mut dec) = ruzstd::decoding::StreamingDecoder::new(&data[at..]) else {
            continue;
        };
        if dec.read_to_end(&mut out).is_ok() && out.starts_with(b"\x7fELF") {
            return Some(out);
        }
    }
    for at in candidates(GZIP_MAGIC) {
        let mut out = Vec::new();
        let mut dec = flate2::read::GzDecoder::new(&data[at..]);
        if dec.read_to_end(&mut out).is_ok() && out.starts_with(b"\x7fELF") {
            return Some(out);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garbage_is_a_clear_error() {
        let dir = std::env::temp_dir().join(format!("graft-image-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("vmlinuz");
        std::fs::write(&p, b"MZ not a kernel \xfd7zXZ\x00 broken").unwrap();
        assert!(matches!(
            KernelImage::read(&p),
            Err(ImageError::NoPayload { .. })
        ));
        std::fs::write(&p, b"\x7fELF\x02\x01\x01 truncated").unwrap();
        assert!(matches!(
            KernelImage::read(&p),
            Err(ImageError::BadElf { .. })
        ));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
