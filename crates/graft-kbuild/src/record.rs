//! kbuild's record of an object (`dir/.name.o.cmd`). Besides the command
//! line, it holds the export CRCs of the object (`CONFIG_MODVERSIONS`):
//! kbuild runs genksyms on every object that exports symbols and appends
//! `#SYMVER <name> 0x<crc>` lines, which modpost later copies into
//! `Module.symvers`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// A kbuild record that exists but cannot be used: the export-CRC rule
/// would be off without a word, so it is an error.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("{}: cannot read kbuild's record of the object ({error}), which holds the CRCs of its exports; hint: check the file's permissions, or rebuild the object", path.display())]
    Unreadable {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{}:{line}: malformed export CRC record {text:?} (kbuild writes `#SYMVER <name> 0x<crc>`); hint: rebuild the object", path.display())]
    Malformed {
        path: PathBuf,
        line: usize,
        text: String,
    },
}

/// The export CRCs recorded for `object`; a missing record means no exports.
pub fn export_crcs(object: &Path) -> Result<BTreeMap<String, u32>, RecordError> {
    read_record(&record_of(object))
}

/// `dir/name.o` → `dir/.name.o.cmd`.
pub fn record_of(object: &Path) -> PathBuf {
    let name = object
        .file_name()
        .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
    object.with_file_name(format!(".{name}.cmd"))
}

fn read_record(path: &Path) -> Result<BTreeMap<String, u32>, RecordError> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
        Err(error) => {
            return Err(RecordError::Unreadable {
                path: path.to_owned(),
                error,
            })
        }
    };
    // The record quotes file names, which need not be UTF-8; the #SYMVER
    // lines are ASCII.
    parse(&String::from_utf8_lossy(&bytes)).map_err(|(line, text)| RecordError::Malformed {
        path: path.to_owned(),
        line,
        text,
    })
}

/// The `#SYMVER` lines of a kbuild record; a malformed one gives its 1-based
/// line number and text.
pub fn parse(text: &str) -> Result<BTreeMap<String, u32>, (usize, String)> {
    let mut m = BTreeMap::new();
    for (n, l) in text.lines().enumerate() {
        let Some(rest) = l.strip_prefix("#SYMVER ") else {
            continue;
        };
        let mut f = rest.split_whitespace();
        let crc = match (f.next(), f.next(), f.next()) {
            (Some(name), Some(crc), None) => crc
                .strip_prefix("0x")
                .and_then(|h| u32::from_str_radix(h, 16).ok())
                .map(|c| (name, c)),
            _ => None,
        };
        let (name, crc) = crc.ok_or_else(|| (n + 1, l.to_owned()))?;
        m.insert(name.to_owned(), crc);
    }
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_symver_lines() {
        let m = parse("cmd_x := gcc\n#SYMVER overflowuid 0x8b618d08\n").unwrap();
        assert_eq!(m.len(), 1);
        assert_eq!(m["overflowuid"], 0x8b618d08);
        assert_eq!(
            parse("#SYMVER a 0x1\n#SYMVER bad zz\n").unwrap_err(),
            (2, "#SYMVER bad zz".to_owned())
        );
        assert!(parse("#SYMVER a\n").is_err());
        assert!(parse("#SYMVER a 0x1 more\n").is_err());
    }

    /// A missing record is an object without exports; one that cannot be
    /// read or parsed is an error naming it, never "no exports" (the
    /// export-CRC rule would be off without a word).
    #[test]
    fn unusable_records_are_errors() {
        let t = tempfile::tempdir().unwrap();
        let (o, p) = (t.path().join("o/x.o"), t.path().join("p/x.o"));
        std::fs::create_dir_all(o.parent().unwrap()).unwrap();
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        assert!(export_crcs(&o).unwrap().is_empty());
        std::fs::write(record_of(&o), "#SYMVER f 0x10\n").unwrap();
        std::fs::write(record_of(&p), b"cmd := \xff\n#SYMVER f 0x11\n").unwrap();
        assert_eq!(export_crcs(&o).unwrap()["f"], 0x10);
        assert_eq!(export_crcs(&p).unwrap()["f"], 0x11);
        // A directory where the record should be: unreadable.
        std::fs::remove_file(record_of(&p)).unwrap();
        std::fs::create_dir(record_of(&p)).unwrap();
        let e = export_crcs(&p).unwrap_err().to_string();
        assert!(e.contains("p/.x.o.cmd: cannot read kbuild's record"), "{e}");
        assert!(e.contains("hint:"), "{e}");
        std::fs::write(record_of(&o), "#SYMVER f 16\n").unwrap();
        let e = export_crcs(&o).unwrap_err().to_string();
        assert!(
            e.contains("o/.x.o.cmd:1: malformed export CRC record"),
            "{e}"
        );
    }
}
