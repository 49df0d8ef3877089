//! Helpers of the operation tests (`vm_ops_*`): modules built from the
//! patches under `tests/patches/`, the `graft` binary inside the VM, and
//! reading what the guest script reported.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

use graft_lab::{Lab, Scenario, ScenarioOutput};

use crate::common::*;

/// Where the modules go in the guest.
pub const GUEST_DIR: &str = "/m";

/// Builds `tests/patches/<patch>` as patch `name` into `out`; panics with
/// graft's message on failure.
pub fn build_module(lab: &Lab, patch: &str, name: &str, out: &Path, extra: &[&str]) -> PathBuf {
    let mut args = build_args(
        lab,
        &repo_file(&format!("tests/patches/{patch}")),
        name,
        out,
    );
    args.extend(extra.iter().map(|s| s.into()));
    let o = graft(&args);
    assert!(
        o.status.success(),
        "graft build {patch} failed:\n{}",
        stderr(&o)
    );
    let ko = out.join(format!("livepatch-{name}.ko"));
    assert!(ko.is_file());
    ko
}

/// Adds the `graft` under test at /usr/local/bin/graft, with the shared
/// libraries and loader it needs (the initramfs has no C library).
pub fn with_graft(mut sc: Scenario) -> Scenario {
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_graft"));
    for lib in shared_libraries(&bin) {
        let guest = lib.display().to_string();
        sc = sc.with_file(guest, lib);
    }
    sc.with_file("/usr/local/bin/graft", bin)
}

