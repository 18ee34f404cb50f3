//! The Python environment a run used, read from disk by the daemon itself:
//! the interpreter the plugin reported, and the distributions installed in
//! its site directories (`*.dist-info`, `*.egg-info`).
//!
//! Because the daemon can list those directories without starting Python,
//! `tim affected` notices an installed, upgraded or removed package at once.
//! For each distribution it keeps the top-level modules it provides (from
//! `top_level.txt`, else `RECORD`), what it requires (`Requires-Dist`), and
//! whether it is a pytest plugin: enough to say which tests can observe a
//! change.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Dist {
    pub version: String,
    /// Importable top-level names; empty when unknown.
    pub top_level: Vec<String>,
    /// Normalized names of the distributions it requires.
    pub requires: Vec<String>,
    /// Provides a `pytest11` entry point, or is pytest itself.
    pub affects_all: bool,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    pub python: String,
    pub version: String,
    pub implementation: String,
    pub site_dirs: Vec<String>,
    pub root_paths: Vec<String>,
    /// Normalized name → distribution.
    pub dists: BTreeMap<String, Dist>,
    /// How pytest found tests in the run (`python_files` globs and
    /// `testpaths`): not part of the environment's identity, kept here
    /// because it comes with it.
    pub python_files: Vec<String>,
    pub testpaths: Vec<String>,
}

/// PEP 503 normalization: lowercase, runs of `-_.` become `-`.
pub fn normalize(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut dash = false;
    for c in name.chars() {
        if matches!(c, '-' | '_' | '.') {
            dash = true;
        } else {
            if dash && !out.is_empty() {
                out.push('-');
            }
            dash = false;
            out.extend(c.to_lowercase());
        }
    }
    out
}

/// Lists the distributions installed in `site_dirs`. Unreadable directories
/// contribute nothing (a vanished virtualenv then looks like an environment
/// where everything was uninstalled, which affects every test).
pub fn scan(site_dirs: &[String]) -> BTreeMap<String, Dist> {
    scan_cached(site_dirs, &mut HashMap::new())
}

/// [`scan`], reading the metadata of each `*.dist-info` directory only the
/// first time it is seen: a directory's name carries the version, so a
/// changed distribution is a new directory. Only listing the site
/// directories is left for every query.
pub fn scan_cached(
    site_dirs: &[String],
    cache: &mut HashMap<std::path::PathBuf, Dist>,
) -> BTreeMap<String, Dist> {
    let mut dists = BTreeMap::new();
    for dir in site_dirs {
        let Ok(entries) = std::fs::read_dir(dir) else {
            continue;
        };
        let mut names: Vec<String> = entries
            .flatten()
            .filter_map(|e| e.file_name().to_str().map(str::to_owned))
            .filter(|n| n.ends_with(".dist-info") || n.ends_with(".egg-info"))
            .collect();
        names.sort();
        for name in names {
            let stem = name
                .trim_end_matches(".dist-info")
                .trim_end_matches(".egg-info");
            let (dist, version) = match stem.split_once('-') {
                Some((d, rest)) => (d, rest.split('-').next().unwrap_or("")),
                None => (stem, ""),
            };
            let key = normalize(dist);
            if dists.contains_key(&key) {
                // The first site directory on sys.path wins, as for imports.
                continue;
            }
            let info = Path::new(dir).join(&name);
            let dist = cache
                .entry(info.clone())
                .or_insert_with(|| read_dist(&info, &key, version))
                .clone();
            dists.insert(key, dist);
        }
    }
    dists
}

