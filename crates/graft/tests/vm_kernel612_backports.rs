//! bookworm-backports' Linux 6.12 (built with Debian 12's gcc-12): the cmdline
//! fix, a module target, a klp relocation to an unexported symbol, duplicated
//! local names (sympos), shadow variables and a cumulative replace, live with
//! `graft load`/`graft unload` in one boot, with no Oops, WARNING, "Missing
//! ENDBR" or "Unpatched return thunk".

mod common;
mod kernel612;
mod ops;

#[test]
fn backports_6_12_core_scenarios_live() {
    let lab = kernel612::suite_lab(graft_debian::OtherSuite::Backports);
    kernel612::core_scenarios_live(&lab);
}
