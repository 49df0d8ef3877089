//! Callee promotion: a changed function that livepatch cannot redirect,
//! patched through its callers instead.
//!
//! livepatch redirects a function by the ftrace hook at its start (the
//! `call __fentry__` that `-mfentry` puts first). The kernel's `inline`
//! implies `notrace`, so a `static inline` function that gcc keeps out of
//! line has no hook, and neither has `notrace`/`noinstr` code. The common
//! case is every syscall: `SYSCALL_DEFINE1(newuname, …)` puts the body in
//! `static inline long __do_sys_newuname(…)`, which the Debian kernel keeps
//! out of line (it is in kallsyms), called by `__x64_sys_newuname` and
//! `__ia32_sys_newuname`, the syscall table's entries, which have hooks.
//!
//! When such a function C changed, graft carries C as a **new** function and
//! patches its callers instead: their new copies call the new C, so every
//! path into C goes through the patch. That is exact when nothing else can
//! reach the old C, which graft checks:
//!
//! - C is local to its file (a global may be called from other files);
//! - every reference to C is a direct call or jump from a function (not an
//!   address taken in code, not a pointer in data: the kernel could call
//!   the old C through it, with no caller to patch);
//! - each caller has a hook, or is itself local, hookless and promoted the
//!   same way (transitively), or is new (carried anyway), or marked ignored
//!   by the author;
//! - a caller in `__init` code is fine in vmlinux (it has run and is gone),
//!   refused in a module (it would run the old C when the module loads).
//!
//! Anything else is refused (rule `no-fentry`) with the reason and the
//! rewrite to make.
//!
//! The consistency model still holds through the callers: a task inside the
//! old C entered it from an old caller, which is on its stack, so the task
//! does not switch until it left C. Except after a *tail call*
//! (`__x64_sys_newuname` ends in `jmp __do_sys_newuname`): the caller's
//! frame is gone, so a task asleep in the old C when the patch is applied
//! switches and finishes that one call in the old code. That is the
//! semantics of a call that began before the patch, which is what a fix
//! usually needs; callbacks that convert state must not assume that no task
//! is still inside the old C when post-patch runs.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use graft_elf::{Object, Reloc, SectionId, SymKind, SymbolId};

use crate::code::Target;
use crate::compare::Ctx;
use crate::names::parent_of_part;
use crate::rules::{has_fentry, is_init_section, is_part};
use crate::special::{function_at, role, Role};
use crate::{ObjectDiff, Verdict};

/// Why a hookless changed function could not be patched through its callers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Blocked {
    pub why: String,
    pub hint: String,
}

/// A function of the promotion's closure that must be patched: its first
/// call into the closure (offset from its start) and the callee.
struct Caller {
    offset: u64,
    callee: SymbolId,
}

/// Promotes every hookless changed function that can be; returns why the
/// others cannot, by symbol (the `no-fentry` rule reports them).
pub fn promote(
    ctx: &Ctx<'_>,
    out: &mut ObjectDiff,
    ignored: &BTreeSet<SymbolId>,
    module: bool,
) -> HashMap<SymbolId, Blocked> {
    let obj = ctx.patched.obj;
    let into = references_into(ctx);
    let mut blocked = HashMap::new();
    let candidates: Vec<SymbolId> = out
        .functions
        .iter()
        .filter(|c| {
            matches!(c.verdict, Verdict::Changed { .. })
                && !is_part(&c.name)
                && !is_init_section(&c.section)
                && !ignored.contains(&c.symbol)
                && c.twin.is_some_and(|o| !has_fentry(ctx.orig.obj, o))
        })
        .map(|c| c.symbol)
        .collect();
    for c in candidates {
        // An earlier candidate's closure may have taken it already.
        if !out
            .functions
            .iter()
            .any(|x| x.symbol == c && matches!(x.verdict, Verdict::Changed { .. }))
        {
            continue;
        }
        match closure(ctx, out, &into, ignored, module, c) {
            Ok((members, callers)) => apply(obj, out, c, &members, &callers),
            Err(b) => {
                blocked.insert(c, b);
            }
        }
    }
    blocked
}

