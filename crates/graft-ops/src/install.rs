//! Keeping live patches across reboots: modules live under
//! `/var/lib/graft/<kernel release>/`, and a systemd unit runs
//! `graft load --installed` at boot, which loads the ones built for the
//! running kernel and skips the others, loudly.
//!
//! The boot order is the install order, recorded in the file names:
//! `<seq>-<module>.ko`, where `seq` is one more than the highest of the
//! release's directory when the module is installed. File times play no
//! part (a copy, a restore from backup or a coarse clock would reorder them).

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::error::io;
use crate::modinfo::ModuleInfo;
use crate::OpsError;

pub const UNIT_NAME: &str = "graft.service";

/// Where installed patches and the unit go; [`InstallRoot::default`] is the
/// real system.
#[derive(Debug, Clone)]
pub struct InstallRoot {
    pub lib: PathBuf,
    pub units: PathBuf,
}

impl Default for InstallRoot {
    fn default() -> Self {
        InstallRoot {
            lib: PathBuf::from("/var/lib/graft"),
            units: PathBuf::from("/etc/systemd/system"),
        }
    }
}

impl InstallRoot {
    pub fn unit_path(&self) -> PathBuf {
        self.units.join(UNIT_NAME)
    }

    /// What `systemctl enable` creates for `WantedBy=multi-user.target`.
    pub fn wants_link(&self) -> PathBuf {
        self.units.join("multi-user.target.wants").join(UNIT_NAME)
    }
}

/// The unit. Oneshot with RemainAfterExit so `systemctl status` shows that
/// the patches were loaded; after local-fs so /var/lib is mounted.
pub fn unit_text(graft: &Path) -> String {
    format!(
        "# Written by `graft install`; removed by `graft uninstall` of the last patch.\n\
         [Unit]\n\
         Description=Load graft live patches for the running kernel\n\
         After=local-fs.target systemd-modules-load.service\n\
         ConditionDirectoryNotEmpty=/var/lib/graft\n\
         \n\
         [Service]\n\
         Type=oneshot\n\
         RemainAfterExit=yes\n\
         ExecStart={} load --installed\n\
         \n\
         [Install]\n\
         WantedBy=multi-user.target\n",
        graft.display()
    )
}

/// An installed module.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Installed {
    pub release: String,
    pub name: String,
    /// Position in the release's install order (higher is newer).
    pub seq: u64,
    pub path: PathBuf,
    /// Cumulative: loading it replaces everything installed before it.
    pub replace: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct InstallReport {
    pub installed: Installed,
    pub unit: PathBuf,
    /// The module is for another kernel than the running one.
    pub other_release: bool,
}

/// Copies `ko` to `<lib>/<release>/` (atomically) and writes the unit and
/// its `wants` link.
pub fn install(
    root: &InstallRoot,
    ko: &Path,
    graft: &Path,
    running: &str,
) -> Result<InstallReport, OpsError> {
    let m = ModuleInfo::read(ko)?;
    if !m.livepatch {
        return Err(OpsError::NotLivepatch {
            path: m.path.clone(),
            name: m.name.clone(),
        });
    }
    let release = m.release().ok_or_else(|| OpsError::NotAModule {
        path: ko.to_owned(),
        what: "it has no vermagic, so the kernel it was built for is unknown".into(),
    })?;
    let dir = root.lib.join(release);
    std::fs::create_dir_all(&dir).map_err(io(&dir))?;
    let before = files_in(&dir)?;
    let seq = before.iter().map(|f| f.seq).max().unwrap_or(0) + 1;
    let file = format!("{seq:06}-{}.ko", m.name);
    let dst = dir.join(&file);
    let tmp = dir.join(format!(".{file}.tmp"));
    std::fs::copy(ko, &tmp).map_err(io(&tmp))?;
    std::fs::rename(&tmp, &dst).map_err(io(&dst))?;
    // Installed again: the new copy takes the newest place, the old one goes.
    for old in before.iter().filter(|f| f.module == m.name) {
        std::fs::remove_file(&old.path).map_err(io(&old.path))?;
    }
    write_unit(root, graft)?;
    Ok(InstallReport {
        installed: Installed {
            release: release.to_owned(),
            name: m.name.clone(),
            seq,
            path: dst,
            replace: replace_flag(&m),
        },
        unit: root.unit_path(),
        other_release: release != running,
    })
}

