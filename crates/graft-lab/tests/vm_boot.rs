//! Boots the lab kernel. Needs a set-up lab (`cargo run -p graft-lab --release -- setup`, as root).

use std::time::{Duration, Instant};

use graft_lab::{run_scenario, Lab, LabError, Scenario};

fn lab() -> Lab {
    let root = Lab::default_root();
    match Lab::open(&root) {
        Ok(lab) => lab,
        Err(e) => panic!(
            "these tests boot the lab kernel, but {e}\n\
             set it up first: `cargo run -p graft-lab --release -- setup` (as root; \
             set GRAFT_LAB_DIR to use another root than {})",
            root.display()
        ),
    }
}

#[test]
fn guest_runs_the_lab_kernel_with_livepatch() {
    let lab = lab();
    let sc = Scenario::new(
        "uname-livepatch",
        "echo \"UNAME: $(uname -r)\"\n\
         if [ -d /sys/kernel/livepatch ]; then echo 'LIVEPATCH: yes'; else echo 'LIVEPATCH: no'; fi\n\
         exit 7\n",
    )
    .with_timeout(Duration::from_secs(180));
    let out = run_scenario(&lab, &sc).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        out.lines_with_prefix("UNAME: "),
        vec![format!("UNAME: {}", lab.release).as_str()],
        "console:\n{}",
        out.console
    );
    assert_eq!(
        out.lines_with_prefix("LIVEPATCH: "),
        vec!["LIVEPATCH: yes"],
        "console:\n{}",
        out.console
    );
    // The script's own exit status comes back, not the VM's.
    assert_eq!(out.exit_code, 7);
}

#[test]
fn scenario_files_reach_the_guest() {
    let lab = lab();
    let dir = tempfile::tempdir().unwrap();
    let host = dir.path().join("payload.txt");
    std::fs::write(&host, "payload-42\n").unwrap();
    let sc = Scenario::new("files", "echo \"GOT: $(cat /root/data/payload.txt)\"")
        .with_file("/root/data/payload.txt", &host)
        .with_timeout(Duration::from_secs(180));
    let out = run_scenario(&lab, &sc).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(out.lines_with_prefix("GOT: "), vec!["GOT: payload-42"]);
    assert_eq!(out.exit_code, 0);
}

#[test]
fn hanging_script_times_out_and_qemu_is_killed() {
    let lab = lab();
    let timeout = Duration::from_secs(20);
    let sc = Scenario::new("hang", "echo 'HANG: sleeping'\nsleep 1000\n").with_timeout(timeout);
    let started = Instant::now();
    let err = run_scenario(&lab, &sc).expect_err("a script sleeping 1000 s must time out");
    let took = started.elapsed();
    // Not asserting on the console's content: on a loaded host the TCG boot alone may take 20 s.
    assert!(
        matches!(err, LabError::Timeout { .. }),
        "expected Timeout, got: {err}"
    );
    assert!(err.console().is_some());
    // Killing and reaping QEMU is immediate; allow for initramfs building and polling.
    assert!(
        took < timeout + Duration::from_secs(5),
        "took {took:?} for a {timeout:?} timeout"
    );
}

#[test]
fn guest_panic_is_guest_failed() {
    let lab = lab();
    // Writing `c` to sysrq-trigger crashes the kernel; panic=-1 plus -no-reboot end QEMU.
    let sc = Scenario::new(
        "panic",
        "echo 1 > /proc/sys/kernel/sysrq\necho c > /proc/sysrq-trigger\nsleep 100\n",
    )
    .with_timeout(Duration::from_secs(120));
    match run_scenario(&lab, &sc) {
        Err(LabError::GuestFailed {
            reason, console, ..
        }) => {
            assert!(
                console.contains("Kernel panic"),
                "reason {reason}\n{console}"
            );
        }
        Ok(out) => panic!("expected GuestFailed, script exited {}", out.exit_code),
        Err(e) => panic!("expected GuestFailed, got: {e}"),
    }
}
