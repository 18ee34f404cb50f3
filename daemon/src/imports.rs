//! Static import resolution: which project files a Python file imports,
//! directly and transitively, and which outside modules.
//!
//! Importing a module runs its module-level code, and a test can observe
//! that code (a constant, a class attribute, a decorator argument) without
//! running any function of the module. So the module blocks of everything a
//! test file imports are dependencies of its tests, whether or not a test
//! executed anything there, and whether or not an earlier test file had
//! already imported the module in the same process.
//!
//! Resolution over-approximates on purpose: a name that matches a file under
//! several import roots depends on all of them; more dependencies mean more
//! tests run, never fewer. Pure: file existence and parsing come from the
//! caller.

use crate::index::RepoPath;
use crate::pyparse::Import;
use petgraph::graphmap::DiGraphMap;
use petgraph::visit::Dfs;
use std::collections::{BTreeSet, HashMap};

/// What the resolver needs to know about the tree.
pub trait Files {
    fn is_file(&self, path: &RepoPath) -> bool;
    fn is_dir(&self, path: &RepoPath) -> bool;
    /// Names of the tracked entries of `dir` (for compiled extension
    /// modules, whose file names carry a platform tag).
    fn entries(&self, dir: &RepoPath) -> Vec<String>;
}

/// A compiled extension module `name` in `dir` (`name.cpython-311-x86_64-
/// linux-gnu.so`, `name.so`, `name.pyd`), if any.
fn extension_module(files: &dyn Files, dir: &RepoPath, name: &str) -> Option<RepoPath> {
    let prefix = format!("{name}.");
    files
        .entries(dir)
        .into_iter()
        .find(|e| e.starts_with(&prefix) && (e.ends_with(".so") || e.ends_with(".pyd")))
        .map(|e| dir.join(&e))
}

/// The outcome of resolving one file's imports.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Resolved {
    /// Project files whose module-level code the import runs.
    pub files: BTreeSet<RepoPath>,
    /// Top-level names found in no import root: installed packages or the
    /// standard library.
    pub external: BTreeSet<String>,
}

pub struct Resolver {
    /// Import roots, root-relative (`""`, `src`), in `sys.path` order.
    roots: Vec<RepoPath>,
}

impl Resolver {
    pub fn new(roots: impl IntoIterator<Item = RepoPath>) -> Resolver {
        let mut seen = BTreeSet::new();
        let roots = roots
            .into_iter()
            .filter(|r| seen.insert(r.clone()))
            .collect();
        Resolver { roots }
    }

    /// Resolves `imports` written in `importer`.
    pub fn resolve(&self, files: &dyn Files, importer: &RepoPath, imports: &[Import]) -> Resolved {
        let mut out = Resolved::default();
        // pytest's default import mode puts a test file's directory (the
        // first one up without __init__.py) on sys.path: its siblings
        // import by bare name.
        let mut roots = self.roots.clone();
        if let Some((dir, _)) = importer.split() {
            roots.push(dir);
        }
        for import in imports {
            if import.level > 0 {
                let Some(base) = package_base(importer, import.level) else {
                    continue;
                };
                self.resolve_in(files, &base, &import.module, &import.names, &mut out);
                continue;
            }
            let mut found = false;
            for root in &roots {
                found |= self.resolve_in(files, root, &import.module, &import.names, &mut out);
            }
            if !found && let Some(top) = import.module.split('.').next() {
                out.external.insert(top.to_owned());
            }
        }
        out
    }

