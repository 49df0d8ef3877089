//! Linking the patch module without a kbuild run: kbuild's own commands for
//! one kernel's headers, captured once and replayed.
//!
//! `make M=dir modules` spends most of its time in make itself and in
//! modpost reading `Module.symvers`; what it runs for a module is four
//! commands (compile the stub and run objtool on it, `ld -r` the parts,
//! compile the `.mod.c` modpost wrote, `ld -r -T module.lds` the `.ko`).
//! graft builds a small module with kbuild once per headers (its commands
//! are recorded in kbuild's `.cmd` files), keeps the commands with the
//! module's directory and name made placeholders, and replays them for each
//! patch module, writing the `.mod.c` itself ([`super::modpost`]).
//!
//! Before the commands are trusted they are checked on that small module:
//! graft's `.mod.c` must be modpost's, and the module graft links in the same
//! directory must be byte for byte kbuild's. Headers on which either fails
//! (another modpost, a `.ko` post-link step, BTF added to modules) keep
//! kbuild linking every module, as does a module graft does not write the
//! way modpost does (exports, device tables, a version).

use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::modpost::{self, Export, ModC, Options};
use super::ModuleSources;
use crate::{io, KbuildError};

/// The small module kbuild builds once per headers.
const TEMPLATE: &str = "zz-graft-template";
const TEMPLATE_C: &str = r#"// Built once by graft to record kbuild's commands for these headers.
#include <linux/kernel.h>
#include <linux/module.h>

static int __init zz_graft_template_init(void)
{
	pr_info("graft template\n");
	return 0;
}

static void __exit zz_graft_template_exit(void)
{
}

module_init(zz_graft_template_init);
module_exit(zz_graft_template_exit);
MODULE_LICENSE("GPL");
"#;

const DIR: &str = "@GRAFT_DIR@";
const NAME: &str = "@GRAFT_NAME@";
const MODNAME: &str = "@GRAFT_MODNAME@";

/// Bumped when what is captured, or how, changes.
const FORMAT: u32 = 1;

/// kbuild's commands for linking a module against one headers directory.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Capture {
    format: u32,
    /// The headers' files and the programs the commands run, as stamps:
    /// when any changes, the commands are captured again.
    key: String,
    /// Compile the stub (and objtool on it).
    stub: Vec<Vec<String>>,
    /// `ld -r` of the module's parts.
    parts: Vec<Vec<String>>,
    /// Compile the `.mod.c`.
    mod_c: Vec<Vec<String>>,
    /// The final link of the `.ko`.
    ko: Vec<Vec<String>>,
    modversions: bool,
    allow_missing_ns: bool,
    /// Why graft does not link modules for these headers.
    unsupported: Option<String>,
}

/// Links patch modules for one kernel's headers.
pub struct Linker {
    headers: PathBuf,
    capture: Capture,
}

/// What [`Linker::link`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Linked {
    /// The module, linked by graft.
    Module(PathBuf),
    /// graft does not link this module the way kbuild does (why): the
    /// caller builds it with kbuild ([`super::build`]).
    Unsupported(String),
}

impl Linker {
    /// The linker for `headers`, with kbuild's commands captured under
    /// `cache` (once per state of the headers and toolchain).
    pub fn open(
        headers: &Path,
        cache: &Path,
        exports: &dyn Fn(&str) -> Option<Export>,
    ) -> Result<Linker, KbuildError> {
        let headers = headers
            .canonicalize()
            .map_err(io(format!("cannot find the headers {}", headers.display())))?;
        let dir = cache.join("modules").join(format!(
            "headers-{:016x}",
            crate::objects::fnv(headers.as_os_str().as_encoded_bytes())
        ));
        fs::create_dir_all(&dir).map_err(io(format!("cannot create {}", dir.display())))?;
        let lock = fs::File::create(dir.join("lock"))
            .map_err(io("cannot create the module linker's lock"))?;
        lock.lock().map_err(io("cannot lock the module linker"))?;
        let saved = dir.join("commands.json");
        if let Some(c) = fs::read(&saved)
            .ok()
            .and_then(|b| serde_json::from_slice::<Capture>(&b).ok())
            .filter(|c| c.format == FORMAT && c.key == key(&headers, &programs(c)))
        {
            return Ok(Linker {
                headers,
                capture: c,
            });
        }
        let capture = capture(&headers, &dir.join("capture"), exports)?;
        let tmp = saved.with_extension("tmp");
        let bytes = serde_json::to_vec_pretty(&capture).expect("the commands serialize");
        fs::write(&tmp, bytes).map_err(io("cannot keep the module link commands"))?;
        fs::rename(&tmp, &saved).map_err(io("cannot keep the module link commands"))?;
        Ok(Linker { headers, capture })
    }

