//! Which recorded tests a change affects.
//!
//! A test's record is a set of dependencies, each with the content hash it
//! had when the test ran: Python blocks (`pkg/mod.py::Parser.parse`,
//! `pkg/mod.py::<module>`), other files read, directories listed, outside
//! modules imported. A test is affected when any dependency differs now,
//! when it failed last time, or when it has no usable record. Because
//! records hold hashes, not "dirty" flags, reverting an edit makes the test
//! unaffected again without a rerun.
//!
//! Pure: the current state of the tree comes through [`Tree`].

use crate::index::{ContentHash, RepoPath};
use crate::pyenv::EnvChange;
use crate::pyparse::ParsedModule;
use foldhash::{HashMap, HashMapExt};
use std::collections::BTreeSet;
use std::fmt;
use std::sync::Arc;

/// One dependency with what it was when recorded.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Dep {
    /// A block of a Python file. `file_hash` is the whole file's hash when
    /// recorded (an unchanged file needs no parsing); `None` means the file
    /// changed while the test ran, so what ran is unknown. `block` is a
    /// block name, or `None` for the whole file (code that could not be
    /// mapped to a block).
    Code {
        file: RepoPath,
        file_hash: Option<ContentHash>,
        block: Option<String>,
        hash: Option<ContentHash>,
    },
    /// A non-Python file read (`hash` `None`: it did not exist).
    File {
        path: RepoPath,
        hash: Option<ContentHash>,
    },
    /// pytest's configuration in a file: the `[tool.pytest...]` tables of
    /// `pyproject.toml`, or the whole of `pytest.ini`, `setup.cfg` or
    /// `tox.ini` (`hash` `None`: the file did not exist).
    Config {
        path: RepoPath,
        hash: Option<ContentHash>,
    },
    /// A directory listed: the hash of its sorted entry names.
    Dir {
        path: RepoPath,
        hash: Option<ContentHash>,
    },
    /// A top-level module from outside the project (installed or stdlib).
    External { module: String },
    /// The recording missed something; always stale.
    Incomplete { why: String },
    /// An artifact of the fixture cache (by key) as it was when used (its
    /// blake3 hex): stale once the key holds something else, or nothing.
    Artifact { key: String, blob: String },
    /// An outside package's entries in a `Cargo.lock` (see
    /// [`crate::cargo::lock_entries`]; `hash` `None`: it had none).
    Lock {
        lock: RepoPath,
        package: String,
        hash: Option<ContentHash>,
    },
    /// An environment variable a build declared it reads (`None`: unset).
    EnvVar {
        name: String,
        hash: Option<ContentHash>,
    },
}

/// Why a test is affected. Rendered as the one-line reasons users see.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Reason {
    NewTest,
    FailedLastTime(&'static str),
    BlockChanged {
        file: RepoPath,
        block: String,
    },
    BlockRemoved {
        file: RepoPath,
        block: String,
    },
    FileChanged(RepoPath),
    FileDeleted(RepoPath),
    FileCreated(RepoPath),
    DirChanged(RepoPath),
    SyntaxError {
        file: RepoPath,
        line: u32,
    },
    RecordedDuringEdit(RepoPath),
    Incomplete(String),
    PytestConfig(RepoPath),
    Environment(String),
    /// `--since REV`: a file the test depends on differs from the merge
    /// base with REV.
    ChangedSince {
        rev: String,
        path: RepoPath,
    },
    /// A cached fixture now holds another artifact (refreshed, imported,
    /// recomputed) or none.
    ArtifactChanged {
        key: String,
    },
    /// An outside package's `Cargo.lock` entries changed (a version bump).
    LockChanged {
        package: String,
    },
    /// An environment variable a build reads changed (or is not known).
    EnvVarChanged(String),
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::NewTest => write!(f, "new test"),
            Reason::FailedLastTime(outcome) => write!(f, "{outcome} last time"),
            Reason::BlockChanged { file, block } => write!(f, "changed: {file}::{block}"),
            Reason::BlockRemoved { file, block } => write!(f, "removed: {file}::{block}"),
            Reason::FileChanged(p) => write!(f, "file: {p}"),
            Reason::FileDeleted(p) => write!(f, "deleted: {p}"),
            Reason::FileCreated(p) => write!(f, "created: {p}"),
            Reason::DirChanged(p) => write!(f, "directory: {p}/ (entries added or removed)"),
            Reason::SyntaxError { file, line } => {
                write!(
                    f,
                    "syntax error: {file} line {line} (everything depending on it runs)"
                )
            }
            Reason::RecordedDuringEdit(p) => {
                write!(f, "{p} changed while the test ran; what ran is unknown")
            }
            Reason::PytestConfig(p) => write!(f, "pytest configuration: {p}"),
            Reason::Incomplete(why) => write!(f, "incomplete record: {why}"),
            Reason::Environment(what) => write!(f, "{what}"),
            Reason::ChangedSince { rev, path } => write!(f, "changed since {rev}: {path}"),
            Reason::ArtifactChanged { key } => {
                // The key is `<fixture>:<digest of its inputs>`.
                let fixture = key.rsplit_once(':').map_or(key.as_str(), |(f, _)| f);
                write!(f, "cached fixture changed: {fixture}")
            }
            Reason::LockChanged { package } => write!(f, "Cargo.lock: {package} changed"),
            Reason::EnvVarChanged(name) => write!(f, "environment variable {name} changed"),
        }
    }
}

