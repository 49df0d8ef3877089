//! The target's kernel image, decompressed once and kept in graft's cache:
//! unpacking Debian's xz `vmlinuz` costs about as much CPU as compiling the
//! changed file, on every build.

use std::fs;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use graft_target::KernelImage;

use crate::BuildError;

/// How many decompressed images are kept (one per kernel built for).
const KEEP: usize = 4;

/// Reads the image at `path`, through the decompressed copy kept under
/// `cache` for this file (its path, size and mtime).
pub fn read(path: &Path, cache: &Path) -> Result<KernelImage, BuildError> {
    let mut magic = [0u8; 4];
    let plain = fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut magic))
        .is_ok_and(|()| &magic == b"\x7fELF");
    let Ok(meta) = fs::metadata(path) else {
        return Ok(KernelImage::read(path)?); // names the missing file
    };
    if plain {
        return Ok(KernelImage::read(path)?);
    }
    let id = format!(
        "{}\n{}\n{}.{}\n",
        path.canonicalize()
            .unwrap_or_else(|_| path.to_owned())
            .display(),
        meta.len(),
        meta.mtime(),
        meta.mtime_nsec()
    );
    let dir = cache.join("images");
    let kept = dir.join(format!("{:016x}.elf", fnv(id.as_bytes())));
    if let Ok(elf) = fs::read(&kept) {
        if let Ok(image) = KernelImage::parse(path, elf) {
            let _ =
                fs::File::open(&kept).and_then(|f| f.set_modified(std::time::SystemTime::now()));
            return Ok(image);
        }
    }
    let image = KernelImage::read(path)?;
    // Kept for the next build; a failure to keep it only costs time.
    if fs::create_dir_all(&dir).is_ok() {
        let tmp = kept.with_extension("tmp");
        if fs::write(&tmp, image.elf()).is_ok() && fs::rename(&tmp, &kept).is_ok() {
            prune(&dir);
        }
    }
    Ok(image)
}

fn prune(dir: &Path) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    let mut files: Vec<(std::time::SystemTime, std::path::PathBuf)> = entries
        .flatten()
        .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
        .collect();
    files.sort_by_key(|f| std::cmp::Reverse(f.0));
    for (_, p) in files.into_iter().skip(KEEP) {
        let _ = fs::remove_file(p);
    }
}

fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}
