//! Typed requests, responses and notifications.
//!
//! Every frame is an object `{"id": N, "type": "...", "data": {...}}`;
//! responses and notifications may add `"warnings": ["..."]`. The `type`
//! strings are the snake_case names of the variants below and are stable.
//! New optional fields carry `#[serde(default)]` so older peers' frames still
//! decode; unknown fields are ignored (no `deny_unknown_fields`).

use crate::version::ProtocolVersion;
use serde::{Deserialize, Serialize};

/// Capabilities a daemon of this build offers, by name. A client checks for
/// a name before it relies on a request that came after protocol 1.0.
pub const DAEMON_CAPABILITIES: &[&str] = &[
    "status",
    "changes",
    "subscribe",
    "shutdown",
    // Protocol 1.1: test runs, selection and recording.
    "runs",
    "selection",
    "affected",
    "why",
    // Protocol 1.2: timing and outcome history.
    "stats",
    "import_results",
    "audit",
    // Protocol 1.3: the fixture artifact cache.
    "cache",
];

/// A request from a client, with the id its response will carry.
#[derive(Clone, Debug, PartialEq)]
pub struct RequestFrame {
    pub id: u64,
    pub request: Request,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Request {
    /// Must be the first frame on every connection.
    Hello(Hello),
    /// Daemon and tree state; syncs with the watcher first.
    Status(StatusParams),
    /// Files changed since a clock; syncs with the watcher first.
    Changes(ChangesParams),
    /// Turns the connection into a stream of `files_changed` notifications.
    /// It also keeps the daemon from shutting down when idle.
    Subscribe(SubscribeParams),
    /// Asks the daemon to exit. The daemon answers `ok`, then closes the
    /// connection only once it has released its lock, so "connection closed"
    /// means "a new daemon may start now".
    Shutdown(ShutdownParams),
    /// 1.1: starts recording a test run; answers `run_started`.
    BeginRun(BeginRunParams),
    /// 1.1: which of the collected tests the run must execute; answers
    /// `selection`. Every process of a run gets the same answer.
    Select(SelectParams),
    /// 1.1: results and dependencies of finished tests; answers `ok`.
    Record(RecordParams),
    /// 1.1: the run is over; answers `ok`.
    EndRun(EndRunParams),
    /// 1.1: which known tests are affected, and which files to collect.
    Affected(AffectedParams),
    /// 1.1: what one test depends on and why it is or is not affected.
    Why(WhyParams),
    /// 1.2: what the history says: slowest, slowing, flaky and failing
    /// tests.
    Stats(StatsParams),
    /// 1.2: adds results from elsewhere (a JUnit report) to the history, as
    /// a run of their own; answers `ok`.
    ImportResults(ImportResultsParams),
    /// 1.2: every known test's last duration against its time budget.
    Audit(AuditParams),
    /// 1.3: looks an artifact up: a hit (its path), a lease to compute it,
    /// or (replay-only) why there is none. While another connection holds
    /// the lease, the answer waits for it.
    CacheGet(CacheGetParams),
    /// 1.3: stores what the holder of a lease computed; answers
    /// `cache_entry` (a hit).
    CachePut(CachePutParams),
    /// 1.3: gives a lease back without a result (the producer failed);
    /// answers `ok`.
    CacheAbandon(CacheAbandonParams),
    /// 1.3: the cache's entries and per-fixture counters.
    CacheStats(CacheStatsParams),
    /// 1.3: evicts least recently used entries above a size, or all.
    CacheGc(CacheGcParams),
    /// 1.3: writes every entry and its artifact to a directory.
    CacheExport(CacheTransferParams),
    /// 1.3: adds the entries of an exported directory (verified).
    CacheImport(CacheTransferParams),
    /// 1.4: results of Rust tests and what their test binaries were built
    /// from; answers `ok`.
    CargoRecord(CargoRecordParams),
}

impl Request {
    pub fn type_name(&self) -> &'static str {
        match self {
            Request::Hello(_) => "hello",
            Request::Status(_) => "status",
            Request::Changes(_) => "changes",
            Request::Subscribe(_) => "subscribe",
            Request::Shutdown(_) => "shutdown",
            Request::BeginRun(_) => "begin_run",
            Request::Select(_) => "select",
            Request::Record(_) => "record",
            Request::EndRun(_) => "end_run",
            Request::Affected(_) => "affected",
            Request::Why(_) => "why",
            Request::Stats(_) => "stats",
            Request::ImportResults(_) => "import_results",
            Request::Audit(_) => "audit",
            Request::CacheGet(_) => "cache_get",
            Request::CachePut(_) => "cache_put",
            Request::CacheAbandon(_) => "cache_abandon",
            Request::CacheStats(_) => "cache_stats",
            Request::CacheGc(_) => "cache_gc",
            Request::CacheExport(_) => "cache_export",
            Request::CacheImport(_) => "cache_import",
            Request::CargoRecord(_) => "cargo_record",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Hello {
    pub protocol: ProtocolVersion,
    /// Who is speaking, e.g. `tim` or `pytest-tim`.
    pub client: String,
    /// The client's release version, e.g. `0.1.0`.
    pub client_version: String,
    #[serde(default)]
    pub capabilities: Vec<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct StatusParams {}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ChangesParams {
    /// A clock from an earlier answer. Absent: every tracked file is
    /// reported and the answer is a fresh instance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SubscribeParams {}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ShutdownParams {
    /// Written to the daemon's log.
    #[serde(default)]
    pub reason: String,
}

/// A response to request `id`, or a notification for subscription `id`.
#[derive(Clone, Debug, PartialEq)]
pub struct ResponseFrame {
    pub id: Option<u64>,
    pub response: Response,
    pub warnings: Vec<String>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Response {
    Hello(HelloReply),
    Status(StatusReply),
    Changes(ChangesReply),
    Subscribed(SubscribedReply),
    /// Notification on a subscribed connection.
    FilesChanged(FilesChanged),
    Ok(OkReply),
    Error(ErrorReply),
    RunStarted(RunStarted),
    Selection(Selection),
    Affected(AffectedReply),
    Why(WhyReply),
    Stats(StatsReply),
    Audit(AuditReply),
    CacheEntry(CacheAnswer),
    CacheStats(CacheStatsReply),
    CacheGc(CacheGcReply),
    CacheTransfer(CacheTransferReply),
}

impl Response {
    pub fn type_name(&self) -> &'static str {
        match self {
            Response::Hello(_) => "hello",
            Response::Status(_) => "status",
            Response::Changes(_) => "changes",
            Response::Subscribed(_) => "subscribed",
            Response::FilesChanged(_) => "files_changed",
            Response::Ok(_) => "ok",
            Response::Error(_) => "error",
            Response::RunStarted(_) => "run_started",
            Response::Selection(_) => "selection",
            Response::Affected(_) => "affected",
            Response::Why(_) => "why",
            Response::Stats(_) => "stats",
            Response::Audit(_) => "audit",
            Response::CacheEntry(_) => "cache_entry",
            Response::CacheStats(_) => "cache_stats",
            Response::CacheGc(_) => "cache_gc",
            Response::CacheTransfer(_) => "cache_transfer",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HelloReply {
    pub protocol: ProtocolVersion,
    pub daemon_version: String,
    pub pid: u32,
    /// The absolute project root this daemon serves.
    pub root: String,
    #[serde(default)]
    pub capabilities: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StatusReply {
    pub daemon_version: String,
    pub protocol: ProtocolVersion,
    pub pid: u32,
    pub root: String,
    pub uptime_ms: u64,
    pub tracked_files: u64,
    /// The clock of this answer; pass it to `changes` as `since`.
    pub clock: String,
    pub watcher: WatcherStatus,
    /// The last recorded test run, if any.
    #[serde(default)]
    pub last_run: Option<RunSummary>,
    /// Files changed since `last_run` started; absent when no run is
    /// recorded (then every file counts as changed).
    #[serde(default)]
    pub changed_since_last_run: Option<Vec<FileChange>>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WatcherStatus {
    pub mode: WatcherMode,
    /// Why the watcher is degraded, and what to do about it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WatcherMode {
    /// OS notifications for every tracked directory.
    Native,
    /// Watching failed; every query rescans the tree first.
    RescanOnQuery,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunSummary {
    pub id: u64,
    pub started_at_ms: u64,
    #[serde(default)]
    pub finished_at_ms: Option<u64>,
    #[serde(default)]
    pub command: String,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct FileChange {
    /// Root-relative, `/`-separated.
    pub path: String,
    pub kind: ChangeKind,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChangeKind {
    Added,
    Modified,
    Deleted,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChangesReply {
    pub clock: String,
    /// True when `since` cannot be honoured (absent, from another database,
    /// unreadable): `files` then lists every tracked file as `added`, and the
    /// client must assume anything may have changed.
    pub fresh_instance: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fresh_reason: Option<String>,
    pub files: Vec<FileChange>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SubscribedReply {
    pub clock: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FilesChanged {
    pub clock: String,
    /// True after a watcher overflow or rescan: assume anything changed.
    #[serde(default)]
    pub fresh_instance: bool,
    pub files: Vec<FileChange>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct OkReply {}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ErrorReply {
    pub code: ErrorCode,
    /// One sentence for a person: what went wrong and what to do next.
    pub message: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The frame is not valid JSON or not a frame object.
    InvalidFrame,
    /// The frame exceeds [`crate::MAX_FRAME_BYTES`]; the connection closes.
    FrameTooLarge,
    /// The `type` names no request this daemon knows.
    UnknownRequest,
    /// The `data` does not fit the request type.
    InvalidRequest,
    /// A request came before `hello`; the connection closes.
    HelloRequired,
    /// The client's major protocol version differs; the connection closes.
    IncompatibleProtocol,
    /// The daemon is shutting down; reconnect to start a new one.
    ShuttingDown,
    /// The daemon failed to answer; see its log.
    Internal,
    /// A code from a newer daemon.
    #[serde(other)]
    Unknown,
}

impl ErrorReply {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> ErrorReply {
        ErrorReply {
            code,
            message: message.into(),
        }
    }
}

/// The Python interpreter a run uses, as the plugin sees it. The daemon
/// lists the distributions in `site_dirs` itself, so it notices an
/// installed, upgraded or removed package without starting Python.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Environment {
    /// Which interpreter environment: `venv:<real prefix>` for a
    /// virtualenv, else the interpreter's real path.
    pub python: String,
    /// `3.11.7`.
    pub version: String,
    #[serde(default)]
    pub implementation: String,
    /// `sys.path` entries outside the root (where distributions live).
    #[serde(default)]
    pub site_dirs: Vec<String>,
    /// `sys.path` entries inside the root, root-relative (`""`, `src`):
    /// where imports are resolved.
    #[serde(default)]
    pub root_paths: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BeginRunParams {
    /// The command line, for history and messages.
    pub command: String,
    /// `affected` (select) or `all` (run and record everything).
    pub mode: RunMode,
    pub environment: Environment,
    /// How pytest finds tests in this project.
    #[serde(default)]
    pub collection: CollectionConfig,
    /// 1.2: the order to run the selected tests in; absent: the project's
    /// configured order (`run.order`, default `quick-feedback`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub order: Option<Order>,
    /// 1.3: also select tests depending on a file that differs from the
    /// merge base with this revision (`--since REV`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<String>,
    /// 1.3: run only this part of the selected tests (CI shards).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shard: Option<Shard>,
    /// 1.4: a run of Rust tests (`environment` is then ignored): the
    /// toolchain and environment the binaries are built with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cargo: Option<CargoContext>,
}

/// 1.4: what a Cargo build depends on besides files: the toolchain, and
/// the environment variables build scripts and `env!` may read.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CargoContext {
    /// `rustc -vV`, plus the flags that change every build (`RUSTFLAGS`,
    /// ...): a different one affects every Rust test.
    pub toolchain: String,
    /// The client's environment variables (only the hashes of those a
    /// build declared it reads are kept).
    #[serde(default)]
    pub env: std::collections::BTreeMap<String, String>,
    /// The test targets the workspace has now, as binary ids
    /// (`core`, `core::integration`, `app::bin/app`), with their main
    /// source files: a target never built is reported as such.
    #[serde(default)]
    pub targets: Vec<CargoTarget>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CargoTarget {
    /// cargo-nextest's binary id.
    pub binary_id: String,
    /// Root-relative main source file.
    pub src: String,
}

/// 1.4: one test binary as it was built (doctests of a library are a
/// binary of their own, `<package>::doctest`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CargoBinary {
    pub binary_id: String,
    /// Root-relative main source file.
    pub src: String,
    /// Absolute paths of the compiler's dep-info files (`.d`) of the
    /// binary and of every workspace library it links: the files each
    /// compilation read, `include_str!` inputs included.
    pub dep_info: Vec<String>,
    /// Build scripts that ran for the binary or a workspace library it
    /// links.
    #[serde(default)]
    pub build_scripts: Vec<BuildScriptRun>,
    /// Absolute paths of the manifests involved (the packages' and the
    /// workspace's).
    #[serde(default)]
    pub manifests: Vec<String>,
    /// Absolute path of `Cargo.lock`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lock: Option<String>,
    /// Names of the packages from outside the workspace it links.
    #[serde(default)]
    pub externals: Vec<String>,
    /// Every test the binary listed, run or not (ids): known tests of the
    /// binary missing here are gone; a binary without tests is remembered
    /// as such, so it is not reported as never built.
    #[serde(default)]
    pub tests: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BuildScriptRun {
    /// Absolute path of the package's directory (where `rerun-if-changed`
    /// paths are relative to).
    pub package_dir: String,
    /// Absolute path of the script's `output` file.
    pub output: String,
    /// Absolute path of the build script's own dep-info file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dep_info: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CargoTestResult {
    /// `cargo:<binary id> <test name>`.
    pub id: String,
    pub binary_id: String,
    pub outcome: Outcome,
    /// Seconds the test took.
    pub seconds: f64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CargoRecordParams {
    pub run_id: u64,
    /// Absolute: where relative paths in dep-info files start.
    pub workspace_root: String,
    /// Absolute: Cargo's target directory (generated files there are
    /// judged through the build scripts that wrote them).
    pub target_dir: String,
    /// The binaries the tests below ran from.
    pub binaries: Vec<CargoBinary>,
    pub tests: Vec<CargoTestResult>,
}

/// Part `index` (1-based) of `count` duration-balanced parts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shard {
    pub index: u32,
    pub count: u32,
}

/// In which order a run's tests go.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Order {
    /// Failed last time first, then new tests, then the fastest first: the
    /// first failure shows as soon as possible.
    #[default]
    QuickFeedback,
    /// The slowest first (unknown durations count as the median): the best
    /// total time when tests run in parallel.
    LongestFirst,
}

impl Order {
    pub fn name(self) -> &'static str {
        match self {
            Order::QuickFeedback => "quick-feedback",
            Order::LongestFirst => "longest-first",
        }
    }

    pub fn from_name(name: &str) -> Option<Order> {
        match name {
            "quick-feedback" => Some(Order::QuickFeedback),
            "longest-first" => Some(Order::LongestFirst),
            _ => None,
        }
    }
}

/// pytest's test discovery settings, so the daemon can spot new test files.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CollectionConfig {
    /// `python_files` globs (default `test_*.py`, `*_test.py`).
    #[serde(default)]
    pub python_files: Vec<String>,
    /// `testpaths`, root-relative; empty means "anywhere".
    #[serde(default)]
    pub testpaths: Vec<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunMode {
    Affected,
    All,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunStarted {
    pub run_id: u64,
    pub clock: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CollectedTest {
    /// The pytest node id.
    pub id: String,
    /// The test's file, root-relative.
    pub file: String,
    /// 1.3: the test's `xdist_group`: tests of a group stay in one shard.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SelectParams {
    pub run_id: u64,
    pub tests: Vec<CollectedTest>,
    /// 1.3: also split the tests to run into this many duration-balanced
    /// parts (parallel workers); answered in `parts`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parts: Option<u32>,
    /// 1.3: the tests were selected already (by the run's workers): only
    /// order, estimate and split them (no deselection, no shard).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub selected: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Selection {
    /// Ids to run, in the order to run them; every other collected test is
    /// deselected.
    pub run: Vec<String>,
    /// (1.3) Seconds each test of `run` is expected to take, from history
    /// (`None`: no history to go on).
    #[serde(default)]
    pub estimates: Vec<Option<f64>>,
    /// (1.3) With a shard: the expected seconds of every shard, so the
    /// run can say how balanced they are.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub shard_seconds: Vec<f64>,
    /// (1.3) With `parts`: the ids of each part, and each part's expected
    /// seconds.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub parts: Vec<Vec<String>>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub part_seconds: Vec<f64>,
}

/// What a test (or a test file's collection) depended on.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deps {
    /// Root-relative Python file → `__qualname__`s of the code objects that
    /// ran (`<module>`, `Parser.parse`, `f.<locals>.g`, ...).
    #[serde(default)]
    pub code: std::collections::BTreeMap<String, Vec<String>>,
    /// Root-relative non-Python files read.
    #[serde(default)]
    pub files: Vec<String>,
    /// Root-relative directories listed.
    #[serde(default)]
    pub dirs: Vec<String>,
    /// (1.3) Keys of the cache entries used (fixtures served from the
    /// artifact cache): the daemon adds what producing each depended on.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub artifacts: Vec<String>,
    /// Set when recording may have missed something (tracing was switched
    /// off by the code under test): the record then keeps the test
    /// affected until a complete one replaces it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub incomplete: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Passed,
    Failed,
    Error,
    Skipped,
    Xfailed,
    Xpassed,
}

impl Outcome {
    /// Whether the test must run again regardless of changes.
    /// (A non-strict XPASS passes: pytest exits 0 for it.)
    pub fn is_failure(self) -> bool {
        matches!(self, Outcome::Failed | Outcome::Error)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Passed => "passed",
            Outcome::Failed => "failed",
            Outcome::Error => "error",
            Outcome::Skipped => "skipped",
            Outcome::Xfailed => "xfailed",
            Outcome::Xpassed => "xpassed",
        }
    }
}

/// Seconds per phase.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Durations {
    #[serde(default)]
    pub setup: f64,
    #[serde(default)]
    pub call: f64,
    #[serde(default)]
    pub teardown: f64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TestResult {
    pub id: String,
    pub file: String,
    pub outcome: Outcome,
    #[serde(default)]
    pub durations: Durations,
    #[serde(default)]
    pub deps: Deps,
    /// 1.2: the test's marker names (`slow`, `integration`), for time
    /// budgets.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub markers: Vec<String>,
}

/// What importing (collecting) one test file depended on.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CollectionResult {
    pub file: String,
    #[serde(default)]
    pub deps: Deps,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RecordParams {
    pub run_id: u64,
    #[serde(default)]
    pub tests: Vec<TestResult>,
    #[serde(default)]
    pub collection: Vec<CollectionResult>,
    /// 1.2: per project module, what its import ran (module-level code and
    /// the functions it called).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub imports: Vec<CollectionResult>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EndRunParams {
    pub run_id: u64,
    /// pytest's exit status.
    pub exit_status: i32,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct AffectedParams {
    /// The interpreter environment the next run will use, in the form of
    /// [`Environment::python`]; a different one from the last run's affects
    /// everything.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub python: Option<String>,
    /// 1.3: also affected: tests depending on a file that differs from the
    /// merge base with this revision (`--since REV`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<String>,
    /// 1.4: the root is (also) a Cargo workspace: judge its Rust tests
    /// against this toolchain and environment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cargo: Option<CargoContext>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AffectedTest {
    pub id: String,
    /// One line each, e.g. `changed: pkg/mod.py::Parser.parse`.
    pub reasons: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CollectFile {
    pub file: String,
    pub reasons: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AffectedReply {
    pub tests: Vec<AffectedTest>,
    /// Known tests in all.
    pub total: u64,
    /// Test files pytest must collect: those holding affected tests, and
    /// those that must be collected again (new, or their collection inputs
    /// changed) because they may hold new tests.
    pub collect: Vec<CollectFile>,
    /// Set when everything must run (no record yet, environment changed):
    /// the one-line reason. `collect` is then empty: collect everything.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_all: Option<String>,
    pub clock: String,
    /// 1.2: the last recorded durations (setup + call + teardown) of the
    /// known tests that are not affected, summed: the time selection saves.
    #[serde(default)]
    pub unaffected_seconds: f64,
    /// 1.4: the Rust tests' part, when the request carried `cargo`.
    /// `tests` holds the affected Rust tests too (ids `cargo:...`);
    /// `run_all`, `collect` and `total` above are pytest's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cargo: Option<CargoAffected>,
}

/// 1.4: what the Rust tests need.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CargoAffected {
    /// Known Rust tests in all.
    pub total: u64,
    /// Set when every Rust test must run: the one-line reason.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_all: Option<String>,
    /// Binaries to run: those holding affected tests and those never
    /// recorded (their tests are unknown until built), with reasons.
    pub binaries: Vec<CollectFile>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WhyParams {
    pub test: String,
    /// 1.4: for a Rust test, the toolchain and environment to judge it
    /// against.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cargo: Option<CargoContext>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WhyDep {
    /// `code`, `file`, `dir`, `environment`.
    pub kind: String,
    /// `pkg/mod.py::Parser.parse`, `tests/data/case1.json`, ...
    pub target: String,
    /// `unchanged`, or what changed.
    pub state: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WhyReply {
    pub id: String,
    /// False when the test is unknown: it has never been recorded.
    pub known: bool,
    #[serde(default)]
    pub file: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_outcome: Option<Outcome>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_run: Option<u64>,
    pub affected: bool,
    pub reasons: Vec<String>,
    pub deps: Vec<WhyDep>,
}

/// The one line `timd --notify-ready` prints on its standard output when it
/// has started (or failed to), so that the client that spawned it knows
/// without polling. Not part of the socket protocol, but shared by `tim` and
/// `timd` of the same build.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum StartupReport {
    /// Listening on `socket`; `warnings` say what was repaired on the way.
    Ready {
        pid: u32,
        socket: String,
        #[serde(default)]
        warnings: Vec<String>,
    },
    /// Another daemon holds this root's lock.
    AlreadyRunning { pid: Option<u32> },
    /// Start-up failed; `message` says why and what to do.
    Failed { message: String },
}

/// The pid file, `.tim/daemon.json`: how other programs (the pytest plugin,
/// scripts) find the running daemon without computing the socket path.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DaemonInfo {
    pub pid: u32,
    pub socket: String,
    pub protocol: ProtocolVersion,
    pub daemon_version: String,
    pub started_at_ms: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct StatsParams {
    /// Entries per list (default 10).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
}

/// What the timing and outcome history says. Durations are setup + call +
/// teardown seconds.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct StatsReply {
    /// Tests with a record.
    pub known: u64,
    /// Runs recorded.
    pub runs: u64,
    /// Slowest first, by their median duration over the history kept.
    pub slowest: Vec<SlowTest>,
    /// Tests whose recent results take longest compared with their earlier
    /// ones (at least 4 results, 1.5x and 10 ms slower).
    pub slower: Vec<SlowerTest>,
    /// Tests whose outcome changed between two consecutive results while
    /// everything they depend on stayed the same.
    pub flaky: Vec<FlakyTest>,
    /// Tests that failed (or errored) in their history, most often first.
    pub failing: Vec<FailingTest>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SlowTest {
    pub id: String,
    pub median_seconds: f64,
    pub last_seconds: f64,
    pub results: u32,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SlowerTest {
    pub id: String,
    /// Median of the older half of the history kept.
    pub before_seconds: f64,
    /// Median of the newer half.
    pub after_seconds: f64,
    pub results: u32,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FlakyTest {
    pub id: String,
    /// Outcome changes with the same dependencies.
    pub flips: u32,
    pub results: u32,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FailingTest {
    pub id: String,
    pub failures: u32,
    pub results: u32,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ImportResultsParams {
    /// Where the results come from, for the run's command, e.g.
    /// `tim import-junit ci/report.xml`.
    pub source: String,
    pub results: Vec<ImportedResult>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ImportedResult {
    /// The test's id (a pytest node id when it could be derived).
    pub id: String,
    pub outcome: Outcome,
    /// The whole test's duration; recorded as its call time.
    pub seconds: f64,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct AuditParams {}

/// Every known test's last duration (setup + call + teardown) against its
/// budget: the first `audit.budget` rule that matches it (by marker, path
/// glob or id pattern), else the default budget.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct AuditReply {
    /// Tests checked.
    pub checked: u64,
    /// The share of a budget from which a test is reported as a warning.
    pub warn_at: f64,
    /// Over budget, slowest share first.
    pub violations: Vec<AuditEntry>,
    /// At `warn_at` of their budget or more, but within it. (Not called
    /// `warnings`: that key of the client's JSON carries the daemon's.)
    pub near_budget: Vec<AuditEntry>,
    /// Every test checked, in id order (for a JUnit report).
    pub tests: Vec<AuditEntry>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AuditEntry {
    pub id: String,
    pub seconds: f64,
    pub budget_seconds: f64,
    /// The rule that set the budget, e.g. `marker slow`, `path tests/e2e/**`,
    /// `default`.
    pub rule: String,
}

/// How a run uses the artifact cache.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CacheMode {
    /// A valid entry is used; a missing or invalid one is computed.
    #[default]
    Use,
    /// Every entry is computed again (once per run) and overwritten.
    Refresh,
    /// Nothing is computed: a missing or invalid entry is an error.
    ReplayOnly,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CacheGetParams {
    /// The run asking (refresh recomputes an entry once per run).
    #[serde(default)]
    pub run_id: Option<u64>,
    /// The entry's identity: the fixture and its inputs, as the plugin
    /// composes it.
    pub key: String,
    /// For people: `tests/conftest.py::irs`.
    pub fixture: String,
    #[serde(default)]
    pub mode: CacheMode,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CachePutParams {
    #[serde(default)]
    pub run_id: Option<u64>,
    pub lease: u64,
    pub key: String,
    pub fixture: String,
    /// The artifact, written by the producer under `.tim/cache/tmp/`; the
    /// daemon moves it into the store.
    pub tmp: String,
    pub serializer: String,
    /// What producing it ran and read; `None`: it depends on its inputs
    /// only (never invalidated by code).
    #[serde(default)]
    pub deps: Option<Deps>,
    pub produce_seconds: f64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CacheAbandonParams {
    pub lease: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CacheStatus {
    /// `path` holds the artifact (its digest was just verified).
    Hit,
    /// Compute it and `cache_put` it with `lease`.
    Compute,
    /// Replay-only and nothing valid: `why` says what is missing.
    Missing,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CacheAnswer {
    pub status: CacheStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serializer: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease: Option<u64>,
    /// Why it must be computed or is missing: `no entry`, `changed:
    /// pkg/translate.py::translate`, `corrupt blob`, `refresh`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub why: Option<String>,
    /// What computing it took, when it was stored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub produce_seconds: Option<f64>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CacheStatsParams {}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CacheEntryInfo {
    pub key: String,
    pub fixture: String,
    pub size: u64,
    pub serializer: String,
    /// False: depends on its inputs only.
    pub tracks_code: bool,
    pub produce_seconds: f64,
    pub hits: u64,
    pub created_ms: u64,
    pub used_ms: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CacheFixtureStats {
    pub fixture: String,
    pub entries: u64,
    pub bytes: u64,
    pub hits: u64,
    pub misses: u64,
    /// Producing time not spent thanks to hits.
    pub saved_seconds: f64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CacheStatsReply {
    /// Where the blobs live.
    pub dir: String,
    pub entries: Vec<CacheEntryInfo>,
    pub fixtures: Vec<CacheFixtureStats>,
    pub bytes: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CacheGcParams {
    /// Keep at most this many bytes (least recently used go first);
    /// absent: the configured cap.
    #[serde(default)]
    pub max_bytes: Option<u64>,
    /// Remove everything.
    #[serde(default)]
    pub clear: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CacheGcReply {
    pub removed: u64,
    pub freed_bytes: u64,
    pub kept: u64,
    pub bytes: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CacheTransferParams {
    /// An absolute directory path.
    pub dir: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CacheTransferReply {
    pub entries: u64,
    pub bytes: u64,
    /// Entries left out, each with why.
    #[serde(default)]
    pub skipped: Vec<String>,
}
