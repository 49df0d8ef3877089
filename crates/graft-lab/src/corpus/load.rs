//! Loading every built corpus module in a VM booting the target kernel,
//! many per boot: for each, the modules it patches are loaded first (with
//! what they depend on), then insmod, wait for the transition, disable,
//! wait, rmmod, and the kernel log is checked for warnings, oopses and
//! livepatch errors. A module that kills or hangs the guest is reported as
//! such and the ones after it go to the next boot.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::LabError;
use crate::lab::Lab;
use crate::vm::{run_scenario_with, Scenario, VmOptions};

/// A built module to load.
#[derive(Debug, Clone)]
pub struct ToLoad {
    pub id: String,
    pub module: PathBuf,
}

/// How loading one module went.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "load", rename_all = "snake_case")]
pub enum LoadOutcome {
    /// Loaded, transition complete, disabled, removed, nothing in the log.
    Clean {
        /// Each klp object and whether it was patched while loaded
        /// (`false` for a module that was not loaded).
        objects: Vec<(String, bool)>,
        /// Target modules that did not load in the VM (no hardware…).
        notes: Vec<String>,
        /// Seconds from insmod to the end of the transition.
        transition: f64,
    },
    /// A step failed, or the kernel complained.
    Failed { step: String, detail: String },
}

impl LoadOutcome {
    pub fn is_clean(&self) -> bool {
        matches!(self, LoadOutcome::Clean { .. })
    }

    /// One phrase for the report.
    pub fn describe(&self) -> String {
        match self {
            LoadOutcome::Clean { objects, notes, .. } => {
                let unpatched: Vec<&str> = objects
                    .iter()
                    .filter(|(_, p)| !p)
                    .map(|(o, _)| o.as_str())
                    .collect();
                if unpatched.is_empty() && notes.is_empty() {
                    "clean".into()
                } else {
                    format!("clean ({} not loaded)", unpatched.join(", "))
                }
            }
            LoadOutcome::Failed { step, detail } => format!("FAILED {step}: {detail}"),
        }
    }
}

/// The target kernel's modules by kernel name (`xfs`, `snd_usb_line6`).
fn module_files(modules: &Path) -> BTreeMap<String, PathBuf> {
    let mut out = BTreeMap::new();
    let mut stack = vec![modules.join("kernel")];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if let Some(stem) = p
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_suffix(".ko"))
            {
                out.insert(graft_ops::module_name(stem), p);
            }
        }
    }
    out
}

/// The modules a patch patches, each after the modules it depends on.
fn targets(
    patch: &Path,
    files: &BTreeMap<String, PathBuf>,
) -> Result<(String, Vec<String>), LabError> {
    let info = graft_ops::modinfo::ModuleInfo::read(patch)
        .map_err(|e| LabError::invalid(format!("{}: {e}", patch.display()), "this is a bug"))?;
    let objects: BTreeSet<String> = info
        .graft
        .map(|g| g.functions.into_iter().map(|f| f.object).collect())
        .unwrap_or_default();
    let mut order: Vec<String> = Vec::new();
    fn visit(
        name: &str,
        files: &BTreeMap<String, PathBuf>,
        order: &mut Vec<String>,
        seen: &mut BTreeSet<String>,
    ) {
        if !seen.insert(name.to_owned()) {
            return;
        }
        let Some(path) = files.get(name) else { return };
        if let Ok(m) = graft_ops::modinfo::ModuleInfo::read(path) {
            for d in &m.depends {
                visit(d, files, order, seen);
            }
        }
        order.push(name.to_owned());
    }
    let mut seen = BTreeSet::new();
    for o in objects.iter().filter(|o| *o != "vmlinux") {
        visit(o, files, &mut order, &mut seen);
    }
    Ok((info.name, order))
}

