//! What Cargo and rustc leave behind about a build, read back: dep-info
//! files (`.d`), build-script `output` files and `Cargo.lock` entries.
//! Also how Rust tests are named and what their environment is.
//!
//! Rust tests are selected per test binary: every test of a binary depends
//! on every input of the binary (its sources as the compiler read them,
//! the sources of the workspace libraries it links, their build scripts'
//! declared inputs, the manifests, the `Cargo.lock` entries of the outside
//! packages it links, the toolchain). See ARCHITECTURE.md for why not per
//! test.
//!
//! Pure: the caller reads the files.

use crate::index::ContentHash;
use crate::pyenv::{EnvChange, Snapshot};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Test ids of Rust tests: `cargo:<binary id> <test name>`, the binary id
/// and test name as cargo-nextest prints them.
pub const TEST_PREFIX: &str = "cargo:";

/// `Snapshot::implementation` of a Cargo environment (the toolchain).
const KIND: &str = "cargo";

pub fn is_cargo(id: &str) -> bool {
    id.starts_with(TEST_PREFIX)
}

/// The binary id of a Rust test id (or of a binary's marker).
pub fn binary_of(id: &str) -> Option<&str> {
    let rest = id.strip_prefix(TEST_PREFIX)?;
    Some(rest.split_once(' ').map_or(rest, |(binary, _)| binary))
}

/// A test binary without tests is remembered by a record of its own,
/// `cargo:<binary id>` (no test name), so that it is not taken for a
/// binary never built; markers are never shown as tests.
pub fn marker_id(binary: &str) -> String {
    format!("{TEST_PREFIX}{binary}")
}

pub fn is_marker(id: &str) -> bool {
    id.strip_prefix(TEST_PREFIX)
        .is_some_and(|rest| !rest.contains(' '))
}

/// The environment of Rust tests: the toolchain (and build-wide flags).
pub fn snapshot(toolchain: &str) -> Snapshot {
    Snapshot {
        python: KIND.to_owned(),
        version: toolchain.to_owned(),
        implementation: KIND.to_owned(),
        ..Snapshot::default()
    }
}

pub fn is_cargo_env(env: &Snapshot) -> bool {
    env.implementation == KIND
}

/// How the toolchain changed since `old` was recorded: any difference
/// affects every Rust test (everything is rebuilt).
pub fn toolchain_change(old: &Snapshot, now: Option<&Snapshot>) -> Option<EnvChange> {
    let Some(now) = now else {
        return Some(EnvChange::Everything(
            "toolchain: not known to this request".into(),
        ));
    };
    if old.version == now.version {
        return None;
    }
    let release = |s: &str| {
        s.lines()
            .find_map(|l| l.strip_prefix("release: "))
            .unwrap_or("?")
            .to_owned()
    };
    let (a, b) = (release(&old.version), release(&now.version));
    Some(EnvChange::Everything(if a == b {
        format!("toolchain: rustc {a}, its flags or host changed")
    } else {
        format!("toolchain: rustc {a} → {b}")
    }))
}

