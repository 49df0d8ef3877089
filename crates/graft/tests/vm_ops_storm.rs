//! Load and unload 20 times while a getpid storm runs (8 processes calling
//! getpid in a loop and checking the answer): every transition completes,
//! every answer is right, no kernel warning.
//!
//! The patch is the cumulative `/proc/cmdline` one (ops-b). Patching getpid
//! itself while it is hammered cannot be run here: under QEMU/TCG the
//! kernel's int3-based code patching of a function every vCPU is executing
//! soft-locks the guest, with graft's module and with a minimal hand-written
//! livepatch alike (see docs/operations-notes.md). That graft registers
//! getpid's aliases once is checked without a VM (tests/build_aliases.rs).

mod common;
mod ops;

use std::time::Duration;

use common::*;
use graft_lab::{run_scenario, Scenario};
use ops::*;

const CYCLES: usize = 20;

#[test]
fn twenty_cycles_under_a_getpid_storm() {
    let lab = lab();
    let out = tempfile::tempdir().unwrap();
    let ko = build_module(&lab, "ops-b.patch", "ops-storm", out.path(), &[]);
    let storm = storm_binary(out.path());
    let script = format!("{PRELUDE}{}", storm_script(CYCLES));
    let sc = Scenario::new("ops-storm", script)
        .with_file("/usr/local/bin/getpid-storm", &storm)
        .with_timeout(Duration::from_secs(420));
    let sc = with_modules(with_graft(sc), &[&ko]);
    let run = run_scenario(&lab, &sc).unwrap_or_else(|e| panic!("VM run failed: {e}"));
    let r = Report::new(&run);
    let dump = r.dump();
    let (loads, unloads) = transition_times(&r, CYCLES);
    assert_eq!(loads.len(), CYCLES);
    assert_eq!(unloads.len(), CYCLES);
    let storm_line = r.value("STORM");
    assert!(storm_line.starts_with("storm: 8 processes,"), "{dump}");
    assert!(storm_line.ends_with(", 0 wrong"), "{storm_line}");
    let calls: u64 = storm_line
        .split(", ")
        .nth(1)
        .unwrap()
        .split(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(calls > 100_000, "the storm barely ran: {storm_line}");
    assert_eq!(r.value("STORM-RC"), "0");
    assert_eq!(r.value("STATE end"), "|");
    r.assert_no_kernel_problems();
    eprintln!(
        "transition seconds under the storm: load median {:.2} max {:.2}; unload median {:.2} max {:.2}",
        median(&loads),
        max(&loads),
        median(&unloads),
        max(&unloads)
    );
}
