//! Load and unload, with one guarantee: a transition that does not complete
//! in time is reversed and the module removed, so the system is left as it
//! was (unless the operator chose `force`).

use std::path::Path;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use serde::Serialize;

use crate::kmod::{insert_error, remove_error, Modules};
use crate::modinfo::{self, ModuleInfo};
use crate::precheck::{self, Findings};
use crate::state::{self, Livepatches, LoadedPatch};
use crate::tasks::{Blocker, StackMatch};
use crate::watch::{watch, Direction, Event, Watch, WatchOptions, Watched};
use crate::{FuncRef, Host, OpsError};

/// How long to wait for the kernel to let go of a module after its patch
/// is freed (it drops the module reference from a work item).
const RELEASE_WAIT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OnStall {
    /// Reverse the transition and remove the module (the default).
    Revert,
    /// Write `force`: the patch completes; the modules of the patches it
    /// replaces can never be removed (a task may still run their code).
    Force,
}

#[derive(Debug, Clone)]
pub struct LoadOptions {
    pub watch: WatchOptions,
    pub on_stall: OnStall,
    /// Time allowed for the reverse transition after a stall.
    pub revert_timeout: Duration,
}

/// A function that changed hands when the patch was loaded. `None` is the
/// kernel's original code.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Handover {
    pub function: FuncRef,
    pub from: Option<String>,
    pub to: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum LoadOutcome {
    /// The patch is active for every task.
    Loaded {
        name: String,
        seconds: f64,
        /// Cumulative patch: the patches it replaced (now removed).
        replaced: Vec<String>,
        handover: Vec<Handover>,
        /// The stall was forced: the replaced patches' modules can never be
        /// removed (they are among `leftovers`).
        forced: bool,
        /// Modules of replaced patches graft could not remove.
        leftovers: Vec<String>,
    },
    /// The transition stalled (or was cancelled) and was reversed; the module
    /// is gone and the system is as before.
    Reverted {
        name: String,
        seconds: f64,
        cancelled: bool,
        blockers: Vec<Blocker>,
    },
    /// The transition stalled and so did its reversal: the kernel keeps
    /// trying; the operator must act.
    Stuck {
        name: String,
        seconds: f64,
        blockers: Vec<Blocker>,
    },
}

/// The result of [`load`], with what the checks found.
#[derive(Debug, Clone, Serialize)]
pub struct LoadReport {
    pub module: ModuleInfo,
    pub findings: Findings,
    pub outcome: LoadOutcome,
}

/// Checks, inserts `ko` and follows the transition to its end.
pub fn load(
    host: &Host,
    modules: &dyn Modules,
    ko: &Path,
    opts: &LoadOptions,
    cancel: &dyn Fn() -> bool,
    on: &mut dyn FnMut(Event),
) -> Result<LoadReport, OpsError> {
    let module = ModuleInfo::read(ko)?;
    let findings = precheck::check_load(host, &module)?;
    let before = state::read(host)?;
    let name = module.name.clone();
    let start = Instant::now();
    modules.insert(ko).map_err(|e| insert_error(ko, &name, e))?;
    let Some(patch) = state::read_patch(host, &name)? else {
        // A livepatch module whose init did not register a patch: take it
        // out again rather than leave a module that does nothing.
        let _ = remove_when_released(host, modules, &name);
        return Err(OpsError::Refused {
            what: format!("{name} loaded but registered no live patch; it was removed again"),
            hint: "its module_init must call klp_enable_patch()".into(),
        });
    };
    // What blocks: the new patch's functions and those of the patches it
    // may replace (a task can sleep in their new code).
    let functions = stack_match(std::iter::once(&patch).chain(&before.patches), Some(ko));
    let w = Watch {
        host,
        name: &name,
        direction: Direction::Patching,
        functions: &functions,
        opts: &opts.watch,
    };
    let first = watch(&w, start, cancel, on)?;
    let (blockers, cancelled) = match first {
        Watched::Complete { seconds } => {
            let outcome = finish_load(host, modules, &before, &patch, &module, seconds, false)?;
            return Ok(LoadReport {
                module,
                findings,
                outcome,
            });
        }
        Watched::Reversed { seconds } => {
            // Someone else reversed it; complete their reversal's job.
            return revert_outcome(
                host,
                modules,
                &name,
                &functions,
                opts,
                start,
                Vec::new(),
                false,
            )
            .map(|o| LoadReport {
                module,
                findings,
                outcome: match o {
                    LoadOutcome::Reverted { .. } => LoadOutcome::Reverted {
                        name: name.clone(),
                        seconds,
                        cancelled: true,
                        blockers: Vec::new(),
                    },
                    other => other,
                },
            });
        }
        Watched::TimedOut { blockers, .. } => (blockers, false),
        Watched::Cancelled { blockers, .. } => (blockers, true),
    };
    if opts.on_stall == OnStall::Force && !cancelled {
        state::force(host, &name)?;
        let w = Watch {
            opts: &WatchOptions {
                timeout: opts.revert_timeout,
                ..opts.watch.clone()
            },
            ..w
        };
        if let Watched::Complete { seconds } = watch(&w, start, &|| false, on)? {
            let outcome = finish_load(host, modules, &before, &patch, &module, seconds, true)?;
            return Ok(LoadReport {
                module,
                findings,
                outcome,
            });
        }
    }
    let outcome = revert_outcome(
        host, modules, &name, &functions, opts, start, blockers, cancelled,
    )?;
    Ok(LoadReport {
        module,
        findings,
        outcome,
    })
}

