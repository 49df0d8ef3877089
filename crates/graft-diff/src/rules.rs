//! What a live patch cannot carry. Each refusal names the object, the
//! symbol and the rule, and says what to do instead.

use std::collections::{BTreeSet, HashMap};
use std::fmt;

use graft_elf::{Object, SymbolId};
use serde::Serialize;

use crate::callees::Blocked;
use crate::code::Target;
use crate::compare::Ctx;
use crate::names::Hidden;
use crate::special::{self, Role, TableError};
use crate::{ObjectDiff, Options, Verdict};

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Refusal {
    pub object: String,
    pub symbol: String,
    pub rule: Rule,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "rule", rename_all = "snake_case")]
pub enum Rule {
    /// A changed or new function (or data) in `.init.*`/`.exit.*`.
    InitCode { section: String },
    /// A changed function that ftrace cannot redirect, and that graft
    /// cannot patch through its callers either (see [`crate::callees`]).
    NoFentry { why: String, hint: String },
    /// A changed initial value or size of existing writable data.
    DataChanged {
        section: String,
        old_size: u64,
        new_size: u64,
    },
    /// A structure or union whose layout differs between the builds.
    LayoutChanged { what: String },
    /// A changed constant that writable data points to.
    ConstantInData { constant: String },
    /// Changed code using once/ratelimit/lockdep state the running kernel
    /// keeps, when graft cannot tell which copy the running code uses.
    HiddenState { state: String, why: String },
    /// A numbered local graft cannot pair with certainty.
    Ambiguous {
        candidates: Vec<String>,
        why: String,
    },
    /// An export's CRC differs from what the running kernel's modules use.
    ExportCrc {
        expected: u32,
        found: u32,
        against: String,
    },
    /// A jump label or static call whose key lives in a module.
    KeyInModule { table: String, key: String },
    /// A section graft does not understand that describes patched code.
    UnknownSection { section: String },
    /// A table about patched code that graft cannot cut into entries.
    UnreadableTable { section: String, why: String },
    /// A `.graft.*` record (callback, state, ignore marker) graft cannot use.
    Marker { section: String, why: String },
    /// A changed function a kernel thread runs as its main loop: the
    /// thread never leaves it, so the transition could never complete.
    KthreadMain { why: String },
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (o, s) = (&self.object, &self.symbol);
        match &self.rule {
            Rule::InitCode { section } => write!(
                f,
                "{o}: {s} (in {section}) changed [rule: init-code]: __init/__exit code has run and been freed, it cannot be live patched; hint: patch the code that runs after boot, or make the change take effect in a post-patch callback"
            ),
            Rule::NoFentry { why, hint } => write!(
                f,
                "{o}: {s} changed but has no __fentry__ call [rule: no-fentry] (inline, notrace, noinstr, or not built with -mfentry), so livepatch cannot redirect it, and graft cannot patch its callers instead: {why}; hint: {hint}"
            ),
            Rule::DataChanged { section, old_size, new_size } => {
                let size = if old_size != new_size {
                    format!(" (its size went from {old_size} to {new_size} bytes: a field added to its type?)")
                } else {
                    String::new()
                };
                write!(
                    f,
                    "{o}: the initial value or layout of {s} (in {section}) changed{size} [rule: data-changed]: running code already uses the old data, which a live patch cannot rewrite; hint: keep the data and its type as they are and attach new state with a shadow variable (klp_shadow_alloc/klp_shadow_get, Documentation/livepatch/shadow-vars.rst), or convert it in a post-patch callback"
                )
            }
            Rule::LayoutChanged { what } => write!(
                f,
                "{o}: the layout of {s} changed ({what}) [rule: layout-changed]: the running kernel's code and the objects it holds in memory keep the old layout, which a live patch cannot change; hint: keep the type as it is and attach new fields with a shadow variable (klp_shadow_alloc/klp_shadow_get, Documentation/livepatch/shadow-vars.rst), or use spare or padding space the type already has"
            ),
            Rule::ConstantInData { constant } => write!(
                f,
                "{o}: the constant {constant} changed, and the data {s} points to it [rule: constant-in-data]: the running kernel's {s} keeps pointing to the old constant; hint: change the code that reads it instead, or update {s} in a post-patch callback"
            ),
            Rule::HiddenState { state, why } => write!(
                f,
                "{o}: {s} changed and uses {state}, hidden state of a pr_*_once/printk_once/WARN_ONCE/printk_ratelimited/lockdep macro [rule: hidden-state]: the patched code must share the running kernel's copy, whose name repeats throughout the kernel, and {why}; hint: if printing the message once more after patching is acceptable, give the new code a flag of its own: replace the macro in the changed function with `static bool done; if (!done) {{ done = true; pr_warn(...); }}`, or move the macro into a helper the patch does not change"
            ),
            Rule::KthreadMain { why } => write!(
                f,
                "{o}: {s} changed, and it is a kernel thread's main loop ({why}) [rule: kthread-main]: a running thread never returns from it, so livepatch's consistency model can never switch that thread and the transition would not complete; hint: make the change in a function the loop calls (each pass calls it anew), or stop and restart the thread in the patch's callbacks"
            ),
            Rule::Ambiguous { candidates, why } => write!(
                f,
                "{o}: cannot pair {s} with the original build [rule: ambiguous-local]: it could be {} ({why}); hint: avoid adding or removing static variables or clones of the same name in this file, or give the new one another name",
                candidates.join(" or ")
            ),
            Rule::ExportCrc { expected, found, against } => write!(
                f,
                "{o}: the exported symbol {s} changed its CRC from {expected:#010x} ({against}) to {found:#010x} [rule: export-crc]: its type changed, and modules built against the running kernel use the old one; hint: keep the exported function's signature and the types it uses, and add a new function for the new interface"
            ),
            Rule::KeyInModule { table, key } => write!(
                f,
                "{o}: {s} uses {key} from {table} [rule: key-in-module]: the key lives in a module other than the one patched (or is a static call's), and the kernel sets up jump labels and static calls before the klp relocations that would reach it; hint: use static_key_enabled() or a plain call instead in the patched code"
            ),
            Rule::UnknownSection { section } => write!(
                f,
                "{o}: {s} is described by {section}, a section graft does not understand [rule: unknown-section]; the module would miss those entries, so it is refused"
            ),
            Rule::UnreadableTable { section, why } => write!(
                f,
                "{o}: {s} is described by {section}, which graft cannot read [rule: unreadable-table]: {why}"
            ),
            Rule::Marker { section, why } => {
                let what = if s.is_empty() {
                    String::new()
                } else {
                    format!(" ({s})")
                };
                write!(f, "{o}: {section}{what}: {why} [rule: marker]")
            }
        }
    }
}

