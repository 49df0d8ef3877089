//! The headers graft ships for patch authors (`<graft/livepatch.h>`, and
//! kpatch's `kpatch-macros.h` / `kpatch-syscall.h` mapped onto it),
//! installed in the private copy's `include/` before anything is compiled.
//!
//! They live in the copy only: the user's tree is never written, and kbuild
//! already searches `include/` (`-I./include`), so both `#include
//! <graft/livepatch.h>` and kpatch's `#include "kpatch-macros.h"` find them
//! without touching any Makefile or compiler flag.

use std::fs;
use std::path::Path;

use crate::{io, KbuildError};

/// (path under the tree, contents) of every shipped header.
pub const HEADERS: &[(&str, &str)] = &[
    (
        "include/graft/livepatch.h",
        include_str!("../include/graft/livepatch.h"),
    ),
    (
        "include/kpatch-macros.h",
        include_str!("../include/kpatch-macros.h"),
    ),
    (
        "include/kpatch-syscall.h",
        include_str!("../include/kpatch-syscall.h"),
    ),
];

/// Writes the headers into the tree copy at `root`, each only when its
/// contents differ (an unchanged header keeps its time, so kbuild's
/// dependency tracking sees nothing new).
pub fn install(root: &Path) -> Result<(), KbuildError> {
    for (rel, text) in HEADERS {
        let path = root.join(rel);
        if fs::read(&path).is_ok_and(|old| old == text.as_bytes()) {
            continue;
        }
        let dir = path.parent().unwrap_or(root);
        fs::create_dir_all(dir).map_err(io(format!("cannot create {}", dir.display())))?;
        // Through a rename: a killed build never leaves half a header.
        let tmp = dir.join(format!(
            ".graft-tmp.{}",
            path.file_name().unwrap_or_default().to_string_lossy()
        ));
        fs::write(&tmp, text).map_err(io(format!("cannot write {}", tmp.display())))?;
        fs::rename(&tmp, &path).map_err(io(format!("cannot write {}", path.display())))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn install_writes_each_header_once() {
        let dir = tempfile::tempdir().unwrap();
        install(dir.path()).unwrap();
        for (rel, text) in HEADERS {
            assert_eq!(fs::read_to_string(dir.path().join(rel)).unwrap(), *text);
        }
        let p = dir.path().join(HEADERS[0].0);
        let before = fs::metadata(&p).unwrap().modified().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        install(dir.path()).unwrap();
        assert_eq!(fs::metadata(&p).unwrap().modified().unwrap(), before);
        // A stale copy is replaced.
        fs::write(&p, "old").unwrap();
        install(dir.path()).unwrap();
        assert_eq!(fs::read_to_string(&p).unwrap(), HEADERS[0].1);
    }
}
