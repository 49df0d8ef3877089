//! Following a transition until it completes, a deadline passes, or the
//! operator cancels. The kernel does the work (see 6.1's
//! `kernel/livepatch/transition.c`): it retries the stragglers every second
//! and sends them fake signals every 15 retries. graft only watches, names
//! who blocks, and never signals a task itself.

use std::time::{Duration, Instant};

use serde::Serialize;

use crate::tasks::{self, Blocker, StackMatch};
use crate::{state, Host, OpsError};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// Towards the patched state (load, or the reverse of an unload).
    Patching,
    /// Towards the unpatched state (unload, or the reverse of a load).
    Unpatching,
}

impl Direction {
    pub fn target_patched(self) -> bool {
        self == Direction::Patching
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Patching => "patching",
            Direction::Unpatching => "unpatching",
        }
    }
}

#[derive(Debug, Clone)]
pub struct WatchOptions {
    /// Give up (and let the caller reverse) after this long.
    pub timeout: Duration,
    /// Name the blocking tasks once the transition has taken this long.
    pub grace: Duration,
    /// How often the transition flag is read.
    pub poll: Duration,
    /// How often the tasks are counted (reads one file per thread).
    pub census_every: Duration,
}

impl Default for WatchOptions {
    fn default() -> Self {
        WatchOptions {
            timeout: Duration::from_secs(60),
            grace: Duration::from_secs(2),
            poll: Duration::from_millis(20),
            census_every: Duration::from_millis(250),
        }
    }
}

/// What a watch reports while it runs.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// Tasks switched so far.
    Progress {
        patch: String,
        direction: Direction,
        switched: usize,
        total: usize,
        seconds: f64,
    },
    /// The tasks holding the transition up, after the grace period; sent
    /// again whenever the set changes.
    Blocked {
        patch: String,
        direction: Direction,
        blockers: Vec<Blocker>,
        seconds: f64,
    },
}

/// How a watch ended.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "end", rename_all = "snake_case")]
pub enum Watched {
    Complete {
        seconds: f64,
    },
    TimedOut {
        seconds: f64,
        blockers: Vec<Blocker>,
    },
    Cancelled {
        seconds: f64,
        blockers: Vec<Blocker>,
    },
    /// The transition went the other way: someone else reversed it.
    Reversed {
        seconds: f64,
    },
}

/// One transition to follow.
pub struct Watch<'a> {
    pub host: &'a Host,
    /// The patch in transition.
    pub name: &'a str,
    pub direction: Direction,
    /// What to look for on the blockers' stacks.
    pub functions: &'a StackMatch,
    pub opts: &'a WatchOptions,
}