/// How a task blocked by `patches` shows on its stack: their functions,
/// the code of their modules, and the stub's aliases of new functions
/// (named in `module_file`, when known).
fn stack_match<'p>(
    patches: impl Iterator<Item = &'p LoadedPatch>,
    module_file: Option<&Path>,
) -> StackMatch {
    let mut m = StackMatch::default();
    for p in patches {
        for f in p.functions() {
            m.add_function(&f.name);
        }
        m.modules.insert(p.name.clone());
    }
    if let Some(ko) = module_file {
        m.names.extend(modinfo::stack_names(ko).unwrap_or_default());
    }
    m
}

/// Reverses the patching transition of `name`, waits for it (never
/// cancelled: this is the way back), and removes the module.
#[allow(clippy::too_many_arguments)]
fn revert_outcome(
    host: &Host,
    modules: &dyn Modules,
    name: &str,
    functions: &StackMatch,
    opts: &LoadOptions,
    start: Instant,
    blockers: Vec<Blocker>,
    cancelled: bool,
) -> Result<LoadOutcome, OpsError> {
    if let Some(p) = state::read_patch(host, name)? {
        if p.enabled {
            state::set_enabled(host, name, false)?;
        }
    }
    let wopts = WatchOptions {
        timeout: opts.revert_timeout,
        ..opts.watch.clone()
    };
    let back = Watch {
        host,
        name,
        direction: Direction::Unpatching,
        functions,
        opts: &wopts,
    };
    let began = Instant::now();
    match watch(&back, began, &|| false, &mut |_| {})? {
        Watched::Complete { .. } => {
            remove_when_released(host, modules, name)?;
            Ok(LoadOutcome::Reverted {
                name: name.to_owned(),
                seconds: start.elapsed().as_secs_f64(),
                cancelled,
                blockers,
            })
        }
        Watched::TimedOut {
            blockers: still, ..
        }
        | Watched::Cancelled {
            blockers: still, ..
        } => Ok(LoadOutcome::Stuck {
            name: name.to_owned(),
            seconds: start.elapsed().as_secs_f64(),
            blockers: still,
        }),
        Watched::Reversed { .. } => Ok(LoadOutcome::Stuck {
            name: name.to_owned(),
            seconds: start.elapsed().as_secs_f64(),
            blockers,
        }),
    }
}

/// After a completed patching transition: which patches were replaced, who
/// owns each function now, and removing the replaced modules (the kernel
/// disables them but leaves the modules loaded).
fn finish_load(
    host: &Host,
    modules: &dyn Modules,
    before: &Livepatches,
    patch: &LoadedPatch,
    module: &ModuleInfo,
    seconds: f64,
    forced: bool,
) -> Result<LoadOutcome, OpsError> {
    let after = state::read(host)?;
    // Re-read the patch: while a cumulative patch is in transition its
    // sysfs also lists the "nop" functions the kernel added to undo the
    // replaced patches; they are gone once it completes.
    let now = after.get(&patch.name).cloned();
    let patch = now.as_ref().unwrap_or(patch);
    let replaced: Vec<String> = before
        .patches
        .iter()
        .filter(|p| after.get(&p.name).is_none_or(|q| !q.enabled))
        .map(|p| p.name.clone())
        .collect();
    // Ground truth when there was something to replace; else what the module says.
    let replace = if before.patches.is_empty() {
        module
            .graft
            .as_ref()
            .and_then(|g| g.replace)
            .unwrap_or(false)
    } else {
        replaced.len() == before.patches.len()
    };
    let handover = handover(before, patch, replace);
    let mut leftovers = Vec::new();
    for r in &replaced {
        if remove_when_released(host, modules, r).is_err() {
            leftovers.push(r.clone());
        }
    }
    Ok(LoadOutcome::Loaded {
        name: patch.name.clone(),
        seconds,
        replaced,
        handover,
        forced,
        leftovers,
    })
}