/// `a/b/../c` → `a/c`, without touching the disk (dep-info paths are as
/// the compiler met them: `src/../README.md`).
pub fn normalize(path: &Path) -> PathBuf {
    use std::path::Component;
    let mut out = PathBuf::new();
    for part in path.components() {
        match part {
            Component::ParentDir => {
                if !out.pop() {
                    out.push("..");
                }
            }
            Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

/// What one compilation read.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct DepInfo {
    /// Files, absolute (relative ones joined to the workspace root).
    pub files: Vec<PathBuf>,
    /// Environment variables read by `env!`/`option_env!` and the value
    /// the compiler saw (`None`: unset).
    pub env: Vec<(String, Option<String>)>,
}

/// Parses a Makefile-style dep-info file as rustc writes it:
/// `target: dep dep` rules (spaces in paths escaped as `\ `), then one
/// empty rule per dependency, then `# env-dep:NAME=value` comments.
pub fn parse_dep_info(text: &str, base: &Path) -> DepInfo {
    let mut out = DepInfo::default();
    let mut seen = std::collections::BTreeSet::new();
    for line in text.lines() {
        if let Some(env) = line.strip_prefix("# env-dep:") {
            let (name, value) = match env.split_once('=') {
                Some((n, v)) => (n, Some(unescape_env(v))),
                None => (env, None),
            };
            out.env.push((name.to_owned(), value));
            continue;
        }
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let Some(deps) = rule_deps(line) else {
            continue;
        };
        for word in split_words(deps) {
            let path = base.join(&word);
            if seen.insert(path.clone()) {
                out.files.push(path);
            }
        }
    }
    out
}

/// The dependency list of a rule line (after the target's `:`).
fn rule_deps(line: &str) -> Option<&str> {
    // The target is a path whose spaces are escaped: the first `: ` (or a
    // trailing `:`) not preceded by a backslash ends it.
    let bytes = line.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' => i += 2,
            b':' if i + 1 == bytes.len() => return Some(""),
            b':' if bytes[i + 1] == b' ' => return Some(&line[i + 2..]),
            _ => i += 1,
        }
    }
    None
}

fn split_words(deps: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut chars = deps.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some(n) => word.push(n),
                None => word.push('\\'),
            },
            ' ' => {
                if !word.is_empty() {
                    words.push(std::mem::take(&mut word));
                }
            }
            c => word.push(c),
        }
    }
    if !word.is_empty() {
        words.push(word);
    }
    words
}

/// rustc escapes `\n` and `\r` in env-dep values (and `\\`).
fn unescape_env(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    let mut chars = value.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('n') => out.push('\n'),
            Some('r') => out.push('\r'),
            Some(other) => out.push(other),
            None => out.push('\\'),
        }
    }
    out
}

/// Whether an `env!` variable is one Cargo sets from the manifest or the
/// build layout (judged through the manifest and the build instead).
pub fn set_by_cargo(name: &str) -> bool {
    name == "OUT_DIR" || name.starts_with("CARGO_") || name == "RUSTC" || name == "RUSTDOC"
}

/// What a build script told Cargo it depends on.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct BuildScript {
    /// `rerun-if-changed` paths as written (relative to the package).
    pub rerun_if_changed: Vec<String>,
    pub rerun_if_env_changed: Vec<String>,
}

/// Parses a build script's `output` file (both the `cargo:` and the
/// `cargo::` syntax).
pub fn parse_build_output(text: &str) -> BuildScript {
    let mut out = BuildScript::default();
    for line in text.lines() {
        let Some(rest) = line
            .strip_prefix("cargo::")
            .or_else(|| line.strip_prefix("cargo:"))
        else {
            continue;
        };
        if let Some(path) = rest.strip_prefix("rerun-if-changed=") {
            out.rerun_if_changed.push(path.to_owned());
        } else if let Some(name) = rest.strip_prefix("rerun-if-env-changed=") {
            out.rerun_if_env_changed.push(name.to_owned());
        }
    }
    out
}

/// Per package name, a digest of its entries in `Cargo.lock` (version,
/// source, checksum, dependencies; several versions hash together).
/// `None`: the file does not parse (every lock dependency is then stale).
pub fn lock_entries(text: &str) -> Option<BTreeMap<String, ContentHash>> {
    let doc: toml::Table = text.parse().ok()?;
    let packages = match doc.get("package") {
        Some(toml::Value::Array(p)) => p.as_slice(),
        None => &[],
        Some(_) => return None,
    };
    let mut texts: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for package in packages {
        let table = package.as_table()?;
        let name = table.get("name")?.as_str()?;
        texts
            .entry(name.to_owned())
            .or_default()
            .push(toml::to_string(table).ok()?);
    }
    Some(
        texts
            .into_iter()
            .map(|(name, mut entries)| {
                entries.sort();
                (name, ContentHash::of(entries.join("\n").as_bytes()))
            })
            .collect(),
    )
}

