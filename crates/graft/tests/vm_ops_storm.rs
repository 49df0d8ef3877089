//! Load and unload 8 times while two storms run: 8 processes calling
//! getpid in a loop and checking the answer, and 4 processes reading
//! `/proc/cmdline` in a loop, whose code (`cmdline_proc_show`) is the one the
//! patch changes, so the hot path runs through the function being patched
//! and unpatched: every transition completes, every answer is right (the
//! original or the patched one, both seen many times), no kernel warning.
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
use graft_lab::{run_scenario_with, Scenario, VmOptions};
use ops::*;

/// Enough cycles for both storms to meet each transition state many times;
/// the transition benchmark (`./run bench`) runs more, for figures.
const CYCLES: usize = 8;

#[test]
fn load_unload_cycles_under_getpid_and_read_storms() {
    let lab = lab();
    let out = tempfile::tempdir().unwrap();
    let ko = build_module(&lab, "ops-b.patch", "ops-storm", out.path(), &[]);
    let storm = storm_binary(out.path());
    let reads = static_binary(out.path(), "read-storm");
    let script = format!("{PRELUDE}{}", storm_script(CYCLES));
    let sc = Scenario::new("ops-storm", script)
        .with_file("/usr/local/bin/getpid-storm", &storm)
        .with_file("/usr/local/bin/read-storm", &reads)
        .with_timeout(Duration::from_secs(420));
    let sc = with_modules(with_graft(sc), &[&ko]);
    // Both vCPUs spend most of their time in the function being patched:
    // QEMU's multi-threaded TCG then sometimes keeps running a vCPU on a
    // stale translation of the int3 ftrace's text_poke_bp() planted and
    // removed, and the guest soft-locks (docs/operations-notes.md). One
    // host thread for both vCPUs keeps cross-modified code coherent; the
    // guest still has two CPUs, and the transitions still meet tasks on
    // both.
    let vm = VmOptions {
        accel: "tcg,thread=single".into(),
        ..VmOptions::default()
    };
    let run = run_scenario_with(&lab, &sc, &vm).unwrap_or_else(|e| panic!("VM run failed: {e}"));
    let r = Report::new(&run);
    let dump = r.dump();
    // The read storm first, "read-storm: 4 processes, N reads, 0 wrong,
    // seen O P": a wrong answer is what it exists to catch.
    let line = r.value("READ-STORM");
    let words: Vec<&str> = line.split([' ', ',']).filter(|w| !w.is_empty()).collect();
    let num = |after: &str| -> u64 {
        let i = words.iter().position(|w| *w == after).unwrap();
        words[i - 1].parse().unwrap()
    };
    assert_eq!(num("wrong"), 0, "{line}");
    assert_eq!(r.value("READ-STORM-RC"), "0", "{line}");
    let i = words.iter().position(|w| *w == "seen").unwrap();
    let (orig, patched): (u64, u64) =
        (words[i + 1].parse().unwrap(), words[i + 2].parse().unwrap());
    assert_eq!(orig + patched, num("reads"), "{line}");
    // Through both versions of the function, many times each.
    assert!(
        orig > 1000 && patched > 1000,
        "the storm did not run through both: {line}"
    );
    eprintln!("{line}");
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