    /// Resolves `module` (dotted, possibly empty) below `base`, then each of
    /// `names` as a possible submodule. True when the first component exists.
    fn resolve_in(
        &self,
        files: &dyn Files,
        base: &RepoPath,
        module: &str,
        names: &[String],
        out: &mut Resolved,
    ) -> bool {
        let mut dir = base.clone();
        let parts: Vec<&str> = module.split('.').filter(|p| !p.is_empty()).collect();
        for (i, part) in parts.iter().enumerate() {
            let last = i + 1 == parts.len();
            let as_dir = dir.join(part);
            let as_file = dir.join(&format!("{part}.py"));
            if files.is_dir(&as_dir) {
                let init = as_dir.join("__init__.py");
                if files.is_file(&init) {
                    out.files.insert(init);
                }
                dir = as_dir;
            } else if last && files.is_file(&as_file) {
                out.files.insert(as_file);
                return true;
            } else if last && let Some(ext) = extension_module(files, &dir, part) {
                out.files.insert(ext);
                return true;
            } else {
                return i > 0;
            }
        }
        for name in names {
            if name == "*" {
                continue;
            }
            let as_file = dir.join(&format!("{name}.py"));
            let as_init = dir.join(name).join("__init__.py");
            if files.is_file(&as_file) {
                out.files.insert(as_file);
            } else if files.is_file(&as_init) {
                out.files.insert(as_init);
            } else if let Some(ext) = extension_module(files, &dir, name) {
                out.files.insert(ext);
            }
        }
        true
    }
}

/// The package directory a relative import of `level` dots starts from.
fn package_base(importer: &RepoPath, level: u32) -> Option<RepoPath> {
    let (mut dir, _) = importer.split()?;
    for _ in 1..level {
        dir = dir.split()?.0;
    }
    Some(dir)
}

/// The import graph of the project's Python files, for transitive closures.
#[derive(Default)]
pub struct ImportGraph {
    ids: HashMap<RepoPath, u32>,
    paths: Vec<RepoPath>,
    graph: DiGraphMap<u32, ()>,
    external: HashMap<u32, BTreeSet<String>>,
}

impl ImportGraph {
    fn id(&mut self, path: &RepoPath) -> u32 {
        if let Some(&id) = self.ids.get(path) {
            return id;
        }
        let id = self.paths.len() as u32;
        self.paths.push(path.clone());
        self.ids.insert(path.clone(), id);
        self.graph.add_node(id);
        id
    }

    /// Sets what `file` imports, replacing what was known.
    pub fn set_imports(&mut self, file: &RepoPath, resolved: &Resolved) {
        let from = self.id(file);
        let old: Vec<u32> = self.graph.neighbors(from).collect();
        for to in old {
            self.graph.remove_edge(from, to);
        }
        for target in &resolved.files {
            let to = self.id(target);
            if to != from {
                self.graph.add_edge(from, to, ());
            }
        }
        self.external.insert(from, resolved.external.clone());
    }

    /// What `file` imports directly (as last set).
    pub fn imports_of(&self, file: &RepoPath) -> Vec<RepoPath> {
        let Some(&id) = self.ids.get(file) else {
            return Vec::new();
        };
        self.graph
            .neighbors(id)
            .map(|n| self.paths[n as usize].clone())
            .collect()
    }

    pub fn knows(&self, file: &RepoPath) -> bool {
        self.ids
            .get(file)
            .is_some_and(|id| self.external.contains_key(id))
    }