/// Who had each function before `new` and who has it now. Patches stack in
/// load order: the newest enabled patch with a function owns it.
pub fn handover(before: &Livepatches, new: &LoadedPatch, replace: bool) -> Vec<Handover> {
    let owner = |f: &FuncRef| {
        before
            .patches
            .iter()
            .rev()
            .find(|p| p.enabled && p.functions().any(|g| g == f))
            .map(|p| p.name.clone())
    };
    let mut v: Vec<Handover> = new
        .functions()
        .map(|f| Handover {
            function: f.clone(),
            from: owner(f),
            to: Some(new.name.clone()),
        })
        .collect();
    if replace {
        let mut back: Vec<&FuncRef> = before
            .patches
            .iter()
            .filter(|p| p.enabled)
            .flat_map(|p| p.functions())
            .filter(|f| !new.functions().any(|g| g == *f))
            .collect();
        back.sort();
        back.dedup();
        v.extend(back.into_iter().map(|f| Handover {
            function: f.clone(),
            from: owner(f),
            to: None,
        }));
    }
    v
}

/// Waits until the kernel has let go of module `name` and removes it.
/// After a patch is disabled the kernel frees it from a work item, and only
/// then drops its reference to the module: until then removal says EBUSY.
pub fn remove_when_released(
    host: &Host,
    modules: &dyn Modules,
    name: &str,
) -> Result<(), OpsError> {
    let start = Instant::now();
    loop {
        match modules.remove(name) {
            Ok(()) => return Ok(()),
            Err(Errno::ENOENT) if !state::module_loaded(host, name) => return Ok(()),
            Err(e @ (Errno::EBUSY | Errno::EAGAIN)) if start.elapsed() < RELEASE_WAIT => {
                let _ = e;
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => return Err(remove_error(name, e)),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum UnloadOutcome {
    Unloaded {
        name: String,
        seconds: f64,
    },
    /// A replaced or disabled patch's module, only removed.
    Removed {
        name: String,
    },
    /// The unpatching transition stalled and was reversed: the patch is
    /// still active, as before.
    Reverted {
        name: String,
        seconds: f64,
        cancelled: bool,
        blockers: Vec<Blocker>,
    },
    Stuck {
        name: String,
        seconds: f64,
        blockers: Vec<Blocker>,
    },
}

/// Disables patch `name`, follows the unpatching transition and removes the
/// module. On a stall the transition is reversed: the patch stays active.
/// `module_file`, when known, lets blockers be named by function.
pub fn unload(
    host: &Host,
    modules: &dyn Modules,
    name: &str,
    module_file: Option<&Path>,
    opts: &LoadOptions,
    cancel: &dyn Fn() -> bool,
    on: &mut dyn FnMut(Event),
) -> Result<UnloadOutcome, OpsError> {
    let all = state::read(host)?;
    let Some(patch) = all.get(name) else {
        if state::module_loaded(host, name) && state::is_livepatch_module(host, name) {
            remove_when_released(host, modules, name)?;
            return Ok(UnloadOutcome::Removed {
                name: name.to_owned(),
            });
        }
        return Err(OpsError::NotLoaded {
            name: name.to_owned(),
        });
    };
    if let Some(busy) = all.in_transition().filter(|p| p.name != name) {
        return Err(OpsError::TransitionBusy {
            busy: busy.name.clone(),
        });
    }
    let functions = stack_match(std::iter::once(patch), module_file);
    let start = Instant::now();
    if patch.enabled {
        state::set_enabled(host, name, false)?;
    }
    let w = Watch {
        host,
        name,
        direction: Direction::Unpatching,
        functions: &functions,
        opts: &opts.watch,
    };
    let (blockers, cancelled) = match watch(&w, start, cancel, on)? {
        Watched::Complete { seconds } => {
            remove_when_released(host, modules, name)?;
            return Ok(UnloadOutcome::Unloaded {
                name: name.to_owned(),
                seconds,
            });
        }
        Watched::Reversed { seconds } => {
            return Ok(UnloadOutcome::Reverted {
                name: name.to_owned(),
                seconds,
                cancelled: true,
                blockers: Vec::new(),
            })
        }
        Watched::TimedOut { blockers, .. } => (blockers, false),
        Watched::Cancelled { blockers, .. } => (blockers, true),
    };
    // Back to patched: the operator asked for removal, not for a half state.
    state::set_enabled(host, name, true)?;
    let wopts = WatchOptions {
        timeout: opts.revert_timeout,
        ..opts.watch.clone()
    };
    let back = Watch {
        direction: Direction::Patching,
        opts: &wopts,
        ..w
    };
    Ok(
        match watch(&back, Instant::now(), &|| false, &mut |_| {})? {
            Watched::Complete { .. } => UnloadOutcome::Reverted {
                name: name.to_owned(),
                seconds: start.elapsed().as_secs_f64(),
                cancelled,
                blockers,
            },
            Watched::TimedOut {
                blockers: still, ..
            }
            | Watched::Cancelled {
                blockers: still, ..
            } => UnloadOutcome::Stuck {
                name: name.to_owned(),
                seconds: start.elapsed().as_secs_f64(),
                blockers: still,
            },
            Watched::Reversed { .. } => UnloadOutcome::Stuck {
                name: name.to_owned(),
                seconds: start.elapsed().as_secs_f64(),
                blockers,
            },
        },
    )
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;
    use std::path::PathBuf;

    use super::*;
    use crate::modinfo::tests::module_bytes;
    use crate::state::fake::*;

    /// A fake kernel: "inserting" registers the patch in the fake sysfs, with
    /// the transition finished or not; removing drops the module directory.
    struct FakeKernel {
        host: Host,
        funcs: Vec<(&'static str, &'static str, u32)>,
        completes: bool,
        replace: bool,
        removed: RefCell<Vec<String>>,
    }

    impl Modules for FakeKernel {
        fn insert(&self, path: &Path) -> Result<(), Errno> {
            let name = ModuleInfo::read(path).unwrap().name;
            if self.replace && self.completes {
                for p in state::read(&self.host).unwrap().patches {
                    std::fs::remove_dir_all(self.host.patch_dir(&p.name)).unwrap();
                }
            }
            add_patch(&self.host, &name, &self.funcs, !self.completes);
            Ok(())
        }
        fn remove(&self, name: &str) -> Result<(), Errno> {
            if self.host.patch_dir(name).exists() {
                return Err(Errno::EBUSY);
            }
            std::fs::remove_dir_all(self.host.module_dir(name)).map_err(|_| Errno::ENOENT)?;
            self.removed.borrow_mut().push(name.to_owned());
            Ok(())
        }
    }

    fn ko(dir: &Path, name: &str, replace: bool) -> PathBuf {
        let p = dir.join(format!("{name}.ko"));
        let modname = format!("name={}", crate::module_name(name));
        let rep = format!("graft_replace={}", u8::from(replace));
        std::fs::write(
            &p,
            module_bytes(
                &[
                    "livepatch=Y",
                    &modname,
                    "vermagic=6.1.0-56-amd64 SMP",
                    "graft_version=0.1.0",
                    &rep,
                ],
                false,
            ),
        )
        .unwrap();
        p
    }

    fn opts() -> LoadOptions {
        LoadOptions {
            watch: WatchOptions {
                timeout: Duration::from_millis(200),
                grace: Duration::from_millis(50),
                poll: Duration::from_millis(5),
                census_every: Duration::from_millis(10),
            },
            on_stall: OnStall::Revert,
            revert_timeout: Duration::from_millis(300),
        }
    }

    #[test]
    fn replace_reports_handover_and_removes_the_old_module() {
        let (t, h) = host();
        add_patch(
            &h,
            "livepatch_a",
            &[
                ("vmlinux", "cmdline_proc_show", 0),
                ("vmlinux", "version_proc_show", 0),
                ("vmlinux", "control_show", 2),
            ],
            false,
        );
        // control_show,1 and control_show,2 are namesakes, not one function.
        let k = FakeKernel {
            host: h.clone(),
            funcs: vec![
                ("vmlinux", "cmdline_proc_show", 0),
                ("vmlinux", "loadavg_proc_show", 0),
                ("vmlinux", "control_show", 1),
            ],
            completes: true,
            replace: true,
            removed: RefCell::new(Vec::new()),
        };
        let r = load(
            &h,
            &k,
            &ko(t.path(), "livepatch-b", true),
            &opts(),
            &|| false,
            &mut |_| {},
        )
        .unwrap();
        let LoadOutcome::Loaded {
            replaced,
            handover,
            forced,
            leftovers,
            ..
        } = r.outcome
        else {
            panic!("{:?}", r.outcome)
        };
        assert_eq!(replaced, ["livepatch_a"]);
        assert!(!forced && leftovers.is_empty());
        assert_eq!(*k.removed.borrow(), ["livepatch_a"]);
        let h2: Vec<String> = handover
            .iter()
            .map(|x| format!("{} {:?}->{:?}", x.function, x.from, x.to))
            .collect();
        assert_eq!(
            h2,
            [
                // The kernel shows a unique function as `name,1`.
                "cmdline_proc_show,1 Some(\"livepatch_a\")->Some(\"livepatch_b\")",
                "control_show,1 None->Some(\"livepatch_b\")",
                "loadavg_proc_show,1 None->Some(\"livepatch_b\")",
                "control_show,2 Some(\"livepatch_a\")->None",
                "version_proc_show,1 Some(\"livepatch_a\")->None",
            ]
        );
    }

    #[test]
    fn stacking_keeps_the_others() {
        let (t, h) = host();
        add_patch(
            &h,
            "livepatch_b",
            &[("vmlinux", "cmdline_proc_show", 0)],
            false,
        );
        let k = FakeKernel {
            host: h.clone(),
            funcs: vec![("vmlinux", "cmdline_proc_show", 0)],
            completes: true,
            replace: false,
            removed: RefCell::new(Vec::new()),
        };
        let r = load(
            &h,
            &k,
            &ko(t.path(), "livepatch-c", false),
            &opts(),
            &|| false,
            &mut |_| {},
        )
        .unwrap();
        let LoadOutcome::Loaded {
            replaced, handover, ..
        } = r.outcome
        else {
            panic!()
        };
        assert!(replaced.is_empty());
        assert_eq!(handover[0].from.as_deref(), Some("livepatch_b"));
        assert_eq!(handover.len(), 1);
        assert!(k.removed.borrow().is_empty());
    }

    #[test]
    fn a_stall_is_reversed_and_the_module_removed() {
        let (t, h) = host();
        let d = h.proc.join("96/task/96");
        write(&d.join("patch_state"), "0\n");
        write(&d.join("comm"), "cat\n");
        write(&d.join("stack"), "[<0>] ksys_read+0xb7/0xf0\n");
        let k = FakeKernel {
            host: h.clone(),
            funcs: vec![("vmlinux", "ksys_read", 0)],
            completes: false,
            replace: true,
            removed: RefCell::new(Vec::new()),
        };
        // The fake kernel finishes a reversal at once: emulate it by removing
        // the patch when enabled is written 0.
        let hh = h.clone();
        let watcher = std::thread::spawn(move || {
            let en = hh.patch_dir("livepatch_s").join("enabled");
            for _ in 0..400 {
                if std::fs::read_to_string(&en).is_ok_and(|s| s.trim() == "0") {
                    std::fs::remove_dir_all(hh.patch_dir("livepatch_s")).unwrap();
                    return true;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            false
        });
        let r = load(
            &h,
            &k,
            &ko(t.path(), "livepatch-s", true),
            &opts(),
            &|| false,
            &mut |_| {},
        )
        .unwrap();
        assert!(
            watcher.join().unwrap(),
            "graft never reversed the transition"
        );
        let LoadOutcome::Reverted {
            blockers,
            cancelled,
            ..
        } = r.outcome
        else {
            panic!("{:?}", r.outcome)
        };
        assert!(!cancelled);
        assert_eq!(blockers[0].function.as_deref(), Some("ksys_read"));
        assert_eq!(*k.removed.borrow(), ["livepatch_s"]);
        assert!(!h.module_dir("livepatch_s").exists());
    }

    #[test]
    fn unload_of_unknown_and_leftover() {
        let (_t, h) = host();
        let k = FakeKernel {
            host: h.clone(),
            funcs: vec![],
            completes: true,
            replace: false,
            removed: RefCell::new(Vec::new()),
        };
        let e = unload(
            &h,
            &k,
            "livepatch_nope",
            None,
            &opts(),
            &|| false,
            &mut |_| {},
        )
        .unwrap_err();
        assert!(matches!(e, OpsError::NotLoaded { .. }), "{e}");
        add_module(&h, "livepatch_old", true);
        let r = unload(
            &h,
            &k,
            "livepatch_old",
            None,
            &opts(),
            &|| false,
            &mut |_| {},
        )
        .unwrap();
        assert!(matches!(r, UnloadOutcome::Removed { .. }), "{r:?}");
    }
}
