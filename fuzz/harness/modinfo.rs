//! The `modinfo` fuzz target's body, shared with the test that replays the
//! inputs kept under `fuzz/regressions/modinfo/` (graft-ops'
//! `tests/fuzz_regressions.rs`): `graft info X.ko` and `graft load` read a
//! module file a user hands them.

use std::path::Path;

use graft_ops::modinfo::{format_functions, parse_functions, stack_names_of, ModuleInfo};

/// Any bytes give a module's metadata or an error, never a panic. Returns
/// what was read, one line per part, for the replay test.
pub fn run(data: &[u8]) -> Vec<String> {
    let mut out = Vec::new();
    let path = Path::new("livepatch-fuzz.ko");
    match ModuleInfo::parse(path, data) {
        Ok(m) => {
            out.push(format!(
                "module {} for {} livepatch={} klp_modules={}",
                m.name,
                m.release().unwrap_or("?"),
                m.livepatch,
                m.klp_modules.join(",")
            ));
            if let Some(g) = &m.graft {
                out.push(format!(
                    "graft {} functions={} reload={}",
                    g.version,
                    format_functions(&g.functions),
                    g.reload.as_deref().unwrap_or("?")
                ));
            }
        }
        Err(e) => out.push(e.to_string()),
    }
    if let Ok(names) = stack_names_of(path, data) {
        let mut v: Vec<String> = names.iter().map(|(a, b)| format!("{a}={b}")).collect();
        v.sort();
        out.push(format!("stack names {}", v.join(" ")));
    }
    let _ = parse_functions(&String::from_utf8_lossy(data));
    out
}
