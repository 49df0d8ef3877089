//! Compiling C the way the Debian kernel is compiled, at test time.
//!
//! The exact compiler and objtool command lines come from kbuild itself: the
//! harness compiles one real object (`fs/proc/cmdline.o`) in graft's private
//! copy of the lab tree and reads kbuild's record of the commands. Fixtures
//! are then compiled with that command line in the lab's tree, which is
//! only read (the output goes to a scratch directory), and objtool from the
//! tree runs on the result, exactly as in a kernel build.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use graft_diff::Layout;
use graft_kbuild::compile;
use graft_kbuild::mirror::Mirror;
use graft_kbuild::patch::SourcePatch;
use graft_kbuild::tree::KernelTree;
use graft_lab::Lab;

pub struct Kernel {
    pub lab: Lab,
    pub tree: PathBuf,
    pub cc: Vec<String>,
    pub objtool: Vec<String>,
    pub layout: Layout,
    pub make_vars: Vec<String>,
}

pub fn cache_dir() -> PathBuf {
    std::env::var_os("GRAFT_CACHE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/graft"))
        .join("build")
}

pub fn kernel() -> &'static Kernel {
    static K: OnceLock<Kernel> = OnceLock::new();
    K.get_or_init(|| {
        let lab = Lab::open(&Lab::default_root())
            .unwrap_or_else(|e| panic!("the kernel lab is not set up: {e}; run ./run test"));
        let tree = lab.source_tree();
        let kt = KernelTree::open(&tree).expect("lab tree");
        let (mirror, _) = Mirror::sync(&kt, &cache_dir()).expect("mirror");
        let obj = "fs/proc/cmdline.o".to_owned();
        compile::compile(
            &mirror.root,
            &kt.make_vars,
            std::slice::from_ref(&obj),
            2,
            "the probe object",
            &mirror.log_path(),
        )
        .expect("kbuild compile");
        let record = std::fs::read_to_string(mirror.root.join("fs/proc/.cmdline.o.cmd"))
            .expect("kbuild record");
        let line = record.lines().next().expect("command line");
        let (_, cmd) = line.split_once(" := ").expect("record format");
        let (cc_part, tool_part) = cmd.split_once(" ; ").expect("objtool runs after gcc");
        let cc: Vec<String> = graft_kbuild::probe::shell_words(cc_part)
            .expect("words")
            .into_iter()
            .filter(|w| {
                !w.starts_with("-Wp,")
                    && !w.starts_with("-DKBUILD_")
                    && !w.starts_with("-D__KBUILD_")
            })
            .collect();
        let cc = strip_io(cc);
        let mut objtool = graft_kbuild::probe::shell_words(tool_part).expect("words");
        objtool.pop(); // the object
        let layout = Layout::from_probe(
            &graft_elf::Object::parse(
                &graft_kbuild::probe::compile(&tree, graft_diff::layout::PROBE)
                    .expect("layout probe"),
                std::path::Path::new("probe.o"),
            )
            .unwrap(),
        )
        .expect("layout probe");
        Kernel {
            lab,
            tree,
            cc,
            objtool,
            layout,
            make_vars: kt.make_vars.clone(),
        }
    })
}

/// Removes `-c -o X source.c` from a compiler command line.
fn strip_io(words: Vec<String>) -> Vec<String> {
    let mut out = Vec::new();
    let mut skip = false;
    for w in words {
        if skip {
            skip = false;
            continue;
        }
        if w == "-o" {
            skip = true;
            continue;
        }
        if w == "-c" || w.ends_with(".c") {
            continue;
        }
        out.push(w);
    }
    out
}

