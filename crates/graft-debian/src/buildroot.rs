//! A Debian root to build a kernel in when this machine lacks the kernel's
//! compiler: Debian 13's 6.12 names gcc-14, which Debian 12 does not have.
//! graft makes the root of the kernel's Debian release once with
//! `debootstrap` (a minimal system with the compiler and the kernel's build
//! dependencies) and keeps it in its cache; graft-kbuild runs kbuild inside
//! it ([`graft_kbuild::buildroot`]). Nothing is installed on the host.
//!
//! ```text
//! <buildroots>/<suite>/root/      the root (~550 MB for trixie with gcc-14)
//! <buildroots>/<suite>/.done      JSON: suite, packages (written last)
//! <buildroots>/<suite>/.lock      one debootstrap at a time
//! ```

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::{Deserialize, Serialize};

use crate::kernel::Release;
use crate::{DebianError, Event, Stage};

/// Debian's mirror the roots are made from.
pub const MIRROR: &str = "http://deb.debian.org/debian";

/// What kbuild needs beside the compiler: make and the host tools of
/// `modules_prepare` (objtool, resolve_btfids, sign-file), pahole for BTF.
pub const BUILD_PACKAGES: &[&str] = &[
    // HOSTCC: kbuild's host programs are built with plain `gcc`.
    "gcc",
    "make",
    "bc",
    "flex",
    "bison",
    "libelf-dev",
    "libssl-dev",
    "dwarves",
    "xz-utils",
    "kmod",
    "cpio",
    "libc6-dev",
    // libbpf's generated headers (resolve_btfids), signing keys.
    "python3",
    "openssl",
];

/// Debian's release names by major version (`+deb13` in a kernel release).
const SUITES: &[(u32, &str)] = &[
    (11, "bullseye"),
    (12, "bookworm"),
    (13, "trixie"),
    (14, "forky"),
];

/// The Debian suite a kernel release was built for: `6.12.118+deb13-amd64`
/// → `trixie`. `None` for releases that do not say (`6.1.0-47-amd64`).
pub fn suite_of(release: &Release) -> Option<&'static str> {
    let (_, tail) = release.abi.split_once("+deb")?;
    let major: u32 = tail
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()?;
    SUITES.iter().find(|(m, _)| *m == major).map(|(_, s)| *s)
}

#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
struct Done {
    suite: String,
    packages: Vec<String>,
}

/// The root of `suite` with `compiler` (a Debian package, `gcc-14`) and
/// [`BUILD_PACKAGES`], made under `dir` if it is not there yet.
pub fn ensure(
    dir: &Path,
    suite: &str,
    compiler: &str,
    progress: &mut dyn FnMut(Event),
) -> Result<PathBuf, DebianError> {
    let home = dir.join(suite);
    let root = home.join("root");
    let mut packages: Vec<String> = BUILD_PACKAGES.iter().map(|s| s.to_string()).collect();
    packages.push(compiler.to_string());
    packages.sort();
    let want = Done {
        suite: suite.to_string(),
        packages,
    };
    let done_path = home.join(".done");
    let is_done = || {
        fs::read_to_string(&done_path)
            .ok()
            .and_then(|t| serde_json::from_str::<Done>(&t).ok())
            .is_some_and(|d| d == want)
            && root.join("usr/bin").is_dir()
    };
    if is_done() {
        return Ok(root);
    }
    fs::create_dir_all(&home)
        .map_err(|e| DebianError::io(format!("creating {}", home.display()), e))?;
    let _lock = crate::cache::lock(&home, progress)?;
    if is_done() {
        return Ok(root);
    }
    progress(Event::Started(Stage::BuildRoot));
    let _ = fs::remove_file(&done_path);
    let tmp = home.join(".tmp-root");
    remove(&tmp)?;
    let log = home.join("debootstrap.log");
    let out = Command::new("debootstrap")
        .arg("--variant=minbase")
        .arg(format!("--include={}", want.packages.join(",")))
        .arg(suite)
        .arg(&tmp)
        .arg(MIRROR)
        .env("LC_ALL", "C")
        .output()
        .map_err(|e| DebianError::Command {
            command: "debootstrap".into(),
            status: format!("could not start it: {e}"),
            output: String::new(),
            hint: "apt-get install debootstrap (graft makes a Debian root with the kernel's compiler, which this machine lacks)".into(),
        })?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let _ = fs::write(&log, &text);
    if !out.status.success() {
        return Err(DebianError::Command {
            command: format!("debootstrap {suite} {}", tmp.display()),
            status: out.status.to_string(),
            output: crate::apt::tail(&text, 12),
            hint: format!(
                "graft needs a Debian {suite} root with {compiler} to build this kernel (full log: {}); check network access to {MIRROR}",
                log.display()
            ),
        });
    }
    remove(&root)?;
    fs::rename(&tmp, &root)
        .map_err(|e| DebianError::io(format!("moving {} into place", tmp.display()), e))?;
    let json = serde_json::to_string_pretty(&want)
        .map_err(|e| DebianError::invalid(format!("serialising {e}"), "this is a bug"))?;
    crate::cache::write_atomic(&done_path, json.as_bytes())?;
    progress(Event::Done(Stage::BuildRoot));
    Ok(root)
}

fn remove(p: &Path) -> Result<(), DebianError> {
    match fs::remove_dir_all(p) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(DebianError::io(format!("removing {}", p.display()), e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suites_from_releases() {
        let r = |s: &str| Release::parse(s).unwrap();
        assert_eq!(suite_of(&r("6.12.118+deb13-amd64")), Some("trixie"));
        assert_eq!(suite_of(&r("6.12.95+deb12-amd64")), Some("bookworm"));
        assert_eq!(suite_of(&r("6.12.115+deb13.1-amd64")), Some("trixie"));
        assert_eq!(suite_of(&r("6.1.0-47-amd64")), None);
    }
}