/// Every reference of the object to each section: (from section,
/// relocation, offset reached in the target section). Debug info, objtool
/// annotations and graft's own markers are no uses.
fn references_into(ctx: &Ctx<'_>) -> HashMap<SectionId, Vec<(SectionId, Reloc, i64)>> {
    let obj = ctx.patched.obj;
    let mut into: HashMap<SectionId, Vec<(SectionId, Reloc, i64)>> = HashMap::new();
    for s in &obj.sections {
        if matches!(role(s), Some(Role::Drop | Role::Marker | Role::Meta)) {
            continue;
        }
        for r in &s.relocs {
            if let Target::Place(t, at, _) = ctx.patched.code.target(obj, s, r) {
                into.entry(t).or_default().push((s.id, *r, at));
            }
        }
    }
    into
}

/// The functions carried as new for `c` (c first) and the callers to patch.
#[allow(clippy::type_complexity)]
fn closure(
    ctx: &Ctx<'_>,
    out: &ObjectDiff,
    into: &HashMap<SectionId, Vec<(SectionId, Reloc, i64)>>,
    ignored: &BTreeSet<SymbolId>,
    module: bool,
    c: SymbolId,
) -> Result<(Vec<SymbolId>, BTreeMap<SymbolId, Caller>), Blocked> {
    let obj = ctx.patched.obj;
    let cname = obj.symbol(c).name.clone();
    let w = Walk {
        ctx,
        out,
        ignored,
        module,
        generic_hint: format!(
            "keep {cname} as it is and make the change in a function with __fentry__ (not inline, notrace or noinstr) that {cname} calls, or in the functions that call it"
        ),
        cname,
    };
    let mut members = vec![c];
    let mut callers: BTreeMap<SymbolId, Caller> = BTreeMap::new();
    let mut i = 0;
    while let Some(&f) = members.get(i) {
        i += 1;
        let fs = obj.symbol(f);
        // How f is reached, for messages about a member other than c.
        let via = if f == c {
            String::new()
        } else {
            format!(
                " (through {}, which calls it and has no __fentry__ either)",
                fs.name
            )
        };
        if fs.is_global() {
            return Err(Blocked {
                why: format!(
                    "{} is global{via}, so code in other files may call it directly, where a copy would not reach",
                    fs.name
                ),
                hint: format!(
                    "make the change in the callers of {} instead (functions with __fentry__), e.g. by giving them a new static function with the fixed code to call",
                    fs.name
                ),
            });
        }
        let Some(sec) = fs.section else { continue };
        let (lo, hi) = (
            fs.value as i64,
            fs.value.saturating_add(fs.size.max(1)) as i64,
        );
        for &(from, ref r, at) in into.get(&sec).into_iter().flatten() {
            if at < lo || at >= hi {
                continue;
            }
            match w.reference(f, &via, from, r, at)? {
                Reach::Nothing => {}
                Reach::Caller(u, site) => {
                    callers.entry(u).or_insert(Caller {
                        offset: site,
                        callee: f,
                    });
                }
                Reach::Member(u) => {
                    if !members.contains(&u) {
                        members.push(u);
                    }
                }
            }
        }
    }
    Ok((members, callers))
}

/// What one reference to a member of the closure means.
enum Reach {
    /// Nothing to do (its own code, a new or ignored caller, init code…).
    Nothing,
    /// A caller with a hook, to patch: (caller, call site offset).
    Caller(SymbolId, u64),
    /// A hookless local caller, which joins the closure.
    Member(SymbolId),
}

struct Walk<'c, 'a> {
    ctx: &'c Ctx<'a>,
    out: &'c ObjectDiff,
    ignored: &'c BTreeSet<SymbolId>,
    module: bool,
    cname: String,
    generic_hint: String,
}

impl Walk<'_, '_> {
    /// The reference `r` of section `from`, reaching member `f` at `at`:
    /// only code may refer to it, by a direct call from another function,
    /// whose caller is patched, promoted, or needs nothing.
    fn reference(
        &self,
        f: SymbolId,
        via: &str,
        from: SectionId,
        r: &Reloc,
        at: i64,
    ) -> Result<Reach, Blocked> {
        if let Some(reach) = self.outside_code(f, via, from, r) {
            return reach;
        }
        let Some((u, site)) = self.direct_call(f, via, from, r, at)? else {
            return Ok(Reach::Nothing);
        };
        self.caller(f, via, from, u, site)
    }

