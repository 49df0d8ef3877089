//! A minimal writer of the `newc` cpio format the kernel unpacks as an initramfs.
//!
//! Written here rather than driving `cpio(1)` because we assemble the archive from files scattered
//! over the host (busybox, scenario files) under guest paths that do not exist on the host.

use std::collections::BTreeSet;
use std::io::{self, Write};

const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFLNK: u32 = 0o120000;

/// Builds an archive in memory-order; parent directories are created on demand.
pub(crate) struct CpioWriter<W: Write> {
    out: W,
    written: u64,
    next_ino: u32,
    dirs: BTreeSet<String>,
}

/// Normalises a guest path to the archive's form: relative, no `.`/empty components.
/// Returns `None` for paths that would escape the root (`..`) or name the root itself.
pub(crate) fn normalize(path: &str) -> Option<String> {
    let mut parts = Vec::new();
    for c in path.split('/') {
        match c {
            "" | "." => {}
            ".." => return None,
            c => parts.push(c),
        }
    }
    (!parts.is_empty()).then(|| parts.join("/"))
}

impl<W: Write> CpioWriter<W> {
    pub(crate) fn new(out: W) -> Self {
        CpioWriter {
            out,
            written: 0,
            next_ino: 1,
            dirs: BTreeSet::new(),
        }
    }

    fn write_all(&mut self, b: &[u8]) -> io::Result<()> {
        self.out.write_all(b)?;
        self.written += b.len() as u64;
        Ok(())
    }

    fn pad4(&mut self) -> io::Result<()> {
        let pad = (4 - (self.written % 4) as usize) % 4;
        self.write_all(&[0u8; 3][..pad])
    }

    fn entry(&mut self, name: &str, mode: u32, data: &[u8]) -> io::Result<()> {
        let ino = self.next_ino;
        self.next_ino += 1;
        let nlink = if mode & S_IFDIR != 0 { 2 } else { 1 };
        let size = u32::try_from(data.len()).map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{name}: file larger than 4 GiB cannot go into a newc cpio"),
            )
        })?;
        let fields = [
            ino,
            mode,
            0,
            0,
            nlink,
            0,
            size,
            0,
            0,
            0,
            0,
            name.len() as u32 + 1,
            0,
        ];
        let mut header = String::from("070701");
        for f in fields {
            header.push_str(&format!("{f:08x}"));
        }
        self.write_all(header.as_bytes())?;
        self.write_all(name.as_bytes())?;
        self.write_all(&[0])?;
        self.pad4()?;
        self.write_all(data)?;
        self.pad4()
    }

    /// Creates `path` and its parents (mode 0755) unless already present.
    pub(crate) fn dir_all(&mut self, path: &str) -> io::Result<()> {
        let Some(path) = normalize(path) else {
            return Ok(());
        };
        let mut cur = String::new();
        for c in path.split('/') {
            if !cur.is_empty() {
                cur.push('/');
            }
            cur.push_str(c);
            if self.dirs.insert(cur.clone()) {
                let name = cur.clone();
                self.entry(&name, S_IFDIR | 0o755, &[])?;
            }
        }
        Ok(())
    }

    fn parent_dirs(&mut self, path: &str) -> io::Result<String> {
        let path = normalize(path).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("guest path `{path}` is empty or leaves the root"),
            )
        })?;
        if let Some((parent, _)) = path.rsplit_once('/') {
            self.dir_all(parent)?;
        }
        Ok(path)
    }

    /// Adds a regular file with the given permission bits.
    pub(crate) fn file(&mut self, path: &str, perm: u32, data: &[u8]) -> io::Result<()> {
        let path = self.parent_dirs(path)?;
        self.entry(&path, S_IFREG | (perm & 0o7777), data)
    }

    /// Adds a symbolic link `path` → `target`.
    pub(crate) fn symlink(&mut self, path: &str, target: &str) -> io::Result<()> {
        let path = self.parent_dirs(path)?;
        self.entry(&path, S_IFLNK | 0o777, target.as_bytes())
    }

    /// Writes the trailer and returns the underlying writer.
    pub(crate) fn finish(mut self) -> io::Result<W> {
        self.entry("TRAILER!!!", 0, &[])?;
        Ok(self.out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizes_paths() {
        assert_eq!(normalize("/a//b/./c").as_deref(), Some("a/b/c"));
        assert_eq!(normalize("/"), None);
        assert_eq!(normalize("a/../b"), None);
    }

    #[test]
    fn layout_is_newc_and_aligned() {
        let mut w = CpioWriter::new(Vec::new());
        w.file("/bin/x", 0o755, b"hello").unwrap();
        w.symlink("/bin/sh", "busybox").unwrap();
        let buf = w.finish().unwrap();
        assert_eq!(&buf[..6], b"070701");
        assert_eq!(buf.len() % 4, 0);
        let text = String::from_utf8_lossy(&buf);
        // `bin` directory first, then the file, the link and the trailer.
        let bin = text.find("bin\0").unwrap();
        let x = text.find("bin/x\0").unwrap();
        assert!(bin < x);
        assert!(text.contains("hello"));
        assert!(text.contains("TRAILER!!!"));
        // Mode of the file entry: regular, 0755.
        assert!(text.contains("000081ed"));
    }

    #[test]
    fn rejects_escaping_paths() {
        let mut w = CpioWriter::new(Vec::new());
        assert!(w.file("../etc/passwd", 0o644, b"").is_err());
    }
}