/// The hash an environment variable's value is recorded as.
pub fn env_hash(value: Option<&str>) -> Option<ContentHash> {
    value.map(|v| ContentHash::of(v.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dep_info_files_and_env() {
        let text = "/ws/target/debug/deps/core-1.d: core/src/lib.rs /ws/target/out/limit.rs core/src/my\\ data.txt\n\
                    \n\
                    core/src/lib.rs:\n\
                    /ws/target/out/limit.rs:\n\
                    core/src/my\\ data.txt:\n\
                    \n\
                    # env-dep:OUT_DIR=/ws/target/out\n\
                    # env-dep:GREETING=a\\nb\n\
                    # env-dep:UNSET\n";
        let info = parse_dep_info(text, Path::new("/ws"));
        assert_eq!(
            info.files,
            vec![
                PathBuf::from("/ws/core/src/lib.rs"),
                PathBuf::from("/ws/target/out/limit.rs"),
                PathBuf::from("/ws/core/src/my data.txt"),
            ]
        );
        assert_eq!(
            info.env,
            vec![
                ("OUT_DIR".into(), Some("/ws/target/out".into())),
                ("GREETING".into(), Some("a\nb".into())),
                ("UNSET".into(), None),
            ]
        );
    }

    #[test]
    fn paths_are_normalized() {
        assert_eq!(
            normalize(Path::new("/ws/core/src/../../README.md")),
            PathBuf::from("/ws/README.md")
        );
        assert_eq!(normalize(Path::new("/ws/./a/b")), PathBuf::from("/ws/a/b"));
    }

    #[test]
    fn build_script_output_both_syntaxes() {
        let text = "cargo:rerun-if-changed=limits.txt\ncargo::rerun-if-changed=data/\n\
                    cargo:rustc-cfg=x\ncargo::rerun-if-env-changed=CORE_FACTOR\nnoise\n";
        let out = parse_build_output(text);
        assert_eq!(out.rerun_if_changed, vec!["limits.txt", "data/"]);
        assert_eq!(out.rerun_if_env_changed, vec!["CORE_FACTOR"]);
    }

    #[test]
    fn lock_entries_change_only_for_the_bumped_package() {
        let lock = |itoa: &str| {
            format!(
                "version = 4\n\n[[package]]\nname = \"app\"\nversion = \"0.1.0\"\ndependencies = [\"itoa\"]\n\n\
                 [[package]]\nname = \"itoa\"\nversion = \"{itoa}\"\nsource = \"registry+x\"\n\n\
                 [[package]]\nname = \"ryu\"\nversion = \"1.0.0\"\nsource = \"registry+x\"\n"
            )
        };
        let a = lock_entries(&lock("1.0.10")).unwrap();
        let b = lock_entries(&lock("1.0.11")).unwrap();
        assert_ne!(a["itoa"], b["itoa"]);
        assert_eq!(a["ryu"], b["ryu"]);
        assert_eq!(a["app"], b["app"]);
        assert!(lock_entries("[[package]\n").is_none());
    }

    #[test]
    fn ids_and_toolchains() {
        assert_eq!(
            binary_of("cargo:core::integration limit"),
            Some("core::integration")
        );
        assert_eq!(binary_of("tests/test_a.py::test_b"), None);
        assert_eq!(binary_of(&marker_id("app::bin/app")), Some("app::bin/app"));
        assert!(is_marker(&marker_id("app::bin/app")));
        assert!(!is_marker("cargo:core tests::adds"));
        let old = snapshot("rustc 1.95.0\nrelease: 1.95.0\n");
        assert!(toolchain_change(&old, Some(&old.clone())).is_none());
        let new = snapshot("rustc 1.96.0\nrelease: 1.96.0\n");
        match toolchain_change(&old, Some(&new)) {
            Some(EnvChange::Everything(why)) => assert_eq!(why, "toolchain: rustc 1.95.0 → 1.96.0"),
            other => panic!("{other:?}"),
        }
    }
}
