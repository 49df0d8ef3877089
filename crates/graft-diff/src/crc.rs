//! Export CRCs (`CONFIG_MODVERSIONS`) of both builds of an object, as
//! kbuild recorded them (graft-kbuild's `record`). A CRC that changes means
//! the export's type changed, and every module built against the old one
//! would misuse it.

use std::collections::BTreeMap;

/// CRCs of the exports of both builds of one object.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Crcs {
    pub orig: BTreeMap<String, u32>,
    pub patched: BTreeMap<String, u32>,
}