impl Kernel {
    /// Compiles `src` to `out` like a kernel object (then objtool), and
    /// writes kbuild's CRC record next to it if it exports symbols.
    pub fn compile(&self, src: &Path, out: &Path) {
        let name = out.file_stem().unwrap().to_string_lossy().into_owned();
        let run = Command::new(&self.cc[0])
            .args(&self.cc[1..])
            // The headers graft installs for patch authors (<graft/livepatch.h>).
            .arg(format!("-I{}", graft_include().display()))
            .arg(format!("-DKBUILD_MODFILE=\"graft/{name}\""))
            .arg(format!("-DKBUILD_BASENAME=\"{name}\""))
            .arg(format!("-DKBUILD_MODNAME=\"{name}\""))
            .arg(format!("-D__KBUILD_MODNAME=kmod_{name}"))
            .arg("-c")
            .arg("-o")
            .arg(out)
            .arg(src)
            .current_dir(&self.tree)
            .output()
            .expect("run the compiler");
        assert!(
            run.status.success(),
            "{} does not compile:\n{}",
            src.display(),
            String::from_utf8_lossy(&run.stderr)
        );
        let tool = Command::new(&self.objtool[0])
            .args(&self.objtool[1..])
            .arg(out)
            .current_dir(&self.tree)
            .output()
            .expect("run objtool");
        assert!(
            tool.status.success(),
            "objtool on {}:\n{}",
            src.display(),
            String::from_utf8_lossy(&tool.stderr)
        );
        if std::fs::read_to_string(src)
            .unwrap()
            .contains("EXPORT_SYMBOL")
        {
            self.crc_record(src, out);
        }
    }

    /// genksyms over the preprocessed source, as kbuild's gen_symversions does.
    fn crc_record(&self, src: &Path, out: &Path) {
        let cpp = Command::new(&self.cc[0])
            .args(&self.cc[1..])
            .arg("-E")
            .arg("-D__GENKSYMS__")
            .arg(src)
            .current_dir(&self.tree)
            .output()
            .expect("preprocess");
        assert!(cpp.status.success());
        let mut gk = Command::new(self.tree.join("scripts/genksyms/genksyms"))
            .args(["-r", "/dev/null"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("genksyms");
        std::io::Write::write_all(gk.stdin.as_mut().unwrap(), &cpp.stdout).unwrap();
        drop(gk.stdin.take());
        let res = gk.wait_with_output().unwrap();
        std::fs::write(graft_kbuild::record::record_of(out), &res.stdout).unwrap();
    }

    /// Compiles the kernel objects `objects` before and after `patch` in
    /// graft's private copy of the lab tree; returns (orig dir, patched dir).
    pub fn kernel_pair(
        &self,
        patch_text: &str,
        objects: &[&str],
        dir: &Path,
    ) -> (PathBuf, PathBuf) {
        let kt = KernelTree::open(&self.tree).expect("lab tree");
        let pf = dir.join("fix.patch");
        std::fs::write(&pf, patch_text).unwrap();
        let patch = SourcePatch::read(&pf).expect("patch");
        let (mut mirror, _) = Mirror::sync(&kt, &cache_dir()).expect("mirror");
        let objs: Vec<String> = objects.iter().map(|s| s.to_string()).collect();
        let keep = |to: &Path, mirror: &Mirror| {
            for o in &objs {
                let dst = to.join(o);
                std::fs::create_dir_all(dst.parent().unwrap()).unwrap();
                std::fs::copy(mirror.root.join(o), &dst).unwrap();
                let rec = graft_kbuild::record::record_of(&mirror.root.join(o));
                if rec.is_file() {
                    std::fs::copy(rec, graft_kbuild::record::record_of(&dst)).unwrap();
                }
            }
        };
        let log = mirror.log_path();
        compile::compile(&mirror.root, &self.make_vars, &objs, 2, "orig", &log)
            .expect("compile orig");
        keep(&dir.join("orig"), &mirror);
        mirror.apply(&patch).expect("apply");
        let r = compile::compile(&mirror.root, &self.make_vars, &objs, 2, "patched", &log);
        mirror.revert().expect("revert");
        r.expect("compile patched");
        keep(&dir.join("patched"), &mirror);
        (dir.join("orig"), dir.join("patched"))
    }
}

/// The headers graft ships (crates/graft-kbuild/include).
pub fn graft_include() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../graft-kbuild/include")
}

pub fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}