/// The tree as it is now.
pub trait Tree {
    fn file_hash(&self, path: &RepoPath) -> Option<ContentHash>;
    /// Parsed blocks of the file's current content (`None`: not a file).
    fn parsed(&mut self, path: &RepoPath) -> Option<Arc<ParsedModule>>;
    fn dir_hash(&self, path: &RepoPath) -> Option<ContentHash>;
    /// The hash of the pytest configuration `path` holds (see [`Dep::Config`]).
    fn config_hash(&self, path: &RepoPath) -> Option<ContentHash>;
    /// The artifact the fixture cache holds under `key` (blake3 hex).
    fn artifact_blob(&self, key: &str) -> Option<String>;
    /// The digest of `package`'s entries in the `Cargo.lock` at `lock`
    /// (`Some(None)`: none); `None` when the file cannot be read.
    fn lock_entry(&mut self, _lock: &RepoPath, _package: &str) -> Option<Option<ContentHash>> {
        None
    }
    /// The hash of an environment variable's value now (`Some(None)`:
    /// unset); `None` when the environment is not known.
    fn env_var(&self, _name: &str) -> Option<Option<ContentHash>> {
        None
    }
}

/// Evaluates dependencies against a tree, remembering each answer: many
/// tests share dependencies.
pub struct Evaluator<'t, T: Tree> {
    tree: &'t mut T,
    env: Option<&'t EnvChange>,
    cache: HashMap<Dep, Option<Reason>>,
}

impl<'t, T: Tree> Evaluator<'t, T> {
    /// `env` is how the environment changed since the records were made.
    pub fn new(tree: &'t mut T, env: Option<&'t EnvChange>) -> Self {
        Evaluator {
            tree,
            env,
            cache: HashMap::new(),
        }
    }

    /// Why `dep` is stale, or `None` when it is as recorded.
    pub fn stale(&mut self, dep: &Dep) -> Option<Reason> {
        if let Some(answer) = self.cache.get(dep) {
            return answer.clone();
        }
        let answer = self.evaluate(dep);
        self.cache.insert(dep.clone(), answer.clone());
        answer
    }

    /// [`Evaluator::stale`] without its memo, for callers that judge each
    /// interned dependency once anyway: hashing a `Dep` costs more than
    /// judging it.
    pub fn stale_uncached(&mut self, dep: &Dep) -> Option<Reason> {
        self.evaluate(dep)
    }

