//! The pytest adapter: runs, selection, recording and explanations.
//!
//! It turns what the plugin reports (code objects by file and qualname,
//! files read, directories listed) into dependency sets with the hashes of
//! the blocks as they are on disk, adds what a test can observe without
//! running it (the module-level code of everything its file imports, the
//! conftest files above it, pytest's configuration, outside modules), keeps
//! the latest record of every test, and answers which tests are affected.
//!
//! Owned by the core (one thread); it reads the index and writes the store
//! through the [`Ctx`] the core lends it for each request.

use crate::cargo;
use crate::impact::{Dep, Evaluator, Reason, Tree};
use crate::imports::{Files, ImportGraph, Resolver};
use crate::index::{ContentHash, Index, RepoPath};
use crate::pyenv::{self, EnvChange, Snapshot};
use crate::pyparse::{self, MODULE_BLOCK, Mode, ParsedModule};
use crate::scan::Filter;
use crate::store::{Batch, CacheRow, NewRun, NewTest, Store, StoreError};
use foldhash::{HashMap, HashMapExt, HashSet, HashSetExt};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tim_proto::{
    AffectedParams, AffectedReply, AffectedTest, AuditReply, BeginRunParams, CollectFile, Deps,
    EndRunParams, ImportResultsParams, Order, Outcome, RecordParams, RunMode, SelectParams,
    Selection, StatsParams, StatsReply, WhyDep, WhyParams, WhyReply,
};

/// pytest configuration files whose change can alter any test.
const CONFIG_FILES: &[&str] = &[
    "pytest.ini",
    ".pytest.ini",
    "pyproject.toml",
    "setup.cfg",
    "tox.ini",
];

/// What the core lends the adapter for one request.
pub struct Ctx<'a> {
    pub root: &'a Path,
    /// Which tests must share a shard (`run.keep_together`).
    pub keep_together: crate::config::KeepTogether,
    /// History rows kept per test (`history.keep`).
    pub history_keep: u32,
    /// The order of runs that do not ask for one (`run.order`).
    pub order: Order,
    pub index: &'a Index,
    pub filter: &'a Filter,
    pub store: &'a mut Store,
    /// The current clock, for answers.
    pub clock: String,
}

#[derive(Debug, thiserror::Error)]
pub enum PytestError {
    #[error(
        "unknown run {0}; start one with begin_run (the daemon may have restarted: run the tests again)"
    )]
    UnknownRun(u64),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Cache(#[from] crate::cache::CacheError),
    #[error("--since: {0}")]
    Since(String),
    #[error("{0}")]
    Invalid(String),
}

/// The most parts (workers) a selection is split into.
const MAX_PARTS: u32 = 1024;

/// `--since REV`: the revision and the files that differ from its merge
/// base.
pub struct Since {
    pub rev: String,
    pub changed: Vec<RepoPath>,
}

struct TestRecord {
    file: RepoPath,
    outcome: Outcome,
    /// Seconds the last run took (setup + call + teardown).
    duration: f64,
    markers: Vec<String>,
    deps: i64,
    env: i64,
    run: u64,
}

struct RunState {
    clock: u64,
    env: i64,
    /// A Cargo run's environment variables (what its builds saw).
    cargo_env: Option<BTreeMap<String, String>>,
    mode: RunMode,
    /// Tests known to be unaffected when the run began: every process of
    /// the run deselects exactly these, whatever is recorded meanwhile.
    unaffected: HashSet<String>,
    /// How known tests sort when the run began (see [`Pytest::select`]):
    /// (class, seconds); class 0 failed last time, 2 the others.
    priority: HashMap<String, (u8, f64)>,
    order: Order,
    /// The part of the selection this run executes (CI shards).
    shard: Option<tim_proto::Shard>,
    /// Test id -> `xdist_group:<name>`, from the run's collections.
    groups: HashMap<String, String>,
    /// What an unknown test counts as under `longest-first`: the median.
    typical_seconds: f64,
    /// Import closures computed for this run's records, valid while the
    /// tree is at `closures_seq`: a run sends its records in many small
    /// batches, and most of them reach the same modules.
    closures: HashMap<RepoPath, Arc<BTreeSet<Dep>>>,
    closures_seq: u64,
}

#[derive(Default)]
pub struct Pytest {
    tests: BTreeMap<String, TestRecord>,
    /// Test file → dependency set of its collection.
    collections: BTreeMap<RepoPath, (i64, i64)>,
    /// Project module → dependency set of what its import ran.
    imports: BTreeMap<RepoPath, (i64, i64)>,
    /// Dependency sets by store id, as indices into `deps`: many sets
    /// share dependencies, and a query judges each distinct one once.
    depsets: HashMap<i64, Arc<Vec<u32>>>,
    deps: DepTable,
    envs: HashMap<i64, Arc<Snapshot>>,
    latest_env: Option<i64>,
    runs: HashMap<u64, RunState>,
    /// The caches and settings judging dependencies needs (lent to
    /// [`Current`] while other fields are read).
    view: View,
    graph: ImportGraph,
    graph_hashes: HashMap<RepoPath, ContentHash>,
    /// pytest's `testpaths`, from the latest run.
    testpaths: Vec<RepoPath>,
    /// Metadata of the `*.dist-info` directories seen (see
    /// [`pyenv::scan_cached`]).
    dist_cache: std::collections::HashMap<std::path::PathBuf, pyenv::Dist>,
    /// Median times of tests known only from imported reports, read once
    /// (a scan of every kept result) and again after an import; ids
    /// recorded since are skipped where it is used.
    unrecorded: Option<Vec<(String, f64)>>,
}

/// What judging dependencies against the tree needs besides the index.
#[derive(Default)]
struct View {
    parsed: HashMap<(ContentHash, Mode), Arc<ParsedModule>>,
    /// pytest's `python_files` globs, from the latest run.
    patterns: Vec<String>,
    /// The artifact cache's keys and the digests of what they hold (the
    /// core keeps it current), for tests that used a cached fixture.
    artifacts: HashMap<String, String>,
    /// The environment variables of the latest Cargo request (`None`
    /// before one): what Rust builds would see now.
    cargo_env: Option<BTreeMap<String, String>>,
    /// `Cargo.lock` files read: their hash and entries (`None`: unparsable).
    locks: HashMap<RepoPath, LockEntries>,
}

type LockEntries = (ContentHash, Option<Arc<BTreeMap<String, ContentHash>>>);

/// Where a Cargo run's builds happened, for reading what they left.
struct BuildSite<'a> {
    /// The run's clock: files changed after it are recorded as unknown.
    clock: u64,
    /// Where relative dep-info paths start.
    workspace: &'a Path,
    /// Cargo's target directory (generated files, judged through the build
    /// scripts that wrote them).
    target: &'a Path,
    /// The variables the run's builds saw.
    env: Option<&'a BTreeMap<String, String>>,
}

#[derive(Clone, Copy)]
enum BuildInput<'a> {
    DepInfo(&'a String),
    Script(&'a tim_proto::BuildScriptRun),
}

/// Distinct dependencies, interned.
#[derive(Default)]
struct DepTable {
    all: Vec<Dep>,
    ids: HashMap<Dep, u32>,
}

impl DepTable {
    fn intern(&mut self, dep: Dep) -> u32 {
        if let Some(&id) = self.ids.get(&dep) {
            return id;
        }
        let id = self.all.len() as u32;
        self.ids.insert(dep.clone(), id);
        self.all.push(dep);
        id
    }

    fn set(&mut self, deps: Vec<Dep>) -> Arc<Vec<u32>> {
        Arc::new(deps.into_iter().map(|d| self.intern(d)).collect())
    }

    fn get(&self, id: u32) -> &Dep {
        &self.all[id as usize]
    }
}

/// The tree as the index (and, for untracked paths, the disk) shows it.
struct Current<'a> {
    index: &'a Index,
    filter: &'a Filter,
    view: &'a mut View,
}

impl<'a> Current<'a> {
    fn new(ctx: &'a Ctx<'_>, view: &'a mut View) -> Current<'a> {
        Current {
            index: ctx.index,
            filter: ctx.filter,
            view,
        }
    }
}

/// Test files and conftest files are cut into blocks for pytest (see
/// [`pyparse::Mode`]); everything else as library code.
fn mode_of(path: &RepoPath, patterns: &[String]) -> Mode {
    let name = path.split().map_or(path.as_str(), |(_, n)| n);
    if is_test_file(path, patterns) || name == "conftest.py" {
        Mode::Pytest
    } else {
        Mode::Library
    }
}

impl Tree for Current<'_> {
    fn artifact_blob(&self, key: &str) -> Option<String> {
        self.view.artifacts.get(key).cloned()
    }

    fn lock_entry(&mut self, lock: &RepoPath, package: &str) -> Option<Option<ContentHash>> {
        let bytes = std::fs::read(self.filter.abs(lock)).ok()?;
        let hash = ContentHash::of(&bytes);
        let entries = match self.view.locks.get(lock) {
            Some((h, entries)) if *h == hash => entries.clone(),
            _ => {
                let entries = std::str::from_utf8(&bytes)
                    .ok()
                    .and_then(cargo::lock_entries)
                    .map(Arc::new);
                self.view
                    .locks
                    .insert(lock.clone(), (hash, entries.clone()));
                entries
            }
        };
        Some(entries?.get(package).copied())
    }

    fn env_var(&self, name: &str) -> Option<Option<ContentHash>> {
        let env = self.view.cargo_env.as_ref()?;
        Some(cargo::env_hash(env.get(name).map(String::as_str)))
    }

    fn file_hash(&self, path: &RepoPath) -> Option<ContentHash> {
        if let Some(meta) = self.index.get(path) {
            return Some(meta.hash);
        }
        // Not tracked (ignored, or outside the watcher's view): read it.
        std::fs::read(self.filter.abs(path))
            .ok()
            .map(|bytes| ContentHash::of(&bytes))
    }

    fn parsed(&mut self, path: &RepoPath) -> Option<Arc<ParsedModule>> {
        let mode = mode_of(path, &self.view.patterns);
        if let Some(meta) = self.index.get(path)
            && let Some(parsed) = self.view.parsed.get(&(meta.hash, mode))
        {
            return Some(parsed.clone());
        }
        let bytes = std::fs::read(self.filter.abs(path)).ok()?;
        let hash = ContentHash::of(&bytes);
        let parsed = self
            .view
            .parsed
            .entry((hash, mode))
            .or_insert_with(|| Arc::new(pyparse::parse_as(&bytes, mode)))
            .clone();
        Some(parsed)
    }