fn replace_flag(m: &ModuleInfo) -> bool {
    m.graft.as_ref().and_then(|g| g.replace).unwrap_or(false)
}

fn write_unit(root: &InstallRoot, graft: &Path) -> Result<(), OpsError> {
    std::fs::create_dir_all(&root.units).map_err(io(&root.units))?;
    let unit = root.unit_path();
    std::fs::write(&unit, unit_text(graft)).map_err(io(&unit))?;
    let link = root.wants_link();
    if std::fs::symlink_metadata(&link).is_err() {
        let dir = link.parent().expect("wants link has a directory");
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        std::os::unix::fs::symlink(&unit, &link).map_err(io(&link))?;
    }
    Ok(())
}

#[derive(Debug, Clone, Serialize)]
pub struct UninstallReport {
    pub removed: Vec<Installed>,
    /// The unit went too: nothing is installed any more.
    pub unit_removed: bool,
}

/// Removes installed module `name` (for `release`, or for every release).
/// The loaded patch, if any, stays loaded: that is `graft unload`'s job.
pub fn uninstall(
    root: &InstallRoot,
    name: &str,
    release: Option<&str>,
) -> Result<UninstallReport, OpsError> {
    let mut removed = Vec::new();
    for i in installed(root)? {
        if i.name == name && release.is_none_or(|r| r == i.release) {
            std::fs::remove_file(&i.path).map_err(io(&i.path))?;
            let dir = i.path.parent().expect("installed file has a directory");
            // Only succeeds when empty, which is what we want.
            let _ = std::fs::remove_dir(dir);
            removed.push(i);
        }
    }
    if removed.is_empty() {
        return Err(OpsError::Refused {
            what: format!(
                "{name} is not installed{}",
                release.map(|r| format!(" for {r}")).unwrap_or_default()
            ),
            hint: "`graft list --installed` shows what is".into(),
        });
    }
    let unit_removed = installed(root)?.is_empty();
    if unit_removed {
        for p in [root.wants_link(), root.unit_path()] {
            match std::fs::remove_file(&p) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io(&p)(e)),
            }
        }
    }
    Ok(UninstallReport {
        removed,
        unit_removed,
    })
}

/// Every installed module, per release in install order (oldest first).
/// No directory means nothing is installed; a directory that cannot be read
/// is an error, never an empty list (boot would load nothing, silently).
pub fn installed(root: &InstallRoot) -> Result<Vec<Installed>, OpsError> {
    let mut v = Vec::new();
    let rd = match std::fs::read_dir(&root.lib) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(v),
        Err(e) => return Err(io(&root.lib)(e)),
    };
    let mut releases: Vec<String> = Vec::new();
    for e in rd {
        let e = e.map_err(io(&root.lib))?;
        if e.path().is_dir() {
            releases.push(e.file_name().to_string_lossy().into_owned());
        }
    }
    releases.sort();
    for r in releases {
        for f in files_in(&root.lib.join(&r))? {
            let m = ModuleInfo::read(&f.path)?;
            v.push(Installed {
                release: r.clone(),
                name: m.name.clone(),
                seq: f.seq,
                replace: replace_flag(&m),
                path: f.path,
            });
        }
    }
    Ok(v)
}

/// A module file of a release's directory.
struct InstalledFile {
    seq: u64,
    /// The module name its file name gives.
    module: String,
    path: PathBuf,
}

