//! `Module.symvers`: `<crc>\t<symbol>\t<module>\t<export type>\t<namespace>`.

use std::collections::HashMap;
use std::path::Path;

use crate::TargetError;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Export {
    pub crc: u32,
    /// "vmlinux" or the path of the exporting module.
    pub module: String,
    pub gpl_only: bool,
    /// The symbol namespace of an `EXPORT_SYMBOL_NS` export: a module
    /// using it must import the namespace (`MODULE_IMPORT_NS`).
    pub namespace: Option<String>,
}

/// The symbols a kernel exports to modules.
#[derive(Debug, Clone, Default)]
pub struct Exports {
    by_name: HashMap<String, Export>,
}

impl Exports {
    pub fn read(path: &Path) -> Result<Exports, TargetError> {
        let text = std::fs::read_to_string(path).map_err(|source| TargetError::NoExports {
            path: path.to_owned(),
            source,
        })?;
        Exports::parse(&text).map_err(|(line, text)| TargetError::Parse {
            path: path.to_owned(),
            line,
            format: "Module.symvers",
            text,
        })
    }

    pub fn parse(text: &str) -> Result<Exports, (usize, String)> {
        let mut by_name = HashMap::new();
        for (n, line) in text.lines().enumerate() {
            if line.is_empty() {
                continue;
            }
            let f: Vec<&str> = line.split('\t').collect();
            let bad = || (n + 1, line.to_owned());
            if f.len() < 4 {
                return Err(bad());
            }
            let crc = u32::from_str_radix(f[0].trim_start_matches("0x"), 16).map_err(|_| bad())?;
            by_name.insert(
                f[1].to_owned(),
                Export {
                    crc,
                    module: f[2].to_owned(),
                    gpl_only: f[3].ends_with("_GPL"),
                    namespace: f
                        .get(4)
                        .map(|n| n.trim())
                        .filter(|n| !n.is_empty())
                        .map(str::to_owned),
                },
            );
        }
        Ok(Exports { by_name })
    }

    pub fn get(&self, name: &str) -> Option<&Export> {
        self.by_name.get(name)
    }

    /// Whether `vmlinux` itself exports `name` (a module may link to it directly).
    pub fn vmlinux_exports(&self, name: &str) -> bool {
        self.get(name).is_some_and(|e| e.module == "vmlinux")
    }

    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_symvers() {
        let e = Exports::parse(
            "0x12345678\tseq_puts\tvmlinux\tEXPORT_SYMBOL\t\n0x0000abcd\tfoo\tfs/ext4/ext4\tEXPORT_SYMBOL_GPL\t\n0x00000001\tdma_buf_get\tvmlinux\tEXPORT_SYMBOL_GPL\tDMA_BUF\n",
        )
        .unwrap();
        assert_eq!(
            e.get("dma_buf_get").unwrap().namespace.as_deref(),
            Some("DMA_BUF")
        );
        assert_eq!(e.get("seq_puts").unwrap().namespace, None);
        assert!(e.vmlinux_exports("seq_puts"));
        assert!(!e.vmlinux_exports("foo"));
        assert!(e.get("foo").unwrap().gpl_only);
        assert_eq!(e.get("seq_puts").unwrap().crc, 0x12345678);
        assert!(Exports::parse("zz\tx\n").is_err());
    }
}