pub fn is_init_section(name: &str) -> bool {
    name.starts_with(".init.") || name.starts_with(".exit.")
}

/// A piece split off a function by the compiler (`foo.cold`): carried along
/// with its parent, never patched on its own.
pub fn is_part(name: &str) -> bool {
    crate::names::parent_of_part(name).is_some()
}

/// The refusals of `diff`; `blocked` says why each hookless changed
/// function could not be patched through its callers. One pass per kind
/// of thing a live patch cannot carry.
pub fn check(
    ctx: &Ctx<'_>,
    diff: &ObjectDiff,
    opts: &Options<'_>,
    blocked: &HashMap<SymbolId, Blocked>,
) -> Vec<Refusal> {
    let r = Refuser { ctx, diff };
    let mut out = Vec::new();
    r.carried_functions(blocked, &mut out);
    r.changed_data(&mut out);
    r.constants_in_data(&mut out);
    r.ambiguous_pairs(&mut out);
    r.export_crcs(opts, &mut out);
    r.keys_in_module(opts, &mut out);
    r.unknown_sections(&mut out);
    r.kthread_mains(&mut out);
    out.dedup();
    out
}

struct Refuser<'c, 'a> {
    ctx: &'c Ctx<'a>,
    diff: &'c ObjectDiff,
}

impl Refuser<'_, '_> {
    fn refuse(&self, symbol: &str, rule: Rule) -> Refusal {
        Refusal {
            object: self.diff.object.clone(),
            symbol: symbol.to_owned(),
            rule,
        }
    }

    /// Changed or new `__init`/`__exit` code, and changed functions
    /// livepatch cannot redirect (no `__fentry__`) that no caller covers.
    fn carried_functions(&self, blocked: &HashMap<SymbolId, Blocked>, out: &mut Vec<Refusal>) {
        let (ctx, diff) = (self.ctx, self.diff);
        let refuse = |s: &str, r: Rule| self.refuse(s, r);
        for c in diff.included_functions() {
            if is_init_section(&c.section) {
                out.push(refuse(&c.name, init_code(&c.section)));
                continue;
            }
            // The hook that matters is the running kernel's: livepatch
            // redirects the old function.
            if matches!(c.verdict, Verdict::Changed { .. })
                && !is_part(&c.name)
                && c.twin.is_some_and(|o| !has_fentry(ctx.orig.obj, o))
            {
                let (why, hint) = blocked.get(&c.symbol).map_or_else(
                    || {
                        (
                            "graft found no way to reach it through its callers".to_owned(),
                            "make the change in a function with __fentry__".to_owned(),
                        )
                    },
                    |b| (b.why.clone(), b.hint.clone()),
                );
                out.push(refuse(&c.name, Rule::NoFentry { why, hint }));
            }
        }
    }

