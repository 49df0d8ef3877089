//! graft's build pipeline as a library: a source patch and a target kernel
//! in, a livepatch module out, or a refusal naming the rule it breaks.
//!
//! [`build`] reads as the pipeline's table of contents: read the target →
//! open the private tree copy → compile the original and patched objects →
//! diff every unit → verify the originals against the target's code → plan
//! what the module carries → link the module → write it. Libraries never
//! print: progress reaches the caller as [`Event`]s.

mod buildinfo;
mod error;
mod image;
mod module;
mod report;
pub mod target;
mod units;
mod workspace;

use std::path::PathBuf;
use std::time::Instant;

pub use buildinfo::headers_release;
pub use error::{BuildError, Refusal, DOES_NOT_COMPILE, NOT_IN_BUILD, NO_CODE_CHANGE};
pub use report::{BuildReport, Event, FileReport, HeaderReport};
pub use target::{Overrides, TargetPaths};

/// Everything a build needs, validated by the caller's argument parser.
#[derive(Debug, Clone)]
pub struct Inputs {
    /// The source fix, a unified diff against the tree (-p1).
    pub patch: PathBuf,
    /// The kernel source tree, configured and prepared like the target.
    pub tree: PathBuf,
    /// The patch's name: the module is `livepatch-<name>.ko`.
    pub name: String,
    /// Where the target kernel's files are.
    pub target: TargetPaths,
    /// Where to write the module.
    pub output: PathBuf,
    /// Where graft keeps its private tree copies and work directories.
    pub cache: PathBuf,
    /// Skip run-pre verification.
    pub no_verify: bool,
    /// Stack on loaded patches instead of replacing them.
    pub no_replace: bool,
    /// Parallel compile jobs.
    pub jobs: usize,
    /// Keep the work directory (both builds' objects, the module's sources)
    /// here when the build ends, for inspection.
    pub keep_work: Option<PathBuf>,
    /// The most translation units a header change may make graft compile.
    pub max_units: usize,
    /// Compile every includer of a changed header, without first reading
    /// which ones the change can alter.
    pub compile_all_includers: bool,
}

/// [`Inputs::max_units`] unless told otherwise: a header change reaching
/// more units than this takes longer than an operator expects of a fix
/// (each unit is compiled twice).
pub const DEFAULT_MAX_UNITS: usize = 200;

/// How many includers of changed headers graft reads (preprocesses before
/// and after) to find those whose code changes, for a `max_units` compile
/// budget: reading a unit costs about a twentieth of compiling it.
pub fn read_limit(max_units: usize) -> usize {
    max_units.saturating_mul(20)
}

/// Builds the live patch `inputs` describe.
pub fn build(inputs: &Inputs, progress: &mut dyn FnMut(Event)) -> Result<BuildReport, BuildError> {
    let start = Instant::now();
    validate_name(&inputs.name)?;
    progress(Event::Step("reading inputs"));
    let sources = workspace::Sources::read(inputs)?;
    let target = target::Target::read(inputs)?;

    progress(Event::Step("syncing graft's private copy of the tree"));
    let mut ws = workspace::Workspace::open(inputs, sources)?;

    ws.find_units(progress)?;
    let first = ws.first_units();
    ws.compile_pair(&first, progress)?;
    if ws.units.len() > ws.compiled.len() {
        // A changed layout refuses the build before every includer of a
        // header is compiled (the diff reports it too, with the rest).
        units::check_layouts(&ws)?;
        if !inputs.compile_all_includers {
            ws.narrow(read_limit(inputs.max_units), progress)?;
        }
        check_unit_count(&ws, inputs.max_units)?;
    }
    let all = ws.units.clone();
    ws.compile_pair(&all, progress)?;

    let image = if inputs.no_verify {
        None
    } else {
        progress(Event::Step("reading the target kernel's image"));
        Some(image::read(&inputs.target.image, &inputs.cache)?)
    };
    progress(Event::Step("diffing and verifying"));
    let layout = layout_of(&ws.probe(graft_diff::layout::PROBE)?)?;
    let units = units::read(&ws, &target)?;
    let diffs = units::diff(&units, &target, &layout)?;
    let verified = units::verify(&units, &diffs, &target, image.as_ref())?;
    units::check_shared_state(&units, &diffs, &verified, image.is_some())?;
    let plans = units::plan(&units, &diffs, &verified, &target)?;
    units::check_sealed(&plans, &target, image.as_ref())?;

    let states: Vec<_> = diffs
        .iter()
        .flat_map(|d| d.markers.states.iter().copied())
        .collect();

    progress(Event::Step("building the module"));
    let module = module::link(inputs, &target, &ws, &plans, &states)?;
    let out = inputs.output.join(format!("livepatch-{}.ko", inputs.name));
    module::write_atomic(&out, &module.bytes)?;

    Ok(BuildReport {
        module: out,
        name: inputs.name.clone(),
        replace: !inputs.no_replace,
        files: units::file_reports(&units, &diffs),
        verified: verified.into_iter().flat_map(|v| v.functions).collect(),
        callbacks: plans.iter().flat_map(|p| p.callbacks.clone()).collect(),
        states,
        warnings: units::warnings(&units, &diffs)
            .into_iter()
            .chain(module.warnings.iter().cloned())
            .collect(),
        klp_relocations: module.klp_relocations,
        module_linked_by: module.linked_by.clone(),
        headers: ws
            .header_units
            .iter()
            .map(|(h, u)| HeaderReport {
                header: h.clone(),
                units: u.clone(),
                compiled: (ws.narrowed || ws.scanned)
                    .then(|| u.iter().filter(|u| ws.units.contains(u)).cloned().collect()),
            })
            .collect(),
        index_seconds: ws.index_seconds,
        kept_originals: ws.kept_originals.clone(),
        seconds: start.elapsed().as_secs_f64(),
    })
}