/// Follows `w` from `start` (the time the operation began, so reported
/// seconds include the load itself).
pub fn watch(
    w: &Watch<'_>,
    start: Instant,
    cancel: &dyn Fn() -> bool,
    on: &mut dyn FnMut(Event),
) -> Result<Watched, OpsError> {
    let Watch {
        host,
        name,
        direction,
        functions,
        opts,
    } = *w;
    let target = direction.target_patched();
    let mut last_census: Option<Instant> = None;
    let mut last_blocked: Option<Vec<(u32, Option<String>)>> = None;
    loop {
        // One reading of the clock per round: the time reported is the
        // time the decisions below were taken on.
        let elapsed = start.elapsed();
        let secs = elapsed.as_secs_f64();
        match state::read_patch(host, name)? {
            // Unpatching ends with the kernel freeing the patch.
            None if !target => return Ok(Watched::Complete { seconds: secs }),
            None => return Ok(Watched::Reversed { seconds: secs }),
            Some(p) if !p.transition => {
                return Ok(if p.enabled == target {
                    Watched::Complete { seconds: secs }
                } else {
                    Watched::Reversed { seconds: secs }
                })
            }
            Some(p) if p.enabled != target => return Ok(Watched::Reversed { seconds: secs }),
            Some(_) => {}
        }
        let timed_out = elapsed >= opts.timeout;
        let cancelled = cancel();
        if last_census.is_none_or(|t| t.elapsed() >= opts.census_every) || timed_out || cancelled {
            last_census = Some(Instant::now());
            let c = tasks::census(host, target)?;
            on(Event::Progress {
                patch: name.to_owned(),
                direction,
                switched: c.switched,
                total: c.total,
                seconds: secs,
            });
            if elapsed >= opts.grace || timed_out || cancelled {
                let blockers = tasks::blockers(host, &c.pending, functions);
                if timed_out {
                    return Ok(Watched::TimedOut {
                        seconds: secs,
                        blockers,
                    });
                }
                if cancelled {
                    return Ok(Watched::Cancelled {
                        seconds: secs,
                        blockers,
                    });
                }
                let key: Vec<_> = blockers
                    .iter()
                    .map(|b| (b.task.tid, b.function.clone()))
                    .collect();
                if !blockers.is_empty() && last_blocked.as_ref() != Some(&key) {
                    on(Event::Blocked {
                        patch: name.to_owned(),
                        direction,
                        blockers,
                        seconds: secs,
                    });
                    last_blocked = Some(key);
                }
            }
        }
        std::thread::sleep(opts.poll);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::fake::*;

    fn opts() -> WatchOptions {
        WatchOptions {
            timeout: Duration::from_millis(400),
            grace: Duration::from_millis(100),
            poll: Duration::from_millis(5),
            census_every: Duration::from_millis(20),
        }
    }

    fn spec<'a>(
        h: &'a Host,
        direction: Direction,
        functions: &'a StackMatch,
        opts: &'a WatchOptions,
    ) -> Watch<'a> {
        Watch {
            host: h,
            name: "livepatch_x",
            direction,
            functions,
            opts,
        }
    }

    fn stuck_task(h: &Host) {
        let d = h.proc.join("96/task/96");
        write(&d.join("patch_state"), "0\n");
        write(&d.join("comm"), "cat\n");
        write(
            &d.join("stack"),
            "[<0>] pipe_read+0x3df/0x470\n[<0>] ksys_read+0xb7/0xf0\n",
        );
        let d = h.proc.join("1/task/1");
        write(&d.join("patch_state"), "1\n");
        write(&d.join("comm"), "init\n");
    }

    #[test]
    fn completes_when_the_kernel_clears_transition() {
        let (_t, h) = host();
        add_patch(&h, "livepatch_x", &[("vmlinux", "ksys_read", 0)], true);
        stuck_task(&h);
        let flag = h.patch_dir("livepatch_x").join("transition");
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(60));
            std::fs::write(flag, "0\n").unwrap();
        });
        let mut events = Vec::new();
        let mut funcs = StackMatch::default();
        funcs.add_function("ksys_read");
        let o = opts();
        let w = watch(
            &spec(&h, Direction::Patching, &funcs, &o),
            Instant::now(),
            &|| false,
            &mut |e| events.push(e),
        )
        .unwrap();
        t.join().unwrap();
        assert!(matches!(w, Watched::Complete { .. }), "{w:?}");
        assert!(
            matches!(
                events[0],
                Event::Progress {
                    switched: 1,
                    total: 2,
                    ..
                }
            ),
            "{events:?}"
        );
        // Done before the grace period: nobody was named.
        assert!(!events.iter().any(|e| matches!(e, Event::Blocked { .. })));
    }

    #[test]
    fn times_out_naming_the_blocker_once() {
        let (_t, h) = host();
        add_patch(&h, "livepatch_x", &[("vmlinux", "ksys_read", 0)], true);
        stuck_task(&h);
        let mut events = Vec::new();
        let mut funcs = StackMatch::default();
        funcs.add_function("ksys_read");
        let o = opts();
        let w = watch(
            &spec(&h, Direction::Patching, &funcs, &o),
            Instant::now(),
            &|| false,
            &mut |e| events.push(e),
        )
        .unwrap();
        let Watched::TimedOut { blockers, seconds } = w else {
            panic!("{w:?}")
        };
        assert!(seconds >= 0.4);
        assert_eq!(blockers.len(), 1);
        assert_eq!(blockers[0].function.as_deref(), Some("ksys_read"));
        let named: Vec<_> = events
            .iter()
            .filter(|e| matches!(e, Event::Blocked { .. }))
            .collect();
        assert_eq!(named.len(), 1, "{events:?}");
    }

    #[test]
    fn cancel_and_reverse_and_vanish() {
        let (_t, h) = host();
        add_patch(&h, "livepatch_x", &[("vmlinux", "ksys_read", 0)], true);
        stuck_task(&h);
        let none = StackMatch::default();
        let o = opts();
        let w = watch(
            &spec(&h, Direction::Patching, &none, &o),
            Instant::now(),
            &|| true,
            &mut |_| {},
        )
        .unwrap();
        assert!(matches!(w, Watched::Cancelled { .. }), "{w:?}");
        // Someone wrote 0 to enabled: the patching transition is now an unpatching one.
        std::fs::write(h.patch_dir("livepatch_x").join("enabled"), "0\n").unwrap();
        let w = watch(
            &spec(&h, Direction::Patching, &none, &o),
            Instant::now(),
            &|| false,
            &mut |_| {},
        )
        .unwrap();
        assert!(matches!(w, Watched::Reversed { .. }), "{w:?}");
        // Unpatching completes when the kernel frees the patch.
        std::fs::remove_dir_all(h.patch_dir("livepatch_x")).unwrap();
        let w = watch(
            &spec(&h, Direction::Unpatching, &none, &o),
            Instant::now(),
            &|| false,
            &mut |_| {},
        )
        .unwrap();
        assert!(matches!(w, Watched::Complete { .. }), "{w:?}");
    }
}
