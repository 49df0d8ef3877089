//! A patched function that calls an export of a symbol namespace
//! (`dma_buf_get`, `EXPORT_SYMBOL_NS_GPL(…, DMA_BUF)` in vmlinux) builds:
//! the module imports the namespace, as modpost and the module loader
//! require of any module using it.

mod common;

use common::*;

#[test]
fn namespaced_exports_are_imported() {
    let lab = lab();
    let out = tempfile::tempdir().unwrap();
    let (ko, s) = build_ok(&lab, "namespaced-export.patch", "ns", out.path());
    assert_eq!(
        s["files"][0]["changed"],
        serde_json::json!(["drm_gem_prime_fd_to_handle"]),
        "{s}"
    );
    let m = graft_elf::Object::read(&ko).unwrap();
    let modinfo = m
        .section_by_name(".modinfo")
        .map(|s| String::from_utf8_lossy(&s.data).into_owned())
        .unwrap_or_default();
    assert!(
        modinfo.split('\0').any(|e| e == "import_ns=DMA_BUF"),
        "no import_ns=DMA_BUF in {modinfo:?}"
    );
}