    /// Why graft does not link modules for these headers, if it does not.
    pub fn unsupported(&self) -> Option<&str> {
        self.capture.unsupported.as_deref()
    }

    /// Links `src` into `<dir>/<name>.ko` (`dir` a scratch directory).
    pub fn link(
        &self,
        dir: &Path,
        src: &ModuleSources<'_>,
        exports: &dyn Fn(&str) -> Option<Export>,
    ) -> Result<Linked, KbuildError> {
        if let Some(why) = &self.capture.unsupported {
            return Ok(Linked::Unsupported(why.clone()));
        }
        let dir = dir
            .canonicalize()
            .map_err(io(format!("cannot find {}", dir.display())))?;
        let c = &self.capture;
        let name = src.name;
        let w = |p: PathBuf, data: &[u8]| {
            fs::write(&p, data).map_err(io(format!("cannot write {}", p.display())))
        };
        let stub = format!("{name}-stub");
        w(dir.join(format!("{stub}.c")), src.stub_c.as_bytes())?;
        // The parts, in kbuild's order: the stub, then the prebuilt objects.
        let mut list = format!("{}/{stub}.o\n", dir.display());
        for (file, bytes) in src.objects {
            w(dir.join(file), bytes)?;
            list.push_str(&format!("{}/{file}\n", dir.display()));
        }
        let log = dir.join("link.log");
        let _ = fs::remove_file(&log);
        let run = |cmds: &[Vec<String>]| self.run(cmds, &dir, name, &log);
        run(&c.stub)?;
        w(dir.join(format!("{name}.mod")), list.as_bytes())?;
        run(&c.parts)?;
        let object = dir.join(format!("{name}.o"));
        let bytes = fs::read(&object).map_err(io(format!("cannot read {}", object.display())))?;
        let opts = Options {
            modversions: c.modversions,
            allow_missing_ns: c.allow_missing_ns,
        };
        let path_name = format!("{}/{name}", dir.display());
        match modpost::write(&path_name, &bytes, exports, opts) {
            Ok(ModC::Source(text)) => w(dir.join(format!("{name}.mod.c")), text.as_bytes())?,
            Ok(ModC::Unsupported(why)) => return Ok(Linked::Unsupported(why)),
            Err(message) => {
                return Err(KbuildError::Compile {
                    what: format!("the patch module {name}"),
                    first_error: format!("modpost: {message}"),
                    log: object,
                    hint: "graft checks the module as kbuild's modpost does".into(),
                })
            }
        }
        run(&c.mod_c)?;
        run(&c.ko)?;
        Ok(Linked::Module(dir.join(format!("{name}.ko"))))
    }

