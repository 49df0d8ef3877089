//! After kbuild links the module: every relocation against a `.klp.sym.*`
//! symbol moves into a `.klp.rela.<object>.<section>` section that livepatch
//! applies itself, and those symbols get `SHN_LIVEPATCH`, so that the module
//! loader leaves them alone (see the kernel's module-elf-format.rst).

use std::collections::HashMap;

use crate::KlpError;

/// Converts the linked module in `ko`; returns the new bytes and how many
/// relocations became klp relocations.
/// `objects` names the klp object of each carried section whose code is a
/// module's: a reference from there to another module's symbol (an export
/// of a module the patched one depends on) is applied with that module's
/// relocations, so it goes in a `.klp.rela.<patched module>.*` section.
pub fn convert(
    ko: &[u8],
    label: &str,
    objects: &HashMap<String, String>,
) -> Result<(Vec<u8>, usize), KlpError> {
    graft_elf::klp::convert_module(
        ko,
        label,
        &|section: &str| objects.get(section).cloned(),
        &|object: &str| objects.values().any(|o| o == object),
    )
    .map_err(|e| KlpError::PostLink {
        path: label.to_owned(),
        what: e.to_string(),
    })
}

/// The modules (klp objects other than vmlinux) that a converted module has
/// klp relocations for, sorted: the ones livepatch writes into the patch
/// each time that module loads.
pub fn module_objects(ko: &[u8]) -> Vec<String> {
    graft_elf::klp::relocated_objects(ko)
}
