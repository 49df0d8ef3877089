//! Debian 13's own Linux 6.12 (built with gcc-14, which Debian 12 lacks: on
//! a Debian 12 host graft prepares and builds it inside a Debian 13 root it
//! makes with debootstrap): the same scenarios as for the backports kernel,
//! live with `graft load`/`graft unload` in one boot.

mod common;
mod kernel612;
mod ops;

#[test]
fn trixie_6_12_core_scenarios_live() {
    let lab = kernel612::suite_lab(graft_debian::OtherSuite::Trixie);
    kernel612::core_scenarios_live(&lab);
}
