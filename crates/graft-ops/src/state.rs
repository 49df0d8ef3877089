//! The kernel's livepatch state as an owned model, read from
//! `/sys/kernel/livepatch` (see the kernel's
//! `Documentation/ABI/testing/sysfs-kernel-livepatch`) and `/proc/modules`.

use std::path::Path;

use serde::Serialize;

use crate::error::{io, read_opt};
use crate::{FuncRef, Host, OpsError};

/// One patch registered with livepatch (`/sys/kernel/livepatch/<name>`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LoadedPatch {
    pub name: String,
    pub enabled: bool,
    /// This patch is the one in transition (the kernel has at most one).
    pub transition: bool,
    pub objects: Vec<PatchedObject>,
}

impl LoadedPatch {
    pub fn functions(&self) -> impl Iterator<Item = &FuncRef> {
        self.objects.iter().flat_map(|o| o.functions.iter())
    }
}

/// A kernel object a patch changes: `vmlinux` or a module.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PatchedObject {
    pub name: String,
    /// The object is in memory (vmlinux always; a module when loaded).
    pub loaded: bool,
    /// `<object>/patched` (6.1+): its functions are redirected now.
    pub patched: Option<bool>,
    pub functions: Vec<FuncRef>,
}

/// Everything loaded, in load order (oldest first, as the patches stack).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Livepatches {
    pub patches: Vec<LoadedPatch>,
    /// Live patch modules still in memory without a patch in sysfs: replaced
    /// by a cumulative patch or disabled, and not yet removed.
    pub leftovers: Vec<String>,
}

impl Livepatches {
    pub fn get(&self, name: &str) -> Option<&LoadedPatch> {
        self.patches.iter().find(|p| p.name == name)
    }

    pub fn in_transition(&self) -> Option<&LoadedPatch> {
        self.patches.iter().find(|p| p.transition)
    }
}

/// Reads every loaded patch. Fails with [`OpsError::NoLivepatch`] when the
/// kernel has no livepatch support.
pub fn read(host: &Host) -> Result<Livepatches, OpsError> {
    let dir = host.livepatch_dir();
    if !dir.is_dir() {
        return Err(OpsError::NoLivepatch { dir });
    }
    let mut names = Vec::new();
    for e in std::fs::read_dir(&dir).map_err(io(&dir))? {
        let e = e.map_err(io(&dir))?;
        names.push(e.file_name().to_string_lossy().into_owned());
    }
    let order = modules_in_load_order(host)?;
    let rank = |n: &str| order.iter().position(|m| m == n).unwrap_or(usize::MAX);
    names.sort_by(|a, b| rank(a).cmp(&rank(b)).then(a.cmp(b)));
    let mut patches = Vec::new();
    for n in &names {
        // A patch can go away between the listing and the read (a replaced
        // patch is freed asynchronously): then it is simply not there.
        if let Some(p) = read_patch(host, n)? {
            patches.push(p);
        }
    }
    let leftovers = order
        .iter()
        .filter(|m| !names.contains(m) && is_livepatch_module(host, m))
        .cloned()
        .collect();
    Ok(Livepatches { patches, leftovers })
}

/// Reads one patch; `None` if it is not registered.
pub fn read_patch(host: &Host, name: &str) -> Result<Option<LoadedPatch>, OpsError> {
    let dir = host.patch_dir(name);
    let Some(enabled) = read_flag(&dir.join("enabled"))? else {
        return Ok(None);
    };
    let transition = read_flag(&dir.join("transition"))?.unwrap_or(false);
    let mut objects = Vec::new();
    for obj in subdirs(&dir)? {
        let odir = dir.join(&obj);
        let mut functions = Vec::new();
        for f in subdirs(&odir)? {
            functions.push(parse_func_dir(&obj, &f));
        }
        functions.sort();
        let loaded = obj == "vmlinux" || host.module_dir(&obj).is_dir();
        objects.push(PatchedObject {
            patched: read_flag(&odir.join("patched"))?,
            name: obj,
            loaded,
            functions,
        });
    }
    Ok(Some(LoadedPatch {
        name: name.to_owned(),
        enabled,
        transition,
        objects,
    }))
}

