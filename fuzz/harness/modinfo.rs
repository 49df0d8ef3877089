//! The `modinfo` fuzz target's body, shared with the test that replays the
//! inputs kept under `fuzz/regressions/modinfo/` (graft-ops'
//! `tests/fuzz_regressions.rs`): `graft info X.ko` and `graft load` read a
//! module file a user hands them.

use std::path::Path;

use graft_ops::modinfo::{format_functions, parse_functions, stack_names_of, ModuleInfo};

/// Any bytes give a module's metadata or an error, never a panic.
pub fn run(data: &[u8]) {
    let path = Path::new("livepatch-fuzz.ko");
    if let Ok(m) = ModuleInfo::parse(path, data) {
        let _ = m.release();
        if let Some(g) = &m.graft {
            let _ = format_functions(&g.functions);
        }
    }
    let _ = stack_names_of(path, data);
    let _ = parse_functions(&String::from_utf8_lossy(data));
}
