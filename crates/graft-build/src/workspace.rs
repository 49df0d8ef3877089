//! Where the build happens: the user's tree and patch (only read), graft's
//! private copy of the tree (patched, compiled, reverted there), and a work
//! directory holding the original and patched objects of every unit.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use graft_kbuild::compile::{self, Linkage};
use graft_kbuild::mirror::Mirror;
use graft_kbuild::patch::SourcePatch;
use graft_kbuild::tree::KernelTree;

use crate::Inputs;

/// The user's inputs, read and checked against the target before any work.
pub struct Sources {
    pub tree: KernelTree,
    pub patch: SourcePatch,
    /// The objects kbuild builds from the changed files (`fs/proc/cmdline.o`).
    pub objects: Vec<String>,
}

impl Sources {
    pub fn read(inputs: &Inputs) -> Result<Sources> {
        let tree = KernelTree::open(&inputs.tree)?;
        let patch = SourcePatch::read(&inputs.patch)?;
        let objects = patch.objects()?;
        let config = &inputs.target.config;
        if !config.is_file() {
            bail!(
                "the target kernel's config {} does not exist; hint: pass it with --config",
                config.display()
            );
        }
        // The compiler first: a config from another compiler differs in its
        // compiler options too, and the compiler is the cause worth naming.
        tree.check_compiler(config)?;
        tree.check_config(config)?;
        Ok(Sources {
            tree,
            patch,
            objects,
        })
    }
}

pub struct Workspace {
    pub sources: Sources,
    mirror: Mirror,
    work: tempfile::TempDir,
    jobs: usize,
    keep: Option<PathBuf>,
    /// How kbuild links each object (vmlinux or a module), once compiled.
    pub linkage: Vec<Linkage>,
}

impl Drop for Workspace {
    fn drop(&mut self) {
        // Whatever the outcome: the objects of a refused build are the ones
        // worth a look.
        if let Some(keep) = &self.keep {
            let _ = std::fs::remove_dir_all(keep);
            if std::fs::rename(self.work.path(), keep).is_err() {
                let _ = std::process::Command::new("cp")
                    .arg("-a")
                    .arg(self.work.path())
                    .arg(keep)
                    .status();
            }
        }
    }
}

impl Workspace {
    /// Syncs the private copy of the tree and checks that the patch applies.
    pub fn open(inputs: &Inputs, sources: Sources) -> Result<Workspace> {
        std::fs::create_dir_all(&inputs.output)
            .with_context(|| format!("cannot create {}", inputs.output.display()))?;
        let (mirror, _) = Mirror::sync(&sources.tree, &inputs.cache.join("build"))?;
        let work = tempfile::Builder::new()
            .prefix("work-")
            .tempdir_in(&inputs.cache)
            .with_context(|| {
                format!(
                    "cannot create a work directory in {}",
                    inputs.cache.display()
                )
            })?;
        mirror.check(&sources.patch)?;
        // <graft/livepatch.h> and kpatch's headers, in the copy only.
        graft_kbuild::headers::install(&mirror.root)?;
        Ok(Workspace {
            sources,
            mirror,
            work,
            jobs: inputs.jobs,
            keep: inputs.keep_work.clone(),
            linkage: Vec::new(),
        })
    }

    pub fn mirror_root(&self) -> PathBuf {
        self.mirror.root.clone()
    }

    pub fn work_dir(&self) -> &Path {
        self.work.path()
    }

    /// Where the original (`orig`) or patched (`patched`) build of `object` is kept.
    pub fn object_path(&self, side: &str, object: &str) -> PathBuf {
        self.work.path().join(side).join(object)
    }

    pub fn compile_original(&mut self) -> Result<()> {
        self.linkage = self.compile("the original source")?;
        self.keep("orig")
    }

    /// Patches the copy, compiles, and reverts it whatever happened.
    pub fn compile_patched(&mut self) -> Result<()> {
        let built = self
            .mirror
            .apply(&self.sources.patch)
            .map_err(anyhow::Error::from)
            .and_then(|()| self.compile("the patched source").map(|_| ()));
        // The user's tree was never touched; the copy is put back.
        self.mirror.revert()?;
        built?;
        self.keep("patched")
    }

    fn compile(&self, what: &str) -> Result<Vec<Linkage>> {
        Ok(compile::compile(
            &self.mirror.root,
            &self.sources.tree.make_vars,
            &self.sources.objects,
            self.jobs,
            what,
            &self.mirror.log_path(),
        )?)
    }

    /// Copies the compiled objects out of the copy before the next compile.
    fn keep(&self, side: &str) -> Result<()> {
        let root = &self.mirror.root;
        for o in &self.sources.objects {
            let dst = self.object_path(side, o);
            std::fs::create_dir_all(dst.parent().expect("object path has a directory"))?;
            std::fs::copy(root.join(o), &dst).with_context(|| format!("cannot copy {o}"))?;
            // kbuild's record of the object holds the CRCs of its exports.
            let record = graft_diff::crc::record_of(&root.join(o));
            if record.is_file() {
                std::fs::copy(&record, graft_diff::crc::record_of(&dst))
                    .with_context(|| format!("cannot copy {}", record.display()))?;
            }
        }
        Ok(())
    }
}