    fn evaluate(&mut self, dep: &Dep) -> Option<Reason> {
        match dep {
            Dep::Artifact { key, blob } => (self.tree.artifact_blob(key).as_deref()
                != Some(blob.as_str()))
            .then(|| Reason::ArtifactChanged { key: key.clone() }),
            Dep::Code {
                file,
                file_hash,
                block,
                hash,
            } => {
                let current = self.tree.file_hash(file);
                let Some(current) = current else {
                    return Some(Reason::FileDeleted(file.clone()));
                };
                let Some(recorded) = file_hash else {
                    return Some(Reason::RecordedDuringEdit(file.clone()));
                };
                if current == *recorded {
                    return None;
                }
                let Some(block) = block else {
                    return Some(Reason::FileChanged(file.clone()));
                };
                let Some(parsed) = self.tree.parsed(file) else {
                    return Some(Reason::FileChanged(file.clone()));
                };
                if let Some(error) = &parsed.syntax_error {
                    return Some(Reason::SyntaxError {
                        file: file.clone(),
                        line: error.line,
                    });
                }
                match (parsed.block(block), hash) {
                    (None, _) => Some(Reason::BlockRemoved {
                        file: file.clone(),
                        block: block.clone(),
                    }),
                    (Some(now), Some(then)) if now.hash == *then => None,
                    (Some(_), _) => Some(Reason::BlockChanged {
                        file: file.clone(),
                        block: block.clone(),
                    }),
                }
            }
            Dep::File { path, hash } => match (hash, self.tree.file_hash(path)) {
                (Some(a), Some(b)) if *a == b => None,
                (None, None) => None,
                (None, Some(_)) => Some(Reason::FileCreated(path.clone())),
                (Some(_), None) => Some(Reason::FileDeleted(path.clone())),
                (Some(_), Some(_)) => Some(Reason::FileChanged(path.clone())),
            },
            Dep::Dir { path, hash } => {
                (self.tree.dir_hash(path) != *hash).then(|| Reason::DirChanged(path.clone()))
            }
            Dep::Config { path, hash } => match (hash, self.tree.config_hash(path)) {
                (a, b) if *a == b => None,
                (None, Some(_)) => Some(Reason::FileCreated(path.clone())),
                (Some(_), None) => Some(Reason::FileDeleted(path.clone())),
                _ => Some(Reason::PytestConfig(path.clone())),
            },
            Dep::Incomplete { why } => Some(Reason::Incomplete(why.clone())),
            Dep::Lock {
                lock,
                package,
                hash,
            } => match self.tree.lock_entry(lock, package) {
                Some(now) if now == *hash => None,
                Some(_) => Some(Reason::LockChanged {
                    package: package.clone(),
                }),
                None => Some(Reason::FileChanged(lock.clone())),
            },
            Dep::EnvVar { name, hash } => (self.tree.env_var(name) != Some(*hash))
                .then(|| Reason::EnvVarChanged(name.clone())),
            Dep::External { module } => match self.env {
                Some(EnvChange::Modules { modules, changes }) if modules.contains(module) => {
                    Some(Reason::Environment(changes.join("; ")))
                }
                _ => None,
            },
        }
    }