    /// Changed `__init` data, and changed writable data (its initial value
    /// or layout: running code already uses the old one).
    fn changed_data(&self, out: &mut Vec<Refusal>) {
        let (ctx, diff) = (self.ctx, self.diff);
        let patched = ctx.patched.obj;
        let refuse = |s: &str, r: Rule| self.refuse(s, r);
        for c in &diff.data {
            let Verdict::Changed { .. } = c.verdict else {
                continue;
            };
            if is_init_section(&c.section) {
                out.push(refuse(&c.name, init_code(&c.section)));
                continue;
            }
            let sec = patched.section(c.section_id);
            let writable = sec.flags & 1 != 0;
            if c.hidden == Some(Hidden::Registry) {
                // Dynamic debug descriptors are carried fresh with the code.
                continue;
            }
            if writable {
                let old_size = c.twin.map_or(0, |o| ctx.orig.obj.symbol(o).size);
                out.push(refuse(
                    &c.name,
                    Rule::DataChanged {
                        section: c.section.clone(),
                        old_size,
                        new_size: patched.symbol(c.symbol).size,
                    },
                ));
            }
        }
    }

    /// A changed constant pointed to by writable data that did not change.
    fn constants_in_data(&self, out: &mut Vec<Refusal>) {
        let (ctx, diff) = (self.ctx, self.diff);
        let patched = ctx.patched.obj;
        let refuse = |s: &str, r: Rule| self.refuse(s, r);
        let refs = &ctx.patched.refs;
        for c in diff
            .data
            .iter()
            .filter(|c| c.verdict == Verdict::Same || c.reason.is_some())
        {
            let s = patched.symbol(c.symbol);
            let writable = s
                .section
                .is_some_and(|sec| patched.section(sec).flags & 1 != 0);
            if !writable {
                continue;
            }
            for t in refs.get(&c.symbol).into_iter().flatten() {
                if let Some(k) = diff.data.iter().find(|d| d.symbol == *t) {
                    if matches!(k.verdict, Verdict::Changed { .. }) && k.hidden.is_none() {
                        let ks = patched.symbol(k.symbol);
                        let kw = ks
                            .section
                            .is_some_and(|sec| patched.section(sec).flags & 1 != 0);
                        if !kw {
                            out.push(refuse(
                                &c.name,
                                Rule::ConstantInData {
                                    constant: k.name.clone(),
                                },
                            ));
                        }
                    }
                }
            }
        }
    }

    /// Changed functions a kernel thread runs as its main loop: they ask
    /// `kthread_should_stop()` and are started by address (their address
    /// is taken in the object, or they are global: `kthread_run(f, …)` in
    /// another file).
    fn kthread_mains(&self, out: &mut Vec<Refusal>) {
        const STOP: &[&str] = &["kthread_should_stop", "kthread_freezable_should_stop"];
        let orig = self.ctx.orig.obj;
        for c in self.diff.changed_functions() {
            let Some(fo) = c.twin else { continue };
            let f = orig.symbol(fo);
            let Some(fsec) = f.section else { continue };
            let sec = orig.section(fsec);
            let asks = sec
                .relocs_in(f.value, f.value.saturating_add(f.size))
                .iter()
                .any(|r| STOP.contains(&orig.symbol(r.symbol).name.as_str()));
            if !asks {
                continue;
            }
            let uses = uses_of(orig, fo);
            let called = uses.iter().any(|u| u.call);
            let taken_by = uses.iter().find(|u| !u.call).map(|u| {
                crate::correlate::symbol_at(orig, u.section, u.offset as i64).map_or_else(
                    || orig.section(u.section).name.clone(),
                    |h| orig.symbol(h).name.clone(),
                )
            });
            let why = if f.binding != graft_elf::Binding::Local && !called {
                Some("it checks kthread_should_stop() and is global but called nowhere in its file: a thread is started on it from another".to_owned())
            } else {
                taken_by
                    .map(|by| format!("it checks kthread_should_stop() and {by} takes its address"))
            };
            if let Some(why) = why {
                out.push(self.refuse(&c.name, Rule::KthreadMain { why }));
            }
        }
    }

