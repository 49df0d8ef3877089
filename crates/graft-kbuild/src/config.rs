//! Kernel configuration files (`.config`, `/boot/config-*`) and the release
//! header (`include/generated/utsrelease.h`): the one parser of each that
//! graft and its lab use.

use std::collections::BTreeMap;
use std::path::Path;

/// `KEY -> value` of a kconfig file, keys without their `CONFIG_` prefix;
/// `# CONFIG_X is not set` reads as `n`; strings keep their quotes.
pub fn parse(text: &str) -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("CONFIG_") {
            if let Some((k, v)) = rest.split_once('=') {
                m.insert(k.to_string(), v.to_string());
            }
        } else if let Some(rest) = line.strip_prefix("# CONFIG_") {
            if let Some(k) = rest.strip_suffix(" is not set") {
                m.insert(k.to_string(), "n".to_string());
            }
        }
    }
    m
}

/// Whether kbuild runs objtool on each module at its link (`--link`)
/// instead of on each object: with IBT or clang's LTO (`delay-objtool` in
/// scripts/Makefile.lib), as Debian's 6.12 kernels have.
pub fn objtool_at_link(text: &str) -> bool {
    let c = parse(text);
    ["X86_KERNEL_IBT", "LTO_CLANG"]
        .iter()
        .any(|k| c.get(*k).is_some_and(|v| v == "y"))
}

/// The value of a string option, unquoted and unescaped.
pub fn string(text: &str, key: &str) -> Option<String> {
    let v = parse(text).remove(key)?;
    let v = v.strip_prefix('"')?.strip_suffix('"')?;
    Some(v.replace("\\\"", "\"").replace("\\\\", "\\"))
}

/// Replaces (or appends) `CONFIG_<key>="value"`.
pub fn set_string(text: &str, key: &str, value: &str) -> String {
    let new_line = format!(
        "CONFIG_{key}=\"{}\"",
        value.replace('\\', "\\\\").replace('"', "\\\"")
    );
    let set = format!("CONFIG_{key}=");
    let unset = format!("# CONFIG_{key} is not set");
    let mut found = false;
    let mut out: Vec<String> = text
        .lines()
        .map(|l| {
            if l.starts_with(&set) || l == unset {
                found = true;
                new_line.clone()
            } else {
                l.to_string()
            }
        })
        .collect();
    if !found {
        out.push(new_line);
    }
    let mut s = out.join("\n");
    s.push('\n');
    s
}

/// Options whose values differ between two configs, as `KEY: a -> b`
/// (`-` for absent).
pub fn differences(a: &str, b: &str) -> Vec<String> {
    let (a, b) = (parse(a), parse(b));
    let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
    keys.sort();
    keys.dedup();
    keys.into_iter()
        .filter_map(|k| {
            let (x, y) = (a.get(k), b.get(k));
            (x != y).then(|| {
                format!(
                    "{k}: {} -> {}",
                    x.map_or("-", String::as_str),
                    y.map_or("-", String::as_str)
                )
            })
        })
        .collect()
}

/// Adds to `image` the options it lacks but `build` (the headers' `.config`,
/// the configuration Debian really built with) has. Debian strips a few
/// options from `/boot/config-*` (BUILD_SALT, MODULE_SIG_ALL,
/// MODULE_SIG_KEY, SYSTEM_TRUSTED_KEYS); `olddefconfig` would give them
/// upstream defaults (an empty BUILD_SALT, for one, which changes the code).
/// Returns the text and one entry per addition.
pub fn merge_missing(image: &str, build: &str) -> (String, Vec<String>) {
    let have = parse(image);
    let mut text = image.to_string();
    if !text.is_empty() && !text.ends_with('\n') {
        text.push('\n');
    }
    let mut added = Vec::new();
    for (k, v) in parse(build) {
        if have.contains_key(&k) {
            continue;
        }
        if v == "n" {
            text.push_str(&format!("# CONFIG_{k} is not set\n"));
        } else {
            text.push_str(&format!("CONFIG_{k}={v}\n"));
        }
        added.push(format!("{k}: - -> {v} (from the headers' .config)"));
    }
    (text, added)
}

/// Config strings that name key or certificate files, and what they are
/// reset to when the file is not in the tree. Debian's build points them at
/// files of its packaging (`debian/certs/…`) that the source package lacks,
/// and `certs/` would not build.
const CERT_KEYS: &[(&str, &str)] = &[
    ("SYSTEM_TRUSTED_KEYS", ""),
    ("SYSTEM_REVOCATION_KEYS", ""),
    ("MODULE_SIG_KEY", "certs/signing_key.pem"),
];