const SCRIPT_HEAD: &str = r#"
L=/sys/kernel/livepatch
now() { cut -d' ' -f1 /proc/uptime; }
wait_for() { i=0; while [ $i -lt $2 ]; do eval "$1" && return 0; sleep 0.1; i=$((i+1)); done; return 1; }
problems() { dmesg | grep -E "WARNING|Oops|BUG:|Call Trace|general protection|livepatch: .*(failed|error|[Ff]ailed)|Unknown symbol|unknown symbol" | head -5 | sed "s/^/CORPUS-PROBLEM $1 /"; }
blockers() {
  n=0
  for t in /proc/[0-9]*/task/[0-9]*; do
    [ "$(cat $t/patch_state 2>/dev/null)" = "$2" ] || continue
    echo "CORPUS-BLOCK $1 $(cat $t/comm) $(head -4 $t/stack 2>/dev/null | tr '\n' ' ')"
    n=$((n+1)); [ $n -ge 4 ] && break
  done
}
one() {
  id=$1; m=$2; shift 2
  echo "CORPUS-BEGIN $id"
  for k in "$@"; do
    [ -d /sys/module/$k ] && continue
    insmod /t/$k.ko >/tmp/o 2>&1 || echo "CORPUS-TARGET $id $k $(head -c 200 /tmp/o | tr '\n' ' ')"
  done
  dmesg -c >/dev/null
  t0=$(now)
  if ! insmod /p/$id.ko >/tmp/o 2>&1; then
    echo "CORPUS-FAIL $id insmod: $(head -c 300 /tmp/o | tr '\n' ' ')"; problems $id; echo "CORPUS-END $id"; return
  fi
  if ! wait_for "[ \"\$(cat $L/$m/transition 2>/dev/null)\" = 0 ]" 600; then
    echo "CORPUS-FAIL $id transition: not complete after 60 s"; blockers $id 0
    echo 0 > $L/$m/enabled; wait_for "[ ! -d $L/$m ]" 600; rmmod $m; problems $id; echo "CORPUS-END $id"; return
  fi
  echo "CORPUS-LOADED $id $t0 $(now)"
  for o in $L/$m/*/; do [ -f $o/patched ] && echo "CORPUS-OBJ $id $(basename $o) $(cat $o/patched)"; done
  echo 0 > $L/$m/enabled
  if ! wait_for "[ ! -d $L/$m ]" 600; then
    echo "CORPUS-FAIL $id disable: not complete after 60 s"; blockers $id 1
  fi
  rmmod $m >/tmp/o 2>&1 || echo "CORPUS-FAIL $id rmmod: $(head -c 200 /tmp/o | tr '\n' ' ')"
  problems $id
  echo "CORPUS-END $id"
}
"#;

/// Modules per boot; a guest's files stay under this many bytes.
const BATCH: usize = 25;
const BATCH_BYTES: u64 = 160 << 20;

/// Loads every module of `todo` in VMs booting `lab`'s kernel.
/// Each boot's console is kept in `consoles` (`boot-N.log`) when given.
pub fn load_all(
    lab: &Lab,
    todo: &[ToLoad],
    consoles: Option<&Path>,
    progress: &mut dyn FnMut(&str),
) -> Result<BTreeMap<String, LoadOutcome>, LabError> {
    let files = module_files(&lab.modules_dir());
    let mut out = BTreeMap::new();
    let mut queue: Vec<(ToLoad, String, Vec<String>)> = Vec::new();
    for t in todo {
        let (name, deps) = targets(&t.module, &files)?;
        queue.push((t.clone(), name, deps));
    }
    let mut boot = 0;
    while !queue.is_empty() {
        boot += 1;
        let mut batch = Vec::new();
        let mut bytes = 0;
        while let Some(next) = queue.first() {
            let size: u64 = std::iter::once(next.0.module.clone())
                .chain(next.2.iter().filter_map(|d| files.get(d).cloned()))
                .map(|p| std::fs::metadata(p).map_or(0, |m| m.len()))
                .sum();
            if !batch.is_empty() && (batch.len() >= BATCH || bytes + size > BATCH_BYTES) {
                break;
            }
            bytes += size;
            batch.push(queue.remove(0));
        }
        progress(&format!(
            "boot {boot}: loading {} module(s) ({} left after this boot)…",
            batch.len(),
            queue.len()
        ));
        let mut sc = Scenario::new(format!("corpus-load-{boot}"), String::new());
        let mut script = String::from(SCRIPT_HEAD);
        let mut added = BTreeSet::new();
        for (t, name, deps) in &batch {
            sc.files.push((format!("/p/{}.ko", t.id), t.module.clone()));
            for d in deps {
                if added.insert(d.clone()) {
                    sc.files.push((format!("/t/{d}.ko"), files[d].clone()));
                }
            }
            script.push_str(&format!("one {} {} {}\n", t.id, name, deps.join(" ")));
        }
        sc.script = script;
        sc.timeout = Duration::from_secs(90 + 60 * batch.len() as u64);
        let opts = VmOptions {
            memory_mb: 1024,
            ..VmOptions::default()
        };
        let console = match run_scenario_with(lab, &sc, &opts) {
            Ok(o) => o.console,
            Err(e) => match e.console() {
                Some(c) => c.to_owned(),
                None => return Err(e),
            },
        };
        if let Some(dir) = consoles {
            let _ = std::fs::create_dir_all(dir);
            let _ = std::fs::write(dir.join(format!("boot-{boot}.log")), &console);
        }
        let parsed = parse_console(&console);
        let mut cut = None;
        for (i, (t, _, _)) in batch.iter().enumerate() {
            match parsed.get(&t.id) {
                Some(p) if p.ended => {
                    out.insert(t.id.clone(), p.outcome());
                }
                Some(p) => {
                    // It began and never ended: the guest died or hung with it.
                    let tail: Vec<&str> = console.lines().rev().take(8).collect();
                    let mut detail = p.problems.join(" | ");
                    if detail.is_empty() {
                        detail = tail.into_iter().rev().collect::<Vec<_>>().join(" | ");
                    }
                    out.insert(
                        t.id.clone(),
                        LoadOutcome::Failed {
                            step: "the guest died or hung while this patch was live".into(),
                            detail,
                        },
                    );
                    cut = Some(i + 1);
                    break;
                }
                None => {
                    cut = Some(i);
                    break;
                }
            }
        }
        if let Some(c) = cut {
            if c == 0 {
                // Nothing began: the guest itself is broken.
                let tail: Vec<&str> = console.lines().rev().take(15).collect();
                return Err(LabError::invalid(
                    format!(
                        "the corpus VM did not start loading modules; console tail:\n{}",
                        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                    ),
                    "boot the target kernel with `graft-lab run` to look",
                ));
            }
            let rest: Vec<_> = batch.into_iter().skip(c).collect();
            queue.splice(0..0, rest);
        }
    }
    Ok(out)
}

#[derive(Debug, Default)]
struct Parsed {
    ended: bool,
    fails: Vec<String>,
    problems: Vec<String>,
    objects: Vec<(String, bool)>,
    notes: Vec<String>,
    transition: f64,
}

impl Parsed {
    fn outcome(&self) -> LoadOutcome {
        if let Some(f) = self.fails.first() {
            let (step, detail) = f.split_once(": ").unwrap_or((f, ""));
            let mut detail = detail.to_owned();
            if let Some(p) = self.problems.first() {
                detail = format!("{detail} | kernel: {p}");
            }
            return LoadOutcome::Failed {
                step: step.to_owned(),
                detail,
            };
        }
        if !self.problems.is_empty() {
            return LoadOutcome::Failed {
                step: "kernel log".into(),
                detail: self.problems.join(" | "),
            };
        }
        LoadOutcome::Clean {
            objects: self.objects.clone(),
            notes: self.notes.clone(),
            transition: self.transition,
        }
    }
}

/// The `CORPUS-*` lines of a console, per module.
fn parse_console(console: &str) -> BTreeMap<String, Parsed> {
    let mut out: BTreeMap<String, Parsed> = BTreeMap::new();
    for line in console.lines() {
        let Some(rest) = line.strip_prefix("CORPUS-") else {
            continue;
        };
        let (tag, rest) = rest.split_once(' ').unwrap_or((rest, ""));
        let (id, rest) = rest.split_once(' ').unwrap_or((rest, ""));
        let p = out.entry(id.to_owned()).or_default();
        let rest = rest.trim().to_owned();
        match tag {
            "BEGIN" => {}
            "END" => p.ended = true,
            "FAIL" => p.fails.push(rest),
            "PROBLEM" | "BLOCK" => p.problems.push(rest),
            "TARGET" => p.notes.push(format!("target module {rest}")),
            "OBJ" => {
                if let Some((o, v)) = rest.rsplit_once(' ') {
                    p.objects.push((o.to_owned(), v == "1"));
                }
            }
            "LOADED" => {
                let t: Vec<f64> = rest
                    .split_whitespace()
                    .filter_map(|x| x.parse().ok())
                    .collect();
                if let [a, b] = t[..] {
                    p.transition = b - a;
                }
            }
            _ => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn console_lines_become_outcomes() {
        let console = "boot\nCORPUS-BEGIN c001\n[ 3.1] livepatch: enabling patch 'c001'\nCORPUS-LOADED c001 10.00 11.75\nCORPUS-OBJ c001 vmlinux 1\nCORPUS-END c001\n\
CORPUS-BEGIN c002\nCORPUS-TARGET c002 xfs insmod: can't insert\nCORPUS-LOADED c002 12 13\nCORPUS-OBJ c002 xfs 0\nCORPUS-PROBLEM c002 [ 13.2] WARNING: CPU: 0 PID: 1 at kernel/livepatch/core.c\nCORPUS-END c002\n\
CORPUS-BEGIN c003\nCORPUS-FAIL c003 insmod: Unknown symbol in module\nCORPUS-END c003\nCORPUS-BEGIN c004\n[ 20.0] BUG: kernel NULL pointer";
        let p = parse_console(console);
        match p["c001"].outcome() {
            LoadOutcome::Clean {
                objects,
                transition,
                ..
            } => {
                assert_eq!(objects, vec![("vmlinux".to_string(), true)]);
                assert!((transition - 1.75).abs() < 1e-9);
            }
            o => panic!("{o:?}"),
        }
        assert_eq!(
            p["c002"].outcome(),
            LoadOutcome::Failed {
                step: "kernel log".into(),
                detail: "[ 13.2] WARNING: CPU: 0 PID: 1 at kernel/livepatch/core.c".into()
            }
        );
        assert_eq!(
            p["c003"].outcome(),
            LoadOutcome::Failed {
                step: "insmod".into(),
                detail: "Unknown symbol in module".into()
            }
        );
        assert!(!p["c004"].ended);
    }
}
