//! Transition benchmark: time from `graft load` to transition complete (and
//! from `graft unload` to unpatched), median and max, for the /proc/cmdline
//! patch in the lab's kernel under QEMU/TCG: 10 cycles on an idle guest,
//! then 20 under a getpid storm (8 processes). `GRAFT_BENCH_CYCLES`
//! changes the storm's count.
//!
//! What is measured is graft's own figure (`seconds` in its JSON): from
//! just before `finit_module` to the first poll that sees `transition` at 0.
//! The kernel retries stragglers once a second, so most transitions end
//! just after one of those retries.

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "../tests/ops/mod.rs"]
mod ops;

use std::time::Duration;

use common::*;
use graft_lab::{run_scenario, Scenario};
use ops::*;

fn main() {
    let lab = lab();
    let storm_cycles: usize = std::env::var("GRAFT_BENCH_CYCLES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    let idle_cycles = 10;
    let out = tempfile::tempdir().unwrap();
    let ko = build_module(&lab, "ops-b.patch", "ops-storm", out.path(), &[]);
    let storm = storm_binary(out.path());
    // Idle cycles first, then the storm; the idle ones report as idle-load<N>.
    let idle = format!(
        r#"
i=1
while [ $i -le {idle_cycles} ]; do
  run idle-load$i graft --json load /m/livepatch-ops-storm.ko
  run idle-unload$i graft --json unload livepatch_ops_storm
  i=$((i+1))
done
"#
    );
    let script = format!("{PRELUDE}{idle}{}", storm_script(storm_cycles));
    let sc = Scenario::new("bench-transition", script)
        .with_file("/usr/local/bin/getpid-storm", &storm)
        .with_timeout(Duration::from_secs(900));
    let sc = with_modules(with_graft(sc), &[&ko]);
    let run = run_scenario(&lab, &sc).unwrap_or_else(|e| panic!("VM run failed: {e}"));
    let r = Report::new(&run);
    let mut idle_loads = Vec::new();
    let mut idle_unloads = Vec::new();
    for i in 1..=idle_cycles {
        let l = r.json(&format!("idle-load{i}"));
        assert_eq!(l["outcome"]["result"], "loaded", "{l}");
        idle_loads.push(l["outcome"]["seconds"].as_f64().unwrap());
        let u = r.json(&format!("idle-unload{i}"));
        assert_eq!(u["result"], "unloaded", "{u}");
        idle_unloads.push(u["seconds"].as_f64().unwrap());
    }
    let (loads, unloads) = transition_times(&r, storm_cycles);
    r.assert_no_kernel_problems();
    println!(
        "transition time, graft load/unload of livepatch-ops-storm.ko, QEMU/TCG 2 vCPUs, {}",
        lab.release
    );
    println!("| | cycles | load median | load max | unload median | unload max |");
    println!("|---|---|---|---|---|---|");
    for (what, n, l, u) in [
        ("idle", idle_cycles, &idle_loads, &idle_unloads),
        ("getpid storm, 8 processes", storm_cycles, &loads, &unloads),
    ] {
        println!(
            "| {what} | {n} | {:.2} s | {:.2} s | {:.2} s | {:.2} s |",
            median(l),
            max(l),
            median(u),
            max(u)
        );
    }
    println!("storm: {}", r.value("STORM"));
}