/// The files `ldd` says `bin` loads (the vDSO has no file).
fn shared_libraries(bin: &Path) -> Vec<PathBuf> {
    let o = Command::new("ldd").arg(bin).output().expect("run ldd");
    let text = String::from_utf8_lossy(&o.stdout);
    text.lines()
        .filter_map(|l| {
            let l = l.trim();
            let path = match l.split_once("=>") {
                Some((_, rest)) => rest.split_whitespace().next()?,
                None => l.split_whitespace().next()?,
            };
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect()
}

/// Adds each module at `/m/<file name>`.
pub fn with_modules(mut sc: Scenario, kos: &[&Path]) -> Scenario {
    for ko in kos {
        let name = ko.file_name().unwrap().to_string_lossy().into_owned();
        sc = sc.with_file(format!("{GUEST_DIR}/{name}"), *ko);
    }
    sc
}

/// The first lines of every scenario: quiet kernel console (so kernel
/// messages do not split the script's lines), graft on PATH, and `run`:
/// runs a command and reports `RC <tag>: <status>`, `OUT <tag>: <stdout on
/// one line>` and `ERR <tag>: <each stderr line>`.
pub const PRELUDE: &str = r#"
dmesg -n 1
export PATH=/usr/local/bin:$PATH
run() {
  tag=$1; shift
  "$@" >/tmp/out 2>/tmp/err
  rc=$?
  echo "RC $tag: $rc"
  echo "OUT $tag: $(tr '\n' ' ' </tmp/out)"
  sed "s/^/ERR $tag: /" /tmp/err
  return 0
}
state() { echo "STATE $1: $(ls /sys/kernel/livepatch 2>&1 | tr '\n' ' ')| $(cut -d' ' -f1 /proc/modules | tr '\n' ' ')"; }
problems() { dmesg | grep -E "WARNING|Oops|BUG:|Call Trace|stalled" | sed 's/^/KERNEL-PROBLEM: /'; }
"#;

/// What a guest script reported, with assertions that print the console.
pub struct Report<'a> {
    pub run: &'a ScenarioOutput,
}

impl<'a> Report<'a> {
    pub fn new(run: &'a ScenarioOutput) -> Report<'a> {
        Report { run }
    }

    fn one(&self, prefix: &str) -> String {
        let l = self.run.lines_with_prefix(prefix);
        assert_eq!(
            l.len(),
            1,
            "expected one line {prefix:?}; script output:\n{}",
            self.run.script_output()
        );
        l[0][prefix.len()..].trim().to_owned()
    }

    pub fn rc(&self, tag: &str) -> i32 {
        self.one(&format!("RC {tag}:")).parse().unwrap()
    }

    pub fn out(&self, tag: &str) -> String {
        self.one(&format!("OUT {tag}:"))
    }

    pub fn json(&self, tag: &str) -> serde_json::Value {
        let o = self.out(tag);
        serde_json::from_str(&o).unwrap_or_else(|e| {
            panic!(
                "{tag}: not JSON ({e}): {o}\nscript output:\n{}",
                self.run.script_output()
            )
        })
    }

    pub fn err(&self, tag: &str) -> Vec<String> {
        self.run
            .lines_with_prefix(&format!("ERR {tag}:"))
            .iter()
            .map(|l| l[format!("ERR {tag}:").len()..].trim().to_owned())
            .collect()
    }

    /// The `error: …` line of `tag`, asserting there is exactly one.
    pub fn error_line(&self, tag: &str) -> String {
        let errs: Vec<String> = self
            .err(tag)
            .into_iter()
            .filter(|l| l.starts_with("error: "))
            .collect();
        assert_eq!(
            errs.len(),
            1,
            "{tag}: expected one error line; script output:\n{}",
            self.run.script_output()
        );
        errs[0].clone()
    }

    pub fn value(&self, key: &str) -> String {
        self.one(&format!("{key}:"))
    }

    pub fn assert_no_kernel_problems(&self) {
        let p = self.run.lines_with_prefix("KERNEL-PROBLEM:");
        assert!(
            p.is_empty(),
            "kernel warnings:\n{}\nconsole:\n{}",
            p.join("\n"),
            self.run.console
        );
    }

    pub fn dump(&self) -> &str {
        self.run.script_output()
    }
}

/// A copy of `ko` that claims to be built for `release` instead of
/// `from` (same length, so the ELF stays valid): every occurrence of the
/// release string, which for a graft module is vermagic and graft_kernel.
pub fn for_other_release(ko: &Path, from: &str, release: &str, out: &Path) -> PathBuf {
    assert_eq!(from.len(), release.len());
    let mut bytes = std::fs::read(ko).unwrap();
    let mut n = 0;
    let mut i = 0;
    while let Some(p) = bytes[i..]
        .windows(from.len())
        .position(|w| w == from.as_bytes())
    {
        let at = i + p;
        bytes[at..at + from.len()].copy_from_slice(release.as_bytes());
        n += 1;
        i = at + from.len();
    }
    assert!(n >= 1, "no release string in {}", ko.display());
    let dst = out.join(ko.file_name().unwrap());
    std::fs::write(&dst, bytes).unwrap();
    dst
}

/// Another plausible Debian ABI of the same length: 6.1.0-56-amd64 → 6.1.0-57-amd64.
pub fn other_release(release: &str) -> String {
    let parts: Vec<&str> = release.splitn(3, '-').collect();
    let abi: u32 = parts[1].parse().unwrap();
    let other = if abi == 99 { 10 } else { abi + 1 };
    let s = format!("{}-{}-{}", parts[0], other, parts[2]);
    assert_eq!(s.len(), release.len());
    s
}

/// `tests/vm/getpid-storm.c` built static into `out`.
pub fn storm_binary(out: &Path) -> PathBuf {
    static_binary(out, "getpid-storm")
}

/// `tests/vm/<name>.c` built static into `out/<name>`.
pub fn static_binary(out: &Path, name: &str) -> PathBuf {
    let bin = out.join(name);
    let o = Command::new("gcc")
        .args(["-static", "-O2", "-o"])
        .arg(&bin)
        .arg(repo_file(&format!("tests/vm/{name}.c")))
        .output()
        .expect("run gcc");
    assert!(
        o.status.success(),
        "gcc -static failed (libc6-dev provides libc.a):\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    bin
}

/// The guest script: start the getpid storm and a storm of reads of
/// /proc/cmdline (whose code the patch changes: each answer must be the
/// original or the patched one), then `cycles` × (load, unload) of
/// /m/livepatch-ops-storm.ko, each reporting its JSON.
pub fn storm_script(cycles: usize) -> String {
    format!(
        r#"
rm -f /tmp/storm-stop
getpid-storm 8 3600 > /tmp/storm.out &
storm=$!
orig="$(cat /proc/cmdline)"
read-storm /proc/cmdline 4 3600 "$orig" "$orig graft_B" > /tmp/read-storm.out &
reads=$!
sleep 2
i=1
while [ $i -le {cycles} ]; do
  run load$i graft --json load --timeout 120 /m/livepatch-ops-storm.ko
  echo "PATCHED$i: $(cat /proc/cmdline)"
  run unload$i graft --json unload --timeout 120 livepatch_ops_storm
  i=$((i+1))
done
touch /tmp/storm-stop
wait $storm
echo "STORM-RC: $?"
echo "STORM: $(cat /tmp/storm.out)"
wait $reads
echo "READ-STORM-RC: $?"
echo "READ-STORM: $(cat /tmp/read-storm.out)"
state end
problems
"#
    )
}

/// Seconds to transition complete of each load and unload, asserting each
/// one completed.
pub fn transition_times(r: &Report<'_>, cycles: usize) -> (Vec<f64>, Vec<f64>) {
    let mut loads = Vec::new();
    let mut unloads = Vec::new();
    for i in 1..=cycles {
        assert_eq!(r.rc(&format!("load{i}")), 0, "load {i}: {}", r.dump());
        let cmdline = r.value(&format!("PATCHED{i}"));
        assert!(
            cmdline.ends_with(" graft_B"),
            "load {i} did not take effect: {cmdline}"
        );
        let l = r.json(&format!("load{i}"));
        assert_eq!(l["outcome"]["result"], "loaded", "load {i}: {l}");
        loads.push(l["outcome"]["seconds"].as_f64().unwrap());
        assert_eq!(r.rc(&format!("unload{i}")), 0, "unload {i}: {}", r.dump());
        let u = r.json(&format!("unload{i}"));
        assert_eq!(u["result"], "unloaded", "unload {i}: {u}");
        unloads.push(u["seconds"].as_f64().unwrap());
    }
    (loads, unloads)
}

pub fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    }
}

pub fn max(v: &[f64]) -> f64 {
    v.iter().copied().fold(f64::NAN, f64::max)
}
