//! Tasks and their side of a transition: `/proc/<pid>/task/<tid>/patch_state`
//! (-1 no transition, 0 unpatched, 1 patched; root only) and the kernel stack
//! of the ones that have not switched, `/proc/<pid>/task/<tid>/stack`.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;

use serde::Serialize;

use crate::error::read_opt;
use crate::{Host, OpsError};

/// `PF_KTHREAD` in the flags field of `/proc/<pid>/stat`.
const PF_KTHREAD: u64 = 0x0020_0000;

/// One thread (the kernel switches threads, not processes).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Task {
    pub pid: u32,
    pub tid: u32,
    pub comm: String,
}

/// Where the tasks are, for a transition towards `patched` (or away from it).
#[derive(Debug, Clone, Default)]
pub struct Census {
    pub total: usize,
    pub switched: usize,
    /// Tasks not yet in the target state.
    pub pending: Vec<Task>,
}

/// Counts the tasks on either side. Tasks that exit while being read are
/// skipped; idle tasks are not in `/proc` (the kernel switches them itself).
pub fn census(host: &Host, target_patched: bool) -> Result<Census, OpsError> {
    let want = if target_patched { "1" } else { "0" };
    let mut c = Census::default();
    for (pid, tid) in threads(host)? {
        let dir = task_dir(host, pid, tid);
        let state = match std::fs::read_to_string(dir.join("patch_state")) {
            Ok(s) => s,
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
                return Err(OpsError::NotRoot {
                    what: "load and unload".into(),
                    why: "reads /proc/<pid>/task/<tid>/patch_state, which only root may".into(),
                })
            }
            Err(_) => continue,
        };
        let state = state.trim();
        // -1: the transition ended between our reads; counts as switched.
        c.total += 1;
        if state == want || state == "-1" {
            c.switched += 1;
        } else {
            let comm = read_opt(&dir.join("comm"))?.unwrap_or_default();
            c.pending.push(Task {
                pid,
                tid,
                comm: comm.trim().to_owned(),
            });
        }
    }
    Ok(c)
}

/// Every (pid, tid) in `/proc`.
fn threads(host: &Host) -> Result<Vec<(u32, u32)>, OpsError> {
    let mut v = Vec::new();
    for pid in numeric_entries(&host.proc) {
        for tid in numeric_entries(&host.proc.join(pid.to_string()).join("task")) {
            v.push((pid, tid));
        }
    }
    Ok(v)
}

fn numeric_entries(dir: &std::path::Path) -> Vec<u32> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut v: Vec<u32> = rd
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    v.sort_unstable();
    v
}

fn task_dir(host: &Host, pid: u32, tid: u32) -> PathBuf {
    host.proc.join(format!("{pid}/task/{tid}"))
}

/// One line of `/proc/<pid>/stack`: `[<0>] pipe_read+0x3df/0x470 [module]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Frame {
    pub function: String,
    pub offset: u64,
    pub size: u64,
    pub module: Option<String>,
}

impl std::fmt::Display for Frame {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}+{:#x}/{:#x}", self.function, self.offset, self.size)?;
        if let Some(m) = &self.module {
            write!(f, " [{m}]")?;
        }
        Ok(())
    }
}

pub fn parse_stack(text: &str) -> Vec<Frame> {
    text.lines()
        .filter_map(|l| {
            let l = l.trim();
            let rest = l.strip_prefix('[').and_then(|r| r.split_once("] "))?.1;
            let mut parts = rest.split_whitespace();
            let sym = parts.next()?;
            let module = parts
                .next()
                .map(|m| m.trim_matches(|c| c == '[' || c == ']').to_owned());
            let (function, offs) = sym.rsplit_once('+')?;
            let (off, size) = offs.split_once('/')?;
            let hex = |s: &str| u64::from_str_radix(s.trim_start_matches("0x"), 16).ok();
            Some(Frame {
                function: function.to_owned(),
                offset: hex(off)?,
                size: hex(size)?,
                module,
            })
        })
        .collect()
}

/// A task that keeps a transition from completing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Blocker {
    #[serde(flatten)]
    pub task: Task,
    pub kthread: bool,
    /// The first patched function found on its stack (innermost first):
    /// why the kernel will not switch it.
    pub function: Option<String>,
    /// Its kernel stack, innermost first (empty when unreadable: the task
    /// was running, or it exited).
    pub stack: Vec<String>,
}

impl Blocker {
    /// One line for people: `cat (pid 96) sleeps in ksys_read`.
    pub fn describe(&self) -> String {
        let who = if self.task.pid == self.task.tid {
            format!("{} (pid {})", self.task.comm, self.task.pid)
        } else {
            format!(
                "{} (pid {}, thread {})",
                self.task.comm, self.task.pid, self.task.tid
            )
        };
        let kind = if self.kthread { "kernel thread " } else { "" };
        match &self.function {
            Some(f) => format!("{kind}{who} sleeps in {f}, a function the patch changes"),
            None => {
                format!("{kind}{who} has not switched yet (running, or its stack was not reliable)")
            }
        }
    }
}

/// What to look for on the stacks of tasks that have not switched.
#[derive(Debug, Clone, Default)]
pub struct StackMatch {
    /// Names seen in stack traces → the patched function they stand for.
    pub names: HashMap<String, String>,
    /// Live patch modules involved: any frame in their code is patched code.
    pub modules: HashSet<String>,
}

impl StackMatch {
    pub fn add_function(&mut self, name: &str) {
        self.names.insert(name.to_owned(), name.to_owned());
    }