fn read_dist(info: &Path, key: &str, version: &str) -> Dist {
    let read = |file: &str| std::fs::read_to_string(info.join(file)).unwrap_or_default();
    let mut top_level: BTreeSet<String> = read("top_level.txt")
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(|l| l.replace('/', "."))
        .filter_map(|l| l.split('.').next().map(str::to_owned))
        .collect();
    if top_level.is_empty() {
        for line in read("RECORD").lines() {
            let path = line.split(',').next().unwrap_or("");
            let first = path.split('/').next().unwrap_or("");
            if first.is_empty()
                || first.ends_with(".dist-info")
                || first.ends_with(".data")
                || first.starts_with("..")
                || first == "__pycache__"
            {
                continue;
            }
            if let Some(module) = first.strip_suffix(".py") {
                top_level.insert(module.to_owned());
            } else if let Some(module) = first.split('.').next()
                && path.contains('/')
            {
                top_level.insert(module.to_owned());
            } else if (first.ends_with(".so") || first.ends_with(".pyd"))
                && let Some(module) = first.split('.').next()
            {
                top_level.insert(module.to_owned());
            }
        }
    }
    let metadata = {
        let m = read("METADATA");
        if m.is_empty() { read("PKG-INFO") } else { m }
    };
    let requires: Vec<String> = metadata
        .lines()
        .filter_map(|l| l.strip_prefix("Requires-Dist:"))
        .filter_map(|spec| {
            let spec = spec.trim();
            let end = spec
                .find(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
                .unwrap_or(spec.len());
            let name = normalize(&spec[..end]);
            (!name.is_empty()).then_some(name)
        })
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let entry_points = read("entry_points.txt");
    let affects_all = key == "pytest"
        || key == "pluggy"
        || entry_points.lines().any(|l| l.trim() == "[pytest11]");
    Dist {
        version: version.to_owned(),
        top_level: top_level.into_iter().collect(),
        requires,
        affects_all,
    }
}

/// How the environment differs between a recorded snapshot and now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EnvChange {
    /// Every test is affected; the reason says why.
    Everything(String),
    /// Tests importing one of these top-level modules are affected; the
    /// strings describe the changes (`requests 2.31.0→2.32.0`).
    Modules {
        modules: BTreeSet<String>,
        changes: Vec<String>,
    },
}