/// Resets key/certificate paths of `config` that do not exist relative to
/// `tree` (PKCS#11 URIs and empty values are left alone). Returns the new
/// text and one `KEY: "old" -> "new"` per change.
pub fn adjust_cert_paths(config: &str, tree: &Path) -> (String, Vec<String>) {
    let mut text = config.to_string();
    let mut changes = Vec::new();
    for (key, replacement) in CERT_KEYS {
        let Some(value) = string(&text, key) else {
            continue;
        };
        if value.is_empty() || value.starts_with("pkcs11:") || value == *replacement {
            continue;
        }
        // SYSTEM_TRUSTED_KEYS may list several files.
        let all_exist = value.split_whitespace().all(|f| tree.join(f).exists());
        if !all_exist {
            text = set_string(&text, key, replacement);
            changes.push(format!("{key}: \"{value}\" -> \"{replacement}\""));
        }
    }
    (text, changes)
}

/// `UTS_RELEASE` from `include/generated/utsrelease.h`: the release the
/// tree or headers build for, which is what a module's vermagic starts with.
pub fn uts_release(header: &str) -> Option<String> {
    let rest = header
        .lines()
        .find_map(|l| l.trim().strip_prefix("#define UTS_RELEASE"))?;
    let r = rest.trim().trim_matches('"');
    (!r.is_empty() && !r.contains(char::is_whitespace)).then(|| r.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: &str = "#\n# Automatically generated file; DO NOT EDIT.\n\
CONFIG_CC_VERSION_TEXT=\"gcc-12 (Debian 12.2.0-14+deb12u1) 12.2.0\"\n\
CONFIG_LIVEPATCH=y\n\
CONFIG_MODULE_SIG_KEY=\"certs/signing_key.pem\"\n\
CONFIG_SYSTEM_TRUSTED_KEYS=\"debian/certs/debian-uefi-certs.pem\"\n\
# CONFIG_SYSTEM_REVOCATION_LIST is not set\n\
CONFIG_HZ=250\n";

    #[test]
    fn parses() {
        let m = parse(CONFIG);
        assert_eq!(m["LIVEPATCH"], "y");
        assert_eq!(m["SYSTEM_REVOCATION_LIST"], "n");
        assert_eq!(m["HZ"], "250");
        assert_eq!(
            string(CONFIG, "SYSTEM_TRUSTED_KEYS").as_deref(),
            Some("debian/certs/debian-uefi-certs.pem")
        );
        assert_eq!(string(CONFIG, "HZ"), None);
    }

    #[test]
    fn adjusts_missing_cert_paths_only() {
        let tree = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(tree.path().join("certs")).unwrap();
        // MODULE_SIG_KEY already has the kernel default: generated on demand.
        let (text, changes) = adjust_cert_paths(CONFIG, tree.path());
        assert_eq!(
            changes,
            vec!["SYSTEM_TRUSTED_KEYS: \"debian/certs/debian-uefi-certs.pem\" -> \"\"".to_string()]
        );
        assert_eq!(string(&text, "SYSTEM_TRUSTED_KEYS").as_deref(), Some(""));
        assert_eq!(parse(&text)["LIVEPATCH"], "y");
        // An existing file is kept.
        std::fs::create_dir_all(tree.path().join("debian/certs")).unwrap();
        std::fs::write(tree.path().join("debian/certs/debian-uefi-certs.pem"), "x").unwrap();
        assert!(adjust_cert_paths(CONFIG, tree.path()).1.is_empty());
    }

    #[test]
    fn merges_stripped_options() {
        let build = format!(
            "{CONFIG}CONFIG_BUILD_SALT=\"6.1.0-56-amd64\"\n# CONFIG_FOO is not set\nCONFIG_LIVEPATCH=n\n"
        );
        let (text, added) = merge_missing(CONFIG, &build);
        assert_eq!(added.len(), 2, "{added:?}");
        let m = parse(&text);
        assert_eq!(m["BUILD_SALT"], "\"6.1.0-56-amd64\"");
        assert_eq!(m["FOO"], "n");
        // Options present in the image's config keep the image's value.
        assert_eq!(m["LIVEPATCH"], "y");
        assert_eq!(merge_missing(CONFIG, "").0, CONFIG);
    }

    #[test]
    fn set_string_appends_or_replaces() {
        let t = set_string("# CONFIG_X is not set\n", "X", "a\"b");
        assert_eq!(t, "CONFIG_X=\"a\\\"b\"\n");
        assert_eq!(string(&t, "X").as_deref(), Some("a\"b"));
        let t = set_string("CONFIG_Y=y\n", "X", "");
        assert_eq!(t, "CONFIG_Y=y\nCONFIG_X=\"\"\n");
    }

    #[test]
    fn differences_listed() {
        let b = CONFIG.replace("CONFIG_HZ=250", "CONFIG_HZ=1000") + "CONFIG_NEW=y\n";
        assert_eq!(
            differences(CONFIG, &b),
            vec!["HZ: 250 -> 1000".to_string(), "NEW: - -> y".to_string()]
        );
        assert!(differences(CONFIG, CONFIG).is_empty());
    }

    #[test]
    fn release_header() {
        assert_eq!(
            uts_release("#define UTS_RELEASE \"6.1.0-56-amd64\"\n").as_deref(),
            Some("6.1.0-56-amd64")
        );
        assert_eq!(uts_release(""), None);
        assert_eq!(uts_release("#define UTS_RELEASE \"\"\n"), None);
    }
}