    fn dir_hash(&self, path: &RepoPath) -> Option<ContentHash> {
        let names: Vec<String> = match self.index.dir_entries(path) {
            Some(names) => names.into_iter().map(str::to_owned).collect(),
            None => {
                let mut names: Vec<String> = std::fs::read_dir(self.filter.abs(path))
                    .ok()?
                    .flatten()
                    .filter_map(|e| e.file_name().to_str().map(str::to_owned))
                    .collect();
                names.sort();
                names
            }
        };
        Some(ContentHash::of(names.join("\n").as_bytes()))
    }

    fn config_hash(&self, path: &RepoPath) -> Option<ContentHash> {
        let text = std::fs::read(self.filter.abs(path)).ok()?;
        if path.as_str() == "pyproject.toml"
            && let Some(section) = std::str::from_utf8(&text)
                .ok()
                .and_then(crate::config::pytest_section)
        {
            return Some(ContentHash::of(section.as_bytes()));
        }
        Some(ContentHash::of(&text))
    }
}

impl Files for Current<'_> {
    fn is_file(&self, path: &RepoPath) -> bool {
        self.index.get(path).is_some()
    }
    fn is_dir(&self, path: &RepoPath) -> bool {
        self.index.has_dir(path)
    }
    fn entries(&self, dir: &RepoPath) -> Vec<String> {
        self.index
            .dir_entries(dir)
            .map(|names| names.into_iter().map(str::to_owned).collect())
            .unwrap_or_default()
    }
}

/// `tests/test_a.py::TestK::test_m[1-2]` → `TestK.test_m`.
fn test_qualname(node_id: &str) -> Option<String> {
    let rest = node_id.split_once("::")?.1;
    let rest = rest.split('[').next()?;
    Some(rest.replace("::", "."))
}

/// `f.<locals>.g` → `f`; `<module>`, `<lambda>` and class bodies → the
/// module block; a name the parse does not know → `None` (the whole file).
fn block_for(qualname: &str, parsed: &ParsedModule) -> Option<String> {
    let outer = qualname.split(".<locals>").next().unwrap_or(qualname);
    if outer.starts_with('<') {
        return Some(MODULE_BLOCK.to_owned());
    }
    if parsed.block(outer).is_some() {
        return Some(outer.to_owned());
    }
    // A class body's code object is named like the class; its code is part
    // of the module block.
    let prefix = format!("{outer}.");
    if parsed.blocks.iter().any(|b| b.name.starts_with(&prefix)) {
        return Some(MODULE_BLOCK.to_owned());
    }
    None
}

/// The dependency set of a record that cannot be used (written by an older
/// tim): no set has this id, so the test counts as having no usable record.
const NO_DEPSET: i64 = -1;

/// tim's own state directory is never a dependency.
fn is_state_path(path: &RepoPath) -> bool {
    path.as_str().starts_with(".tim/")
}

/// Files and listings no test can depend on by themselves: tim's state,
/// and bytecode caches (derived from sources tracked as code; recorded by
/// older plugins, and each one untracked, so read again by every query).
fn is_derived(path: &RepoPath) -> bool {
    is_state_path(path) || path.as_str().split('/').any(|c| c == "__pycache__")
}

/// pytest's default `python_files`.
const DEFAULT_PYTHON_FILES: &[&str] = &["test_*.py", "*_test.py"];

/// Whether pytest collects `path` as a test module, by its `python_files`
/// globs (matched against the file name, or the whole path when the glob
/// has a `/`, as pytest does).
fn is_test_file(path: &RepoPath, patterns: &[String]) -> bool {
    let name = path.split().map_or(path.as_str(), |(_, n)| n);
    if !name.ends_with(".py") {
        return false;
    }
    let matches = |glob: &str| {
        let subject = if glob.contains('/') {
            path.as_str()
        } else {
            name
        };
        fnmatch(glob.as_bytes(), subject.as_bytes())
    };
    if patterns.is_empty() {
        DEFAULT_PYTHON_FILES.iter().any(|g| matches(g))
    } else {
        patterns.iter().any(|g| matches(g))
    }
}

/// Shell-style matching as Python's `fnmatch`: `*`, `?`, `[seq]`, `[!seq]`.
/// [`fnmatch`] on strings: `*` matches any run of characters, `/` included.
pub fn fnmatch_str(glob: &str, text: &str) -> bool {
    fnmatch(glob.as_bytes(), text.as_bytes())
}

fn fnmatch(glob: &[u8], text: &[u8]) -> bool {
    match glob.split_first() {
        None => text.is_empty(),
        Some((b'*', rest)) => (0..=text.len()).any(|i| fnmatch(rest, &text[i..])),
        Some((b'?', rest)) => !text.is_empty() && fnmatch(rest, &text[1..]),
        Some((b'[', rest)) => {
            let Some(close) = rest.iter().skip(1).position(|&c| c == b']').map(|i| i + 1) else {
                return text.first() == Some(&b'[') && fnmatch(rest, &text[1..]);
            };
            let Some((&c, after)) = text.split_first() else {
                return false;
            };
            let (negate, set) = match rest[..close].split_first() {
                Some((b'!', set)) => (true, set),
                _ => (false, &rest[..close]),
            };
            let mut hit = false;
            let mut i = 0;
            while i < set.len() {
                if i + 2 < set.len() && set[i + 1] == b'-' {
                    hit |= set[i] <= c && c <= set[i + 2];
                    i += 3;
                } else {
                    hit |= set[i] == c;
                    i += 1;
                }
            }
            hit != negate && fnmatch(&rest[close + 1..], after)
        }
        Some((&g, rest)) => text.first() == Some(&g) && fnmatch(rest, &text[1..]),
    }
}

impl Pytest {
    /// Loads every record from the store.
    pub fn load(store: &Store) -> Result<Pytest, StoreError> {
        let mut me = Pytest::default();
        for (id, env) in store.load_envs()? {
            if !cargo::is_cargo_env(&env) {
                me.latest_env = Some(me.latest_env.map_or(id, |l: i64| l.max(id)));
            }
            me.envs.insert(id, Arc::new(env));
        }
        if let Some(latest) = me.latest_env.and_then(|id| me.envs.get(&id)).cloned() {
            me.set_discovery(&latest);
        }
        for (key, blob, _) in store.cache_slots()? {
            me.view.artifacts.insert(key, blob);
        }
        for (id, deps) in store.load_depsets()? {
            let set = me.deps.set(deps);
            me.depsets.insert(id, set);
        }
        for row in store.load_tests()? {
            let Some(outcome) = parse_outcome(&row.outcome) else {
                continue;
            };
            me.tests.insert(
                row.node_id,
                TestRecord {
                    file: row.file,
                    outcome,
                    duration: row.durations.iter().sum(),
                    markers: row.markers,
                    // A record in an older format is no usable record.
                    deps: if row.current_format {
                        row.depset
                    } else {
                        NO_DEPSET
                    },
                    env: row.env,
                    run: row.run,
                },
            );
        }
        for row in store.load_collections()? {
            let set = if row.current_format {
                row.depset
            } else {
                NO_DEPSET
            };
            me.collections.insert(row.file, (set, row.env));
        }
        for row in store.load_imports()? {
            me.imports.insert(row.file, (row.depset, row.env));
        }
        Ok(me)
    }

    fn set_discovery(&mut self, env: &Snapshot) {
        self.view.patterns = env.python_files.clone();
        self.testpaths = env
            .testpaths
            .iter()
            .map(|p| RepoPath::new(p.clone()))
            .collect();
    }