    /// Numbered locals graft could not pair with certainty.
    fn ambiguous_pairs(&self, out: &mut Vec<Refusal>) {
        let ctx = self.ctx;
        let patched = ctx.patched.obj;
        let refuse = |s: &str, r: Rule| self.refuse(s, r);
        for (p, os, why) in &ctx.twins.ambiguous {
            out.push(refuse(
                &patched.symbol(*p).name,
                Rule::Ambiguous {
                    candidates: os
                        .iter()
                        .map(|o| ctx.orig.obj.symbol(*o).name.clone())
                        .collect(),
                    why: why.clone(),
                },
            ));
        }
    }

    /// Exports whose CRC (their type) changed.
    fn export_crcs(&self, opts: &Options<'_>, out: &mut Vec<Refusal>) {
        let refuse = |s: &str, r: Rule| self.refuse(s, r);
        for (name, &found) in &opts.crcs.patched {
            let (expected, against) = match opts.target_crc.and_then(|f| f(name)) {
                Some(c) => (Some(c), "the running kernel's Module.symvers"),
                None => (opts.crcs.orig.get(name).copied(), "the original build"),
            };
            if let Some(expected) = expected.filter(|e| *e != found) {
                out.push(refuse(
                    name,
                    Rule::ExportCrc {
                        expected,
                        found,
                        against: against.into(),
                    },
                ));
            }
        }
    }

    /// Jump labels and static calls in carried code of a module whose key
    /// lives in the target module.
    fn keys_in_module(&self, opts: &Options<'_>, out: &mut Vec<Refusal>) {
        let (ctx, diff) = (self.ctx, self.diff);
        let patched = ctx.patched.obj;
        let refuse = |s: &str, r: Rule| self.refuse(s, r);
        let included: BTreeSet<SymbolId> = diff.included_functions().map(|c| c.symbol).collect();
        if opts.module.is_some() {
            for t in &ctx.patched.tables {
                let ts = patched.section(t.id);
                let Some(Role::Table(table)) = special::role(ts) else {
                    continue;
                };
                if !table.keyed {
                    continue;
                }
                for e in t
                    .entries
                    .iter()
                    .filter(|e| e.owner.is_some_and(|o| included.contains(&o)))
                {
                    for r in ts.relocs_in(e.offset, e.offset + e.size).iter().skip(1) {
                        let key = match ctx.patched.code.target(patched, ts, r) {
                            Target::Undefined(name, _) => {
                                if opts.vmlinux_has.is_some_and(|f| f(&name)) {
                                    continue;
                                }
                                // Defined by another file of the target
                                // module (its tracepoints are defined once,
                                // where CREATE_TRACE_POINTS is): its own key.
                                if opts.module_has.is_some_and(|f| f(&name)) {
                                    continue;
                                }
                                name
                            }
                            // Defined in this file: a key of the target
                            // module itself (its tracepoints, its static
                            // keys), or one the module carries (a new
                            // pr_debug's descriptor). graft-klp registers
                            // such jump labels once the module's klp
                            // relocations are applied, and leaves such
                            // static call sites calling the trampoline
                            // (graft-klp's jumps.rs).
                            Target::Place(..) => continue,
                        };
                        let owner = e
                            .owner
                            .map_or_else(String::new, |o| patched.symbol(o).name.clone());
                        out.push(refuse(
                            &owner,
                            Rule::KeyInModule {
                                table: t.section.clone(),
                                key,
                            },
                        ));
                    }
                }
            }
        }
    }