    /// Every project file reachable from `start` (included), and the
    /// external top-level names they import.
    pub fn closure(&self, start: &RepoPath) -> (BTreeSet<RepoPath>, BTreeSet<String>) {
        let mut files = BTreeSet::new();
        let mut external = BTreeSet::new();
        let Some(&id) = self.ids.get(start) else {
            files.insert(start.clone());
            return (files, external);
        };
        let mut dfs = Dfs::new(&self.graph, id);
        while let Some(node) = dfs.next(&self.graph) {
            files.insert(self.paths[node as usize].clone());
            if let Some(names) = self.external.get(&node) {
                external.extend(names.iter().cloned());
            }
        }
        (files, external)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pyparse::parse;

    struct Tree(BTreeSet<String>);

    impl Tree {
        fn new(files: &[&str]) -> Tree {
            Tree(files.iter().map(|s| s.to_string()).collect())
        }
    }

    impl Files for Tree {
        fn is_file(&self, path: &RepoPath) -> bool {
            self.0.contains(path.as_str())
        }
        fn is_dir(&self, path: &RepoPath) -> bool {
            let prefix = format!("{}/", path.as_str());
            path.is_root() || self.0.iter().any(|f| f.starts_with(&prefix))
        }
        fn entries(&self, dir: &RepoPath) -> Vec<String> {
            let prefix = if dir.is_root() {
                String::new()
            } else {
                format!("{}/", dir.as_str())
            };
            self.0
                .iter()
                .filter_map(|f| f.strip_prefix(&prefix))
                .filter(|rest| !rest.contains('/'))
                .map(str::to_owned)
                .collect()
        }
    }

    fn resolve(
        tree: &Tree,
        roots: &[&str],
        importer: &str,
        src: &str,
    ) -> (Vec<String>, Vec<String>) {
        let resolver = Resolver::new(roots.iter().map(|r| RepoPath::new(*r)));
        let parsed = parse(src.as_bytes());
        let r = resolver.resolve(tree, &RepoPath::new(importer), &parsed.imports);
        (
            r.files.into_iter().map(|p| p.to_string()).collect(),
            r.external.into_iter().collect(),
        )
    }

    #[test]
    fn resolution_cases() {
        let tree = Tree::new(&[
            "src/pkg/__init__.py",
            "src/pkg/core.py",
            "src/pkg/sub/__init__.py",
            "src/pkg/sub/deep.py",
            "src/pkg/util.py",
            "tests/helpers.py",
            "tests/test_core.py",
            "ns/plain.py",
            "src/pkg/_speedups.cpython-311-x86_64-linux-gnu.so",
            "fastmath.so",
        ]);
        // (what, importer, source, files, external)
        type Case<'a> = (&'a str, &'a str, &'a str, &'a [&'a str], &'a [&'a str]);
        let cases: &[Case] = &[
            (
                "dotted import runs every package __init__",
                "tests/test_core.py",
                "import pkg.sub.deep",
                &[
                    "src/pkg/__init__.py",
                    "src/pkg/sub/__init__.py",
                    "src/pkg/sub/deep.py",
                ],
                &[],
            ),
            (
                "from-import of a submodule",
                "tests/test_core.py",
                "from pkg import core, missing",
                &["src/pkg/__init__.py", "src/pkg/core.py"],
                &[],
            ),
            (
                "from-import of a name",
                "tests/test_core.py",
                "from pkg.core import Parser",
                &["src/pkg/__init__.py", "src/pkg/core.py"],
                &[],
            ),
            (
                "sibling module of a test file",
                "tests/test_core.py",
                "import helpers",
                &["tests/helpers.py"],
                &[],
            ),
            (
                "relative import",
                "src/pkg/sub/deep.py",
                "from ..util import x\nfrom . import deep",
                &["src/pkg/sub/deep.py", "src/pkg/util.py"],
                &[],
            ),
            (
                "namespace package",
                "tests/test_core.py",
                "from ns import plain",
                &["ns/plain.py"],
                &[],
            ),
            (
                "outside modules",
                "tests/test_core.py",
                "import os.path\nimport requests\nfrom attr import s",
                &[],
                &["attr", "os", "requests"],
            ),
        ];
        for (what, importer, src, files, external) in cases {
            let (f, e) = resolve(&tree, &["", "src"], importer, src);
            assert_eq!(f, *files, "{what}: files");
            assert_eq!(e, *external, "{what}: external");
        }
    }

    #[test]
    fn closures_follow_imports_transitively() {
        let mut graph = ImportGraph::default();
        let p = |s: &str| RepoPath::new(s);
        let set = |files: &[&str], external: &[&str]| Resolved {
            files: files.iter().map(|f| RepoPath::new(*f)).collect(),
            external: external.iter().map(|s| s.to_string()).collect(),
        };
        graph.set_imports(&p("tests/test_a.py"), &set(&["pkg/a.py"], &["pytest"]));
        graph.set_imports(&p("pkg/a.py"), &set(&["pkg/b.py"], &[]));
        graph.set_imports(&p("pkg/b.py"), &set(&["pkg/a.py"], &["requests"]));
        let (files, external) = graph.closure(&p("tests/test_a.py"));
        let files: Vec<_> = files.iter().map(|f| f.as_str()).collect();
        assert_eq!(files, ["pkg/a.py", "pkg/b.py", "tests/test_a.py"]);
        assert_eq!(
            external.into_iter().collect::<Vec<_>>(),
            ["pytest", "requests"]
        );
        // Replacing a file's imports drops the old edges.
        graph.set_imports(&p("pkg/a.py"), &set(&[], &[]));
        let (files, _) = graph.closure(&p("tests/test_a.py"));
        assert_eq!(files.len(), 2);
    }
}