    /// Refused: the kernel can reach `f` without a call graft could patch,
    /// as `what` says.
    fn stored(&self, f: SymbolId, via: &str, what: String) -> Blocked {
        let fs = self.ctx.patched.obj.symbol(f);
        Blocked {
            why: format!(
                "{what}{via}, so the kernel can reach the old {} without a caller graft could patch",
                fs.name
            ),
            hint: self.generic_hint.clone(),
        }
    }

    /// A reference from outside code: nothing for a table entry about f's
    /// own code, refused otherwise. `None`: the reference is in code.
    fn outside_code(
        &self,
        f: SymbolId,
        via: &str,
        from: SectionId,
        r: &Reloc,
    ) -> Option<Result<Reach, Blocked>> {
        let obj = self.ctx.patched.obj;
        let name = |id: SymbolId| obj.symbol(id).name.clone();
        let from_sec = obj.section(from);
        match role(from_sec) {
            Some(Role::Code) => None,
            Some(Role::Table(_)) => {
                let owner = table_owner(self.ctx, from, r.offset);
                if owner.is_some_and(|o| same_function(obj, o, f)) {
                    return Some(Ok(Reach::Nothing)); // an entry about f's own code
                }
                Some(Err(self.stored(
                    f,
                    via,
                    format!(
                        "{} refers to it from an entry {}",
                        from_sec.name,
                        owner.map_or_else(
                            || "graft cannot attribute".to_owned(),
                            |o| format!("of {}", name(o))
                        )
                    ),
                )))
            }
            _ => {
                let holder = crate::correlate::symbol_at(obj, from, r.offset as i64).map_or_else(
                    || from_sec.name.clone(),
                    |h| format!("{} ({})", name(h), from_sec.name),
                );
                Some(Err(self.stored(
                    f,
                    via,
                    format!("its address is stored in {holder}"),
                )))
            }
        }
    }

    /// The function whose code `r` (in code) belongs to, when it calls or
    /// jumps to `f`'s start directly, and the call site's offset in it.
    /// `None`: a call that needs no patch (f's own code, vmlinux's init
    /// code).
    fn direct_call(
        &self,
        f: SymbolId,
        via: &str,
        from: SectionId,
        r: &Reloc,
        at: i64,
    ) -> Result<Option<(SymbolId, u64)>, Blocked> {
        let ctx = self.ctx;
        let obj = ctx.patched.obj;
        let name = |id: SymbolId| obj.symbol(id).name.clone();
        let fs = obj.symbol(f);
        let from_sec = obj.section(from);
        let Some(u) = function_at(obj, from, r.offset as i64) else {
            return Err(self.stored(
                f,
                via,
                format!(
                    "it is referenced from {} outside any function",
                    from_sec.name
                ),
            ));
        };
        if same_function(obj, u, f) {
            return Ok(None); // f's own code, or its cold part's
        }
        let site = r.offset.saturating_sub(obj.symbol(u).value);
        if at != fs.value as i64 || !ctx.patched.code.is_direct_branch(obj, from, r.offset) {
            return Err(self.stored(
                f,
                via,
                format!("its address is taken in {} (+{site:#x})", name(u)),
            ));
        }
        if is_init_section(&from_sec.name) {
            if self.module {
                return Err(Blocked {
                        why: format!(
                            "{} is __init code of the module and calls it{via}: init code cannot be patched, so it would run the old {} whenever the module loads",
                            name(u),
                            fs.name
                        ),
                        hint: format!(
                            "keep {} as it is and put the fixed code in a new function that the other callers call",
                            self.cname
                        ),
                    });
            }
            return Ok(None); // vmlinux's init code has run and is gone
        }
        Ok(Some((u, site)))
    }

