//! The source patch: which files it touches, and what graft can do with them.

use std::path::{Path, PathBuf};

use crate::KbuildError;

/// A unified diff, as given by the user.
#[derive(Debug, Clone)]
pub struct SourcePatch {
    pub path: PathBuf,
    pub bytes: Vec<u8>,
    /// Files the patch touches, relative to the tree's top (`-p1`).
    pub files: Vec<String>,
}

/// What graft does with one touched file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileRole {
    /// A C file of the kernel: compiled before and after.
    CSource,
    /// A header: the units that include it are compiled before and after.
    Header,
    /// Text that does not affect the build (documentation).
    Inert,
}

impl SourcePatch {
    pub fn read(path: &Path) -> Result<SourcePatch, KbuildError> {
        let bytes =
            std::fs::read(path).map_err(crate::io(format!("cannot read {}", path.display())))?;
        let text = String::from_utf8_lossy(&bytes);
        let bad = |why: &str| KbuildError::BadPatch {
            path: path.to_owned(),
            why: why.to_owned(),
        };
        let mut files = Vec::new();
        let mut old: Option<String> = None;
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("--- ") {
                old = Some(strip_component(rest));
            } else if let Some(rest) = line.strip_prefix("+++ ") {
                let new = strip_component(rest);
                let name = if new == "/dev/null" {
                    old.take().ok_or_else(|| bad("'+++' without '---'"))?
                } else {
                    new
                };
                if name.contains("..") || name.starts_with('/') {
                    return Err(bad(&format!("unsafe file name {name}")));
                }
                if !files.contains(&name) {
                    files.push(name);
                }
            }
        }
        if files.is_empty() || !text.contains("\n@@ ") {
            return Err(bad("no file headers or hunks found"));
        }
        Ok(SourcePatch {
            path: path.to_owned(),
            bytes,
            files,
        })
    }

    /// Sorts the touched files into roles; refuses the ones graft cannot build.
    pub fn classify(&self) -> Result<Vec<(String, FileRole)>, KbuildError> {
        let mut out = Vec::new();
        for f in &self.files {
            out.push((f.clone(), role(f)?));
        }
        if !out
            .iter()
            .any(|(_, r)| matches!(r, FileRole::CSource | FileRole::Header))
        {
            return Err(KbuildError::NothingToBuild {
                files: self.files.join(", "),
            });
        }
        Ok(out)
    }

    /// The objects kbuild builds from the C files (`fs/proc/cmdline.o`).
    pub fn objects(&self) -> Result<Vec<String>, KbuildError> {
        Ok(self
            .classify()?
            .into_iter()
            .filter(|(_, r)| *r == FileRole::CSource)
            .map(|(f, _)| format!("{}.o", f.trim_end_matches(".c")))
            .collect())
    }

    /// The headers the patch changes (`include/linux/sched.h`).
    pub fn headers(&self) -> Result<Vec<String>, KbuildError> {
        Ok(self
            .classify()?
            .into_iter()
            .filter(|(_, r)| *r == FileRole::Header)
            .map(|(f, _)| f)
            .collect())
    }
}

/// `a/fs/proc/cmdline.c\t2024-…` → `fs/proc/cmdline.c`.
fn strip_component(header: &str) -> String {
    let name = header.split('\t').next().unwrap_or("").trim();
    if name == "/dev/null" {
        return name.to_owned();
    }
    name.split_once('/')
        .map_or(name, |(_, rest)| rest)
        .to_owned()
}

/// Top-level directories whose C files are not kernel code.
const NOT_KERNEL: &[&str] = &["tools/", "scripts/", "samples/", "Documentation/", "usr/"];

fn role(file: &str) -> Result<FileRole, KbuildError> {
    let unsupported = |why: &str| {
        Err(KbuildError::UnsupportedFile {
            file: file.to_owned(),
            why: why.to_owned(),
        })
    };
    let name = file.rsplit('/').next().unwrap_or(file);
    if NOT_KERNEL.iter().any(|d| file.starts_with(d))
        || name.ends_with(".rst")
        || name.ends_with(".txt")
        || file == "MAINTAINERS"
    {
        return Ok(FileRole::Inert);
    }
    if name.ends_with(".c") {
        return Ok(FileRole::CSource);
    }
    if name.ends_with(".S") || name.ends_with(".s") {
        return unsupported("assembly is not supported: graft replaces compiled C functions; hint: express the fix in C, or in a C caller of the assembly");
    }
    if name.ends_with(".h") {
        return Ok(FileRole::Header);
    }
    if name.starts_with("Kconfig") || name.starts_with("Makefile") || name == "Kbuild" {
        return unsupported("it changes the build itself (config or makefiles), which a live patch cannot do; hint: drop that part of the patch");
    }
    unsupported("graft does not know what this file is; hint: patch only C files of the kernel")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(text: &str) -> (tempfile::TempDir, PathBuf) {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("x.patch");
        std::fs::write(&p, text).unwrap();
        (d, p)
    }

    const CMDLINE: &str =
        "--- a/fs/proc/cmdline.c\n+++ b/fs/proc/cmdline.c\n@@ -1,1 +1,1 @@\n-a\n+b\n";

    #[test]
    fn finds_files_and_objects() {
        let (_d, p) = write(CMDLINE);
        let sp = SourcePatch::read(&p).unwrap();
        assert_eq!(sp.files, vec!["fs/proc/cmdline.c"]);
        assert_eq!(sp.objects().unwrap(), vec!["fs/proc/cmdline.o"]);
    }

    #[test]
    fn headers_are_built_through_their_includers() {
        let (_d, p) =
            write("--- a/include/linux/x.h\n+++ b/include/linux/x.h\n@@ -1 +1 @@\n-a\n+b\n");
        let sp = SourcePatch::read(&p).unwrap();
        assert_eq!(sp.objects().unwrap(), Vec::<String>::new());
        assert_eq!(sp.headers().unwrap(), vec!["include/linux/x.h"]);
    }

    #[test]
    fn refuses_assembly_and_non_kernel_files() {
        let (_d, p) = write("--- a/arch/x86/entry/entry_64.S\n+++ b/arch/x86/entry/entry_64.S\n@@ -1 +1 @@\n-a\n+b\n");
        assert!(matches!(
            SourcePatch::read(&p).unwrap().objects(),
            Err(KbuildError::UnsupportedFile { .. })
        ));
        let (_d, p) = write(
            "--- a/tools/perf/builtin-top.c\n+++ b/tools/perf/builtin-top.c\n@@ -1 +1 @@\n-a\n+b\n",
        );
        assert!(matches!(
            SourcePatch::read(&p).unwrap().objects(),
            Err(KbuildError::NothingToBuild { .. })
        ));
        let (_d, p) = write("hello\n");
        assert!(matches!(
            SourcePatch::read(&p),
            Err(KbuildError::BadPatch { .. })
        ));
    }
}
