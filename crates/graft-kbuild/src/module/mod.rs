//! The patch module, linked against the kernel's headers: by graft itself
//! with kbuild's own commands ([`commands`], the `.mod.c` written as modpost
//! writes it by [`modpost`]), or by a kbuild run ([`build`], the reference).

pub mod commands;
pub mod modpost;

pub use commands::{Linked, Linker};
pub use modpost::Export;

use std::path::{Path, PathBuf};

use crate::{io, KbuildError};

/// Inputs of the module build.
pub struct ModuleSources<'a> {
    /// Module name (`livepatch-cmdline`).
    pub name: &'a str,
    pub stub_c: &'a str,
    /// Prebuilt objects: (file name, ELF bytes).
    pub objects: &'a [(String, Vec<u8>)],
}

/// Builds `<dir>/<name>.ko` with kbuild (`make M=dir modules`) in `dir`
/// (a scratch directory).
pub fn build(headers: &Path, dir: &Path, src: &ModuleSources<'_>) -> Result<PathBuf, KbuildError> {
    let w = |p: PathBuf, data: &[u8]| {
        std::fs::write(&p, data).map_err(io(format!("cannot write {}", p.display())))
    };
    let stub = format!("{}-stub", src.name);
    w(dir.join(format!("{stub}.c")), src.stub_c.as_bytes())?;
    let mut parts = vec![format!("{stub}.o")];
    for (file, bytes) in src.objects {
        w(dir.join(file), bytes)?;
        // modpost reads each object's .cmd file (for srcversion); a prebuilt
        // object has no sources to list.
        w(dir.join(format!(".{file}.cmd")), b"# prebuilt by graft\n")?;
        parts.push(file.clone());
    }
    let kbuild = format!(
        "obj-m := {name}.o\n{name}-y := {}\n",
        parts.join(" "),
        name = src.name
    );
    w(dir.join("Kbuild"), kbuild.as_bytes())?;
    let log = dir.join("make.log");
    let (ok, text) = crate::run_logged(
        crate::buildroot::command_in(headers, "make", &[dir], None)
            .arg("-C")
            .arg(headers)
            .arg(format!("M={}", dir.display()))
            .arg("modules")
            // Unexported kernel symbols are reached through klp relocations,
            // which modpost cannot know of: livepatch resolves them.
            .env("KBUILD_MODPOST_WARN", "1")
            .env_remove("MAKEFLAGS"),
        &log,
    )?;
    let ko = dir.join(format!("{}.ko", src.name));
    if !ok || !ko.is_file() {
        return Err(KbuildError::Compile {
            what: format!("the patch module {}", src.name),
            first_error: crate::first_error(&text),
            log,
            hint: format!(
                "check that {} holds the headers of the target kernel",
                headers.display()
            ),
        });
    }
    Ok(ko)
}