/// A header change whose includers (those whose code it can alter, when
/// graft could read them) are more than `max` is refused as a limitation,
/// naming the count and the way to lift it.
fn check_unit_count(ws: &workspace::Workspace, max: usize) -> Result<(), BuildError> {
    if ws.units.len() <= max {
        return Ok(());
    }
    let (header, users) = ws
        .header_units
        .iter()
        .max_by_key(|(_, u)| u.iter().filter(|u| ws.units.contains(u)).count())
        .expect("only header changes add units");
    let reached: Vec<&str> = users
        .iter()
        .filter(|u| ws.units.contains(u))
        .map(String::as_str)
        .collect();
    let examples = reached[..reached.len().min(3)].join(", ");
    let all = ws.units.len();
    let message = if ws.scanned && !ws.narrowed {
        format!(
            "the change to {header} is named by the sources of {} of the {} units that include it ({examples}…), more than graft reads ({}) to find those whose code it alters; graft compiles at most {max} per build [rule: too-many-units]: a live patch must carry every function whose compiled code the header change alters; hint: --max-units {} reads them all, or move the change into the .c files that need it",
            reached.len(),
            users.len(),
            read_limit(max),
            all.div_ceil(20),
        )
    } else if ws.narrowed || ws.scanned {
        format!(
            "the change to {header} can alter the code of {} of the {} units that include it ({examples}…), {all} units in all with the patch's other files; graft compiles at most {max} per build [rule: too-many-units]: a live patch must carry every function whose compiled code the header change alters; hint: --max-units {all} compiles them all (each twice), or move the change into the .c files that need it",
            reached.len(),
            users.len(),
        )
    } else {
        format!(
            "the change to {header} reaches {} units of the target's build ({examples}…), more than graft reads ({}) to find those whose code it alters; graft compiles at most {max} per build [rule: too-many-units]: a live patch must carry every function whose compiled code the header change alters; hint: --max-units {} reads them all, or move the change into the .c files that need it",
            users.len(),
            read_limit(max),
            all.div_ceil(20),
        )
    };
    Err(BuildError::Refused(vec![Refusal {
        rule: "too-many-units".into(),
        message,
    }]))
}

fn validate_name(name: &str) -> Result<(), BuildError> {
    let ok = !name.is_empty()
        && name.len() <= 40
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if !ok {
        return Err(anyhow::anyhow!(
            "invalid patch name {name:?}; hint: use up to 40 letters, digits, '-' or '_'"
        )
        .into());
    }
    Ok(())
}

/// The entry layouts of the kernel's special sections, from a probe
/// compiled against the prepared tree `tree` (only read).
pub fn probe_layout(tree: &std::path::Path) -> Result<graft_diff::Layout, BuildError> {
    layout_of(&graft_kbuild::probe::compile(
        tree,
        graft_diff::layout::PROBE,
    )?)
}

fn layout_of(bytes: &[u8]) -> Result<graft_diff::Layout, BuildError> {
    let obj = graft_elf::Object::parse(bytes, std::path::Path::new("graft-probe.o"))?;
    Ok(graft_diff::Layout::from_probe(&obj)?)
}

/// The unit index of `tree` (the units the target's build compiles, and the
/// headers each includes), made in graft's private copy of the tree under
/// `cache` and cached there: the same index `graft build` uses for header
/// changes, so a caller that asks first saves the build the work. Returns
/// the seconds spent building it, when this call built it.
pub fn unit_index(
    tree: &std::path::Path,
    cache: &std::path::Path,
) -> Result<(graft_kbuild::index::Index, Option<f64>), BuildError> {
    let tree = graft_kbuild::tree::KernelTree::open(tree)?;
    let (mirror, _) = graft_kbuild::mirror::Mirror::sync(&tree, &cache.join("build"))?;
    let (index, built) = workspace::cached_index(&mirror, &tree)?;
    let seconds = built.then_some(index.seconds);
    Ok((index, seconds))
}

/// graft's cache: `/var/cache/graft` as root, else the user's cache directory.
pub fn default_cache() -> PathBuf {
    let root = std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
        .unwrap_or(false);
    if root {
        PathBuf::from("/var/cache/graft")
    } else if let Some(x) = std::env::var_os("XDG_CACHE_HOME") {
        PathBuf::from(x).join("graft")
    } else {
        PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/tmp".into()))
            .join(".cache/graft")
    }
}
