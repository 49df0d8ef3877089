//! Which compiler a kernel was built with, and whether the one on this
//! machine is the same.
//!
//! kbuild records `$(CC) --version | head -1` in `CONFIG_CC_VERSION_TEXT`:
//! `gcc-12 (Debian 12.2.0-14+deb12u1) 12.2.0`. The first word is the name
//! the compiler was run by, which says nothing about the compiler: Debian's
//! `/usr/bin/gcc` is a link to `gcc-12`, so a tree prepared with `CC=gcc`
//! records `gcc (Debian 12.2.0-14+deb12u1) 12.2.0` for the same binary.
//! Two texts name the same compiler when they agree after the program name
//! (the distribution's build and the version) and are of one family: the
//! text after the name is what the binary says of itself, so two binaries
//! that print the same one are one build of one compiler.

/// The program name of a version text: `gcc-12 (Debian …) 12.2.0` → `gcc-12`.
pub fn program(text: &str) -> Option<&str> {
    let first = text.split_whitespace().next()?;
    let ok = !first.is_empty()
        && first
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.+/".contains(&b));
    ok.then_some(first)
}

/// The version text after the program name: `(Debian 12.2.0-14+deb12u1) 12.2.0`.
pub fn build_text(text: &str) -> &str {
    let t = text.trim();
    match program(t) {
        Some(p) => t[p.len()..].trim(),
        None => t,
    }
}

/// The compiler family, from a version text: `gcc` or `clang`.
pub fn family(text: &str) -> Option<&'static str> {
    let p = program(text)?;
    let base = p.rsplit('/').next().unwrap_or(p);
    if base.starts_with("gcc") || base.contains("-gcc") {
        Some("gcc")
    } else if base.starts_with("clang") || text.contains("clang version") {
        Some("clang")
    } else {
        None
    }
}

/// Whether two version texts name the same compiler (see the module text).
pub fn same(a: &str, b: &str) -> bool {
    let (a, b) = (a.trim(), b.trim());
    if a == b {
        return true;
    }
    let rest = build_text(a);
    !rest.is_empty() && rest == build_text(b) && family(a).is_some() && family(a) == family(b)
}

/// The first line `cc --version` prints, if `cc` runs.
pub fn version_text(cc: &str) -> Option<String> {
    version_text_in(None, cc)
}

/// [`version_text`] of `cc` inside a build root (`None`: the host).
pub fn version_text_in(root: Option<&std::path::Path>, cc: &str) -> Option<String> {
    let out = crate::buildroot::command(root, cc, &[], None)
        .arg("--version")
        .env("LC_ALL", "C")
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let line = String::from_utf8_lossy(&out.stdout)
        .lines()
        .next()
        .unwrap_or("")
        .trim()
        .to_owned();
    (!line.is_empty()).then_some(line)
}

/// The program to run for a kernel built with `want` (its
/// `CONFIG_CC_VERSION_TEXT`): its own name when that runs and is the same
/// compiler, else the family's plain name (`gcc`) when that is the same
/// compiler. `None` when neither is installed.
pub fn choose(want: &str) -> Option<String> {
    choose_in(None, want)
}

/// [`choose`] inside a build root (`None`: the host).
pub fn choose_in(root: Option<&std::path::Path>, want: &str) -> Option<String> {
    let named = program(want)?;
    let fam = family(want);
    let mut candidates = vec![named.to_string()];
    if let Some(f) = fam {
        if f != named {
            candidates.push(f.to_string());
        }
    }
    candidates
        .into_iter()
        .find(|cc| version_text_in(root, cc).is_some_and(|have| same(want, &have)))
}

/// What to install or pass to get the compiler `want` names, for hints:
/// `apt-get install gcc-12` (Debian names the package after the program),
/// or prepare the tree with `CC=gcc-12`.
pub fn hint(want: &str) -> String {
    let Some(p) = program(want) else {
        return "prepare the tree with the compiler the target kernel names".into();
    };
    let package = package_for(want).unwrap_or_else(|| p.to_string());
    format!(
        "install it (Debian: `apt-get install {package}`) and prepare the tree with it: `make CC={p} olddefconfig prepare`"
    )
}

/// The Debian package of a compiler: `gcc-12 (…) 12.2.0` and `gcc (…) 12.2.0` → `gcc-12`.
pub fn package_for(want: &str) -> Option<String> {
    let p = program(want)?;
    let fam = family(want)?;
    if p.starts_with(&format!("{fam}-")) && p[fam.len() + 1..].bytes().all(|b| b.is_ascii_digit()) {
        return Some(p.to_string());
    }
    // The version is the last word for gcc (`12.2.0`), after "version" for clang.
    let version = want
        .split_whitespace()
        .skip_while(|w| fam == "clang" && *w != "version")
        .find(|w| w.chars().next().is_some_and(|c| c.is_ascii_digit()))
        .or_else(|| want.split_whitespace().last())?;
    let major = version.split('.').next()?;
    major
        .bytes()
        .all(|b| b.is_ascii_digit())
        .then(|| format!("{fam}-{major}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEB: &str = "gcc-12 (Debian 12.2.0-14+deb12u1) 12.2.0";
    const PLAIN: &str = "gcc (Debian 12.2.0-14+deb12u1) 12.2.0";

    #[test]
    fn names_and_builds() {
        assert_eq!(program(DEB), Some("gcc-12"));
        assert_eq!(build_text(DEB), "(Debian 12.2.0-14+deb12u1) 12.2.0");
        assert_eq!(family(DEB), Some("gcc"));
        assert_eq!(family("Debian clang version 14.0.6"), Some("clang"));
        assert_eq!(program(""), None);
    }

    #[test]
    fn same_compiler_by_another_name() {
        assert!(same(DEB, PLAIN));
        assert!(same(DEB, DEB));
        // Another build of the same version is another compiler.
        assert!(!same(DEB, "gcc-12 (Debian 12.2.0-14) 12.2.0"));
        assert!(!same(DEB, "gcc (Debian 13.2.0-1) 13.2.0"));
        assert!(!same(DEB, ""));
    }

    #[test]
    fn packages_and_hints() {
        assert_eq!(package_for(DEB).as_deref(), Some("gcc-12"));
        assert_eq!(package_for(PLAIN).as_deref(), Some("gcc-12"));
        assert_eq!(
            package_for("Debian clang version 14.0.6").as_deref(),
            Some("clang-14")
        );
        let h = hint(DEB);
        assert!(
            h.contains("apt-get install gcc-12") && h.contains("CC=gcc-12"),
            "{h}"
        );
    }
}