    fn current<'a>(&'a mut self, ctx: &'a Ctx<'_>) -> Current<'a> {
        Current::new(ctx, &mut self.view)
    }

    fn resolver(&self, env: Option<&Snapshot>) -> Resolver {
        let mut roots: Vec<RepoPath> = env
            .map(|e| {
                e.root_paths
                    .iter()
                    .map(|p| RepoPath::new(p.clone()))
                    .collect()
            })
            .unwrap_or_default();
        roots.push(RepoPath::root());
        roots.push(RepoPath::new("src"));
        Resolver::new(roots)
    }

    // -- runs -------------------------------------------------------------

    pub fn begin_run(
        &mut self,
        ctx: &mut Ctx<'_>,
        params: BeginRunParams,
        since: Option<&Since>,
    ) -> Result<u64, PytestError> {
        if let Some(shard) = params.shard
            && !(1 <= shard.index && shard.index <= shard.count && shard.count <= MAX_PARTS)
        {
            return Err(PytestError::Invalid(format!(
                "shard {}/{}: write I/N with 1 <= I <= N <= {MAX_PARTS}",
                shard.index, shard.count
            )));
        }
        let rust = params.cargo.is_some();
        let env = match &params.cargo {
            Some(cargo) => self.note_cargo(cargo),
            None => Snapshot {
                python_files: params.collection.python_files,
                testpaths: params.collection.testpaths,
                dists: pyenv::scan_cached(&params.environment.site_dirs, &mut self.dist_cache),
                python: params.environment.python,
                version: params.environment.version,
                implementation: params.environment.implementation,
                site_dirs: params.environment.site_dirs,
                root_paths: params.environment.root_paths,
            },
        };
        let env_id = ctx.store.intern_env(&env)?;
        let mode_name = match params.mode {
            RunMode::Affected => "affected",
            RunMode::All => "all",
        };
        let git_commit = crate::git::head_commit(ctx.root);
        let run = ctx.store.begin_run(&NewRun {
            command: &params.command,
            mode: mode_name,
            env: env_id,
            known: self.tests.len() as u64,
            git_commit: git_commit.as_deref(),
        })?;
        let env = Arc::new(env);
        self.envs.insert(env_id, env.clone());
        if !rust {
            self.latest_env = Some(env_id);
            self.set_discovery(&env);
        }
        let unaffected = match params.mode {
            RunMode::All => HashSet::new(),
            RunMode::Affected => {
                // Each runner selects among its own tests only.
                let mut affected = match rust {
                    true => self.evaluate(ctx, None, Some(&env)),
                    false => self.evaluate(ctx, Some(&env), None),
                };
                if let Some(since) = since {
                    affected.extend(self.since_reasons(since));
                }
                self.tests
                    .keys()
                    .filter(|id| !affected.contains_key(*id))
                    .cloned()
                    .collect()
            }
        };
        tracing::info!(
            run,
            mode = mode_name,
            unaffected = unaffected.len(),
            known = self.tests.len(),
            "run started"
        );
        let mut priority: HashMap<String, (u8, f64)> = self
            .tests
            .iter()
            .map(|(id, t)| {
                let class = if t.outcome.is_failure() { 0 } else { 2 };
                (id.clone(), (class, t.duration))
            })
            .collect();
        // Tests tim has not recorded yet but whose times it knows (imported
        // from JUnit reports): still new (class 1), sorted by those times.
        if self.unrecorded.is_none() {
            self.unrecorded = Some(ctx.store.unrecorded_medians()?);
        }
        for (id, seconds) in self.unrecorded.iter().flatten() {
            if !priority.contains_key(id) {
                priority.insert(id.clone(), (1, *seconds));
            }
        }
        let mut durations: Vec<f64> = self
            .tests
            .iter()
            .filter(|(id, _)| !cargo::is_marker(id))
            .map(|(_, t)| t.duration)
            .collect();
        durations.sort_by(f64::total_cmp);
        let typical_seconds = durations.get(durations.len() / 2).copied().unwrap_or(0.0);
        self.runs.insert(
            run,
            RunState {
                clock: ctx.store.seq(),
                env: env_id,
                cargo_env: params.cargo.as_ref().map(|c| c.env.clone()),
                mode: params.mode,
                unaffected,
                priority,
                order: params.order.unwrap_or(ctx.order),
                shard: params.shard,
                groups: HashMap::new(),
                typical_seconds,
                closures: HashMap::new(),
                closures_seq: 0,
            },
        );
        Ok(run)
    }

    fn run_state(&mut self, ctx: &Ctx<'_>, run: u64) -> Result<&RunState, PytestError> {
        if !self.runs.contains_key(&run) {
            // The daemon restarted during the run: records are still good
            // (their hashes come from the disk), selection is not cached.
            let clock = ctx
                .store
                .run_clock(run)?
                .ok_or(PytestError::UnknownRun(run))?;
            let env = self.latest_env.ok_or(PytestError::UnknownRun(run))?;
            self.runs.insert(
                run,
                RunState {
                    clock,
                    env,
                    cargo_env: None,
                    mode: RunMode::All,
                    unaffected: HashSet::new(),
                    priority: HashMap::new(),
                    order: ctx.order,
                    shard: None,
                    groups: HashMap::new(),
                    typical_seconds: 0.0,
                    closures: HashMap::new(),
                    closures_seq: 0,
                },
            );
        }
        Ok(&self.runs[&run])
    }

    pub fn select(
        &mut self,
        ctx: &mut Ctx<'_>,
        params: SelectParams,
    ) -> Result<Selection, PytestError> {
        let run_id = params.run_id;
        self.run_state(ctx, run_id)?;
        // xdist groups, from whichever process of the run collected the
        // tests (an xdist controller collects nothing itself).
        let state = self.runs.get_mut(&run_id).expect("run_state inserted it");
        for t in &params.tests {
            if let Some(g) = &t.group {
                state
                    .groups
                    .insert(t.id.clone(), format!("xdist_group:{g}"));
            }
        }
        let state = &self.runs[&run_id];
        // Tests that must share a shard or a worker: an xdist_group, else
        // the configured scope (the test alone by default).
        let keep_together = ctx.keep_together;
        let group_of = |id: &String| -> String {
            state
                .groups
                .get(id)
                .cloned()
                .unwrap_or_else(|| keep_together.group_of(id))
        };
        // Shards split everything collected, then keep what is affected: a
        // test's shard must not depend on what each CI job finds affected
        // (jobs that disagree would otherwise each leave it to the other).
        let sharding = state.shard.filter(|_| !params.selected);
        let collected: Vec<(usize, String)> = match sharding {
            Some(_) => params
                .tests
                .iter()
                .map(|t| t.id.clone())
                .enumerate()
                .collect(),
            None => Vec::new(),
        };
        let mut run: Vec<(usize, String)> = match state.mode {
            _ if params.selected => params.tests.into_iter().map(|t| t.id).enumerate().collect(),
            RunMode::All => params.tests.into_iter().map(|t| t.id).enumerate().collect(),
            RunMode::Affected => params
                .tests
                .into_iter()
                .filter(|t| !state.unaffected.contains(&t.id))
                .map(|t| t.id)
                .enumerate()
                .collect(),
        };
        // Computed from the run's snapshot, so every process of the run
        // orders alike; ties keep collection order.
        match state.order {
            // What failed last time first, then new tests, then the fastest.
            Order::QuickFeedback => run.sort_by_key(|(index, id)| {
                let (class, duration) = state.priority.get(id).copied().unwrap_or((1, 0.0));
                (class, ordered(duration), *index)
            }),
            // The slowest first; a new test counts as a typical one.
            Order::LongestFirst => run.sort_by_key(|(index, id)| {
                let duration = state
                    .priority
                    .get(id)
                    .map_or(state.typical_seconds, |p| p.1);
                (std::cmp::Reverse(ordered(duration)), *index)
            }),
        }
        // A new test counts as a typical one; with no history at all there
        // is nothing to estimate from.
        let typical = (!state.priority.is_empty()).then_some(state.typical_seconds);
        let split = |run: &[(usize, String)], n: u32| {
            let groups: Vec<String> = run.iter().map(|(_, id)| group_of(id)).collect();
            let items: Vec<crate::partition::Item> = run
                .iter()
                .zip(&groups)
                .map(|((_, id), group)| crate::partition::Item {
                    id,
                    group,
                    // Without any history every test counts alike.
                    seconds: state
                        .priority
                        .get(id)
                        .map(|p| p.1)
                        .or(typical)
                        .unwrap_or(1.0),
                })
                .collect();
            crate::partition::lpt(&items, n as usize)
        };
        let mut shard_seconds = Vec::new();
        if let Some(shard) = sharding {
            let parts = split(&collected, shard.count);
            let part_of: HashMap<&String, usize> = parts
                .parts
                .iter()
                .enumerate()
                .flat_map(|(i, ids)| ids.iter().map(move |id| (id, i)))
                .collect();
            // What each shard runs of the selection, by history.
            shard_seconds = vec![0.0; shard.count as usize];
            for (_, id) in &run {
                if let Some(&i) = part_of.get(id) {
                    shard_seconds[i] += state
                        .priority
                        .get(id)
                        .map(|p| p.1)
                        .or(typical)
                        .unwrap_or(1.0);
                }
            }
            let mine = (shard.index - 1) as usize;
            run.retain(|(_, id)| part_of.get(id) == Some(&mine));
        }
        let (parts, part_seconds) = match params.parts {
            Some(n) if n > MAX_PARTS => {
                return Err(PytestError::Invalid(format!(
                    "parts: at most {MAX_PARTS}, not {n}"
                )));
            }
            Some(n) if n >= 1 => {
                let parts = split(&run, n);
                (parts.parts, parts.loads)
            }
            _ => (Vec::new(), Vec::new()),
        };
        ctx.store.set_run_selected(run_id, run.len() as u64)?;
        let estimates = run
            .iter()
            .map(|(_, id)| state.priority.get(id).map(|p| p.1).or(typical))
            .collect();
        Ok(Selection {
            run: run.into_iter().map(|(_, id)| id).collect(),
            estimates,
            shard_seconds,
            parts,
            part_seconds,
        })
    }

    pub fn end_run(&mut self, ctx: &mut Ctx<'_>, params: EndRunParams) -> Result<(), PytestError> {
        ctx.store.end_run(params.run_id, params.exit_status)?;
        self.runs.remove(&params.run_id);
        // Records replaced during the run leave their old sets behind.
        let dropped = ctx.store.drop_unused_depsets()?;
        let used: HashSet<i64> = self
            .tests
            .values()
            .map(|t| t.deps)
            .chain(self.collections.values().map(|c| c.0))
            .chain(self.imports.values().map(|c| c.0))
            .collect();
        self.depsets.retain(|id, _| used.contains(id));
        // Rebuild the table when most of it is no longer referenced.
        let referenced: HashSet<u32> = self
            .depsets
            .values()
            .flat_map(|s| s.iter().copied())
            .collect();
        if referenced.len() * 2 < self.deps.all.len() {
            let old = std::mem::take(&mut self.deps);
            for set in self.depsets.values_mut() {
                let deps: Vec<Dep> = set.iter().map(|&i| old.get(i).clone()).collect();
                *set = self.deps.set(deps);
            }
        }
        tracing::debug!(
            dropped,
            kept = self.depsets.len(),
            "dependency sets collected"
        );
        Ok(())
    }

    // -- recording ----------------------------------------------------------

    pub fn record(&mut self, ctx: &mut Ctx<'_>, params: RecordParams) -> Result<(), PytestError> {
        let (clock, env_id) = {
            let state = self.run_state(ctx, params.run_id)?;
            (state.clock, state.env)
        };
        let mut closures = {
            let seq = ctx.store.seq();
            let state = self
                .runs
                .get_mut(&params.run_id)
                .expect("run_state inserted it");
            if state.closures_seq != seq {
                state.closures.clear();
                state.closures_seq = seq;
            }
            std::mem::take(&mut state.closures)
        };
        let env = self.envs.get(&env_id).cloned();
        let resolver = self.resolver(env.as_deref());
        // Imports first: the tests of this batch ran after them.
        let mut imports: HashMap<RepoPath, BTreeSet<Dep>> = HashMap::new();
        for i in &params.imports {
            let deps = self.resolve_deps(ctx, &resolver, &mut closures, clock, &i.deps)?;
            imports.insert(RepoPath::new(i.file.clone()), deps);
        }
        let mut tests = Vec::with_capacity(params.tests.len());
        for result in &params.tests {
            let mut deps = self.resolve_deps(ctx, &resolver, &mut closures, clock, &result.deps)?;
            self.expand_imports(&mut deps, &imports);
            self.add_literal_deps(ctx, &mut deps, false);
            tests.push((result, RepoPath::new(result.file.clone()), deps));
        }
        let mut collections = Vec::with_capacity(params.collection.len());
        for c in &params.collection {
            let file = RepoPath::new(c.file.clone());
            let mut deps = self.resolve_deps(ctx, &resolver, &mut closures, clock, &c.deps)?;
            deps.extend(self.static_collection_deps(ctx, &resolver, &mut closures, &file));
            self.expand_imports(&mut deps, &imports);
            self.add_literal_deps(ctx, &mut deps, true);
            collections.push((file, deps.into_iter().collect::<Vec<_>>()));
        }
        let imports: Vec<(RepoPath, Vec<Dep>)> = imports
            .into_iter()
            .map(|(f, d)| (f, d.into_iter().collect()))
            .collect();
        if let Some(state) = self.runs.get_mut(&params.run_id) {
            state.closures = closures;
        }
        let rows: Vec<(Vec<Dep>, &tim_proto::TestResult, RepoPath)> = tests
            .into_iter()
            .map(|(r, f, d)| (d.into_iter().collect(), r, f))
            .collect();
        let new: Vec<NewTest<'_>> = rows
            .iter()
            .map(|(deps, r, file)| NewTest {
                node_id: &r.id,
                file,
                outcome: r.outcome.as_str(),
                durations: [r.durations.setup, r.durations.call, r.durations.teardown],
                deps,
                markers: &r.markers,
            })
            .collect();
        let batch = Batch {
            tests: new,
            collections: collections
                .iter()
                .map(|(f, d)| (f.clone(), d.as_slice()))
                .collect(),
            imports: imports
                .iter()
                .map(|(f, d)| (f.clone(), d.as_slice()))
                .collect(),
        };
        let sets = ctx
            .store
            .record(params.run_id, env_id, ctx.history_keep, &batch)?;
        drop(batch);
        for ((file, deps), set) in imports.into_iter().zip(sets.imports) {
            if !self.depsets.contains_key(&set) {
                let interned = self.deps.set(deps);
                self.depsets.insert(set, interned);
            }
            self.imports.insert(file, (set, env_id));
        }
        for ((deps, r, file), set) in rows.into_iter().zip(sets.tests) {
            if !self.depsets.contains_key(&set) {
                let interned = self.deps.set(deps);
                self.depsets.insert(set, interned);
            }
            self.tests.insert(
                r.id.clone(),
                TestRecord {
                    file,
                    outcome: r.outcome,
                    duration: r.durations.setup + r.durations.call + r.durations.teardown,
                    markers: r.markers.clone(),
                    deps: set,
                    env: env_id,
                    run: params.run_id,
                },
            );
        }
        for ((file, deps), set) in collections.into_iter().zip(sets.collections) {
            if !self.depsets.contains_key(&set) {
                let interned = self.deps.set(deps);
                self.depsets.insert(set, interned);
            }
            self.collections.insert(file, (set, env_id));
        }
        Ok(())
    }

    /// Records Rust tests: every test of a binary gets the binary's
    /// dependencies (see [`crate::cargo`]), with the hashes the files have
    /// now; a file changed since the run began is recorded as unknown.
    pub fn record_cargo(
        &mut self,
        ctx: &mut Ctx<'_>,
        params: tim_proto::CargoRecordParams,
    ) -> Result<(), PytestError> {
        let (clock, env_id) = {
            let state = self.run_state(ctx, params.run_id)?;
            (state.clock, state.env)
        };
        // A run the daemon rebuilt after a restart has no toolchain: one
        // that matches no real one keeps these tests affected.
        let env_id = match self.envs.get(&env_id) {
            Some(env) if cargo::is_cargo_env(env) => env_id,
            _ => {
                let env = cargo::snapshot("(unknown: the daemon restarted during the run)");
                let id = ctx.store.intern_env(&env)?;
                self.envs.insert(id, Arc::new(env));
                id
            }
        };
        let run_env = self
            .runs
            .get(&params.run_id)
            .and_then(|r| r.cargo_env.clone());
        let site = BuildSite {
            clock,
            workspace: Path::new(&params.workspace_root),
            target: Path::new(&params.target_dir),
            env: run_env.as_ref(),
        };
        let mut memo = HashMap::new();
        let mut by_binary: HashMap<&str, (RepoPath, Vec<Dep>)> = HashMap::new();
        for binary in &params.binaries {
            let deps = self.binary_deps(ctx, binary, &site, &mut memo)?;
            by_binary.insert(
                &binary.binary_id,
                (
                    RepoPath::new(binary.src.clone()),
                    deps.into_iter().collect(),
                ),
            );
        }
        // Each binary listed its tests in full: known ones it no longer
        // has are gone, and one without tests gets a marker.
        let mut gone = Vec::new();
        let mut markers = Vec::new();
        for binary in &params.binaries {
            let listed: HashSet<&String> = binary.tests.iter().collect();
            let marker = cargo::marker_id(&binary.binary_id);
            for id in self.tests.keys() {
                if cargo::binary_of(id) == Some(binary.binary_id.as_str())
                    && !listed.contains(id)
                    && (*id != marker || !listed.is_empty())
                {
                    gone.push(id.clone());
                }
            }
            if listed.is_empty() {
                markers.push(tim_proto::CargoTestResult {
                    id: marker,
                    binary_id: binary.binary_id.clone(),
                    outcome: tim_proto::Outcome::Passed,
                    seconds: 0.0,
                });
            }
        }
        if !gone.is_empty() {
            ctx.store.forget(&gone, &[])?;
            for id in &gone {
                self.tests.remove(id);
            }
        }
        let missing = vec![Dep::Incomplete {
            why: "its test binary was not reported".into(),
        }];
        let rows: Vec<(&tim_proto::CargoTestResult, RepoPath, &Vec<Dep>)> = params
            .tests
            .iter()
            .chain(&markers)
            .map(|t| match by_binary.get(t.binary_id.as_str()) {
                Some((src, deps)) => (t, src.clone(), deps),
                None => (t, RepoPath::new(String::new()), &missing),
            })
            .collect();
        let new: Vec<NewTest<'_>> = rows
            .iter()
            .map(|(t, file, deps)| NewTest {
                node_id: &t.id,
                file,
                outcome: t.outcome.as_str(),
                durations: [0.0, t.seconds.max(0.0), 0.0],
                deps,
                markers: &[],
            })
            .collect();
        let batch = Batch {
            tests: new,
            collections: Vec::new(),
            imports: Vec::new(),
        };
        let sets = ctx
            .store
            .record(params.run_id, env_id, ctx.history_keep, &batch)?;
        drop(batch);
        for ((t, file, deps), set) in rows.into_iter().zip(sets.tests) {
            if !self.depsets.contains_key(&set) {
                let interned = self.deps.set(deps.clone());
                self.depsets.insert(set, interned);
            }
            self.tests.insert(
                t.id.clone(),
                TestRecord {
                    file,
                    outcome: t.outcome,
                    duration: t.seconds.max(0.0),
                    markers: Vec::new(),
                    deps: set,
                    env: env_id,
                    run: params.run_id,
                },
            );
        }
        Ok(())
    }

    /// What a test binary was built from: the files its dep-info and that
    /// of the workspace libraries it links list (generated files in the
    /// target directory are judged through the build scripts that wrote
    /// them), the build scripts' declared inputs (everything in the
    /// package when they declare none, as Cargo does), manifests,
    /// `Cargo.lock` entries of outside packages, environment variables.
    /// Inputs shared by many binaries (a core library's dep-info, its
    /// build script) are read and judged once per record (`memo`).
    fn binary_deps(
        &mut self,
        ctx: &Ctx<'_>,
        binary: &tim_proto::CargoBinary,
        site: &BuildSite<'_>,
        memo: &mut HashMap<String, Arc<BTreeSet<Dep>>>,
    ) -> Result<BTreeSet<Dep>, PytestError> {
        let mut deps = BTreeSet::new();
        let inputs = binary.dep_info.iter().map(BuildInput::DepInfo).chain(
            binary.build_scripts.iter().flat_map(|script| {
                script
                    .dep_info
                    .iter()
                    .map(BuildInput::DepInfo)
                    .chain([BuildInput::Script(script)])
            }),
        );
        for input in inputs {
            let key = match input {
                BuildInput::DepInfo(path) => format!("d:{path}"),
                BuildInput::Script(script) => format!("s:{}", script.output),
            };
            let judged = match memo.get(&key) {
                Some(judged) => judged.clone(),
                None => {
                    let judged = Arc::new(self.input_deps(ctx, input, site)?);
                    memo.insert(key, judged.clone());
                    judged
                }
            };
            deps.extend(judged.iter().cloned());
        }
        let mut files = BTreeSet::new();
        let mut outside = BTreeSet::new();
        for manifest in &binary.manifests {
            match ctx.filter.relative(Path::new(manifest)) {
                Some(rel) => files.insert(rel),
                None => outside.insert(PathBuf::from(manifest)),
            };
        }
        deps.extend(self.file_deps(ctx, site.clock, files, BTreeSet::new(), outside)?);
        if let Some(lock) = binary.lock.as_deref() {
            let lock = ctx.filter.relative(Path::new(lock));
            let mut tree = Current::new(ctx, &mut self.view);
            for package in &binary.externals {
                let hash = lock.as_ref().and_then(|l| tree.lock_entry(l, package));
                deps.insert(match (&lock, hash) {
                    (Some(lock), Some(hash)) => Dep::Lock {
                        lock: lock.clone(),
                        package: package.clone(),
                        hash,
                    },
                    _ => Dep::Incomplete {
                        why: "Cargo.lock could not be read".into(),
                    },
                });
            }
        }
        Ok(deps)
    }

    /// One input of a build as dependencies: what a dep-info file lists, or
    /// what a build script declared.
    fn input_deps(
        &mut self,
        ctx: &Ctx<'_>,
        input: BuildInput<'_>,
        site: &BuildSite<'_>,
    ) -> Result<BTreeSet<Dep>, PytestError> {
        let mut files: BTreeSet<RepoPath> = BTreeSet::new();
        let mut dirs: BTreeSet<RepoPath> = BTreeSet::new();
        // Files read from outside the root: tim does not watch them.
        let mut outside: BTreeSet<PathBuf> = BTreeSet::new();
        let mut env: BTreeMap<String, Option<ContentHash>> = BTreeMap::new();
        let (path, what) = match input {
            BuildInput::DepInfo(path) => (path, "dep-info file"),
            BuildInput::Script(script) => (&script.output, "build script output"),
        };
        let Ok(text) = std::fs::read_to_string(path) else {
            return Ok(BTreeSet::from([Dep::Incomplete {
                why: format!("{what} {path} could not be read (not built?)"),
            }]));
        };
        match input {
            BuildInput::DepInfo(_) => {
                let info = cargo::parse_dep_info(&text, site.workspace);
                for file in info.files {
                    let file = cargo::normalize(&file);
                    if file.starts_with(site.target) {
                        continue;
                    }
                    match ctx.filter.relative(&file) {
                        Some(rel) => files.insert(rel),
                        None => outside.insert(file),
                    };
                }
                for (name, value) in info.env {
                    if !cargo::set_by_cargo(&name) {
                        env.insert(name, cargo::env_hash(value.as_deref()));
                    }
                }
            }
            BuildInput::Script(script) => {
                let declared = cargo::parse_build_output(&text);
                let package = Path::new(&script.package_dir);
                let mut inputs: Vec<PathBuf> = Vec::new();
                if declared.rerun_if_changed.is_empty() {
                    inputs.push(package.to_path_buf());
                }
                for path in &declared.rerun_if_changed {
                    inputs.push(cargo::normalize(&package.join(path)));
                }
                for input in inputs {
                    let Some(input) = ctx.filter.relative(&input) else {
                        outside.insert(input);
                        continue;
                    };
                    if ctx.index.has_dir(&input) || input == RepoPath::root() {
                        // A directory: every file in it, and its listings
                        // (a file added to it counts too).
                        for (path, _) in ctx.index.files() {
                            if path.starts_with_dir(&input) {
                                let mut at = path.split().map(|(d, _)| d);
                                while let Some(dir) = at.filter(|d| d.starts_with_dir(&input)) {
                                    at = dir.split().map(|(d, _)| d);
                                    if !dirs.insert(dir) {
                                        break;
                                    }
                                }
                                files.insert(path);
                            }
                        }
                        dirs.insert(input);
                    } else {
                        files.insert(input);
                    }
                }
                for name in declared.rerun_if_env_changed {
                    let value = site.env.and_then(|e| e.get(&name)).map(String::as_str);
                    env.insert(name, cargo::env_hash(value));
                }
            }
        }
        let mut deps = self.file_deps(ctx, site.clock, files, dirs, outside)?;
        deps.extend(
            env.into_iter()
                .map(|(name, hash)| Dep::EnvVar { name, hash }),
        );
        Ok(deps)
    }

    /// Files and directories as they are now (a file changed since the
    /// run began: unknown), and files outside the root as incomplete.
    fn file_deps(
        &mut self,
        ctx: &Ctx<'_>,
        clock: u64,
        files: BTreeSet<RepoPath>,
        dirs: BTreeSet<RepoPath>,
        outside: BTreeSet<PathBuf>,
    ) -> Result<BTreeSet<Dep>, PytestError> {
        let mut deps = BTreeSet::new();
        for file in outside {
            deps.insert(Dep::Incomplete {
                why: format!(
                    "built from {}, outside the project root (tim does not watch it)",
                    file.display()
                ),
            });
        }
        let tree = Current::new(ctx, &mut self.view);
        for dir in dirs {
            let hash = tree.dir_hash(&dir);
            deps.insert(Dep::Dir { path: dir, hash });
        }
        for file in files {
            let edited = ctx
                .store
                .file_changed_seq(&file)?
                .is_some_and(|seq| seq > clock);
            deps.insert(if edited {
                // Built in its old or its new form: unknown, stays affected.
                Dep::Code {
                    file,
                    file_hash: None,
                    block: None,
                    hash: None,
                }
            } else {
                let hash = tree.file_hash(&file);
                Dep::File { path: file, hash }
            });
        }
        Ok(deps)
    }

    /// Adds what the imports `deps` rely on ran: for every module whose
    /// import-time code is a dependency, the dependencies of its import
    /// record (this batch's, else the stored one), transitively. A test that
    /// reads `m.VALUE` depends on `build()` in `VALUE = build()` even when
    /// another test file imported `m` first. A module without a record was
    /// not imported under recording, so its import ran nothing more.
    fn expand_imports(&self, deps: &mut BTreeSet<Dep>, fresh: &HashMap<RepoPath, BTreeSet<Dep>>) {
        fn module_of(dep: &Dep) -> Option<&RepoPath> {
            match dep {
                Dep::Code {
                    file, block: None, ..
                } => Some(file),
                Dep::Code {
                    file,
                    block: Some(b),
                    ..
                } if b == MODULE_BLOCK => Some(file),
                _ => None,
            }
        }
        let mut seen: HashSet<RepoPath> = HashSet::new();
        let mut work: Vec<RepoPath> = deps.iter().filter_map(module_of).cloned().collect();
        while let Some(file) = work.pop() {
            if !seen.insert(file.clone()) {
                continue;
            }
            let added: Vec<Dep> = match fresh.get(&file) {
                Some(d) => d.iter().cloned().collect(),
                None => match self
                    .imports
                    .get(&file)
                    .and_then(|(set, _)| self.depsets.get(set))
                {
                    Some(ids) => ids.iter().map(|&i| self.deps.get(i).clone()).collect(),
                    None => continue,
                },
            };
            for dep in added {
                if let Some(f) = module_of(&dep)
                    && !seen.contains(f)
                {
                    work.push(f.clone());
                }
                deps.insert(dep);
            }
        }
    }

    /// Adds the literal module constants (`LIMIT = 10`, see
    /// [`pyparse::LITERAL_PREFIX`]) of every module whose import-time code
    /// is in `deps` that the code in `deps` mentions: function blocks that
    /// ran, import-time code of the modules involved, and for a collection
    /// (`collection`) the decorators and signatures of test files and
    /// conftests. Code that cannot be read this way (a whole-file
    /// dependency, an unparsable file, reflection) mentions every constant.
    fn add_literal_deps(&mut self, ctx: &Ctx<'_>, deps: &mut BTreeSet<Dep>, collection: bool) {
        let mut tree = self.current(ctx);
        let mut reflective = false;
        // Blocks whose code counts (borrowed from `deps`), and for a
        // collection the test files and conftests whose headers count.
        let mut readers: Vec<(Arc<ParsedModule>, &str)> = Vec::new();
        let mut headers: Vec<Arc<ParsedModule>> = Vec::new();
        let mut modules: Vec<(&RepoPath, Option<ContentHash>, Arc<ParsedModule>)> = Vec::new();
        for dep in deps.iter() {
            let Dep::Code {
                file,
                file_hash,
                block,
                ..
            } = dep
            else {
                continue;
            };
            let Some(parsed) = tree.parsed(file) else {
                reflective = true;
                continue;
            };
            match block.as_deref() {
                None => {
                    reflective = true;
                    modules.push((file, *file_hash, parsed));
                }
                Some(b) if b.starts_with(pyparse::LITERAL_PREFIX) => {}
                Some(b) => {
                    reflective |= parsed.reflective.contains(b);
                    if b == MODULE_BLOCK {
                        if collection {
                            reflective |= parsed.reflective.iter().any(|k| k.ends_with("#header"));
                            headers.push(parsed.clone());
                        }
                        modules.push((file, *file_hash, parsed.clone()));
                    }
                    readers.push((parsed, b));
                }
            }
        }
        // Most modules bind no literal: then nothing more to do.
        if modules.iter().all(|(_, _, p)| p.literals.is_empty()) {
            return;
        }
        let mentioned = |name: &String| {
            readers
                .iter()
                .any(|(p, key)| p.mentions.get(*key).is_some_and(|m| m.contains(name)))
                || headers.iter().any(|p| {
                    p.mentions
                        .iter()
                        .any(|(k, m)| k.ends_with("#header") && m.contains(name))
                })
        };
        let mut added = Vec::new();
        for (file, file_hash, parsed) in &modules {
            for name in parsed
                .literals
                .iter()
                .filter(|n| reflective || mentioned(n))
            {
                let block = format!("{}{name}", pyparse::LITERAL_PREFIX);
                added.push(Dep::Code {
                    file: (*file).clone(),
                    file_hash: *file_hash,
                    hash: parsed.block(&block).map(|b| b.hash),
                    block: Some(block),
                });
            }
        }
        deps.extend(added);
    }

    /// Plugin-reported dependencies → dependencies with recorded hashes.
    fn resolve_deps(
        &mut self,
        ctx: &Ctx<'_>,
        resolver: &Resolver,
        closures: &mut HashMap<RepoPath, Arc<BTreeSet<Dep>>>,
        run_clock: u64,
        deps: &Deps,
    ) -> Result<BTreeSet<Dep>, PytestError> {
        let mut out = BTreeSet::new();
        if let Some(why) = &deps.incomplete {
            out.insert(Dep::Incomplete { why: why.clone() });
        }
        // Fixtures served from the artifact cache: what producing them
        // depended on (an entry of inputs only adds nothing).
        for used in &deps.artifacts {
            // `key@digest`: the entry, and the artifact the test got.
            let (key, blob) = used.rsplit_once('@').unwrap_or((used.as_str(), ""));
            out.insert(Dep::Artifact {
                key: key.to_owned(),
                blob: blob.to_owned(),
            });
            match ctx.store.cache_entry(key)? {
                Some(CacheRow { deps: None, .. }) => {}
                Some(CacheRow {
                    deps: Some(Some(list)),
                    ..
                }) => out.extend(list),
                _ => {
                    out.insert(Dep::Incomplete {
                        why: format!("the artifact cache entry {key} is gone"),
                    });
                }
            }
        }
        for (file, qualnames) in &deps.code {
            let path = RepoPath::new(file.clone());
            // Untracked code (an ignored directory, a virtualenv inside the
            // root) is not project code: installed packages are tracked as
            // the environment.
            if is_state_path(&path) || ctx.index.get(&path).is_none() {
                continue;
            }
            // A file that changed after the run began may have run in its
            // old or its new form: record "unknown", which stays affected.
            // (An untracked file has no clock; its hash is read from disk.)
            let edited = ctx
                .store
                .file_changed_seq(&path)?
                .is_some_and(|seq| seq > run_clock);
            let mut tree = self.current(ctx);
            let file_hash = if edited { None } else { tree.file_hash(&path) };
            let parsed = tree.parsed(&path);
            let mut blocks: BTreeSet<Option<String>> = BTreeSet::new();
            blocks.insert(Some(MODULE_BLOCK.to_owned()));
            for q in qualnames {
                blocks.insert(parsed.as_ref().and_then(|p| block_for(q, p)));
            }
            // Imports inside the blocks that ran: a lazily imported module
            // is imported once per process, so later tests never see its
            // import-time code run, yet they read what it defined.
            let lazy: Vec<crate::pyparse::Import> = parsed
                .as_ref()
                .map(|p| {
                    p.lazy_imports
                        .iter()
                        .filter(|(block, _)| blocks.contains(&Some(block.clone())))
                        .map(|(_, import)| import.clone())
                        .collect()
                })
                .unwrap_or_default();
            for block in blocks {
                let hash = match (&block, &parsed) {
                    (Some(name), Some(p)) => p.block(name).map(|b| b.hash),
                    _ => None,
                };
                out.insert(Dep::Code {
                    file: path.clone(),
                    file_hash,
                    block,
                    hash,
                });
            }
            out.extend(
                self.closure_deps(ctx, resolver, closures, &path)
                    .iter()
                    .cloned(),
            );
            if !lazy.is_empty() {
                let resolved = resolver.resolve(&self.current(ctx), &path, &lazy);
                for module in resolved.external {
                    out.insert(Dep::External { module });
                }
                for target in resolved.files {
                    out.extend(
                        self.closure_deps(ctx, resolver, closures, &target)
                            .iter()
                            .cloned(),
                    );
                }
            }
        }
        let tree = self.current(ctx);
        for path in deps.files.iter().map(|f| RepoPath::new(f.clone())) {
            if is_derived(&path) {
                continue;
            }
            out.insert(Dep::File {
                hash: tree.file_hash(&path),
                path,
            });
        }
        for path in deps.dirs.iter().map(|d| RepoPath::new(d.clone())) {
            if is_derived(&path) {
                continue;
            }
            out.insert(Dep::Dir {
                hash: tree.dir_hash(&path),
                path,
            });
        }
        Ok(out)
    }

    /// The module blocks of everything `file` imports (transitively) and
    /// the outside modules among them, memoized per request.
    fn closure_deps(
        &mut self,
        ctx: &Ctx<'_>,
        resolver: &Resolver,
        memo: &mut HashMap<RepoPath, Arc<BTreeSet<Dep>>>,
        file: &RepoPath,
    ) -> Arc<BTreeSet<Dep>> {
        if let Some(done) = memo.get(file) {
            return done.clone();
        }
        self.refresh_graph(ctx, resolver, file);
        let (files, external) = self.graph.closure(file);
        let mut tree = self.current(ctx);
        let mut deps = BTreeSet::new();
        for f in files {
            if !f.as_str().ends_with(".py") {
                // A compiled extension: its bytes are what runs.
                deps.insert(Dep::File {
                    hash: tree.file_hash(&f),
                    path: f,
                });
                continue;
            }
            let file_hash = tree.file_hash(&f);
            let hash = tree
                .parsed(&f)
                .and_then(|p| p.block(MODULE_BLOCK).map(|b| b.hash));
            deps.insert(Dep::Code {
                file: f,
                file_hash,
                block: Some(MODULE_BLOCK.to_owned()),
                hash,
            });
        }
        for module in external {
            deps.insert(Dep::External { module });
        }
        let deps = Arc::new(deps);
        memo.insert(file.clone(), deps.clone());
        deps
    }

    /// Re-resolves the imports of every file reachable from `start` whose
    /// content changed since it was last resolved.
    fn refresh_graph(&mut self, ctx: &Ctx<'_>, resolver: &Resolver, start: &RepoPath) {
        let mut queue = vec![start.clone()];
        let mut seen = HashSet::new();
        while let Some(file) = queue.pop() {
            if !seen.insert(file.clone()) {
                continue;
            }
            let mut tree = Current::new(ctx, &mut self.view);
            let Some(hash) = tree.file_hash(&file) else {
                continue;
            };
            if !file.as_str().ends_with(".py") {
                continue;
            }
            if self.graph_hashes.get(&file) != Some(&hash) || !self.graph.knows(&file) {
                let Some(parsed) = tree.parsed(&file) else {
                    continue;
                };
                let resolved = resolver.resolve(&tree, &file, &parsed.imports);
                self.graph.set_imports(&file, &resolved);
                self.graph_hashes.insert(file.clone(), hash);
            }
            queue.extend(self.graph.imports_of(&file));
        }
    }

    /// What collecting a test file depends on besides what ran: its import
    /// closure, the conftest files above it (and their closures), and
    /// pytest's configuration files.
    fn static_collection_deps(
        &mut self,
        ctx: &Ctx<'_>,
        resolver: &Resolver,
        memo: &mut HashMap<RepoPath, Arc<BTreeSet<Dep>>>,
        file: &RepoPath,
    ) -> BTreeSet<Dep> {
        let mut deps: BTreeSet<Dep> = self
            .closure_deps(ctx, resolver, memo, file)
            .iter()
            .cloned()
            .collect();
        let mut dir = file.split().map(|(d, _)| d);
        while let Some(d) = dir {
            let conftest = d.join("conftest.py");
            if ctx.index.get(&conftest).is_some() {
                deps.extend(
                    self.closure_deps(ctx, resolver, memo, &conftest)
                        .iter()
                        .cloned(),
                );
            }
            dir = d.split().map(|(p, _)| p);
        }
        let tree = self.current(ctx);
        for name in CONFIG_FILES {
            let path = RepoPath::new(*name);
            deps.insert(Dep::Config {
                hash: tree.config_hash(&path),
                path,
            });
        }
        deps
    }

    // -- queries --------------------------------------------------------------

    /// The environment as it is now: the latest run's interpreter (or the
    /// one the client names) with the distributions on disk now.
    fn current_env(&mut self, python: Option<&str>) -> Option<Snapshot> {
        let latest = self.envs.get(&self.latest_env?)?;
        let mut env = Snapshot::clone(latest);
        env.dists = pyenv::scan_cached(&env.site_dirs, &mut self.dist_cache);
        if let Some(python) = python
            && python != env.python
        {
            env.python = python.to_owned();
            env.version = String::from("(unknown until the next run)");
        }
        Some(env)
    }

    /// Every affected known test with its reasons, against environment
    /// `env`.
    fn evaluate(
        &mut self,
        ctx: &Ctx<'_>,
        env: Option<&Snapshot>,
        toolchain: Option<&Snapshot>,
    ) -> BTreeMap<String, Vec<Reason>> {
        let mut env_changes: HashMap<i64, Option<EnvChange>> = HashMap::new();
        for id in self
            .tests
            .values()
            .map(|t| t.env)
            .chain(self.collections.values().map(|c| c.1))
        {
            env_changes.entry(id).or_insert_with(|| {
                self.envs.get(&id).map_or(
                    Some(EnvChange::Everything(
                        "environment: the recorded one is unreadable".into(),
                    )),
                    |old| env_change(old, env, toolchain),
                )
            });
        }
        // Records, not ids: looking an id up again costs a B-tree search.
        let mut by_env: BTreeMap<i64, Vec<(&String, &TestRecord)>> = BTreeMap::new();
        for (id, record) in &self.tests {
            by_env.entry(record.env).or_default().push((id, record));
        }
        let mut out = BTreeMap::new();
        let collections = &self.collections;
        let depsets = &self.depsets;
        let table = &self.deps;
        let mut tree = Current::new(ctx, &mut self.view);
        for (env_id, ids) in by_env {
            let change = env_changes.get(&env_id).cloned().flatten();
            let mut eval = Evaluator::new(&mut tree, change.as_ref());
            let mut verdicts: HashMap<i64, Vec<Reason>> = HashMap::new();
            // Per interned dependency: not judged yet, fresh, or stale.
            let mut judged: Vec<Option<Option<Reason>>> = vec![None; table.all.len()];
            // Ids sort by file, so a file's tests come one after another:
            // its collection verdict is looked up once per run of them.
            let mut last_file: Option<(&RepoPath, Option<Vec<Reason>>)> = None;
            for (id, record) in ids {
                let mut reasons = Vec::new();
                if record.outcome.is_failure() {
                    reasons.push(Reason::FailedLastTime(record.outcome.as_str()));
                }
                if let Some(EnvChange::Everything(why)) = &change {
                    reasons.push(Reason::Environment(why.clone()));
                }
                // Tests of one file share their collection set, and often
                // their own: judge each set once.
                let mut judge = |set: i64| -> Option<Vec<Reason>> {
                    if let Some(done) = verdicts.get(&set) {
                        return Some(done.clone());
                    }
                    let ids = depsets.get(&set)?;
                    let mut found = BTreeSet::new();
                    for &i in ids.iter() {
                        let verdict = judged[i as usize]
                            .get_or_insert_with(|| eval.stale_uncached(table.get(i)));
                        if let Some(reason) = verdict {
                            found.insert(reason.clone());
                        }
                    }
                    let found: Vec<Reason> = found.into_iter().collect();
                    verdicts.insert(set, found.clone());
                    Some(found)
                };
                match judge(record.deps) {
                    Some(found) => reasons.extend(found),
                    None => {
                        reasons.push(Reason::Environment("no usable record of this test".into()))
                    }
                }
                let collection = match &last_file {
                    Some((file, found)) if *file == &record.file => found.clone(),
                    _ => {
                        let found = collections
                            .get(&record.file)
                            .and_then(|(set, _)| judge(*set));
                        last_file = Some((&record.file, found.clone()));
                        found
                    }
                };
                if let Some(found) = collection {
                    reasons.extend(found);
                }
                if !reasons.is_empty() {
                    reasons.sort();
                    reasons.dedup();
                    out.insert(id.clone(), reasons);
                }
            }
        }
        out
    }

    /// Forgets tests that cannot exist any more: their file is gone, or
    /// their function was removed from a file that parses. Forgetting is
    /// always safe: a test that does exist is new to tim and runs.
    fn forget_vanished(&mut self, ctx: &mut Ctx<'_>) {
        let mut gone = Vec::new();
        let mut gone_files = Vec::new();
        {
            let mut tree = Current::new(ctx, &mut self.view);
            // Per test file: gone, unchanged since collected, or changed.
            // Only a changed file is parsed, and only its tests checked.
            let mut changed: HashMap<&RepoPath, Option<Arc<ParsedModule>>> = HashMap::new();
            let mut unchanged: HashSet<&RepoPath> = HashSet::new();
            for (id, record) in &self.tests {
                let file = &record.file;
                if unchanged.contains(file) {
                    continue;
                }
                // A Rust test's file is its binary's main source: gone, the
                // binary is gone.
                if cargo::is_cargo(id) {
                    if tree.file_hash(file).is_none() {
                        gone.push(id.clone());
                    }
                    continue;
                }
                if !changed.contains_key(file) {
                    let Some(now) = tree.file_hash(file) else {
                        gone.push(id.clone());
                        continue;
                    };
                    let collected = self
                        .collections
                        .get(file)
                        .and_then(|(set, _)| self.depsets.get(set))
                        .and_then(|ids| {
                            ids.iter().find_map(|&i| match self.deps.get(i) {
                                Dep::Code {
                                    file: f, file_hash, ..
                                } if f == file => *file_hash,
                                _ => None,
                            })
                        });
                    if collected == Some(now) {
                        unchanged.insert(file);
                        continue;
                    }
                    let parsed = tree.parsed(file).filter(|p| p.syntax_error.is_none());
                    changed.insert(file, parsed);
                }
                let Some(Some(parsed)) = changed.get(file) else {
                    continue;
                };
                let Some(qualname) = test_qualname(id) else {
                    continue;
                };
                if parsed.block(&qualname).is_some() {
                    continue;
                }
                // Only a test whose function was a block when recorded can
                // be known to have vanished (generated tests never were).
                let was_block = self.depsets.get(&record.deps).is_some_and(|ids| {
                    ids.iter().any(|&i| matches!(self.deps.get(i), Dep::Code { file: f, block: Some(b), .. } if f == file && *b == qualname))
                });
                if was_block {
                    gone.push(id.clone());
                }
            }
            for file in self.collections.keys() {
                if tree.file_hash(file).is_none() {
                    gone_files.push(file.clone());
                }
            }
        }
        if gone.is_empty() && gone_files.is_empty() {
            return;
        }
        if let Err(e) = ctx.store.forget(&gone, &gone_files) {
            tracing::warn!(error = %e, "cannot forget vanished tests");
            return;
        }
        tracing::info!(
            tests = gone.len(),
            files = gone_files.len(),
            "forgot vanished tests"
        );
        for id in gone {
            self.tests.remove(&id);
        }
        for file in gone_files {
            self.collections.remove(&file);
        }
    }

    pub fn affected(
        &mut self,
        ctx: &mut Ctx<'_>,
        params: AffectedParams,
        since: Option<&Since>,
    ) -> AffectedReply {
        self.forget_vanished(ctx);
        let toolchain = params.cargo.as_ref().map(|c| self.note_cargo(c));
        let rust_total = self
            .tests
            .keys()
            .filter(|id| cargo::is_cargo(id) && !cargo::is_marker(id))
            .count() as u64;
        let total = self.tests.keys().filter(|id| !cargo::is_cargo(id)).count() as u64;
        // pytest's part: its environment, or why everything must run.
        let python: Result<Option<Snapshot>, String> = match params.python.as_deref() {
            // A client that runs no pytest (a Cargo workspace only).
            None if total == 0 && params.cargo.is_some() => Ok(None),
            python => match self.current_env(python) {
                None => Err("no test run has been recorded yet".into()),
                Some(_) if total == 0 => Err("no test has been recorded yet".into()),
                Some(env) => {
                    let latest = &self.envs[&self.latest_env.expect("current_env found it")];
                    match pyenv::diff(latest, &env) {
                        Some(EnvChange::Everything(why)) => Err(why),
                        _ => Ok(Some(env)),
                    }
                }
            },
        };
        let (py_env, run_all) = match python {
            Ok(env) => (env, None),
            Err(why) => (None, Some(why)),
        };
        let mut affected = if py_env.is_some() || toolchain.is_some() {
            self.evaluate(ctx, py_env.as_ref(), toolchain.as_ref())
        } else {
            BTreeMap::new()
        };
        if let Some(since) = since {
            for (id, reasons) in self.since_reasons(since) {
                affected.entry(id).or_default().extend(reasons);
            }
        }
        // Each part answers for its own tests only.
        let judged = |id: &str| {
            if cargo::is_cargo(id) {
                toolchain.is_some()
            } else {
                py_env.is_some()
            }
        };
        affected.retain(|id, _| judged(id));
        let unaffected_seconds = self
            .tests
            .iter()
            .filter(|(id, _)| judged(id) && !affected.contains_key(*id))
            .map(|(_, t)| t.duration)
            .sum();
        let cargo = params
            .cargo
            .as_ref()
            .map(|c| self.cargo_part(c, rust_total, &affected));
        let reply = |tests, collect| AffectedReply {
            tests,
            total,
            collect,
            run_all,
            clock: ctx.clock.clone(),
            unaffected_seconds,
            cargo,
        };
        if py_env.is_none() {
            return reply(affected_tests(affected), Vec::new());
        }
        let mut collect: BTreeMap<RepoPath, BTreeSet<String>> = BTreeMap::new();
        let mut per_file: BTreeMap<&RepoPath, usize> = BTreeMap::new();
        for id in affected.keys().filter(|id| !cargo::is_cargo(id)) {
            *per_file.entry(&self.tests[id].file).or_default() += 1;
        }
        for (file, n) in per_file {
            collect
                .entry(file.clone())
                .or_default()
                .insert(format!("{} affected", plural(n, "test")));
        }
        // Collection inputs changed: the file may hold new tests.
        let mut tree = Current::new(ctx, &mut self.view);
        let mut eval = Evaluator::new(&mut tree, None);
        for (file, (set, _)) in &self.collections {
            let Some(deps) = self.depsets.get(set) else {
                continue;
            };
            let deps: Vec<&Dep> = deps.iter().map(|&i| self.deps.get(i)).collect();
            // Any edit of the test file itself may add or rename tests.
            let recorded = deps.iter().find_map(|d| match d {
                Dep::Code {
                    file: f, file_hash, ..
                } if f == file => Some(*file_hash),
                _ => None,
            });
            let edited = match recorded {
                Some(Some(hash)) => ctx.index.get(file).map(|m| m.hash) != Some(hash),
                _ => true,
            };
            let reason = if edited {
                Some(format!("collect again: {file} changed"))
            } else {
                eval.reasons(deps.iter().copied())
                    .into_iter()
                    .next()
                    .map(|r| format!("collect again: {r}"))
            };
            if let Some(reason) = reason {
                collect.entry(file.clone()).or_default().insert(reason);
            }
        }
        drop(eval);
        let known_files: HashSet<&RepoPath> = self
            .collections
            .keys()
            .chain(self.tests.values().map(|t| &t.file))
            .collect();
        for (path, _) in ctx.index.files() {
            let in_testpaths =
                self.testpaths.is_empty() || self.testpaths.iter().any(|t| path.starts_with_dir(t));
            if in_testpaths
                && is_test_file(&path, &self.view.patterns)
                && !known_files.contains(&path)
            {
                collect
                    .entry(path)
                    .or_default()
                    .insert("new test file".to_owned());
            }
        }
        let tests = affected_tests(affected);
        let collect = collect
            .into_iter()
            .map(|(file, reasons)| CollectFile {
                file: file.to_string(),
                reasons: reasons.into_iter().collect(),
            })
            .collect();
        reply(tests, collect)
    }

    /// The Rust tests' part of an `affected` answer: the binaries to run.
    fn cargo_part(
        &self,
        context: &tim_proto::CargoContext,
        total: u64,
        affected: &BTreeMap<String, Vec<Reason>>,
    ) -> tim_proto::CargoAffected {
        let mut binaries: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        let mut per_binary: BTreeMap<&str, usize> = BTreeMap::new();
        for (id, reasons) in affected {
            let Some(binary) = cargo::binary_of(id) else {
                continue;
            };
            if cargo::is_marker(id) {
                // A binary without tests: list it again, it may have some.
                let entry = binaries.entry(binary.to_owned()).or_default();
                entry.extend(
                    reasons
                        .iter()
                        .map(|r| format!("no tests when last built; {r}")),
                );
            } else {
                *per_binary.entry(binary).or_default() += 1;
            }
        }
        for (binary, n) in per_binary {
            binaries
                .entry(binary.to_owned())
                .or_default()
                .insert(format!("{} affected", plural(n, "test")));
        }
        let known: HashSet<&str> = self
            .tests
            .keys()
            .filter_map(|id| cargo::binary_of(id))
            .collect();
        for target in &context.targets {
            if !known.contains(target.binary_id.as_str()) {
                binaries
                    .entry(target.binary_id.clone())
                    .or_default()
                    .insert(format!(
                        "no recorded test: {} (new, or never built)",
                        target.src
                    ));
            }
        }
        tim_proto::CargoAffected {
            total,
            run_all: (total == 0).then(|| "no Rust test has been recorded yet".to_owned()),
            binaries: binaries
                .into_iter()
                .map(|(file, reasons)| CollectFile {
                    file,
                    reasons: reasons.into_iter().collect(),
                })
                .collect(),
        }
    }

    /// Takes the environment variables and toolchain of a Cargo request:
    /// Rust tests are judged against them from now on.
    fn note_cargo(&mut self, context: &tim_proto::CargoContext) -> Snapshot {
        self.view.cargo_env = Some(context.env.clone());
        cargo::snapshot(&context.toolchain)
    }

    pub fn import_results(
        &mut self,
        ctx: &mut Ctx<'_>,
        params: ImportResultsParams,
    ) -> Result<(), PytestError> {
        let results: Vec<(&str, &str, f64)> = params
            .results
            .iter()
            .map(|r| (r.id.as_str(), r.outcome.as_str(), r.seconds.max(0.0)))
            .collect();
        let run = ctx
            .store
            .import_results(&params.source, &results, ctx.history_keep)?;
        self.unrecorded = None;
        tracing::info!(run, results = results.len(), source = %params.source, "results imported");
        Ok(())
    }

    pub fn audit(&self, budgets: &crate::config::Budgets) -> AuditReply {
        crate::audit::audit(
            self.tests
                .iter()
                .filter(|(id, _)| !cargo::is_marker(id))
                .map(|(id, t)| crate::audit::Timed {
                    id,
                    file: t.file.as_str(),
                    markers: &t.markers,
                    seconds: t.duration,
                }),
            budgets,
            fnmatch_str,
        )
    }

    pub fn stats(&self, ctx: &Ctx<'_>, params: StatsParams) -> Result<StatsReply, PytestError> {
        let mut rows = ctx.store.all_results()?;
        rows.retain(|r| !cargo::is_marker(&r.node_id));
        let limit = params.limit.unwrap_or(10) as usize;
        Ok(crate::stats::stats(
            &rows,
            self.tests.keys().filter(|id| !cargo::is_marker(id)).count() as u64,
            ctx.store.run_count()?,
            limit,
        ))
    }

    /// Known tests that depend on a file changed since a revision: the test
    /// file itself, a file its code, reads or collection depend on, or a
    /// directory it listed that gained or lost a file.
    fn since_reasons(&self, since: &Since) -> BTreeMap<String, Vec<Reason>> {
        let changed: HashSet<&RepoPath> = since.changed.iter().collect();
        // Every directory above a changed path: a listing of any of them may
        // have changed (a file, or a subdirectory, added or removed).
        let mut dirs: HashSet<RepoPath> = HashSet::new();
        for path in &since.changed {
            let mut at = path.clone();
            while let Some((dir, _)) = at.split() {
                if !dirs.insert(dir.clone()) {
                    break;
                }
                at = dir;
            }
            dirs.insert(RepoPath::root());
        }
        // Per interned dependency: the changed path it touches, if any.
        let mut memo: Vec<Option<Option<RepoPath>>> = vec![None; self.deps.all.len()];
        let mut touched = |id: u32| -> Option<RepoPath> {
            memo[id as usize]
                .get_or_insert_with(|| match self.deps.get(id) {
                    Dep::Code { file: p, .. }
                    | Dep::File { path: p, .. }
                    | Dep::Config { path: p, .. }
                    | Dep::Lock { lock: p, .. }
                        if changed.contains(p) =>
                    {
                        Some(p.clone())
                    }
                    Dep::Dir { path, .. } if dirs.contains(path) => Some(path.clone()),
                    _ => None,
                })
                .clone()
        };
        let mut out = BTreeMap::new();
        for (id, record) in &self.tests {
            let mut hit = changed.contains(&record.file).then(|| record.file.clone());
            let sets = [
                Some(record.deps),
                self.collections.get(&record.file).map(|c| c.0),
            ];
            for set in sets.into_iter().flatten() {
                if hit.is_some() {
                    break;
                }
                if let Some(ids) = self.depsets.get(&set) {
                    hit = ids.iter().find_map(|&d| touched(d));
                }
            }
            if let Some(path) = hit {
                out.insert(
                    id.clone(),
                    vec![Reason::ChangedSince {
                        rev: since.rev.clone(),
                        path,
                    }],
                );
            }
        }
        out
    }

    /// The artifact cache now holds `blob` under `key` (or nothing).
    pub fn note_artifact(&mut self, key: &str, blob: Option<&str>) {
        match blob {
            Some(blob) => {
                self.view.artifacts.insert(key.to_owned(), blob.to_owned());
            }
            None => {
                self.view.artifacts.remove(key);
            }
        }
    }

    /// What producing a cache artifact depended on, as for a test's record
    /// (its run's clock and environment); and that environment.
    pub fn producer_deps(
        &mut self,
        ctx: &Ctx<'_>,
        run_id: Option<u64>,
        deps: &Deps,
    ) -> Result<(Vec<Dep>, Option<i64>), PytestError> {
        let (clock, env_id) = match run_id {
            Some(run) => {
                let state = self.run_state(ctx, run)?;
                (state.clock, Some(state.env))
            }
            None => (ctx.store.seq(), self.latest_env),
        };
        let env = env_id.and_then(|id| self.envs.get(&id).cloned());
        let resolver = self.resolver(env.as_deref());
        let mut closures = HashMap::new();
        let mut out = self.resolve_deps(ctx, &resolver, &mut closures, clock, deps)?;
        self.expand_imports(&mut out, &HashMap::new());
        self.add_literal_deps(ctx, &mut out, false);
        Ok((out.into_iter().collect(), env_id))
    }

    /// Why a cache artifact produced with `deps` in environment `env` is no
    /// longer valid, or `None` while it is.
    pub fn stale_reason(
        &mut self,
        ctx: &Ctx<'_>,
        deps: &[Dep],
        env: Option<i64>,
    ) -> Option<String> {
        let now = self.current_env(None);
        let change = match (env.and_then(|id| self.envs.get(&id)), &now) {
            (Some(old), Some(now)) => pyenv::diff(old, now),
            _ => None,
        };
        if let Some(EnvChange::Everything(why)) = &change {
            return Some(why.clone());
        }
        let mut tree = self.current(ctx);
        let mut eval = Evaluator::new(&mut tree, change.as_ref());
        deps.iter()
            .find_map(|dep| eval.stale(dep))
            .map(|reason| reason.to_string())
    }

    pub fn why(&mut self, ctx: &mut Ctx<'_>, params: WhyParams) -> WhyReply {
        let Some(record) = self.tests.get(&params.test) else {
            return WhyReply {
                id: params.test,
                known: false,
                file: String::new(),
                last_outcome: None,
                last_run: None,
                affected: true,
                reasons: vec![Reason::NewTest.to_string()],
                deps: Vec::new(),
            };
        };
        let (file, outcome, run, env_id, set) = (
            record.file.clone(),
            record.outcome,
            record.run,
            record.env,
            record.deps,
        );
        let rust = cargo::is_cargo(&params.test);
        let change = if rust {
            let toolchain = params.cargo.as_ref().map(|c| self.note_cargo(c));
            self.envs
                .get(&env_id)
                .and_then(|old| cargo::toolchain_change(old, toolchain.as_ref()))
        } else {
            let env = self.current_env(None);
            match (self.envs.get(&env_id), &env) {
                (Some(old), Some(now)) => pyenv::diff(old, now),
                _ => None,
            }
        };
        let mut all: Vec<Dep> = self
            .depsets
            .get(&set)
            .map(|ids| ids.iter().map(|&i| self.deps.get(i).clone()).collect())
            .unwrap_or_default();
        if let Some((cset, _)) = self.collections.get(&file)
            && let Some(ids) = self.depsets.get(cset)
        {
            all.extend(ids.iter().map(|&i| self.deps.get(i).clone()));
        }
        all.sort();
        all.dedup();
        let mut tree = self.current(ctx);
        let mut eval = Evaluator::new(&mut tree, change.as_ref());
        let mut reasons = Vec::new();
        if outcome.is_failure() {
            reasons.push(Reason::FailedLastTime(outcome.as_str()).to_string());
        }
        if let Some(EnvChange::Everything(why)) = &change {
            reasons.push(why.clone());
        }
        let mut deps = Vec::new();
        for dep in &all {
            let state = eval.stale(dep);
            if let Some(reason) = &state {
                let text = reason.to_string();
                if !reasons.contains(&text) {
                    reasons.push(text);
                }
            }
            let (kind, target) = match dep {
                Dep::Code { file, block, .. } => (
                    "code",
                    match block {
                        Some(b) => format!("{file}::{b}"),
                        None => format!("{file} (whole file)"),
                    },
                ),
                Dep::File { path, .. } => ("file", path.to_string()),
                Dep::Config { path, .. } => ("config", path.to_string()),
                Dep::Dir { path, .. } => ("dir", format!("{path}/")),
                Dep::External { module } => ("module", module.clone()),
                Dep::Incomplete { why } => ("record", format!("incomplete: {why}")),
                Dep::Artifact { key, blob } => ("artifact", format!("{key} ({blob})")),
                Dep::Lock { lock, package, .. } => ("lock", format!("{lock}: {package}")),
                Dep::EnvVar { name, .. } => ("env", name.clone()),
            };
            let absent = matches!(
                dep,
                Dep::File { hash: None, .. } | Dep::Config { hash: None, .. }
            );
            deps.push(WhyDep {
                kind: kind.to_owned(),
                target,
                state: match state {
                    Some(r) => r.to_string(),
                    None if absent => "absent, still absent".to_owned(),
                    None => "unchanged".to_owned(),
                },
            });
        }
        if let Some(binary) = cargo::binary_of(&params.test) {
            // Said last: everything above holds for the whole binary.
            deps.push(WhyDep {
                kind: "granularity".to_owned(),
                target: format!("the whole test binary {binary}"),
                state: "per-test coverage is not recorded for Rust tests: a change to any \
                        input of the binary selects all of its tests"
                    .to_owned(),
            });
        }
        WhyReply {
            id: params.test,
            known: true,
            file: file.to_string(),
            last_outcome: Some(outcome),
            last_run: Some(run),
            affected: !reasons.is_empty(),
            reasons,
            deps,
        }
    }
}

