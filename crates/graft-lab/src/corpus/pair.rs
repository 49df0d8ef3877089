//! Which two Debian kernels the corpus compares: the target (the kernel an
//! operator runs) and the update (the next kernel Debian shipped, whose
//! source holds the fixes the operator wants live).
//!
//! Default rule, with nothing hard-coded: among the kernels of the current
//! series that apt lists and the archive really serves, the newest pair of
//! consecutive ones whose sources differ in at least [`MIN_C_FILES`] kernel
//! `.c` files; newer pairs with fewer are stepped over (a security upload
//! that changes three files is not a corpus).

use std::path::Path;

use graft_debian::{kernel, Apt, Availability};
use serde::{Deserialize, Serialize};

use crate::error::LabError;
use crate::lab::{write_atomic, Lab};

/// The fewest changed kernel `.c` files that make a pair worth a corpus.
pub const MIN_C_FILES: usize = 20;

/// One Debian kernel: its release and Debian version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Kernel {
    pub release: String,
    pub debian_version: String,
}

/// The target kernel and the update.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pair {
    pub from: Kernel,
    pub to: Kernel,
}

impl Pair {
    /// Directory name of the pair's corpus: `6.1.164-1..6.1.170-3`.
    pub fn dir_name(&self) -> String {
        format!("{}..{}", self.from.debian_version, self.to.debian_version)
    }
}

/// A pair the rule looked at, and why it was taken or stepped over.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Considered {
    pub pair: Pair,
    pub c_files: usize,
}

/// The choice, cached with the list of kernels apt served when it was made.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Choice {
    served: Vec<Kernel>,
    considered: Vec<Considered>,
    chosen: Pair,
}

/// The kernels of the current series apt lists, oldest first.
fn served(apt: &Apt) -> Result<(Vec<(kernel::ServedKernel, Kernel)>, String), LabError> {
    let current = kernel::current_release(apt)?;
    let v = kernel::served(apt, &current.series, &current.flavour)?
        .into_iter()
        .map(|k| {
            let plain = Kernel {
                release: k.release.name.clone(),
                debian_version: k.debian_version.clone(),
            };
            (k, plain)
        })
        .collect();
    Ok((v, current.series))
}

fn downloadable(apt: &Apt, k: &kernel::ServedKernel) -> Result<bool, LabError> {
    let Ok(p) = kernel::packages(apt, &k.release, Some(&k.debian_version)) else {
        return Ok(false);
    };
    Ok(!matches!(
        kernel::availability(apt, &p)?,
        Availability::Missing { .. }
    ))
}

/// Sets a pair up and counts its changed kernel `.c` files.
pub type CountFn<'a> = dyn FnMut(&Pair, &mut dyn FnMut(&str)) -> Result<usize, LabError> + 'a;

/// Chooses the pair: the one `from`/`to` name (Debian versions or
/// releases of kernels apt serves), else by the default rule. `count`
/// sets up both kernels in the lab and returns how many kernel `.c` files
/// their sources differ in (cached by the caller). The default rule's
/// choice is cached in `corpus_root` for as long as apt serves the same
/// kernels.
pub fn choose(
    corpus_root: &Path,
    from: Option<&str>,
    to: Option<&str>,
    count: &mut CountFn<'_>,
    progress: &mut dyn FnMut(&str),
) -> Result<(Pair, Vec<Considered>), LabError> {
    let apt = Apt::new();
    progress("asking apt which kernels it serves…");
    let (list, series) = served(&apt)?;
    let find = |v: &str| {
        list.iter()
            .find(|(_, k)| k.debian_version == v || k.release == v)
            .cloned()
            .ok_or_else(|| {
                LabError::invalid(
                    format!(
                        "apt serves no {series} kernel of Debian version or release `{v}` (it serves {})",
                        list.iter()
                            .map(|(_, k)| format!("{} ({})", k.release, k.debian_version))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                    "pass --from/--to as versions `graft kernels` lists",
                )
            })
    };
    match (from, to) {
        (Some(f), Some(t)) => {
            let pair = Pair {
                from: find(f)?.1,
                to: find(t)?.1,
            };
            let c_files = count(&pair, progress)?;
            return Ok((pair.clone(), vec![Considered { pair, c_files }]));
        }
        (None, None) => {}
        _ => {
            return Err(LabError::invalid(
                "--from and --to go together",
                "give both, or neither for the default pair",
            ))
        }
    }
    let plain: Vec<Kernel> = list.iter().map(|(_, k)| k.clone()).collect();
    let cache = corpus_root.join("choice.json");
    if let Some(c) = std::fs::read(&cache)
        .ok()
        .and_then(|b| serde_json::from_slice::<Choice>(&b).ok())
    {
        if c.served == plain {
            return Ok((c.chosen, c.considered));
        }
    }
    let mut considered = Vec::new();
    let mut newer: Option<Kernel> = None;
    for (k, plain_k) in list.iter().rev() {
        progress(&format!(
            "is {} ({}) downloadable?",
            plain_k.release, plain_k.debian_version
        ));
        if !downloadable(&apt, k)? {
            continue;
        }
        if let Some(to) = newer.take() {
            let pair = Pair {
                from: plain_k.clone(),
                to,
            };
            let c_files = count(&pair, progress)?;
            considered.push(Considered {
                pair: pair.clone(),
                c_files,
            });
            if c_files >= MIN_C_FILES {
                let choice = Choice {
                    served: plain,
                    considered: considered.clone(),
                    chosen: pair.clone(),
                };
                std::fs::create_dir_all(corpus_root)
                    .map_err(|e| LabError::io(format!("creating {}", corpus_root.display()), e))?;
                let json = serde_json::to_vec_pretty(&choice).expect("serializes");
                write_atomic(&cache, &json)?;
                return Ok((pair, considered));
            }
        }
        newer = Some(plain_k.clone());
    }
    Err(LabError::invalid(
        format!(
            "no two consecutive downloadable {series} kernels differ in {MIN_C_FILES} or more kernel .c files (looked at {})",
            considered
                .iter()
                .map(|c| format!("{}: {}", c.pair.dir_name(), c.c_files))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        "pass --from and --to",
    ))
}

/// The lab of `k`, set up when it is not yet (download and unpack, never
/// install).
pub fn lab_of(root: &Path, k: &Kernel, progress: &mut dyn FnMut(&str)) -> Result<Lab, LabError> {
    if let Ok(lab) = Lab::open_release(root, &k.release) {
        if lab.debian_version == k.debian_version {
            return Ok(lab);
        }
    }
    progress(&format!(
        "setting up {} ({}) in the lab…",
        k.release, k.debian_version
    ));
    let lab = Lab::setup_release(root, &k.release, progress)?;
    if lab.debian_version != k.debian_version {
        return Err(LabError::invalid(
            format!(
                "the lab set up {} at Debian {}, not {}",
                k.release, lab.debian_version, k.debian_version
            ),
            "apt serves another version of that kernel now; run `apt-get update` and choose again",
        ));
    }
    Ok(lab)
}