    /// All reasons a set of dependencies is stale, deduplicated, in order.
    pub fn reasons<'d>(&mut self, deps: impl IntoIterator<Item = &'d Dep>) -> Vec<Reason> {
        let mut out = BTreeSet::new();
        for dep in deps {
            if let Some(reason) = self.stale(dep) {
                out.insert(reason);
            }
        }
        out.into_iter().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pyparse::parse;

    #[derive(Default)]
    struct FakeTree {
        files: HashMap<String, Vec<u8>>,
        parses: usize,
    }

    fn h(bytes: &[u8]) -> ContentHash {
        ContentHash(*blake3::hash(bytes).as_bytes())
    }

    impl Tree for FakeTree {
        fn artifact_blob(&self, _key: &str) -> Option<String> {
            None
        }

        fn file_hash(&self, path: &RepoPath) -> Option<ContentHash> {
            self.files.get(path.as_str()).map(|b| h(b))
        }
        fn parsed(&mut self, path: &RepoPath) -> Option<Arc<ParsedModule>> {
            self.parses += 1;
            self.files.get(path.as_str()).map(|b| Arc::new(parse(b)))
        }
        fn dir_hash(&self, _: &RepoPath) -> Option<ContentHash> {
            None
        }
        fn config_hash(&self, path: &RepoPath) -> Option<ContentHash> {
            self.file_hash(path)
        }
    }

    fn code_dep(tree: &mut FakeTree, file: &str, block: &str) -> Dep {
        let parsed = tree.parsed(&RepoPath::new(file)).unwrap();
        Dep::Code {
            file: RepoPath::new(file),
            file_hash: tree.file_hash(&RepoPath::new(file)),
            block: Some(block.to_owned()),
            hash: parsed.block(block).map(|b| b.hash),
        }
    }

    const MOD: &str = "LIMIT = 1\n\ndef f():\n    return LIMIT\n\ndef g():\n    return 2\n";

    #[test]
    fn blocks_are_compared_by_content() {
        let mut tree = FakeTree::default();
        tree.files.insert("m.py".into(), MOD.into());
        let f = code_dep(&mut tree, "m.py", "f");
        let g = code_dep(&mut tree, "m.py", "g");
        let module = code_dep(&mut tree, "m.py", "<module>");
        let check = |tree: &mut FakeTree, dep: &Dep| Evaluator::new(tree, None).stale(dep);

        // Unchanged file: nothing is parsed.
        tree.parses = 0;
        assert_eq!(check(&mut tree, &f), None);
        assert_eq!(tree.parses, 0);

        // Editing g affects g only; a comment affects nothing.
        tree.files
            .insert("m.py".into(), MOD.replace("return 2", "return 3").into());
        assert_eq!(check(&mut tree, &f), None);
        assert_eq!(check(&mut tree, &module), None);
        assert!(matches!(
            check(&mut tree, &g),
            Some(Reason::BlockChanged { .. })
        ));
        tree.files
            .insert("m.py".into(), format!("# note\n{MOD}").into());
        assert_eq!(check(&mut tree, &g), None);

        // Revert: unaffected again.
        tree.files.insert("m.py".into(), MOD.into());
        assert_eq!(check(&mut tree, &g), None);

        // Deleting g, breaking the syntax, deleting the file.
        tree.files.insert(
            "m.py".into(),
            "LIMIT = 1\n\ndef f():\n    return LIMIT\n".into(),
        );
        assert_eq!(
            check(&mut tree, &g).unwrap().to_string(),
            "removed: m.py::g"
        );
        tree.files
            .insert("m.py".into(), format!("{MOD}\ndef broken(:\n").into());
        assert_eq!(
            check(&mut tree, &f).unwrap().to_string(),
            "syntax error: m.py line 9 (everything depending on it runs)"
        );
        tree.files.remove("m.py");
        assert_eq!(check(&mut tree, &f).unwrap().to_string(), "deleted: m.py");
    }

    #[test]
    fn files_and_environment() {
        let mut tree = FakeTree::default();
        tree.files.insert("data.json".into(), b"{}".to_vec());
        let read = Dep::File {
            path: RepoPath::new("data.json"),
            hash: Some(h(b"{}")),
        };
        let absent = Dep::File {
            path: RepoPath::new("optional.json"),
            hash: None,
        };
        let mut eval = Evaluator::new(&mut tree, None);
        assert_eq!(eval.stale(&read), None);
        assert_eq!(eval.stale(&absent), None);
        drop(eval);
        tree.files
            .insert("data.json".into(), b"{\"a\": 1}".to_vec());
        tree.files.insert("optional.json".into(), b"1".to_vec());
        let mut eval = Evaluator::new(&mut tree, None);
        assert_eq!(eval.stale(&read).unwrap().to_string(), "file: data.json");
        assert_eq!(
            eval.stale(&absent).unwrap().to_string(),
            "created: optional.json"
        );

        let change = EnvChange::Modules {
            modules: ["requests".to_string()].into(),
            changes: vec!["environment: requests 2.31.0→2.32.0".into()],
        };
        let mut eval = Evaluator::new(&mut tree, Some(&change));
        let uses = Dep::External {
            module: "requests".into(),
        };
        let other = Dep::External {
            module: "attr".into(),
        };
        assert_eq!(
            eval.reasons([&uses, &other])
                .iter()
                .map(|r| r.to_string())
                .collect::<Vec<_>>(),
            ["environment: requests 2.31.0→2.32.0"]
        );
    }
}