fn affected_tests(affected: BTreeMap<String, Vec<Reason>>) -> Vec<AffectedTest> {
    affected
        .into_iter()
        .filter(|(id, _)| !cargo::is_marker(id))
        .map(|(id, reasons)| AffectedTest {
            id,
            reasons: reasons.iter().map(ToString::to_string).collect(),
        })
        .collect()
}

/// How the environment a record was made in differs from now: a Python
/// environment against `python`, a Cargo one against `toolchain` (unknown
/// counts as changed).
fn env_change(
    old: &Snapshot,
    python: Option<&Snapshot>,
    toolchain: Option<&Snapshot>,
) -> Option<EnvChange> {
    if cargo::is_cargo_env(old) {
        return cargo::toolchain_change(old, toolchain);
    }
    match python {
        Some(now) => pyenv::diff(old, now),
        None => Some(EnvChange::Everything(
            "environment: the interpreter is not known to this request".into(),
        )),
    }
}

/// A total order for durations (seconds, never NaN from pytest; a NaN
/// sorts last).
fn ordered(seconds: f64) -> u64 {
    if seconds.is_nan() {
        u64::MAX
    } else {
        (seconds.max(0.0) * 1e6) as u64
    }
}

fn plural(n: usize, word: &str) -> String {
    if n == 1 {
        format!("{n} {word}")
    } else {
        format!("{n} {word}s")
    }
}