/// `<function,sympos>` as livepatch names the function directories.
fn parse_func_dir(object: &str, dir: &str) -> FuncRef {
    let (name, sympos) = match dir.rsplit_once(',') {
        Some((n, p)) => (n, p.parse().unwrap_or(0)),
        None => (dir, 0),
    };
    FuncRef {
        object: object.to_owned(),
        name: name.to_owned(),
        sympos,
    }
}

/// Module names, oldest first. `/proc/modules` lists the newest first.
pub fn modules_in_load_order(host: &Host) -> Result<Vec<String>, OpsError> {
    let text = read_opt(&host.proc.join("modules"))?.unwrap_or_default();
    let mut v: Vec<String> = text
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect();
    v.reverse();
    Ok(v)
}

/// A loaded module carries the livepatch taint (`K`) exactly when its
/// `.modinfo` says `livepatch=Y`.
pub fn is_livepatch_module(host: &Host, name: &str) -> bool {
    std::fs::read_to_string(host.module_dir(name).join("taint"))
        .map(|t| t.contains('K'))
        .unwrap_or(false)
}

pub fn module_loaded(host: &Host, name: &str) -> bool {
    host.module_dir(name).is_dir()
}

/// Writes `enabled`: disables a patch, or reverses the transition in flight
/// (the kernel's documented way to cancel one).
pub fn set_enabled(host: &Host, name: &str, enabled: bool) -> Result<(), OpsError> {
    let p = host.patch_dir(name).join("enabled");
    std::fs::write(&p, if enabled { "1" } else { "0" }).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            OpsError::NotLoaded {
                name: name.to_owned(),
            }
        } else {
            OpsError::Io { path: p, error: e }
        }
    })
}

/// Writes `force`: every remaining task is switched without the stack check.
/// The kernel then never lets go of the modules of the patches being
/// removed: the replaced ones when patching, this one when unpatching.
pub fn force(host: &Host, name: &str) -> Result<(), OpsError> {
    let p = host.patch_dir(name).join("force");
    std::fs::write(&p, "1").map_err(io(&p))
}

fn read_flag(p: &Path) -> Result<Option<bool>, OpsError> {
    Ok(read_opt(p)?.map(|s| s.trim() == "1"))
}

fn subdirs(dir: &Path) -> Result<Vec<String>, OpsError> {
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io(dir)(e)),
    };
    let mut v = Vec::new();
    for e in rd {
        let e = e.map_err(io(dir))?;
        // sysfs directories are real directories; attributes are files.
        if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            v.push(e.file_name().to_string_lossy().into_owned());
        }
    }
    v.sort();
    Ok(v)
}

#[cfg(test)]
pub(crate) mod fake {
    //! A fake `/sys` + `/proc` for unit tests.
    use std::fs;
    use std::path::Path;

    use crate::Host;

