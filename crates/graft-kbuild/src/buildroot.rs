//! Building inside another Debian's root. A kernel names the compiler it
//! was built with; Debian 13's 6.12 names gcc-14, which Debian 12 does not
//! have. graft then prepares the tree inside a root of the kernel's Debian
//! release (graft-debian makes it with debootstrap) and records that root in
//! the tree, in [`MARKER`]: every kbuild command graft runs in the tree, in
//! its private copies, and in the kernel's headers runs there, chrooted,
//! with the directories it works in bound at the same paths (so absolute
//! paths kbuild records stay valid), in a mount namespace of its own (so
//! nothing stays mounted when it ends). A tree without the marker builds
//! on the host, as before.

use std::path::{Component, Path, PathBuf};
use std::process::Command;

use crate::{io, KbuildError};

/// The file in a tree (or headers directory) naming its build root.
pub const MARKER: &str = ".graft-buildroot";

/// The build root recorded in `dir`, if any.
pub fn of(dir: &Path) -> Option<PathBuf> {
    let text = std::fs::read_to_string(dir.join(MARKER)).ok()?;
    let root = PathBuf::from(text.trim());
    (root.is_absolute() && root.join("usr/bin").is_dir()).then_some(root)
}

/// Records `root` as the build root of `dir`.
pub fn record(dir: &Path, root: &Path) -> Result<(), KbuildError> {
    let p = dir.join(MARKER);
    std::fs::write(&p, format!("{}\n", root.display()))
        .map_err(io(format!("cannot write {}", p.display())))
}

/// The directory bound into the root for `path`: its first two components
/// (`/var/cache`, `/tmp/.tmpXYZ`, `/home/user`), so that one bind covers a
/// cache, its trees, work directories and headers.
fn bind_of(path: &Path) -> Option<PathBuf> {
    if !path.is_absolute() {
        return None;
    }
    let mut out = PathBuf::from("/");
    let mut n = 0;
    for c in path.components() {
        match c {
            Component::RootDir => {}
            Component::Normal(s) if n < 2 => {
                out.push(s);
                n += 1;
            }
            Component::Normal(_) => break,
            _ => return None,
        }
    }
    (n > 0).then_some(out)
}

/// Mounts the binds and /proc, /dev in a private mount namespace, then
/// runs the command chrooted, in the working directory given.
const SCRIPT: &str = r#"set -e
R=$1; C=$2; shift 2
while [ "$1" != -- ]; do mkdir -p "$R$1"; mount --rbind "$1" "$R$1"; shift; done
shift
mount -t proc proc "$R/proc"
mount --rbind /dev "$R/dev"
exec chroot "$R" /bin/sh -c 'cd "$0" && exec "$@"' "$C" "$@""#;

/// `program`, run on the host (no `root`) or inside `root` with `paths`
/// reachable at the same places and `cwd` as working directory. Arguments
/// and environment are added to the returned command as usual.
pub fn command(root: Option<&Path>, program: &str, paths: &[&Path], cwd: Option<&Path>) -> Command {
    let Some(root) = root else {
        let mut c = Command::new(program);
        if let Some(d) = cwd {
            c.current_dir(d);
        }
        return c;
    };
    let mut binds: Vec<PathBuf> = paths
        .iter()
        .chain(cwd.as_slice())
        .filter_map(|p| bind_of(p))
        .collect();
    binds.sort();
    binds.dedup();
    // A bind inside another is covered by it.
    let all = binds.clone();
    binds.retain(|b| !all.iter().any(|o| o != b && b.starts_with(o)));
    let mut c = Command::new("unshare");
    c.args([
        "--mount",
        "--propagation",
        "private",
        "--",
        "sh",
        "-c",
        SCRIPT,
        "sh",
    ])
    .arg(root)
    .arg(cwd.unwrap_or(Path::new("/")))
    .args(&binds)
    .arg("--")
    .arg(program);
    c
}

/// `command` for a kbuild command in `dir` (a tree, its copy, or the
/// headers): inside the build root `dir` records, if any.
pub fn command_in(dir: &Path, program: &str, paths: &[&Path], cwd: Option<&Path>) -> Command {
    let root = of(dir);
    let mut all = vec![dir];
    all.extend_from_slice(paths);
    command(root.as_deref(), program, &all, cwd)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binds_cover_the_paths() {
        assert_eq!(
            bind_of(Path::new("/var/cache/graft/build/tree-1/tree")),
            Some(PathBuf::from("/var/cache"))
        );
        assert_eq!(bind_of(Path::new("/tmp")), Some(PathBuf::from("/tmp")));
        assert_eq!(bind_of(Path::new("relative/path")), None);
        let c = command(
            Some(Path::new("/r")),
            "make",
            &[
                Path::new("/var/cache/graft/a"),
                Path::new("/var/cache/graft/b"),
                Path::new("/tmp/x/y"),
            ],
            Some(Path::new("/var/cache/graft/a")),
        );
        let args: Vec<String> = c
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let tail = &args[args.iter().position(|a| a == "sh").unwrap() + 3..];
        assert_eq!(
            tail,
            [
                "sh",
                "/r",
                "/var/cache/graft/a",
                "/tmp/x",
                "/var/cache",
                "--",
                "make"
            ]
        );
        let host = command(None, "make", &[], None);
        assert_eq!(host.get_program(), "make");
    }

    #[test]
    fn a_tree_without_marker_builds_on_the_host() {
        let t = tempfile::tempdir().unwrap();
        assert_eq!(of(t.path()), None);
        record(t.path(), Path::new("/nonexistent/root")).unwrap();
        // A root that is not there is no root.
        assert_eq!(of(t.path()), None);
        let root = t.path().join("root");
        std::fs::create_dir_all(root.join("usr/bin")).unwrap();
        record(t.path(), &root).unwrap();
        assert_eq!(of(t.path()), Some(root));
    }
}