    fn reason(&self, f: &Frame) -> Option<String> {
        if let Some(n) = self.names.get(&f.function) {
            return Some(n.clone());
        }
        let m = f.module.as_ref().filter(|m| self.modules.contains(*m))?;
        Some(format!("{} [{m}]", f.function))
    }
}

/// Looks at the stacks of the pending tasks for the patch's functions.
pub fn blockers(host: &Host, pending: &[Task], look: &StackMatch) -> Vec<Blocker> {
    pending
        .iter()
        .map(|t| {
            let dir = task_dir(host, t.pid, t.tid);
            let frames = std::fs::read_to_string(dir.join("stack"))
                .map(|s| parse_stack(&s))
                .unwrap_or_default();
            let function = frames.iter().find_map(|f| look.reason(f));
            Blocker {
                task: t.clone(),
                kthread: is_kthread(host, t.pid),
                function,
                stack: frames.iter().map(|f| f.to_string()).collect(),
            }
        })
        .collect()
}

/// From `/proc/<pid>/stat`: `pid (comm) state ppid … flags` — the comm can
/// hold spaces and parentheses, so fields are counted after the last `)`.
fn is_kthread(host: &Host, pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(host.proc.join(format!("{pid}/stat"))) else {
        return false;
    };
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return false;
    };
    // After the comm: state(1) ppid pgrp session tty_nr tpgid flags(7).
    rest.split_whitespace()
        .nth(6)
        .and_then(|f| f.parse::<u64>().ok())
        .is_some_and(|f| f & PF_KTHREAD != 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::fake::*;

    fn task(h: &Host, pid: u32, tid: u32, comm: &str, state: i32, stack: &str, flags: u64) {
        let d = task_dir(h, pid, tid);
        write(&d.join("patch_state"), &format!("{state}\n"));
        write(&d.join("comm"), &format!("{comm}\n"));
        write(&d.join("stack"), stack);
        write(
            &h.proc.join(format!("{pid}/stat")),
            &format!("{pid} ({comm}) S 1 1 1 0 -1 {flags} 0 0 0 0"),
        );
    }

    const CAT_STACK: &str = "[<0>] pipe_read+0x3df/0x470\n[<0>] vfs_read+0x2de/0x310\n[<0>] ksys_read+0xb7/0xf0\n[<0>] do_syscall_64+0x5d/0xb0\n[<0>] entry_SYSCALL_64_after_hwframe+0x6e/0xd8\n";

    #[test]
    fn parses_stack_lines() {
        let f = parse_stack(CAT_STACK);
        assert_eq!(f.len(), 5);
        assert_eq!(f[2].function, "ksys_read");
        assert_eq!((f[2].offset, f[2].size), (0xb7, 0xf0));
        let m = parse_stack("[<0>] ksys_read+0x10/0x80 [livepatch_x]\ngarbage\n");
        assert_eq!(m.len(), 1);
        assert_eq!(m[0].module.as_deref(), Some("livepatch_x"));
        assert_eq!(m[0].to_string(), "ksys_read+0x10/0x80 [livepatch_x]");
    }

    #[test]
    fn census_counts_threads_and_names_the_blocker() {
        let (_t, h) = host();
        task(&h, 1, 1, "init", 1, "", 0);
        task(&h, 2, 2, "kthreadd", 1, "", PF_KTHREAD);
        task(&h, 96, 96, "cat", 0, CAT_STACK, 0x400000);
        task(
            &h,
            97,
            97,
            "my (odd) name",
            0,
            "[<0>] do_nanosleep+0x1/0x2\n",
            0,
        );
        task(&h, 97, 98, "worker", 1, "", 0);
        let c = census(&h, true).unwrap();
        assert_eq!((c.total, c.switched), (5, 3));
        let names: Vec<_> = c.pending.iter().map(|t| t.comm.as_str()).collect();
        assert_eq!(names, ["cat", "my (odd) name"]);
        let mut look = StackMatch::default();
        look.add_function("ksys_read");
        let b = blockers(&h, &c.pending, &look);
        assert_eq!(b[0].function.as_deref(), Some("ksys_read"));
        assert!(!b[0].kthread);
        assert_eq!(
            b[0].describe(),
            "cat (pid 96) sleeps in ksys_read, a function the patch changes"
        );
        assert_eq!(b[1].function, None);
        assert!(b[1].describe().contains("has not switched yet"));
        // The reverse direction counts the other side.
        let r = census(&h, false).unwrap();
        assert_eq!(r.switched, 2);
    }

    #[test]
    fn frames_in_patch_modules_and_aliases_count() {
        let (_t, h) = host();
        let stack = "[<0>] pipe_read+0x3df/0x470\n[<0>] __graft_new_0_0+0xc4/0xff0 [livepatch_x]\n";
        task(&h, 96, 96, "cat", 1, stack, 0);
        let c = census(&h, false).unwrap();
        let mut look = StackMatch::default();
        look.modules.insert("livepatch_x".into());
        let b = blockers(&h, &c.pending, &look);
        assert_eq!(
            b[0].function.as_deref(),
            Some("__graft_new_0_0 [livepatch_x]")
        );
        look.names
            .insert("__graft_new_0_0".into(), "ksys_read".into());
        let b = blockers(&h, &c.pending, &look);
        assert_eq!(b[0].function.as_deref(), Some("ksys_read"));
    }

    #[test]
    fn kthreads_are_told_apart() {
        let (_t, h) = host();
        task(&h, 2, 2, "kworker/0:1", 0, "", PF_KTHREAD | 0x40);
        let c = census(&h, true).unwrap();
        let b = blockers(&h, &c.pending, &StackMatch::default());
        assert!(b[0].kthread);
        assert!(b[0]
            .describe()
            .starts_with("kernel thread kworker/0:1 (pid 2)"));
    }
}