    pub fn write(p: &Path, s: &str) {
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, s).unwrap();
    }

    /// Registers a patch the way livepatch shows it, plus its module.
    /// `funcs` are (object, function, old_sympos) as the patch declares them.
    pub fn add_patch(host: &Host, name: &str, funcs: &[(&str, &str, u32)], transition: bool) {
        let d = host.patch_dir(name);
        write(&d.join("enabled"), "1\n");
        write(
            &d.join("transition"),
            if transition { "1\n" } else { "0\n" },
        );
        write(&d.join("force"), "");
        for (obj, f, pos) in funcs {
            write(&d.join(obj).join("patched"), "1\n");
            // As kernel/livepatch/core.c names it: "%s,%lu" with
            // `old_sympos ? old_sympos : 1`, so a unique function is `f,1`.
            let shown = if *pos == 0 { 1 } else { *pos };
            fs::create_dir_all(d.join(obj).join(format!("{f},{shown}"))).unwrap();
        }
        add_module(host, name, true);
    }

    pub fn add_module(host: &Host, name: &str, livepatch: bool) {
        write(
            &host.module_dir(name).join("taint"),
            if livepatch { "OEK\n" } else { "\n" },
        );
        let p = host.proc.join("modules");
        let old = fs::read_to_string(&p).unwrap_or_default();
        // Newest first, as the kernel lists them.
        write(
            &p,
            &format!("{name} 16384 0 - Live 0x0000000000000000 (OEK)\n{old}"),
        );
    }

    pub fn host() -> (tempfile::TempDir, Host) {
        let t = tempfile::tempdir().unwrap();
        let h = Host::under(t.path());
        fs::create_dir_all(h.livepatch_dir()).unwrap();
        write(&h.proc.join("sys/kernel/osrelease"), "6.1.0-56-amd64\n");
        fs::create_dir_all(h.module_dir("module/parameters")).unwrap();
        (t, h)
    }
}

#[cfg(test)]
mod tests {
    use super::fake::*;
    use super::*;

    #[test]
    fn no_livepatch_dir_is_a_clear_error() {
        let t = tempfile::tempdir().unwrap();
        let e = read(&Host::under(t.path())).unwrap_err();
        assert!(matches!(e, OpsError::NoLivepatch { .. }), "{e}");
        assert!(e.to_string().contains("CONFIG_LIVEPATCH"));
    }

    #[test]
    fn reads_patches_in_load_order_with_functions() {
        let (_t, h) = host();
        add_patch(
            &h,
            "livepatch_b",
            &[("vmlinux", "cmdline_proc_show", 0)],
            false,
        );
        add_patch(
            &h,
            "livepatch_a",
            &[("vmlinux", "version_proc_show", 0), ("vmlinux", "foo", 2)],
            true,
        );
        add_module(&h, "dummy", false);
        add_module(&h, "livepatch_old", true);
        let s = read(&h).unwrap();
        let names: Vec<_> = s.patches.iter().map(|p| p.name.as_str()).collect();
        // b was loaded first.
        assert_eq!(names, ["livepatch_b", "livepatch_a"]);
        let a = s.get("livepatch_a").unwrap();
        assert!(a.enabled && a.transition);
        let funcs: Vec<String> = a.functions().map(|f| f.to_string()).collect();
        // Declared with sympos 0 (unique), shown by the kernel as 1.
        assert_eq!(funcs, ["foo,2", "version_proc_show,1"]);
        assert!(h
            .patch_dir("livepatch_a")
            .join("vmlinux/version_proc_show,1")
            .is_dir());
        assert_eq!(a.objects[0].patched, Some(true));
        assert!(a.objects[0].loaded);
        assert_eq!(s.in_transition().unwrap().name, "livepatch_a");
        assert_eq!(s.leftovers, ["livepatch_old"]);
    }

    #[test]
    fn module_objects_report_whether_loaded() {
        let (_t, h) = host();
        add_patch(&h, "livepatch_m", &[("ext4", "ext4_fill_super", 0)], false);
        let p = read_patch(&h, "livepatch_m").unwrap().unwrap();
        assert_eq!(p.objects[0].name, "ext4");
        assert!(!p.objects[0].loaded);
        add_module(&h, "ext4", false);
        assert!(read_patch(&h, "livepatch_m").unwrap().unwrap().objects[0].loaded);
        assert!(read_patch(&h, "nope").unwrap().is_none());
    }

    #[test]
    fn set_enabled_on_missing_patch_names_it() {
        let (_t, h) = host();
        let e = set_enabled(&h, "livepatch_x", false).unwrap_err();
        assert!(matches!(e, OpsError::NotLoaded { .. }), "{e}");
    }
}