    /// Sections that describe carried code but cannot be rebuilt.
    fn unknown_sections(&self, out: &mut Vec<Refusal>) {
        let (ctx, diff) = (self.ctx, self.diff);
        let patched = ctx.patched.obj;
        let included_sections: BTreeSet<_> =
            diff.included_functions().map(|c| c.section_id).collect();
        let refuse = |s: &str, r: Rule| self.refuse(s, r);
        for s in &patched.sections {
            let role = special::role(s);
            let unreadable = ctx.patched.table_errors.iter().find(|(id, _)| *id == s.id);
            if role.is_some() && unreadable.is_none() {
                continue;
            }
            let mut hit: Option<String> = None;
            for r in &s.relocs {
                if let Some((sec, off)) = special::data_target(patched, r) {
                    if included_sections.contains(&sec) {
                        hit = Some(special::function_at(patched, sec, off).map_or_else(
                            || patched.section(sec).name.clone(),
                            |f| patched.symbol(f).name.clone(),
                        ));
                        break;
                    }
                }
            }
            let Some(function) = hit else { continue };
            let rule = match unreadable {
            Some((_, TableError::NoLayout { item })) => Rule::UnreadableTable {
                section: s.name.clone(),
                why: format!("the kernel's layout has no {item} (the option is off in this config, or no layout was given; hint: pass --tree)"),
            },
            Some((_, TableError::Malformed { what })) => Rule::UnreadableTable {
                section: s.name.clone(),
                why: what.clone(),
            },
            None => Rule::UnknownSection { section: s.name.clone() },
        };
            out.push(refuse(&function, rule));
        }
    }
}

/// Hidden state of the running kernel that carried code uses: the patched
/// code must share the running kernel's copy (a once flag already set stays
/// set). The copy is found through the original function's code, which
/// run-pre verification matches against the kernel (a cold part is reached
/// through its parent).
pub fn shared_state(ctx: &Ctx<'_>, diff: &ObjectDiff) -> Vec<crate::SharedState> {
    let refs = &ctx.patched.refs;
    let mut out: Vec<crate::SharedState> = Vec::new();
    for c in diff.included_functions().filter(|c| !is_part(&c.name)) {
        for t in refs.get(&c.symbol).into_iter().flatten() {
            let Some(d) = diff.data.iter().find(|d| d.symbol == *t) else {
                continue;
            };
            let (Some(Hidden::State), Some(twin)) = (d.hidden, d.twin) else {
                continue;
            };
            if out
                .iter()
                .any(|s| s.function == c.name && s.symbol == d.symbol)
            {
                continue;
            }
            let orig = ctx.orig.obj;
            let mut users: Vec<SymbolId> = ctx
                .orig
                .refs
                .iter()
                .filter(|(f, ts)| {
                    ts.contains(&twin)
                        && orig.symbol(**f).kind == graft_elf::SymKind::Func
                        && !is_part(&orig.symbol(**f).name)
                })
                .map(|(f, _)| *f)
                .collect();
            users.sort();
            out.push(crate::SharedState {
                function: c.name.clone(),
                state: orig.symbol(twin).name.clone(),
                symbol: d.symbol,
                users,
            });
        }
    }
    out
}

/// A reference to a function from outside its own code.
struct Use {
    section: graft_elf::SectionId,
    offset: u64,
    /// A call or jump to it, not its address taken.
    call: bool,
}

/// Every reference to function `f` from `obj`'s other sections, except
/// tables about code (ftrace's call sites, ORC, bug entries) and debug info,
/// which name every function.
fn uses_of(obj: &Object, f: SymbolId) -> Vec<Use> {
    let Some(fsec) = obj.symbol(f).section else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for sec in obj.sections.iter().filter(|s| s.id != fsec) {
        let table = matches!(
            crate::special::role(sec),
            Some(crate::special::Role::Table(_))
        ) || sec.name.starts_with(".debug");
        if table {
            continue;
        }
        for r in &sec.relocs {
            let t = obj.symbol(r.symbol);
            let to_f =
                r.symbol == f || (t.kind == graft_elf::SymKind::Section && t.section == Some(fsec));
            if !to_f {
                continue;
            }
            let o = r.offset as usize;
            let byte = |k: usize| o.checked_sub(k).and_then(|i| sec.data.get(i)).copied();
            let call = sec.is_exec()
                && (matches!(byte(1), Some(0xe8 | 0xe9))
                    || (byte(2) == Some(0x0f) && byte(1).is_some_and(|b| b & 0xf0 == 0x80)));
            out.push(Use {
                section: sec.id,
                offset: r.offset,
                call,
            });
        }
    }
    out
}

/// `-mfentry` puts `call __fentry__` first (after `endbr64` on IBT kernels).
pub fn has_fentry(obj: &Object, id: SymbolId) -> bool {
    let sym = obj.symbol(id);
    let Some(sec) = sym.section else { return false };
    obj.section(sec)
        .relocs_in(sym.value, sym.value.saturating_add(16))
        .iter()
        .any(|r| obj.symbol(r.symbol).name == "__fentry__")
}

/// The rule a change to code or data in `section` (an init section) breaks.
fn init_code(section: &str) -> Rule {
    Rule::InitCode {
        section: section.to_owned(),
    }
}