fn parse_outcome(text: &str) -> Option<Outcome> {
    Some(match text {
        "passed" => Outcome::Passed,
        "failed" => Outcome::Failed,
        "error" => Outcome::Error,
        "skipped" => Outcome::Skipped,
        "xfailed" => Outcome::Xfailed,
        "xpassed" => Outcome::Xpassed,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_ids_map_to_qualnames() {
        assert_eq!(
            test_qualname("tests/test_a.py::test_x").as_deref(),
            Some("test_x")
        );
        assert_eq!(
            test_qualname("tests/test_a.py::TestK::test_m[1-a::b]").as_deref(),
            Some("TestK.test_m")
        );
        assert_eq!(test_qualname("tests/test_a.py"), None);
    }

    #[test]
    fn state_and_bytecode_caches_are_derived() {
        let cases = [
            (".tim/cache/blobs/ab/cd", true),
            ("lib/__pycache__/a.cpython-311-tim-2.instrumented", true),
            ("__pycache__/x.pyc", true),
            ("lib/__pycache__", true),
            ("data/cases.json", false),
            ("lib/not__pycache__/x.json", false),
            ("docs/.tim/notes.txt", false),
        ];
        for (path, derived) in cases {
            assert_eq!(is_derived(&RepoPath::new(path)), derived, "{path}");
        }
    }

    #[test]
    fn qualnames_map_to_blocks() {
        let parsed = pyparse::parse(
            b"class K:\n    X = 1\n    def m(self):\n        def inner():\n            pass\n\ndef f():\n    pass\n",
        );
        let cases = [
            ("f", Some("f")),
            ("K.m", Some("K.m")),
            ("K.m.<locals>.inner", Some("K.m")),
            ("K", Some("<module>")),
            ("<module>", Some("<module>")),
            ("<lambda>", Some("<module>")),
            ("<listcomp>", Some("<module>")),
            ("generated_by_exec", None),
        ];
        for (q, expected) in cases {
            assert_eq!(block_for(q, &parsed).as_deref(), expected, "{q}");
        }
    }

    #[test]
    fn globs_match_like_fnmatch() {
        let cases = [
            ("test_*.py", "test_a.py", true),
            ("test_*.py", "atest_a.py", false),
            ("*_test.py", "a_test.py", true),
            ("check_?.py", "check_1.py", true),
            ("check_?.py", "check_12.py", false),
            ("t[0-9]*.py", "t7x.py", true),
            ("t[!0-9]*.py", "t7x.py", false),
            ("*.py", "x.pyc", false),
        ];
        for (glob, name, expected) in cases {
            assert_eq!(
                fnmatch(glob.as_bytes(), name.as_bytes()),
                expected,
                "{glob} {name}"
            );
        }
        let custom = ["check_*.py".to_string()];
        assert!(is_test_file(&RepoPath::new("suite/check_io.py"), &custom));
        assert!(!is_test_file(&RepoPath::new("suite/test_io.py"), &custom));
    }

    #[test]
    fn test_files_by_name() {
        for (path, expected) in [
            ("tests/test_a.py", true),
            ("pkg/a_test.py", true),
            ("test_b.py", true),
            ("tests/conftest.py", false),
            ("tests/helpers.py", false),
            ("tests/test_data.json", false),
        ] {
            assert_eq!(is_test_file(&RepoPath::new(path), &[]), expected, "{path}");
        }
    }
}
