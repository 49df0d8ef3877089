//! Export CRCs (`CONFIG_MODVERSIONS`). kbuild runs genksyms on every object
//! that exports symbols and appends `#SYMVER <name> 0x<crc>` lines to the
//! object's `.<name>.o.cmd` record; modpost later copies them into
//! `Module.symvers`. A CRC that changes means the export's type changed, and
//! every module built against the old one would misuse it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// CRCs of the exports of both builds of one object.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Crcs {
    pub orig: BTreeMap<String, u32>,
    pub patched: BTreeMap<String, u32>,
}

impl Crcs {
    /// Reads the kbuild records next to both objects (`dir/.name.o.cmd`);
    /// a missing record means no exports.
    pub fn read_kbuild(orig: &Path, patched: &Path) -> Crcs {
        Crcs {
            orig: read_record(&record_of(orig)),
            patched: read_record(&record_of(patched)),
        }
    }
}

/// `dir/name.o` → `dir/.name.o.cmd`.
pub fn record_of(object: &Path) -> PathBuf {
    let name = object
        .file_name()
        .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
    object.with_file_name(format!(".{name}.cmd"))
}

fn read_record(path: &Path) -> BTreeMap<String, u32> {
    std::fs::read_to_string(path)
        .map(|t| parse(&t))
        .unwrap_or_default()
}

/// The `#SYMVER` lines of a kbuild record.
pub fn parse(text: &str) -> BTreeMap<String, u32> {
    text.lines()
        .filter_map(|l| {
            let mut f = l.strip_prefix("#SYMVER ")?.split_whitespace();
            let name = f.next()?;
            let crc = u32::from_str_radix(f.next()?.trim_start_matches("0x"), 16).ok()?;
            Some((name.to_owned(), crc))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn parses_symver_lines() {
        let m = super::parse("cmd_x := gcc\n#SYMVER overflowuid 0x8b618d08\n#SYMVER bad zz\n");
        assert_eq!(m.len(), 1);
        assert_eq!(m["overflowuid"], 0x8b618d08);
    }
}