/// Compares a recorded environment with the current one (`None` when the
/// same).
pub fn diff(old: &Snapshot, new: &Snapshot) -> Option<EnvChange> {
    if old.python != new.python || old.version != new.version {
        return Some(EnvChange::Everything(format!(
            "environment: python {} ({}) → {} ({})",
            old.version, old.python, new.version, new.python
        )));
    }
    let mut changed: BTreeSet<String> = BTreeSet::new();
    let mut changes = Vec::new();
    for (name, dist) in &old.dists {
        match new.dists.get(name) {
            None => {
                changes.push(format!("{name} {} removed", dist.version));
                changed.insert(name.clone());
            }
            Some(now) if now.version != dist.version => {
                changes.push(format!("{name} {}→{}", dist.version, now.version));
                changed.insert(name.clone());
            }
            Some(_) => {}
        }
    }
    for (name, dist) in &new.dists {
        if !old.dists.contains_key(name) {
            changes.push(format!("{name} {} installed", dist.version));
            changed.insert(name.clone());
        }
    }
    if changed.is_empty() {
        return None;
    }
    let summary = format!("environment: {}", changes.join(", "));
    // A change reaches every distribution that requires a changed one.
    let mut reached = changed.clone();
    loop {
        let before = reached.len();
        for (name, dist) in old.dists.iter().chain(new.dists.iter()) {
            if !reached.contains(name) && dist.requires.iter().any(|r| reached.contains(r)) {
                reached.insert(name.clone());
            }
        }
        if reached.len() == before {
            break;
        }
    }
    let mut modules = BTreeSet::new();
    for name in &reached {
        for dist in [old.dists.get(name), new.dists.get(name)]
            .into_iter()
            .flatten()
        {
            if dist.affects_all {
                return Some(EnvChange::Everything(format!(
                    "{summary} (a pytest plugin)"
                )));
            }
            if dist.top_level.is_empty() && changed.contains(name) {
                return Some(EnvChange::Everything(format!(
                    "{summary} (what {name} provides is unknown)"
                )));
            }
            modules.extend(dist.top_level.iter().cloned());
        }
    }
    Some(EnvChange::Modules {
        modules,
        changes: vec![summary],
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn dist_info(site: &Path, name: &str, version: &str, files: &[(&str, &str)]) {
        let dir = site.join(format!("{name}-{version}.dist-info"));
        fs::create_dir_all(&dir).unwrap();
        for (file, text) in files {
            fs::write(dir.join(file), text).unwrap();
        }
    }

    #[test]
    fn names_normalize() {
        assert_eq!(normalize("Foo_Bar.baz"), "foo-bar-baz");
        assert_eq!(normalize("pytest-xdist"), "pytest-xdist");
    }

    #[test]
    fn scanning_reads_what_dists_provide_and_require() {
        let dir = tempfile::tempdir().unwrap();
        let site = dir.path();
        dist_info(
            site,
            "requests",
            "2.31.0",
            &[
                (
                    "METADATA",
                    "Name: requests\nRequires-Dist: urllib3 (<3,>=1.21.1)\nRequires-Dist: idna<4,>=2.5\nRequires-Dist: PySocks!=1.5.7; extra == \"socks\"\n",
                ),
                ("top_level.txt", "requests\n"),
            ],
        );
        dist_info(
            site,
            "urllib3",
            "2.0.0",
            &[(
                "RECORD",
                "urllib3/__init__.py,sha256=x,1\nurllib3-2.0.0.dist-info/METADATA,,\n",
            )],
        );
        dist_info(
            site,
            "six",
            "1.16.0",
            &[(
                "RECORD",
                "six.py,sha256=x,1\n__pycache__/six.cpython-311.pyc,,\n",
            )],
        );
        dist_info(
            site,
            "pytest_xdist",
            "3.8.0",
            &[
                (
                    "entry_points.txt",
                    "[pytest11]\nxdist.plugin = xdist.plugin\n",
                ),
                ("top_level.txt", "xdist\n"),
            ],
        );
        let dists = scan(&[site.display().to_string()]);
        assert_eq!(dists["requests"].requires, ["idna", "pysocks", "urllib3"]);
        assert_eq!(dists["requests"].top_level, ["requests"]);
        assert_eq!(dists["urllib3"].top_level, ["urllib3"]);
        assert_eq!(dists["six"].top_level, ["six"]);
        assert!(dists["pytest-xdist"].affects_all);
        assert_eq!(dists["six"].version, "1.16.0");
    }

    fn snapshot(dists: &[(&str, &str, &[&str], &[&str])]) -> Snapshot {
        Snapshot {
            python: "/venv/bin/python".into(),
            version: "3.11.7".into(),
            dists: dists
                .iter()
                .map(|(n, v, top, req)| {
                    (
                        n.to_string(),
                        Dist {
                            version: v.to_string(),
                            top_level: top.iter().map(|s| s.to_string()).collect(),
                            requires: req.iter().map(|s| s.to_string()).collect(),
                            affects_all: *n == "pytest",
                        },
                    )
                })
                .collect(),
            ..Snapshot::default()
        }
    }

    #[test]
    fn changes_reach_the_modules_that_can_observe_them() {
        let base = snapshot(&[
            ("requests", "2.31.0", &["requests"], &["urllib3"]),
            ("urllib3", "2.0.0", &["urllib3"], &[]),
            ("attrs", "23.1.0", &["attr", "attrs"], &[]),
            ("pytest", "8.0.0", &["pytest", "_pytest"], &[]),
        ]);
        assert_eq!(diff(&base, &base), None);

        let upgraded = snapshot(&[
            ("requests", "2.31.0", &["requests"], &["urllib3"]),
            ("urllib3", "2.1.0", &["urllib3"], &[]),
            ("attrs", "23.1.0", &["attr", "attrs"], &[]),
            ("pytest", "8.0.0", &["pytest", "_pytest"], &[]),
        ]);
        let Some(EnvChange::Modules { modules, changes }) = diff(&base, &upgraded) else {
            panic!("expected a module change");
        };
        assert_eq!(
            modules.into_iter().collect::<Vec<_>>(),
            ["requests", "urllib3"]
        );
        assert_eq!(changes, ["environment: urllib3 2.0.0→2.1.0"]);

        let mut new_pytest = base.clone();
        new_pytest.dists.get_mut("pytest").unwrap().version = "8.1.0".into();
        assert!(matches!(
            diff(&base, &new_pytest),
            Some(EnvChange::Everything(_))
        ));

        let mut other_python = base.clone();
        other_python.version = "3.13.1".into();
        let Some(EnvChange::Everything(why)) = diff(&base, &other_python) else {
            panic!()
        };
        assert!(why.contains("3.11.7") && why.contains("3.13.1"), "{why}");

        let mut installed = base.clone();
        installed.dists.insert(
            "mystery".into(),
            Dist {
                version: "1.0".into(),
                ..Dist::default()
            },
        );
        assert!(matches!(
            diff(&base, &installed),
            Some(EnvChange::Everything(_))
        ));
    }
}
