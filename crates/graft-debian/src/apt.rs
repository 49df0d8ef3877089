//! What graft asks apt and dpkg, and the parsers of their answers (pure
//! functions over the tools' text, tested on captured samples).
//!
//! Nothing here installs anything or changes the system's package state:
//! look-ups (`apt-cache`), downloads into a directory of graft's
//! (`apt-get download`) and unpacking (`dpkg-deb -x`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::{DebianError, Event};

/// `apt-cache policy` of one package.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Policy {
    pub installed: Option<String>,
    pub candidate: Option<String>,
}

/// Installed and candidate versions from `apt-cache policy PKG` (`(none)`
/// becomes `None`).
pub fn parse_policy(text: &str) -> Policy {
    let mut p = Policy::default();
    for line in text.lines() {
        let line = line.trim();
        let value = |v: &str| {
            let v = v.trim();
            (!v.is_empty() && v != "(none)").then(|| v.to_string())
        };
        if let Some(v) = line.strip_prefix("Installed:") {
            p.installed = value(v);
        } else if let Some(v) = line.strip_prefix("Candidate:") {
            p.candidate = value(v);
        }
    }
    p
}

/// First dependency of `apt-cache depends` output whose name starts with
/// `prefix` followed by a digit (an ABI-versioned package), e.g.
/// `linux-image-6.1.0-56-amd64` for prefix `linux-image-`.
pub fn parse_depends(text: &str, prefix: &str) -> Option<String> {
    for line in text.lines() {
        let line = line.trim();
        // Alternatives are printed as `|Depends:`; both forms name real candidates.
        let Some(rest) = line
            .strip_prefix("Depends:")
            .or_else(|| line.strip_prefix("|Depends:"))
        else {
            continue;
        };
        let name = rest.trim();
        // `<virtual-package>` entries have no version to pin to.
        if name.starts_with('<') {
            continue;
        }
        if let Some(tail) = name.strip_prefix(prefix) {
            if tail.starts_with(|c: char| c.is_ascii_digit()) {
                return Some(name.to_string());
            }
        }
    }
    None
}

/// `apt-cache madison P…`: every (package, version) apt lists, once each,
/// in apt's order (newest first per package).
pub fn parse_madison(text: &str) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = Vec::new();
    for line in text.lines() {
        let mut f = line.split('|').map(str::trim);
        let (Some(pkg), Some(ver), Some(_from)) = (f.next(), f.next(), f.next()) else {
            continue;
        };
        if pkg.is_empty() || ver.is_empty() {
            continue;
        }
        let entry = (pkg.to_string(), ver.to_string());
        if !v.contains(&entry) {
            v.push(entry);
        }
    }
    v
}

/// `dpkg-query -W -f='${Package}\t${Version}\t${db:Status-Status}\n'` output
/// → installed packages and their versions. Packages in any other state
/// (e.g. `config-files`) count as missing.
pub fn parse_dpkg_query(text: &str) -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    for line in text.lines() {
        let mut it = line.split('\t');
        let (Some(pkg), Some(ver), Some(status)) = (it.next(), it.next(), it.next()) else {
            continue;
        };
        if status.trim() == "installed" {
            m.insert(pkg.trim().to_string(), ver.trim().to_string());
        }
    }
    m
}

/// One line of `apt-get download --print-uris`:
/// `'URL' FILE SIZE SHA256:…`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Uri {
    pub url: String,
    pub file: String,
    pub size: u64,
}

pub fn parse_print_uris(text: &str) -> Vec<Uri> {
    text.lines()
        .filter_map(|l| {
            let l = l.trim();
            let rest = l.strip_prefix('\'')?;
            let (url, rest) = rest.split_once('\'')?;
            let mut f = rest.split_whitespace();
            let file = f.next()?.to_string();
            let size = f.next()?.parse().ok()?;
            Some(Uri {
                url: url.to_string(),
                file,
                size,
            })
        })
        .collect()
}

/// The HTTP status apt reported for a failed fetch (`404  Not Found`), if any.
pub fn fetch_failure(output: &str) -> Option<String> {
    output.lines().find_map(|l| {
        let l = l.trim();
        let code = l.split_whitespace().next()?;
        (code.len() == 3
            && code.bytes().all(|b| b.is_ascii_digit())
            && (code.starts_with('4') || code.starts_with('5')))
        .then(|| {
            let text = l.split('[').next().unwrap_or(l);
            format!(
                "HTTP {}",
                text.split_whitespace().collect::<Vec<_>>().join(" ")
            )
        })
    })
}