/// The `.ko` files of `dir` in install order. A file without a sequence
/// number (installed by hand, or by an older graft) counts as 0: before
/// every numbered one, by name.
fn files_in(dir: &Path) -> Result<Vec<InstalledFile>, OpsError> {
    let mut v = Vec::new();
    for e in std::fs::read_dir(dir).map_err(io(dir))? {
        let path = e.map_err(io(dir))?.path();
        let Some(stem) = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".ko"))
            .filter(|n| !n.starts_with('.'))
        else {
            continue;
        };
        let (seq, module) = match stem.split_once('-') {
            Some((n, m)) if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) => {
                (n.parse().unwrap_or(u64::MAX), m.to_owned())
            }
            _ => (0, stem.to_owned()),
        };
        v.push(InstalledFile { seq, module, path });
    }
    v.sort_by(|a, b| a.seq.cmp(&b.seq).then_with(|| a.path.cmp(&b.path)));
    Ok(v)
}

/// What to do at boot on kernel `running`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct BootPlan {
    /// To load, in this order.
    pub load: Vec<Installed>,
    /// Installed before the newest cumulative patch, which contains them.
    pub superseded: Vec<Installed>,
    /// Built for other kernels.
    pub other_release: Vec<Installed>,
}

pub fn boot_plan(root: &InstallRoot, running: &str) -> Result<BootPlan, OpsError> {
    let mut plan = BootPlan::default();
    let (mine, other): (Vec<_>, Vec<_>) = installed(root)?
        .into_iter()
        .partition(|i| i.release == running);
    plan.other_release = other;
    // A cumulative patch replaces everything before it: loading the older
    // ones first would only make extra transitions.
    let from = mine.iter().rposition(|i| i.replace).unwrap_or(0);
    for (n, i) in mine.into_iter().enumerate() {
        if n < from {
            plan.superseded.push(i);
        } else {
            plan.load.push(i);
        }
    }
    Ok(plan)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::modinfo::tests::module_bytes;

    fn ko(dir: &Path, name: &str, release: &str, replace: bool) -> PathBuf {
        let p = dir.join(format!("{}.ko", name.replace('_', "-")));
        let n = format!("name={name}");
        let v = format!("vermagic={release} SMP preempt");
        let r = format!("graft_replace={}", u8::from(replace));
        std::fs::write(
            &p,
            module_bytes(&["livepatch=Y", &n, &v, "graft_version=0.1.0", &r], false),
        )
        .unwrap();
        p
    }

    #[test]
    fn install_plan_uninstall() {
        let t = tempfile::tempdir().unwrap();
        let root = InstallRoot {
            lib: t.path().join("lib"),
            units: t.path().join("units"),
        };
        let src = t.path().join("src");
        std::fs::create_dir_all(&src).unwrap();
        let run = "6.1.0-56-amd64";
        let graft = Path::new("/usr/local/bin/graft");
        for (name, replace) in [
            ("livepatch_a", true),
            ("livepatch_b", true),
            ("livepatch_c", false),
        ] {
            install(&root, &ko(&src, name, run, replace), graft, run).unwrap();
        }
        // File times say the opposite order: they do not count.
        let dir = root.lib.join(run);
        for (i, f) in [
            "000001-livepatch_a.ko",
            "000002-livepatch_b.ko",
            "000003-livepatch_c.ko",
        ]
        .iter()
        .enumerate()
        {
            let t = std::time::SystemTime::UNIX_EPOCH
                + std::time::Duration::from_secs(2_000_000_000 - 1000 * i as u64);
            std::fs::File::options()
                .append(true)
                .open(dir.join(f))
                .unwrap()
                .set_modified(t)
                .unwrap();
        }
        let r = install(
            &root,
            &ko(&src, "livepatch_z", "6.1.0-99-amd64", true),
            graft,
            run,
        )
        .unwrap();
        assert!(r.other_release);
        assert!(root
            .lib
            .join("6.1.0-99-amd64/000001-livepatch_z.ko")
            .is_file());
        let unit = std::fs::read_to_string(root.unit_path()).unwrap();
        assert!(unit.contains("ExecStart=/usr/local/bin/graft load --installed"));
        assert_eq!(
            std::fs::read_link(root.wants_link()).unwrap(),
            root.unit_path()
        );

        let plan = boot_plan(&root, run).unwrap();
        let names = |v: &[Installed]| v.iter().map(|i| i.name.clone()).collect::<Vec<_>>();
        assert_eq!(names(&plan.load), ["livepatch_b", "livepatch_c"]);
        assert_eq!(names(&plan.superseded), ["livepatch_a"]);
        assert_eq!(names(&plan.other_release), ["livepatch_z"]);

        // Installed again, a takes the newest place (and is the newest
        // cumulative patch); its old copy is gone.
        install(&root, &ko(&src, "livepatch_a", run, true), graft, run).unwrap();
        let plan = boot_plan(&root, run).unwrap();
        assert_eq!(names(&plan.load), ["livepatch_a"]);
        assert_eq!(names(&plan.superseded), ["livepatch_b", "livepatch_c"]);
        assert_eq!(plan.load[0].seq, 4);
        assert!(!dir.join("000001-livepatch_a.ko").exists());
        assert!(dir.join("000004-livepatch_a.ko").is_file());
        // A file without a number (by hand) comes first.
        std::fs::copy(
            ko(&src, "livepatch_h", run, false),
            dir.join("livepatch_h.ko"),
        )
        .unwrap();
        let all = installed(&root).unwrap();
        assert_eq!(all[0].name, "livepatch_h");
        assert_eq!(all[0].seq, 0);
        std::fs::remove_file(dir.join("livepatch_h.ko")).unwrap();

        assert!(uninstall(&root, "livepatch_nope", None).is_err());
        for n in ["livepatch_a", "livepatch_b", "livepatch_c"] {
            let u = uninstall(&root, n, None).unwrap();
            assert!(!u.unit_removed);
        }
        let u = uninstall(&root, "livepatch_z", Some("6.1.0-99-amd64")).unwrap();
        assert!(u.unit_removed);
        assert!(
            !root.unit_path().exists() && std::fs::symlink_metadata(root.wants_link()).is_err()
        );
        assert!(installed(&root).unwrap().is_empty());
    }

    /// An install root that cannot be read is an error, not "nothing
    /// installed"; one that does not exist is nothing installed.
    #[test]
    fn unreadable_install_root_is_an_error() {
        let t = tempfile::tempdir().unwrap();
        let root = InstallRoot {
            lib: t.path().join("lib"),
            units: t.path().join("units"),
        };
        assert!(installed(&root).unwrap().is_empty());
        std::fs::write(&root.lib, "not a directory\n").unwrap();
        let e = boot_plan(&root, "6.1.0-56-amd64").unwrap_err();
        assert!(matches!(e, OpsError::Io { .. }), "{e}");
        assert!(
            e.to_string().contains(&root.lib.display().to_string()),
            "{e}"
        );
        // A release directory that is not readable either.
        std::fs::remove_file(&root.lib).unwrap();
        std::fs::create_dir_all(root.lib.join("6.1.0-56-amd64")).unwrap();
        std::fs::write(
            root.lib.join("6.1.0-56-amd64/000001-livepatch_x.ko"),
            "junk",
        )
        .unwrap();
        let e = boot_plan(&root, "6.1.0-56-amd64").unwrap_err();
        assert!(e.to_string().contains("000001-livepatch_x.ko"), "{e}");
    }

    #[test]
    fn non_livepatch_is_not_installed() {
        let t = tempfile::tempdir().unwrap();
        let root = InstallRoot {
            lib: t.path().join("lib"),
            units: t.path().join("units"),
        };
        let p = t.path().join("dummy.ko");
        std::fs::write(
            &p,
            module_bytes(&["name=dummy", "vermagic=6.1.0-56-amd64 SMP"], false),
        )
        .unwrap();
        let e = install(&root, &p, Path::new("/g"), "6.1.0-56-amd64").unwrap_err();
        assert!(matches!(e, OpsError::NotLivepatch { .. }), "{e}");
        assert!(!root.lib.exists());
    }
}