    /// What the function `u` of section `from`, calling member `f` at `site`,
    /// needs: nothing (ignored, new, promoted already), a patched copy (it
    /// has a hook), or promotion with the member (local, no hook either).
    fn caller(
        &self,
        f: SymbolId,
        via: &str,
        from: SectionId,
        u: SymbolId,
        site: u64,
    ) -> Result<Reach, Blocked> {
        let (ctx, out) = (self.ctx, self.out);
        let obj = ctx.patched.obj;
        let name = |id: SymbolId| obj.symbol(id).name.clone();
        let cname = &self.cname;
        // A cold part calls on behalf of its parent.
        let u = parent_function(obj, u).unwrap_or(u);
        if self.ignored.contains(&u) {
            return Ok(Reach::Nothing); // the author keeps the running kernel's caller
        }
        let Some(uc) = out.functions.iter().find(|x| x.symbol == u) else {
            return Err(self.stored(f, via, format!("it is called from {}", name(u))));
        };
        let Some(twin) = uc.twin else {
            return Ok(Reach::Nothing); // a new caller is carried and calls the new copy
        };
        if uc.verdict == Verdict::New {
            return Ok(Reach::Nothing); // promoted already
        }
        if has_fentry(ctx.orig.obj, twin) {
            return Ok(Reach::Caller(u, site));
        }
        if obj.symbol(u).is_global()
            || is_init_section(&obj.section(obj.symbol(u).section.unwrap_or(from)).name)
        {
            return Err(Blocked {
                why: format!(
                    "it is called from {}{via}, which has no __fentry__ either and is {}",
                    name(u),
                    if obj.symbol(u).is_global() { "global" } else { "init code" }
                ),
                hint: format!(
                    "make the change in a function with __fentry__ on the way to {cname}, or in the callers of {}",
                    name(u)
                ),
            });
        }
        Ok(Reach::Member(u))
    }
}

/// Marks the closure: members carried as new functions, callers changed.
fn apply(
    obj: &Object,
    out: &mut ObjectDiff,
    c: SymbolId,
    members: &[SymbolId],
    callers: &BTreeMap<SymbolId, Caller>,
) {
    let name = |id: SymbolId| obj.symbol(id).name.clone();
    let list = |ids: &mut dyn Iterator<Item = SymbolId>| {
        let v: Vec<String> = ids.map(name).collect();
        if v.is_empty() {
            "nothing".to_owned()
        } else {
            v.join(", ")
        }
    };
    let patched_callers = list(&mut callers.keys().copied());
    for x in out.functions.iter_mut() {
        if let Some(pos) = members.iter().position(|m| *m == x.symbol) {
            let why = if pos == 0 {
                "it changed but has no __fentry__ call (the kernel's `inline` implies notrace), so livepatch cannot redirect it".to_owned()
            } else {
                format!(
                    "it calls {}, which the patch carries, and has no __fentry__ call",
                    name(c)
                )
            };
            x.verdict = Verdict::New;
            x.reason = Some(format!(
                "carried as a new function: {why}; it is local and only called directly, so the patch replaces its callers instead ({patched_callers})"
            ));
            x.first_insn = None;
        } else if let Some(k) = callers.get(&x.symbol) {
            if x.verdict == Verdict::Same {
                x.verdict = Verdict::Changed { offset: k.offset };
                x.reason = Some(format!(
                    "it calls {}, which the patch carries as a new function (it changed and has no __fentry__): replaced to call the new copy",
                    name(k.callee)
                ));
            }
        }
    }
}

/// Whether `u` is `f` or one of the pieces of the same function (`f.cold`).
fn same_function(obj: &Object, u: SymbolId, f: SymbolId) -> bool {
    let (un, fname) = (&obj.symbol(u).name, &obj.symbol(f).name);
    u == f
        || parent_of_part(un) == Some(fname.as_str())
        || parent_of_part(fname) == Some(un.as_str())
}

/// The parent of a cold part.
fn parent_function(obj: &Object, u: SymbolId) -> Option<SymbolId> {
    let parent = parent_of_part(&obj.symbol(u).name)?;
    obj.symbols
        .iter()
        .find(|s| s.kind == SymKind::Func && s.section.is_some() && s.name == parent)
        .map(|s| s.id)
}

/// The function the table entry holding `offset` of `table` describes.
fn table_owner(ctx: &Ctx<'_>, table: SectionId, offset: u64) -> Option<SymbolId> {
    ctx.patched
        .tables
        .iter()
        .filter(|t| t.id == table)
        .flat_map(|t| &t.entries)
        .find(|e| offset >= e.offset && offset < e.offset.saturating_add(e.size))
        .and_then(|e| e.owner)
}