    /// Runs `cmds` for module `name` in `dir`, from the headers' directory
    /// (kbuild's commands name files relative to it).
    fn run(
        &self,
        cmds: &[Vec<String>],
        dir: &Path,
        name: &str,
        log: &Path,
    ) -> Result<(), KbuildError> {
        let modname = name.replace('-', "_");
        let dir = dir.to_string_lossy();
        for words in cmds {
            let words: Vec<String> = words
                .iter()
                .map(|w| {
                    w.replace(DIR, &dir)
                        .replace(NAME, name)
                        .replace(MODNAME, &modname)
                })
                .collect();
            // Headers prepared in another Debian's root link there too.
            let out = crate::buildroot::command_in(
                &self.headers,
                &words[0],
                &[Path::new(dir.as_ref())],
                Some(&self.headers),
            )
            .args(&words[1..])
            .env_remove("MAKEFLAGS")
            .output()
            .map_err(io(format!("cannot run {}", words[0])))?;
            let text = format!(
                "$ {}\n{}{}",
                words.join(" "),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            let mut all = fs::read_to_string(log).unwrap_or_default();
            all.push_str(&text);
            let _ = fs::write(log, all);
            if !out.status.success() {
                return Err(KbuildError::Compile {
                    what: format!("the patch module {name}"),
                    first_error: crate::first_error(&text),
                    log: log.to_owned(),
                    hint: format!(
                        "graft replays kbuild's commands for {}; check that they hold the target kernel's headers",
                        self.headers.display()
                    ),
                });
            }
        }
        Ok(())
    }
}

/// Builds the template module with kbuild in `dir`, reads its commands and
/// checks that replaying them gives kbuild's module.
fn capture(
    headers: &Path,
    dir: &Path,
    exports: &dyn Fn(&str) -> Option<Export>,
) -> Result<Capture, KbuildError> {
    let _ = fs::remove_dir_all(dir);
    fs::create_dir_all(dir).map_err(io(format!("cannot create {}", dir.display())))?;
    let dir = dir
        .canonicalize()
        .map_err(io(format!("cannot find {}", dir.display())))?;
    let src = ModuleSources {
        name: TEMPLATE,
        stub_c: TEMPLATE_C,
        objects: &[],
    };
    let ko = super::build(headers, &dir, &src)?;
    let config = fs::read_to_string(headers.join(".config")).unwrap_or_default();
    let config = crate::config::parse(&config);
    let on = |k: &str| config.get(k).map(String::as_str) == Some("y");
    let mut c = Capture {
        format: FORMAT,
        key: String::new(),
        stub: Vec::new(),
        parts: Vec::new(),
        mod_c: Vec::new(),
        ko: Vec::new(),
        modversions: on("MODVERSIONS"),
        allow_missing_ns: on("MODULE_ALLOW_MISSING_NAMESPACE_IMPORTS"),
        unsupported: None,
    };
    let read = |target: &str| recorded(&dir, target);
    let stub = format!("{TEMPLATE}-stub.o");
    match (
        read(&stub),
        read(&format!("{TEMPLATE}.o")),
        read(&format!("{TEMPLATE}.mod.o")),
        read(&format!("{TEMPLATE}.ko")),
    ) {
        (Ok(s), Ok(p), Ok(m), Ok(k)) => {
            c.stub = s;
            c.parts = p;
            c.mod_c = m;
            c.ko = k;
        }
        (s, p, m, k) => {
            let why = [s.err(), p.err(), m.err(), k.err()]
                .into_iter()
                .flatten()
                .next()
                .unwrap_or_default();
            c.unsupported = Some(why);
        }
    }
    c.key = key(headers, &programs(&c));
    if c.unsupported.is_none() {
        c.unsupported = replay_differs(headers, &c, &dir, &ko, &src, exports)?;
    }
    Ok(c)
}

/// Why replaying `c` does not give kbuild's template module `ko` (built in
/// `dir` from `src`), if it does not: graft's `.mod.c` must be modpost's,
/// and the module graft links kbuild's, byte for byte.
fn replay_differs(
    headers: &Path,
    c: &Capture,
    dir: &Path,
    ko: &Path,
    src: &ModuleSources<'_>,
    exports: &dyn Fn(&str) -> Option<Export>,
) -> Result<Option<String>, KbuildError> {
    let kbuild_ko = fs::read(ko).map_err(io(format!("cannot read {}", ko.display())))?;
    if has_section(&kbuild_ko, ".BTF") {
        return Ok(Some(
            "kbuild adds BTF to modules built against these headers".into(),
        ));
    }
    let object = fs::read(dir.join(format!("{TEMPLATE}.o")))
        .map_err(io("cannot read the template module's object"))?;
    let opts = Options {
        modversions: c.modversions,
        allow_missing_ns: c.allow_missing_ns,
    };
    let ours = modpost::write(
        &format!("{}/{TEMPLATE}", dir.display()),
        &object,
        exports,
        opts,
    );
    let theirs = fs::read_to_string(dir.join(format!("{TEMPLATE}.mod.c"))).unwrap_or_default();
    if ours != Ok(ModC::Source(theirs)) {
        return Ok(Some(format!(
            "modpost of these headers writes another .mod.c than graft (see {})",
            dir.display()
        )));
    }
    fs::rename(ko, dir.join("kbuild.ko")).map_err(io("cannot keep kbuild's module"))?;
    for f in [
        format!("{TEMPLATE}-stub.o"),
        format!("{TEMPLATE}.o"),
        format!("{TEMPLATE}.mod"),
        format!("{TEMPLATE}.mod.c"),
        format!("{TEMPLATE}.mod.o"),
    ] {
        let _ = fs::remove_file(dir.join(f));
    }
    let linker = Linker {
        headers: headers.to_owned(),
        capture: c.clone(),
    };
    let ours = match linker.link(dir, src, exports)? {
        Linked::Module(p) => fs::read(&p).map_err(io(format!("cannot read {}", p.display())))?,
        Linked::Unsupported(why) => return Ok(Some(why)),
    };
    Ok((ours != kbuild_ko).then(|| {
        format!(
            "the module graft links differs from kbuild's for these headers (see {})",
            dir.display()
        )
    }))
}

/// The command kbuild recorded for `target` in `dir` (its `.cmd` file), as
/// commands of words with the directory and module name made placeholders.
fn recorded(dir: &Path, target: &str) -> Result<Vec<Vec<String>>, String> {
    let record = dir.join(format!(".{target}.cmd"));
    let text = fs::read_to_string(&record)
        .map_err(|_| format!("kbuild recorded no command in {}", record.display()))?;
    let line = text.lines().next().unwrap_or_default();
    let cmd = line
        .split_once(" := ")
        .map(|(_, c)| c)
        .ok_or_else(|| format!("{} is not a kbuild record", record.display()))?;
    // As make reads the record: `$$` is `$`, `$(pound)` is `#`.
    let cmd = cmd.replace("$(pound)", "#").replace("$$", "$");
    let cmds = crate::probe::shell_commands(&cmd).ok_or_else(|| {
        format!("kbuild's command for {target} is more than graft replays: {cmd}")
    })?;
    let dir = dir.to_string_lossy();
    let modname = TEMPLATE.replace('-', "_");
    Ok(cmds
        .into_iter()
        // `true` stands where an architecture has no post-link step.
        .filter(|w| w != &["true"])
        .map(|w| {
            w.into_iter()
                .map(|w| {
                    w.replace(dir.as_ref(), DIR)
                        .replace(TEMPLATE, NAME)
                        .replace(&modname, MODNAME)
                })
                .collect()
        })
        .collect())
}

/// The programs the captured commands run.
fn programs(c: &Capture) -> Vec<String> {
    let mut p: Vec<String> = [&c.stub, &c.parts, &c.mod_c, &c.ko]
        .into_iter()
        .flatten()
        .filter_map(|w| w.first().cloned())
        .collect();
    p.sort();
    p.dedup();
    p
}

/// What the captured commands depend on: the headers' build files and the
/// programs (`programs`, found from the headers' directory or in `PATH`).
fn key(headers: &Path, programs: &[String]) -> String {
    let mut files: Vec<PathBuf> = [
        "Makefile",
        ".config",
        "Module.symvers",
        "include/config/auto.conf",
        "include/generated/autoconf.h",
        "include/generated/utsrelease.h",
        "arch/x86/module.lds",
        "scripts/module.lds",
        "scripts/Makefile.modfinal",
        "scripts/Makefile.modpost",
        "scripts/Makefile.build",
        "scripts/mod/modpost",
    ]
    .iter()
    .map(|r| headers.join(r))
    .collect();
    // Distributions' headers include the common part by path.
    let makefile = fs::read_to_string(headers.join("Makefile")).unwrap_or_default();
    files.extend(
        makefile
            .lines()
            .filter_map(|l| l.strip_prefix("include "))
            .map(|p| headers.join(p.trim())),
    );
    let mut out = String::new();
    for f in files {
        let stamp = fs::metadata(&f)
            .map(|m| format!("{} {:?}", m.len(), m.modified().ok()))
            .unwrap_or_else(|_| "-".into());
        out.push_str(&format!("{} {stamp}\n", f.display()));
    }
    for p in programs {
        let tool = if p.contains('/') {
            headers.join(p).to_string_lossy().into_owned()
        } else {
            p.clone()
        };
        out.push_str(&crate::objects::toolchain_stamp(&tool));
        out.push('\n');
    }
    out
}

fn has_section(elf: &[u8], name: &str) -> bool {
    graft_elf::Object::parse(elf, Path::new("module.ko"))
        .map(|o| o.section_by_name(name).is_some())
        .unwrap_or(false)
}