/// Upstream part of a Debian version: `1:6.1.192-2` → `6.1.192`.
pub fn upstream_version(debian_version: &str) -> &str {
    let v = debian_version
        .split_once(':')
        .map_or(debian_version, |(_, v)| v);
    v.rsplit_once('-').map_or(v, |(u, _)| u)
}

/// Whether a download can be had: what the archive answers to a HEAD
/// request of its URL.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum Availability {
    Downloadable,
    /// apt lists it, but the archive does not serve the file.
    Missing {
        url: String,
        status: String,
    },
    /// Not checked: no way to ask the archive (`curl` is not installed).
    Unchecked {
        why: String,
    },
}

const APT_HINT: &str = "check that apt works on this host (`apt-get update`)";

/// Runs `cmd`; returns (success, stdout, stderr).
fn run(cmd: &mut Command, hint: &str) -> Result<(bool, String, String), DebianError> {
    let out = cmd.output().map_err(|e| DebianError::Command {
        command: describe(cmd),
        status: format!("could not start it: {e}"),
        output: String::new(),
        hint: hint.into(),
    })?;
    Ok((
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

pub(crate) fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// Runs `cmd` and fails unless it succeeds; returns its stdout.
pub(crate) fn run_ok(cmd: &mut Command, hint: &str) -> Result<String, DebianError> {
    let (ok, out, err) = run(cmd, hint)?;
    if !ok {
        return Err(DebianError::Command {
            command: describe(cmd),
            status: "failed".into(),
            output: tail(&format!("{out}{err}"), 12),
            hint: hint.into(),
        });
    }
    Ok(out)
}

pub(crate) fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// apt on this host, for look-ups and downloads: with the system's
/// sources, or with a private set of sources of graft's ([`Apt::private`]).
#[derive(Debug, Default, Clone)]
pub struct Apt {
    /// `-o` options of a private configuration; empty for the system's.
    options: Vec<String>,
    /// The private configuration's directory.
    dir: Option<PathBuf>,
}

/// The Debian suites graft reads other releases' kernels from, beside the
/// system's own: bookworm-backports and trixie serve Linux 6.12 (Debian 13's
/// kernel, and its backport to Debian 12).
pub const OTHER_SOURCES: &[&str] = &[
    "deb http://deb.debian.org/debian bookworm-backports main",
    "deb http://deb.debian.org/debian trixie main",
    "deb http://deb.debian.org/debian-security trixie-security main",
];

/// `sources.list` of a private configuration; the mark of a completed
/// `apt-get update` is `lists/.graft-updated`.
const PRIVATE_SOURCES: &str = "sources.list";
const UPDATED: &str = ".graft-updated";

impl Apt {
    /// The system's apt.
    pub fn new() -> Self {
        Apt::default()
    }

    /// apt with only `sources` (lines of a `sources.list`), its lists and
    /// downloads kept in `dir`: the system's sources, lists and package
    /// state are neither read nor changed (apt's own settings, such as a
    /// proxy, still apply). Call [`Apt::update`] before the first look-up.
    pub fn private(dir: &Path, sources: &[&str]) -> Result<Apt, DebianError> {
        for d in ["lists/partial", "cache/archives/partial"] {
            let p = dir.join(d);
            std::fs::create_dir_all(&p)
                .map_err(|e| DebianError::io(format!("creating {}", p.display()), e))?;
        }
        let list = dir.join(PRIVATE_SOURCES);
        let text: String = sources.iter().map(|l| format!("{l}\n")).collect();
        if std::fs::read_to_string(&list).ok().as_deref() != Some(text.as_str()) {
            crate::cache::write_atomic(&list, text.as_bytes())?;
            // Lists of other sources are not these sources' lists.
            let _ = std::fs::remove_file(dir.join("lists").join(UPDATED));
        }
        let opt = |k: &str, v: &Path| format!("{k}={}", v.display());
        Ok(Apt {
            options: vec![
                opt("Dir::Etc::sourcelist", &list),
                "Dir::Etc::sourceparts=-".into(),
                opt("Dir::State::Lists", &dir.join("lists")),
                opt("Dir::Cache", &dir.join("cache")),
                // apt's binary cache of the lists: without it every look-up
                // parses them again (~1 s; a system may turn it off, as
                // Debian's container images do).
                "Dir::Cache::pkgcache=pkgcache.bin".into(),
                "Dir::Cache::srcpkgcache=srcpkgcache.bin".into(),
                // graft's directories belong to root, not to apt's
                // download user.
                "APT::Sandbox::User=root".into(),
            ],
            dir: Some(dir.to_path_buf()),
        })
    }

    /// Whether this is a private configuration.
    pub fn is_private(&self) -> bool {
        self.dir.is_some()
    }

    /// When a private configuration's lists were last updated.
    pub fn updated(&self) -> Option<std::time::SystemTime> {
        let dir = self.dir.as_ref()?;
        std::fs::metadata(dir.join("lists").join(UPDATED))
            .and_then(|m| m.modified())
            .ok()
    }

    /// `apt-get update` of a private configuration (the system's lists are
    /// the system's business).
    pub fn update(&self) -> Result<(), DebianError> {
        let Some(dir) = &self.dir else {
            return Ok(());
        };
        run_ok(
            self.command("apt-get").arg("update"),
            "check network access to deb.debian.org",
        )?;
        crate::cache::write_atomic(&dir.join("lists").join(UPDATED), b"")
    }

    /// Updates a private configuration whose lists are missing or older
    /// than `max_age`; says whether it did.
    pub fn update_if_older(&self, max_age: Duration) -> Result<bool, DebianError> {
        if !self.is_private() {
            return Ok(false);
        }
        let fresh = self
            .updated()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age <= max_age);
        if fresh {
            return Ok(false);
        }
        self.update()?;
        Ok(true)
    }

    fn command(&self, program: &str) -> Command {
        let mut c = Command::new(program);
        c.env("DEBIAN_FRONTEND", "noninteractive")
            .env("LC_ALL", "C")
            .stdin(Stdio::null());
        for o in &self.options {
            c.arg("-o").arg(o);
        }
        c
    }

    /// `apt-cache policy PKG`.
    pub fn policy(&self, pkg: &str) -> Result<Policy, DebianError> {
        let (_, out, _) = run(self.command("apt-cache").args(["policy", pkg]), APT_HINT)?;
        Ok(parse_policy(&out))
    }

    /// `apt-cache depends PKG`.
    pub fn depends(&self, pkg: &str) -> Result<String, DebianError> {
        Ok(run(self.command("apt-cache").args(["depends", pkg]), APT_HINT)?.1)
    }

    /// Every version apt lists of each package (newest first).
    pub fn versions(&self, pkgs: &[String]) -> Result<Vec<(String, String)>, DebianError> {
        if pkgs.is_empty() {
            return Ok(Vec::new());
        }
        let (_, out, _) = run(
            self.command("apt-cache").arg("madison").args(pkgs),
            APT_HINT,
        )?;
        Ok(parse_madison(&out))
    }

    /// Package names apt knows that start with `prefix`.
    pub fn names(&self, prefix: &str) -> Result<Vec<String>, DebianError> {
        let (_, out, _) = run(
            self.command("apt-cache").args(["pkgnames", prefix]),
            APT_HINT,
        )?;
        let mut v: Vec<String> = out.lines().map(|l| l.trim().to_string()).collect();
        v.sort();
        v.dedup();
        Ok(v)
    }

    /// Installed packages (of `pkgs`) and their versions.
    pub fn installed(&self, pkgs: &[String]) -> Result<BTreeMap<String, String>, DebianError> {
        let (_, out, _) = run(
            Command::new("dpkg-query")
                .arg("-W")
                .arg("-f=${Package}\t${Version}\t${db:Status-Status}\n")
                .args(pkgs),
            "dpkg-query is part of dpkg and should always exist on Debian",
        )?;
        Ok(parse_dpkg_query(&out))
    }

    /// Where apt would download `pkg=version` from, without downloading.
    pub fn uri(&self, pkg: &str, version: &str) -> Result<Uri, DebianError> {
        let spec = format!("{pkg}={version}");
        let out = run_ok(
            self.command("apt-get")
                .args(["download", "--print-uris", &spec]),
            "apt does not list this version; `apt-get update` may help",
        )?;
        parse_print_uris(&out)
            .into_iter()
            .next()
            .ok_or_else(|| DebianError::Apt {
                what: format!("`apt-get download --print-uris {spec}` printed no URL"),
                hint: APT_HINT.into(),
            })
    }

    /// Where apt would download each of `pkgs` (name, version) from, in
    /// one look-up.
    pub fn uris(&self, pkgs: &[(&str, &str)]) -> Result<Vec<Uri>, DebianError> {
        let specs: Vec<String> = pkgs.iter().map(|(p, v)| format!("{p}={v}")).collect();
        let out = run_ok(
            self.command("apt-get")
                .args(["download", "--print-uris"])
                .args(&specs),
            "apt does not list this version; `apt-get update` may help",
        )?;
        let all = parse_print_uris(&out);
        pkgs.iter()
            .map(|(p, _)| {
                all.iter()
                    .find(|u| u.file.starts_with(&format!("{p}_")))
                    .cloned()
                    .ok_or_else(|| DebianError::Apt {
                        what: format!(
                            "`apt-get download --print-uris {}` printed no URL for {p}",
                            specs.join(" ")
                        ),
                        hint: APT_HINT.into(),
                    })
            })
            .collect()
    }

    /// Asks the archive whether it serves `uri` (a HEAD request, through
    /// curl with the proxy settings of the environment).
    pub fn availability(&self, uri: &Uri) -> Availability {
        let out = Command::new("curl")
            .args([
                "-sIL",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "--max-time",
                "30",
            ])
            .arg(&uri.url)
            .stdin(Stdio::null())
            .output();
        match out {
            Err(_) => Availability::Unchecked {
                why: "curl is not installed (apt-get install curl)".into(),
            },
            Ok(o) => {
                let code = String::from_utf8_lossy(&o.stdout).trim().to_string();
                if code == "200" {
                    Availability::Downloadable
                } else if code.len() == 3 && code != "000" {
                    Availability::Missing {
                        url: uri.url.clone(),
                        status: format!("HTTP {code}"),
                    }
                } else {
                    Availability::Unchecked {
                        why: format!("no answer from {} (curl exit {})", uri.url, o.status),
                    }
                }
            }
        }
    }

    /// Downloads `pkg=version` into `dir` (never installing it), reporting
    /// the bytes on disk while apt works; returns the `.deb`'s path.
    pub fn download(
        &self,
        pkg: &str,
        version: &str,
        dir: &Path,
        progress: &mut dyn FnMut(Event),
    ) -> Result<PathBuf, DebianError> {
        let uri = self.uri(pkg, version)?;
        let path = dir.join(&uri.file);
        if std::fs::metadata(&path).is_ok_and(|m| m.len() == uri.size) {
            return Ok(path);
        }
        let _ = std::fs::remove_file(&path);
        let spec = format!("{pkg}={version}");
        let mut cmd = self.command("apt-get");
        cmd.args(["download", &spec])
            .current_dir(dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let child = cmd.spawn().map_err(|e| DebianError::Command {
            command: describe(&cmd),
            status: format!("could not start it: {e}"),
            output: String::new(),
            hint: APT_HINT.into(),
        })?;
        // apt writes the file in place: its size is the progress.
        let waiter = std::thread::spawn(move || child.wait_with_output());
        while !waiter.is_finished() {
            let done = std::fs::metadata(&path).map_or(0, |m| m.len());
            progress(Event::Download {
                file: uri.file.clone(),
                done,
                total: uri.size,
            });
            std::thread::sleep(Duration::from_millis(200));
        }
        let out = waiter
            .join()
            .map_err(|_| DebianError::Apt {
                what: "the apt-get download thread panicked".into(),
                hint: "this is a bug".into(),
            })?
            .map_err(|e| DebianError::io(format!("waiting for apt-get download {spec}"), e))?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        if !out.status.success() || !path.is_file() {
            let _ = std::fs::remove_file(&path);
            if let Some(status) = fetch_failure(&text) {
                return Err(DebianError::Unavailable {
                    package: pkg.into(),
                    version: version.into(),
                    url: uri.url,
                    status,
                });
            }
            return Err(DebianError::Command {
                command: describe(&cmd),
                status: out.status.to_string(),
                output: tail(&text, 12),
                hint: "`apt-get update` may help".into(),
            });
        }
        progress(Event::Download {
            file: uri.file,
            done: uri.size,
            total: uri.size,
        });
        Ok(path)
    }
}

/// `dpkg-deb -x DEB DIR`: the package's files under `dir`, nothing installed.
pub fn unpack(deb: &Path, dir: &Path) -> Result<(), DebianError> {
    run_ok(
        Command::new("dpkg-deb").arg("-x").arg(deb).arg(dir),
        "the downloaded .deb may be corrupt; delete it and try again",
    )
    .map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    // Captured on Debian 12 (bookworm).
    const DEPENDS_ALTS: &str = "linux-image-amd64\n  |Depends: <linux-image-virtual>\n  |Depends: linux-image-6.1.0-41-amd64\n  Depends: linux-image-6.1.0-42-amd64\n  Recommends: firmware-linux-free\n";
    const POLICY: &str = "linux-source-6.1:
  Installed: 6.1.172-1
  Candidate: 6.1.172-1
  Version table:
 *** 6.1.172-1 500
        500 http://deb.debian.org/debian-security bookworm-security/main amd64 Packages
        100 /var/lib/dpkg/status
     6.1.170-3 500
";
    const MADISON: &str = "linux-source-6.1 |  6.1.172-1 | http://deb.debian.org/debian-security bookworm-security/main amd64 Packages
linux-source-6.1 |  6.1.170-3 | http://deb.debian.org/debian bookworm/main amd64 Packages
linux-source-6.1 |  6.1.170-3 | http://deb.debian.org/debian-security bookworm-security/main amd64 Packages
linux-kbuild-6.1 |  6.1.172-1 | http://deb.debian.org/debian-security bookworm-security/main amd64 Packages
";
    const URIS: &str = "'http://deb.debian.org/debian/pool/main/l/linux/linux-image-6.1.0-47-amd64-unsigned_6.1.170-3_amd64.deb' linux-image-6.1.0-47-amd64-unsigned_6.1.170-3_amd64.deb 70226932 SHA256:cb9a263a6d0d2debe8ac20eadc1065ffb8b22d27f4a6471ac1c0314db341dfb0\n";
    const FAILED: &str = "Err:1 http://deb.debian.org/debian-security bookworm-security/main amd64 linux-image-6.1.0-45-amd64-unsigned amd64 6.1.170-1
  404  Not Found [IP: 203.0.113.80 80]
E: Failed to fetch http://deb.debian.org/debian-security/pool/updates/main/l/linux/linux-image-6.1.0-45-amd64-unsigned_6.1.170-1_amd64.deb  404  Not Found [IP: 203.0.113.80 80]
";

    #[test]
    fn depends_and_policy() {
        assert_eq!(
            parse_depends(DEPENDS_ALTS, "linux-image-").as_deref(),
            Some("linux-image-6.1.0-41-amd64")
        );
        assert_eq!(parse_depends("", "linux-image-"), None);
        let p = parse_policy(POLICY);
        assert_eq!(p.installed.as_deref(), Some("6.1.172-1"));
        assert_eq!(p.candidate.as_deref(), Some("6.1.172-1"));
        assert_eq!(parse_policy(""), Policy::default());
    }

    #[test]
    fn madison_once_per_version() {
        let v = parse_madison(MADISON);
        assert_eq!(
            v,
            vec![
                ("linux-source-6.1".into(), "6.1.172-1".into()),
                ("linux-source-6.1".into(), "6.1.170-3".into()),
                ("linux-kbuild-6.1".into(), "6.1.172-1".into()),
            ]
        );
        assert!(parse_madison("N: Unable to locate package x\n").is_empty());
    }

    #[test]
    fn uris_and_failures() {
        let u = parse_print_uris(URIS);
        assert_eq!(u.len(), 1);
        assert_eq!(u[0].size, 70226932);
        assert!(u[0].url.starts_with("http://deb.debian.org/debian/pool/"));
        assert_eq!(fetch_failure(FAILED).as_deref(), Some("HTTP 404 Not Found"));
        assert_eq!(
            fetch_failure("Get:1 http://x 200 [1 kB]\nFetched 1 kB"),
            None
        );
    }

    #[test]
    fn dpkg_query_and_versions() {
        let m =
            parse_dpkg_query("cpio\t2.13\tinstalled\nlinux-source-6.1\t6.1.190-1\tconfig-files\n");
        assert!(m.contains_key("cpio") && !m.contains_key("linux-source-6.1"));
        assert_eq!(upstream_version("6.1.192-2"), "6.1.192");
        assert_eq!(upstream_version("1:7.2+dfsg-7+deb12u18+b3"), "7.2+dfsg");
    }
}
