//! The core: the one thread that owns the daemon's mutable state (index,
//! store, watcher, subscriptions) and handles a closed set of [`Event`]s.
//!
//! Architecture invariants:
//! * Nothing else touches the index or the store; connections talk to the
//!   core through its channel and get their answer on a oneshot.
//! * A query is answered only after a sync: the core writes a cookie file
//!   and waits until the watcher reports it; every event the OS queued
//!   before the cookie has then been received and is processed before the
//!   answer. When the watcher is degraded, the whole tree is rescanned
//!   instead. There are no sleeps anywhere on this path.
//! * Bursts of file events are coalesced: touched paths collect in a set
//!   until no event came for [`SETTLE`] (or [`SETTLE_MAX`] passed), then are
//!   processed as one batch, committed as one transaction with one clock.

use crate::cache::{ArtifactCache, Claim, Waiter};
use crate::config::{CONFIG_FILES, Config, WatchMode};
use crate::index::{Index, Listing, RepoPath};
use crate::pytest::{Ctx, Pytest, PytestError};
use crate::scan::{self, DirHook, Filter, Hashed, IGNORE_FILES};
use crate::store::{CacheRow, Change, FileUpdate, Store};
use crate::watch::{FsEvent, Watcher};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::time::{Duration, Instant};
use tim_proto::layout::Layout;
use tim_proto::{
    ChangeKind, ChangesReply, ErrorCode, ErrorReply, FileChange, FilesChanged, OkReply, Response,
    ResponseFrame, RunSummary, StatusReply, SubscribedReply, WatcherMode, WatcherStatus,
};
use tokio::sync::{mpsc, oneshot};

/// Quiet time after the last file event before a batch is processed.
pub const SETTLE: Duration = Duration::from_millis(30);
/// A batch is processed at the latest this long after its first event, even
/// while events keep coming.
pub const SETTLE_MAX: Duration = Duration::from_millis(500);
/// A cookie not reported by the watcher within this time means the watcher
/// is broken; the core then degrades to rescanning on every query.
const COOKIE_TIMEOUT: Duration = Duration::from_secs(10);
/// A turn of the loop slower than this is logged as a warning.
const SLOW_TURN: Duration = Duration::from_millis(100);

/// An answer for a connection.
pub struct Reply {
    pub response: Response,
    pub warnings: Vec<String>,
}

impl Reply {
    fn plain(response: Response) -> Reply {
        Reply {
            response,
            warnings: Vec::new(),
        }
    }
}

/// Queries that are answered after a sync with the watcher.
#[derive(Debug)]
pub enum Query {
    Status,
    Changes {
        since: Option<String>,
    },
    BeginRun(Box<tim_proto::BeginRunParams>),
    Select(tim_proto::SelectParams),
    Record(tim_proto::RecordParams),
    EndRun(tim_proto::EndRunParams),
    Affected(tim_proto::AffectedParams),
    Why(tim_proto::WhyParams),
    Stats(tim_proto::StatsParams),
    ImportResults(tim_proto::ImportResultsParams),
    Audit(tim_proto::AuditParams),
    /// With the asking connection (leases belong to connections).
    CacheGet(tim_proto::CacheGetParams, u64),
    CachePut(Box<tim_proto::CachePutParams>, u64),
    CacheAbandon(tim_proto::CacheAbandonParams),
    CacheStats,
    CacheGc(tim_proto::CacheGcParams),
    CacheExport(tim_proto::CacheTransferParams),
    CacheImport(tim_proto::CacheTransferParams),
    CargoRecord(tim_proto::CargoRecordParams),
}

impl Query {
    /// The request's name, for logs.
    fn kind(&self) -> &'static str {
        match self {
            Query::Status => "status",
            Query::Changes { .. } => "changes",
            Query::BeginRun(_) => "begin_run",
            Query::Select(_) => "select",
            Query::Record(_) => "record",
            Query::EndRun(_) => "end_run",
            Query::Affected(_) => "affected",
            Query::Why(_) => "why",
            Query::Stats(_) => "stats",
            Query::ImportResults(_) => "import_results",
            Query::Audit(_) => "audit",
            Query::CacheGet(..) => "cache_get",
            Query::CachePut(..) => "cache_put",
            Query::CacheAbandon(_) => "cache_abandon",
            Query::CacheStats => "cache_stats",
            Query::CacheGc(_) => "cache_gc",
            Query::CacheExport(_) => "cache_export",
            Query::CacheImport(_) => "cache_import",
            Query::CargoRecord(_) => "cargo_record",
        }
    }
}

pub type SubscriptionId = u64;

/// Everything the core reacts to.
pub enum Event {
    Query {
        query: Query,
        reply: oneshot::Sender<Reply>,
    },
    Subscribe {
        id: SubscriptionId,
        /// Notifications, already framed with the subscription's request id.
        sink: mpsc::UnboundedSender<ResponseFrame>,
        request_id: u64,
        reply: oneshot::Sender<Reply>,
    },
    Unsubscribe {
        id: SubscriptionId,
    },
    Shutdown {
        reason: String,
        reply: Option<oneshot::Sender<Reply>>,
    },
    Fs(FsEvent),
    /// A client connection closed: the cache leases it held are free.
    Disconnected {
        conn: u64,
    },
}

/// Facts about this daemon process that never change.
#[derive(Clone, Debug)]
pub struct Identity {
    pub daemon_version: String,
    pub protocol: tim_proto::ProtocolVersion,
    pub pid: u32,
    pub root: PathBuf,
    pub started: Instant,
}

struct Pending {
    cookie: u64,
    deadline: Instant,
    work: PendingWork,
}

enum PendingWork {
    Query(Query, oneshot::Sender<Reply>),
    Subscribe {
        id: SubscriptionId,
        sink: mpsc::UnboundedSender<ResponseFrame>,
        request_id: u64,
        reply: oneshot::Sender<Reply>,
    },
}

struct Subscriber {
    id: SubscriptionId,
    request_id: u64,
    sink: mpsc::UnboundedSender<ResponseFrame>,
}

pub struct Core {
    identity: Identity,
    layout: Layout,
    config: Config,
    filter: Filter,
    index: Index,
    store: Store,
    pytest: Pytest,
    cache: ArtifactCache<oneshot::Sender<Reply>>,
    events: Sender<Event>,
    watcher: Option<Arc<Watcher>>,
    /// Why watching is degraded; `Some` means "rescan on every query".
    watch_problem: Option<String>,
    /// Warnings every status answer carries (start-up repairs, bad config).
    warnings: Vec<String>,
    touched: BTreeSet<PathBuf>,
    rescan_all: bool,
    first_touch: Option<Instant>,
    last_touch: Option<Instant>,
    pending: Vec<Pending>,
    next_cookie: u64,
    subscribers: Vec<Subscriber>,
    last_activity: Instant,
    shutdown: Option<String>,
}

/// The outcome of one processed batch.
#[derive(Default)]
struct Batch {
    updates: Vec<FileUpdate>,
    changes: Vec<FileChange>,
}

impl Batch {
    fn deleted(&mut self, path: RepoPath) {
        self.changes.push(FileChange {
            path: path.to_string(),
            kind: ChangeKind::Deleted,
        });
        self.updates.push(FileUpdate::Delete { path });
    }
}

impl Core {
    pub fn new(
        identity: Identity,
        layout: Layout,
        config: Config,
        store: Store,
        events: Sender<Event>,
        warnings: Vec<String>,
    ) -> Result<Core, scan::ScanError> {
        let filter = Filter::new(&layout.root, &config.exclude)?;
        let state_dir = layout.state_dir.clone();
        let mut warnings = warnings;
        let pytest = Pytest::load(&store).unwrap_or_else(|e| {
            tracing::error!(error = %e, "cannot load test records; every test counts as new");
            warnings.push(format!(
                "the test records in {} could not be read ({e}); every test counts as new until recorded again",
                layout.db().display()
            ));
            Pytest::default()
        });
        Ok(Core {
            identity,
            layout,
            config,
            filter,
            index: Index::default(),
            store,
            pytest,
            cache: {
                // Leftovers of producers killed before they stored.
                let cache = ArtifactCache::new(&state_dir);
                cache.sweep();
                cache
            },
            events,
            watcher: None,
            watch_problem: None,
            warnings,
            touched: BTreeSet::new(),
            rescan_all: false,
            first_touch: None,
            last_touch: None,
            pending: Vec::new(),
            next_cookie: 0,
            subscribers: Vec::new(),
            last_activity: Instant::now(),
            shutdown: None,
        })
    }

    /// Runs until shut down; returns the store so the caller can close it
    /// after the server stopped.
    pub fn run(mut self, rx: Receiver<Event>) -> Store {
        self.start_watching();
        self.initial_scan();
        while self.shutdown.is_none() {
            let event = match self.next_deadline() {
                Some(deadline) => {
                    match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                        Ok(event) => Some(event),
                        Err(RecvTimeoutError::Timeout) => None,
                        Err(RecvTimeoutError::Disconnected) => break,
                    }
                }
                None => match rx.recv() {
                    Ok(event) => Some(event),
                    Err(_) => break,
                },
            };
            let turn = Instant::now();
            if let Some(event) = event {
                self.handle(event);
            }
            self.on_timers();
            let took = turn.elapsed();
            if took > SLOW_TURN {
                tracing::warn!(?took, "slow turn of the core loop");
            }
        }
        let reason = self
            .shutdown
            .take()
            .unwrap_or_else(|| "channel closed".into());
        tracing::info!(%reason, "core stopping");
        for pending in self.pending.drain(..) {
            let reply = Reply::plain(Response::Error(ErrorReply::new(
                ErrorCode::ShuttingDown,
                format!(
                    "the daemon is shutting down ({reason}); run the command again to start a new one"
                ),
            )));
            match pending.work {
                PendingWork::Query(_, tx) => drop(tx.send(reply)),
                PendingWork::Subscribe { reply: tx, .. } => drop(tx.send(reply)),
            }
        }
        self.store
    }

    fn start_watching(&mut self) {
        if self.config.watch_mode == WatchMode::Rescan {
            tracing::info!("watch.mode is \"rescan\": not watching, rescanning on every query");
            return;
        }
        if let Err(e) = std::fs::create_dir_all(self.layout.cookie_dir()) {
            self.degrade(format!(
                "cannot create {}: {e}; tim rescans the tree on every query instead of watching",
                self.layout.cookie_dir().display()
            ));
            return;
        }
        // Cookies of an earlier daemon mean nothing to this one.
        if let Ok(entries) = std::fs::read_dir(self.layout.cookie_dir()) {
            for entry in entries.flatten() {
                let _ = std::fs::remove_file(entry.path());
            }
        }
        let events = self.events.clone();
        match Watcher::new(move |event| {
            let _ = events.send(Event::Fs(event));
        }) {
            Ok(watcher) => {
                let watcher = Arc::new(watcher);
                if let Err(e) = watcher.watch_dir(&self.layout.cookie_dir()) {
                    self.degrade(e.to_string());
                    return;
                }
                self.watcher = Some(watcher);
            }
            Err(e) => self.degrade(e.to_string()),
        }
    }

    /// True when answers must come from a rescan rather than from the
    /// watcher: by configuration, or because watching failed.
    fn rescans_on_query(&self) -> bool {
        self.watcher.is_none() || self.watch_problem.is_some()
    }

    fn degrade(&mut self, problem: String) {
        if self.watch_problem.is_none() {
            tracing::warn!(%problem, "watching degraded: rescanning on every query");
            self.watch_problem = Some(problem);
        }
    }

    /// Loads what the store knows and reconciles it with the disk, so a
    /// restart costs a rescan, never lost knowledge.
    fn initial_scan(&mut self) {
        let started = Instant::now();
        match self.store.load_files() {
            Ok(files) => {
                for (path, meta) in files {
                    self.index.insert(&path, meta);
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot load the file table; treating every file as new")
            }
        }
        let known = self.index.file_count();
        let batch = self.rescan(&RepoPath::root());
        let changed = batch.changes.len();
        self.commit(batch, false);
        tracing::info!(
            files = self.index.file_count(),
            known,
            changed,
            took = ?started.elapsed(),
            "initial scan done"
        );
    }

    fn dir_hook(&self) -> DirHook {
        let watcher = self.watcher.clone();
        let events = self.events.clone();
        Arc::new(move |dir: &Path| {
            if let Some(watcher) = &watcher
                && let Err(e) = watcher.watch_dir(dir)
            {
                let _ = events.send(Event::Fs(FsEvent::Failed(e.to_string())));
            }
        })
    }

    fn next_deadline(&self) -> Option<Instant> {
        let mut deadline: Option<Instant> = None;
        let mut consider = |t: Instant| {
            deadline = Some(deadline.map_or(t, |d| d.min(t)));
        };
        if let (Some(first), Some(last)) = (self.first_touch, self.last_touch) {
            consider((last + SETTLE).min(first + SETTLE_MAX));
        }
        if self.rescan_all {
            consider(Instant::now());
        }
        for p in &self.pending {
            consider(p.deadline);
        }
        if let Some(idle) = self.config.idle_timeout
            && self.subscribers.is_empty()
        {
            consider(self.last_activity + idle);
        }
        deadline
    }

    fn on_timers(&mut self) {
        let now = Instant::now();
        let settled = match (self.first_touch, self.last_touch) {
            (Some(first), Some(last)) => now >= last + SETTLE || now >= first + SETTLE_MAX,
            _ => false,
        };
        if settled || self.rescan_all {
            self.flush();
        }
        if self.rescans_on_query() && !self.pending.is_empty() {
            // Watching was turned off while queries waited for cookies.
            self.rescan_all = true;
            self.flush();
            let all: Vec<Pending> = self.pending.drain(..).collect();
            for p in all {
                self.complete(p.work);
            }
        }
        if self.pending.iter().any(|p| now >= p.deadline) {
            self.degrade(format!(
                "the file watcher did not report a sync cookie within {}s; tim rescans the tree on every query until the daemon is restarted (`tim daemon restart`)",
                COOKIE_TIMEOUT.as_secs()
            ));
            self.rescan_all = true;
            self.flush();
            let all: Vec<Pending> = self.pending.drain(..).collect();
            for p in all {
                self.complete(p.work);
            }
        }
        if let Some(idle) = self.config.idle_timeout
            && self.subscribers.is_empty()
            && !self.cache.busy()
            && self.shutdown.is_none()
            && now >= self.last_activity + idle
        {
            tracing::info!(?idle, "idle timeout reached");
            self.shutdown = Some(format!("idle for {}s", idle.as_secs()));
        }
    }

    fn handle(&mut self, event: Event) {
        match event {
            Event::Fs(fs) => self.on_fs(fs),
            Event::Query { query, reply } => {
                self.last_activity = Instant::now();
                self.sync_then(PendingWork::Query(query, reply));
            }
            Event::Subscribe {
                id,
                sink,
                request_id,
                reply,
            } => {
                self.last_activity = Instant::now();
                self.sync_then(PendingWork::Subscribe {
                    id,
                    sink,
                    request_id,
                    reply,
                });
            }
            Event::Disconnected { conn } => {
                for (key, lease) in self.cache.leases_of(conn) {
                    tracing::info!(key, "a cache lease holder went away; its waiters take over");
                    self.cache_release(&key, lease, None, false);
                }
            }
            Event::Unsubscribe { id } => {
                self.last_activity = Instant::now();
                self.subscribers.retain(|s| s.id != id);
            }
            Event::Shutdown { reason, reply } => {
                tracing::info!(%reason, "shutdown requested");
                if let Some(reply) = reply {
                    let _ = reply.send(Reply::plain(Response::Ok(OkReply {})));
                }
                self.shutdown = Some(reason);
            }
        }
    }

    fn on_fs(&mut self, event: FsEvent) {
        match event {
            FsEvent::Touched(paths) => {
                let cookie_dir = self.layout.cookie_dir();
                let mut seen_cookie = None;
                for path in paths {
                    if path.starts_with(&cookie_dir) {
                        if let Some(n) = cookie_number(&path, self.identity.pid) {
                            seen_cookie = seen_cookie.max(Some(n));
                        }
                        continue;
                    }
                    if path.starts_with(&self.layout.state_dir) {
                        continue;
                    }
                    self.touched.insert(path);
                    let now = Instant::now();
                    self.first_touch.get_or_insert(now);
                    self.last_touch = Some(now);
                }
                if let Some(n) = seen_cookie {
                    self.on_cookie(n);
                }
            }
            FsEvent::Rescan => {
                tracing::warn!("the OS dropped file events; rescanning the whole tree");
                self.rescan_all = true;
            }
            FsEvent::Failed(problem) => {
                self.degrade(problem);
            }
        }
    }

    /// Answers `work` once every change made before now has been seen.
    fn sync_then(&mut self, work: PendingWork) {
        if self.rescans_on_query() {
            self.rescan_all = true;
            self.flush();
            self.complete(work);
            return;
        }
        self.next_cookie += 1;
        let cookie = self.next_cookie;
        let path = self
            .layout
            .cookie_dir()
            .join(format!("{}-{cookie}", self.identity.pid));
        match std::fs::write(&path, b"") {
            Ok(()) => self.pending.push(Pending {
                cookie,
                deadline: Instant::now() + COOKIE_TIMEOUT,
                work,
            }),
            Err(e) => {
                tracing::warn!(error = %e, path = %path.display(), "cannot write a sync cookie; rescanning instead");
                self.rescan_all = true;
                self.flush();
                self.complete(work);
            }
        }
    }

    fn on_cookie(&mut self, n: u64) {
        let _ = std::fs::remove_file(
            self.layout
                .cookie_dir()
                .join(format!("{}-{n}", self.identity.pid)),
        );
        if !self.pending.iter().any(|p| p.cookie <= n) {
            return;
        }
        self.flush();
        let (ready, waiting): (Vec<_>, Vec<_>) =
            self.pending.drain(..).partition(|p| p.cookie <= n);
        self.pending = waiting;
        for p in ready {
            self.complete(p.work);
        }
    }

    fn complete(&mut self, work: PendingWork) {
        match work {
            PendingWork::Query(Query::CacheGet(params, conn), reply) => {
                self.cache_get(Waiter {
                    params,
                    conn,
                    reply,
                });
            }
            PendingWork::Query(query, reply) => {
                let kind = query.kind();
                let started = Instant::now();
                let answer = self.answer(query);
                let took = started.elapsed();
                if took > SLOW_TURN {
                    tracing::warn!(?took, query = kind, "slow query");
                }
                let _ = reply.send(answer);
            }
            PendingWork::Subscribe {
                id,
                sink,
                request_id,
                reply,
            } => {
                let answer = Reply {
                    response: Response::Subscribed(SubscribedReply {
                        clock: self.clock(),
                    }),
                    warnings: self.current_warnings(),
                };
                if reply.send(answer).is_ok() {
                    self.subscribers.push(Subscriber {
                        id,
                        request_id,
                        sink,
                    });
                }
            }
        }
    }

    fn clock(&self) -> String {
        format!("tim:{}:{}", self.store.instance(), self.store.seq())
    }

    fn current_warnings(&self) -> Vec<String> {
        let mut warnings = self.warnings.clone();
        if let Some(problem) = &self.watch_problem {
            warnings.push(problem.clone());
        }
        warnings
    }

    fn answer(&mut self, query: Query) -> Reply {
        let response = match query {
            Query::Status => self.status().map_err(PytestError::from),
            Query::Changes { since } => self.changes(since).map_err(PytestError::from),
            Query::CachePut(params, _) => return self.cache_put(*params),
            Query::CacheAbandon(params) => {
                if let Some(key) = self.cache.key_of(params.lease) {
                    self.cache_release(&key, params.lease, None, false);
                }
                Ok(Response::Ok(OkReply {}))
            }
            Query::CacheStats => self.cache_stats().map_err(PytestError::from),
            Query::CacheGc(params) => return self.cache_gc(params),
            Query::CacheExport(params) => return self.cache_transfer(&params.dir, true),
            Query::CacheImport(params) => return self.cache_transfer(&params.dir, false),
            other => self.pytest_query(other),
        };
        match response {
            Ok(response) => Reply {
                response,
                warnings: self.current_warnings(),
            },
            Err(
                e @ (PytestError::UnknownRun(_) | PytestError::Since(_) | PytestError::Invalid(_)),
            ) => Reply::plain(Response::Error(ErrorReply::new(
                ErrorCode::InvalidRequest,
                e.to_string(),
            ))),
            Err(e) => {
                tracing::error!(error = %e, "query failed");
                Reply::plain(Response::Error(ErrorReply::new(
                    ErrorCode::Internal,
                    format!(
                        "the daemon could not read its database: {e}; see {}",
                        self.layout.log().display()
                    ),
                )))
            }
        }
    }

    /// What the pytest adapter works with (the tree, the store, the
    /// settings), beside the adapter itself.
    fn adapter(&mut self) -> (Ctx<'_>, &mut Pytest, &Config) {
        let ctx = Ctx {
            root: &self.layout.root,
            keep_together: self.config.keep_together,
            history_keep: self.config.history_keep,
            order: self.config.order,
            index: &self.index,
            filter: &self.filter,
            store: &mut self.store,
            clock: String::new(),
        };
        (ctx, &mut self.pytest, &self.config)
    }

    fn pytest_query(&mut self, query: Query) -> Result<Response, PytestError> {
        let (mut ctx, pytest, config) = self.adapter();
        ctx.clock = format!("tim:{}:{}", ctx.store.instance(), ctx.store.seq());
        Ok(match query {
            Query::Status
            | Query::Changes { .. }
            | Query::CacheGet(..)
            | Query::CachePut(..)
            | Query::CacheAbandon(_)
            | Query::CacheStats
            | Query::CacheGc(_)
            | Query::CacheExport(_)
            | Query::CacheImport(_) => unreachable!("answered by the core"),
            Query::BeginRun(params) => {
                let since = since_of(ctx.root, params.since.as_deref())?;
                let run_id = pytest.begin_run(&mut ctx, *params, since.as_ref())?;
                Response::RunStarted(tim_proto::RunStarted {
                    run_id,
                    clock: ctx.clock,
                })
            }
            Query::Select(params) => Response::Selection(pytest.select(&mut ctx, params)?),
            Query::Record(params) => {
                pytest.record(&mut ctx, params)?;
                Response::Ok(OkReply {})
            }
            Query::CargoRecord(params) => {
                pytest.record_cargo(&mut ctx, params)?;
                Response::Ok(OkReply {})
            }
            Query::EndRun(params) => {
                pytest.end_run(&mut ctx, params)?;
                Response::Ok(OkReply {})
            }
            Query::Affected(params) => {
                let since = since_of(ctx.root, params.since.as_deref())?;
                Response::Affected(pytest.affected(&mut ctx, params, since.as_ref()))
            }
            Query::Why(params) => Response::Why(pytest.why(&mut ctx, params)),
            Query::Stats(params) => Response::Stats(pytest.stats(&ctx, params)?),
            Query::Audit(_) => Response::Audit(pytest.audit(&config.budgets)),
            Query::ImportResults(params) => {
                pytest.import_results(&mut ctx, params)?;
                Response::Ok(tim_proto::OkReply {})
            }
        })
    }

    // -- the artifact cache ---------------------------------------------------

    /// Answers a `cache_get` now, or parks it while another connection
    /// computes the entry.
    fn cache_get(&mut self, waiter: Waiter<oneshot::Sender<Reply>>) {
        let waiter = match self.cache.claim(waiter) {
            Claim::Parked => return,
            Claim::Free(w) => w,
        };
        let reply = match self.cache_lookup(&waiter.params, waiter.conn) {
            Ok(answer) => Reply::plain(Response::CacheEntry(answer)),
            Err(e) => internal_error(&e.to_string(), &self.layout),
        };
        let _ = waiter.reply.send(reply);
    }

    /// A hit, a lease to compute, or (replay-only) why there is nothing.
    fn cache_lookup(
        &mut self,
        params: &tim_proto::CacheGetParams,
        conn: u64,
    ) -> Result<tim_proto::CacheAnswer, PytestError> {
        use tim_proto::{CacheAnswer, CacheMode, CacheStatus};
        let key = params.key.as_str();
        let refresh =
            params.mode == CacheMode::Refresh && self.cache.must_refresh(params.run_id, key);
        let why = match self.store.cache_entry(key)? {
            _ if refresh => "refresh".to_owned(),
            None => "no entry".to_owned(),
            Some(row) => match self.cache_validity(&row) {
                None => {
                    self.store
                        .cache_hit(key, &row.fixture, row.produce_seconds)?;
                    return Ok(CacheAnswer {
                        status: CacheStatus::Hit,
                        path: Some(self.cache.blob_path(&row.blob).display().to_string()),
                        serializer: Some(row.serializer),
                        lease: None,
                        why: None,
                        produce_seconds: Some(row.produce_seconds),
                    });
                }
                Some(why) => why,
            },
        };
        if params.mode == CacheMode::ReplayOnly {
            return Ok(CacheAnswer {
                status: CacheStatus::Missing,
                path: None,
                serializer: None,
                lease: None,
                why: Some(why),
                produce_seconds: None,
            });
        }
        if let Err(e) = self.cache.prepare() {
            tracing::warn!(error = %e, "cannot create the cache's tmp directory");
        }
        let lease = self.cache.lease(key, conn);
        Ok(CacheAnswer {
            status: CacheStatus::Compute,
            path: Some(self.cache.dir().join("tmp").display().to_string()),
            serializer: None,
            lease: Some(lease),
            why: Some(why),
            produce_seconds: None,
        })
    }

    /// Why a stored entry may not be used (`None`: it may). A corrupt blob
    /// is deleted on the way.
    fn cache_validity(&mut self, row: &CacheRow) -> Option<String> {
        if !self.cache.verify(&row.blob) {
            tracing::warn!(
                key = row.key,
                blob = row.blob,
                "corrupt or missing cache blob; recomputing"
            );
            self.cache.delete_blob(&row.blob);
            return Some("corrupt blob (its content no longer matches its digest)".to_owned());
        }
        let deps = match &row.deps {
            None => return None,
            Some(None) => return Some("recorded by another version of tim".to_owned()),
            Some(Some(deps)) => deps,
        };
        let (ctx, pytest, _) = self.adapter();
        pytest.stale_reason(&ctx, deps, row.env)
    }

    fn cache_put(&mut self, params: tim_proto::CachePutParams) -> Reply {
        match self.cache_store(&params) {
            Ok(path) => {
                self.cache_release(&params.key, params.lease, params.run_id, true);
                Reply::plain(Response::CacheEntry(tim_proto::CacheAnswer {
                    status: tim_proto::CacheStatus::Hit,
                    path: Some(path),
                    serializer: Some(params.serializer),
                    lease: None,
                    why: None,
                    produce_seconds: Some(params.produce_seconds),
                }))
            }
            Err(e) => {
                // The lease is given up: a waiter computes instead.
                self.cache_release(&params.key, params.lease, None, false);
                if self.cache.in_tmp(Path::new(&params.tmp)) {
                    let _ = std::fs::remove_file(&params.tmp);
                }
                Reply::plain(Response::Error(ErrorReply::new(
                    ErrorCode::InvalidRequest,
                    e.to_string(),
                )))
            }
        }
    }

    fn cache_store(&mut self, params: &tim_proto::CachePutParams) -> Result<String, PytestError> {
        if !self.cache.may_store(&params.key, params.lease) {
            return Err(PytestError::Cache(crate::cache::CacheError::LeaseLost {
                key: params.key.clone(),
            }));
        }
        let (deps, env) = match &params.deps {
            Some(deps) => {
                let (ctx, pytest, _) = self.adapter();
                let (deps, env) = pytest.producer_deps(&ctx, params.run_id, deps)?;
                (Some(Some(deps)), env)
            }
            None => (None, None),
        };
        let (blob, size) = self.cache.adopt(&params.tmp).map_err(PytestError::Cache)?;
        let old = self.store.cache_entry(&params.key)?;
        let now = crate::store::now_ms();
        self.store.cache_put(
            &CacheRow {
                key: params.key.clone(),
                fixture: params.fixture.clone(),
                blob: blob.clone(),
                size,
                serializer: params.serializer.clone(),
                deps,
                env,
                produce_seconds: params.produce_seconds.max(0.0),
                created_ms: now,
                used_ms: now,
                hits: 0,
            },
            true,
        )?;
        if let Some(old) = old
            && old.blob != blob
            && !self.store.cache_blob_used(&old.blob)?
        {
            self.cache.delete_blob(&old.blob);
        }
        self.pytest.note_artifact(&params.key, Some(&blob));
        tracing::info!(
            key = params.key,
            fixture = params.fixture,
            size,
            "cache entry stored"
        );
        self.cache_evict(self.config.cache_max_bytes)?;
        Ok(self.cache.blob_path(&blob).display().to_string())
    }

    /// Ends a lease and asks the questions that waited for it again: the
    /// first gets the stored entry, or the lease.
    fn cache_release(&mut self, key: &str, lease: u64, run: Option<u64>, stored: bool) {
        for waiter in self.cache.release(key, lease, run, stored) {
            self.cache_get(waiter);
        }
    }

    /// Evicts least recently used entries until the blobs take at most
    /// `max_bytes` (never one being computed); (removed, freed, kept, bytes).
    fn cache_evict(&mut self, max_bytes: u64) -> Result<(u64, u64, u64, u64), PytestError> {
        let entries = self.store.cache_slots()?;
        let mut bytes: u64 = entries.iter().map(|(_, _, size)| size).sum();
        let mut gone = Vec::new();
        let mut freed = 0;
        for (key, blob, size) in &entries {
            if bytes <= max_bytes {
                break;
            }
            if self.cache.leased(key) {
                continue;
            }
            bytes -= size;
            freed += size;
            gone.push((key.clone(), blob));
        }
        if gone.is_empty() {
            return Ok((0, 0, entries.len() as u64, bytes));
        }
        let keys: Vec<String> = gone.iter().map(|(key, _)| key.clone()).collect();
        self.store.cache_remove(&keys)?;
        for key in &keys {
            self.pytest.note_artifact(key, None);
        }
        for (_, blob) in &gone {
            if !self.store.cache_blob_used(blob)? {
                self.cache.delete_blob(blob);
            }
        }
        tracing::info!(removed = gone.len(), freed, "cache entries evicted");
        Ok((
            gone.len() as u64,
            freed,
            (entries.len() - gone.len()) as u64,
            bytes,
        ))
    }

    fn cache_gc(&mut self, params: tim_proto::CacheGcParams) -> Reply {
        let result = if params.clear {
            self.cache_evict(0).and_then(|r| {
                self.store.cache_clear_counters()?;
                if let Err(e) = self.cache.delete_all() {
                    tracing::warn!(error = %e, "cannot empty the cache directory");
                }
                Ok(r)
            })
        } else {
            self.cache_evict(params.max_bytes.unwrap_or(self.config.cache_max_bytes))
        };
        match result {
            Ok((removed, freed_bytes, kept, bytes)) => {
                Reply::plain(Response::CacheGc(tim_proto::CacheGcReply {
                    removed,
                    freed_bytes,
                    kept,
                    bytes,
                }))
            }
            Err(e) => internal_error(&e.to_string(), &self.layout),
        }
    }

    /// `tim cache export DIR` (`export`) or `tim cache import DIR`.
    fn cache_transfer(&mut self, dir: &str, export: bool) -> Reply {
        let dir = Path::new(dir);
        let result = if export {
            self.store
                .cache_entries()
                .map_err(PytestError::from)
                .and_then(|rows| self.cache.export(&rows, dir).map_err(PytestError::from))
        } else {
            self.cache_import(dir)
        };
        match result {
            Ok(reply) => Reply::plain(Response::CacheTransfer(reply)),
            Err(PytestError::Cache(e)) => Reply::plain(Response::Error(ErrorReply::new(
                ErrorCode::InvalidRequest,
                e.to_string(),
            ))),
            Err(e) => internal_error(&e.to_string(), &self.layout),
        }
    }

    fn cache_import(&mut self, dir: &Path) -> Result<tim_proto::CacheTransferReply, PytestError> {
        let (rows, mut skipped) = self.cache.import(dir)?;
        let mut bytes = 0;
        let mut entries = 0;
        for row in rows {
            let old = self.store.cache_entry(&row.key)?;
            if self.cache.leased(&row.key) {
                skipped.push(format!("{}: being computed now", row.fixture));
                continue;
            }
            self.store.cache_put(&row, false)?;
            self.pytest.note_artifact(&row.key, Some(&row.blob));
            if let Some(old) = old
                && old.blob != row.blob
                && !self.store.cache_blob_used(&old.blob)?
            {
                self.cache.delete_blob(&old.blob);
            }
            bytes += row.size;
            entries += 1;
        }
        tracing::info!(entries, bytes, dir = %dir.display(), "cache entries imported");
        Ok(tim_proto::CacheTransferReply {
            entries,
            bytes,
            skipped,
        })
    }

    fn cache_stats(&self) -> Result<Response, crate::store::StoreError> {
        let entries = self.store.cache_entries()?;
        let mut fixtures: std::collections::BTreeMap<String, tim_proto::CacheFixtureStats> = self
            .store
            .cache_counters()?
            .into_iter()
            .map(|c| {
                (
                    c.fixture.clone(),
                    tim_proto::CacheFixtureStats {
                        fixture: c.fixture,
                        entries: 0,
                        bytes: 0,
                        hits: c.hits,
                        misses: c.misses,
                        saved_seconds: c.saved_seconds,
                    },
                )
            })
            .collect();
        for e in &entries {
            let f =
                fixtures
                    .entry(e.fixture.clone())
                    .or_insert_with(|| tim_proto::CacheFixtureStats {
                        fixture: e.fixture.clone(),
                        entries: 0,
                        bytes: 0,
                        hits: 0,
                        misses: 0,
                        saved_seconds: 0.0,
                    });
            f.entries += 1;
            f.bytes += e.size;
        }
        Ok(Response::CacheStats(tim_proto::CacheStatsReply {
            dir: self.cache.dir().display().to_string(),
            bytes: entries.iter().map(|e| e.size).sum(),
            entries: entries
                .into_iter()
                .rev()
                .map(|e| tim_proto::CacheEntryInfo {
                    key: e.key,
                    fixture: e.fixture,
                    size: e.size,
                    serializer: e.serializer,
                    tracks_code: e.deps.is_some(),
                    produce_seconds: e.produce_seconds,
                    hits: e.hits,
                    created_ms: e.created_ms,
                    used_ms: e.used_ms,
                })
                .collect(),
            fixtures: fixtures.into_values().collect(),
        }))
    }

    fn status(&self) -> Result<Response, crate::store::StoreError> {
        let last_run = self.store.last_run()?;
        let changed = match &last_run {
            Some(run) => Some(to_file_changes(self.store.changes_since(run.clock_seq)?)),
            None => None,
        };
        Ok(Response::Status(StatusReply {
            daemon_version: self.identity.daemon_version.clone(),
            protocol: self.identity.protocol,
            pid: self.identity.pid,
            root: self.identity.root.display().to_string(),
            uptime_ms: self.identity.started.elapsed().as_millis() as u64,
            tracked_files: self.index.file_count() as u64,
            clock: self.clock(),
            watcher: WatcherStatus {
                mode: if self.rescans_on_query() {
                    WatcherMode::RescanOnQuery
                } else {
                    WatcherMode::Native
                },
                problem: self.watch_problem.clone(),
            },
            last_run: last_run.map(|r| RunSummary {
                id: r.id,
                started_at_ms: r.started_at_ms,
                finished_at_ms: r.finished_at_ms,
                command: r.command,
            }),
            changed_since_last_run: changed,
        }))
    }

    fn changes(&self, since: Option<String>) -> Result<Response, crate::store::StoreError> {
        let parsed = since
            .as_deref()
            .map(|s| parse_clock(s, self.store.instance(), self.store.seq()));
        let (fresh_reason, files) = match parsed {
            Some(Ok(seq)) => (None, to_file_changes(self.store.changes_since(seq)?)),
            Some(Err(reason)) => (Some(reason), self.all_files_added()),
            None => (
                Some("no clock was given".to_owned()),
                self.all_files_added(),
            ),
        };
        Ok(Response::Changes(ChangesReply {
            clock: self.clock(),
            fresh_instance: fresh_reason.is_some(),
            fresh_reason,
            files,
        }))
    }

    fn all_files_added(&self) -> Vec<FileChange> {
        let mut files: Vec<FileChange> = self
            .index
            .files()
            .map(|(path, _)| FileChange {
                path: path.to_string(),
                kind: ChangeKind::Added,
            })
            .collect();
        files.sort();
        files
    }

    /// Processes every touched path (or the whole tree after an overflow or
    /// in degraded mode) and commits the result as one batch.
    fn flush(&mut self) {
        let touched = std::mem::take(&mut self.touched);
        self.first_touch = None;
        self.last_touch = None;
        let mut config_changed = false;
        let mut subtrees: BTreeSet<RepoPath> = BTreeSet::new();
        let mut dirs: BTreeSet<RepoPath> = BTreeSet::new();
        for abs in &touched {
            let Some(rel) = self.filter.relative(abs) else {
                continue;
            };
            let Some((parent, name)) = rel.split() else {
                dirs.insert(RepoPath::root());
                continue;
            };
            if parent.is_root() && CONFIG_FILES.contains(&name) {
                config_changed = true;
            }
            if IGNORE_FILES.contains(&name) {
                subtrees.insert(parent.clone());
            }
            if self.index.has_dir(&rel) {
                dirs.insert(rel.clone());
            }
            dirs.insert(parent);
        }
        if config_changed && self.reload_config() {
            self.rescan_all = true;
        }
        let started = Instant::now();
        let batch = if std::mem::take(&mut self.rescan_all) {
            self.rescan(&RepoPath::root())
        } else {
            let mut batch = Batch::default();
            for tree in &subtrees {
                if subtrees
                    .iter()
                    .any(|t| t != tree && tree.starts_with_dir(t))
                {
                    continue;
                }
                let part = self.rescan(tree);
                batch.updates.extend(part.updates);
                batch.changes.extend(part.changes);
            }
            for dir in &dirs {
                if subtrees.iter().any(|t| dir.starts_with_dir(t)) {
                    continue;
                }
                self.refresh_dir(dir, &mut batch);
            }
            batch
        };
        if !batch.updates.is_empty() {
            tracing::debug!(
                touched = touched.len(),
                changes = batch.changes.len(),
                took = ?started.elapsed(),
                "batch processed"
            );
        }
        self.commit(batch, true);
    }

    /// Rereads the configuration; true when the tracked set may differ.
    fn reload_config(&mut self) -> bool {
        match Config::load(&self.layout.root) {
            Ok(config) => {
                self.warnings.retain(|w| !w.starts_with("configuration: "));
                let excludes_changed = config.exclude != self.config.exclude;
                if excludes_changed {
                    match Filter::new(&self.layout.root, &config.exclude) {
                        Ok(filter) => self.filter = filter,
                        Err(e) => {
                            self.warnings
                                .push(format!("configuration: {e}; keeping the previous excludes"));
                            return false;
                        }
                    }
                }
                let mode_changed = config.watch_mode != self.config.watch_mode;
                tracing::info!(?config, "configuration reloaded");
                self.config = config;
                if mode_changed {
                    self.watcher = None;
                    self.watch_problem = None;
                    self.start_watching();
                }
                // A new watcher needs its watches, which a full walk adds.
                excludes_changed || mode_changed
            }
            Err(e) => {
                self.warnings.retain(|w| !w.starts_with("configuration: "));
                self.warnings.push(format!(
                    "configuration: {e}; keeping the previous settings until it is fixed"
                ));
                false
            }
        }
    }

    /// Brings one directory's direct entries up to date.
    fn refresh_dir(&mut self, dir: &RepoPath, batch: &mut Batch) {
        if !self.index.has_dir(dir) {
            // Not tracked (ignored, or new: its parent's listing finds it).
            return;
        }
        match self.filter.list_dir(dir) {
            None => self.forget_dir(dir, batch),
            Some(listing) => self.apply_listings(vec![listing], false, batch),
        }
    }

    /// Walks `tree` completely and brings everything below it up to date.
    fn rescan(&mut self, tree: &RepoPath) -> Batch {
        let mut batch = Batch::default();
        let listings = self.filter.walk(tree, self.dir_hook());
        if listings.is_empty() {
            self.forget_dir(tree, &mut batch);
        } else {
            // Directories the index knows below `tree` that the walk did not
            // find are gone (or now ignored).
            let found: BTreeSet<&RepoPath> = listings.iter().map(|l| &l.dir).collect();
            let stale: Vec<RepoPath> = self
                .index
                .dirs_under(tree)
                .into_iter()
                .filter(|d| !found.contains(d))
                .collect();
            for dir in stale {
                if self.index.has_dir(&dir) {
                    self.forget_dir(&dir, &mut batch);
                }
            }
            self.apply_listings(listings, true, &mut batch);
        }
        batch
    }

    fn forget_dir(&mut self, dir: &RepoPath, batch: &mut Batch) {
        // Watches are deliberately not removed: the kernel drops those of
        // deleted directories itself, and a directory renamed elsewhere in
        // the tree shares its watch (same inode) with its new path, which
        // removing the old one would silence. A leftover watch on a
        // now-ignored directory only causes a harmless re-listing.
        for path in self.index.remove_dir(dir) {
            batch.deleted(path);
        }
    }

    /// Applies fresh listings to the index. `complete` says the listings
    /// cover whole subtrees (a walk), so new subdirectories need no walk.
    fn apply_listings(&mut self, listings: Vec<Listing>, complete: bool, batch: &mut Batch) {
        let mut to_hash = Vec::new();
        let mut walk_next = Vec::new();
        for listing in &listings {
            let diff = self.index.diff_listing(listing);
            to_hash.extend(diff.to_hash);
            for path in diff.removed {
                self.index.remove(&path);
                batch.deleted(path);
            }
            for dir in diff.removed_subdirs {
                self.forget_dir(&dir, batch);
            }
            if !complete {
                walk_next.extend(diff.new_subdirs);
            }
            self.index.add_dir(&listing.dir);
        }
        for (path, hashed) in scan::hash_files(&self.filter, to_hash) {
            match hashed {
                Hashed::Present(meta) => {
                    let previous = self.index.get(&path).map(|m| m.hash);
                    let content_changed = previous != Some(meta.hash);
                    if content_changed {
                        batch.changes.push(FileChange {
                            path: path.to_string(),
                            kind: if previous.is_some() {
                                ChangeKind::Modified
                            } else {
                                ChangeKind::Added
                            },
                        });
                    }
                    self.index.insert(&path, meta);
                    batch.updates.push(FileUpdate::Upsert {
                        path,
                        meta,
                        content_changed,
                    });
                }
                Hashed::Gone => {
                    if self.index.remove(&path).is_some() {
                        batch.deleted(path);
                    }
                }
            }
        }
        for dir in walk_next {
            let listings = self.filter.walk(&dir, self.dir_hook());
            self.apply_listings(listings, true, batch);
        }
    }

    /// Persists a batch and tells subscribers what changed.
    fn commit(&mut self, mut batch: Batch, notify: bool) {
        if batch.updates.is_empty() {
            return;
        }
        if let Err(e) = self.store.commit(&batch.updates) {
            // The index stays ahead of the store; the next start reconciles
            // the disk against what the store holds, so nothing is missed.
            tracing::error!(error = %e, "cannot commit file changes");
            return;
        }
        if !notify || batch.changes.is_empty() {
            return;
        }
        batch.changes.sort();
        batch.changes.dedup_by(|a, b| a.path == b.path);
        let clock = self.clock();
        self.subscribers.retain(|s| {
            s.sink
                .send(ResponseFrame {
                    id: Some(s.request_id),
                    response: Response::FilesChanged(FilesChanged {
                        clock: clock.clone(),
                        fresh_instance: false,
                        files: batch.changes.clone(),
                    }),
                    warnings: Vec::new(),
                })
                .is_ok()
        });
    }
}

fn cookie_number(path: &Path, pid: u32) -> Option<u64> {
    let name = path.file_name()?.to_str()?;
    let (owner, n) = name.split_once('-')?;
    if owner != pid.to_string() {
        return None;
    }
    n.parse().ok()
}

fn to_file_changes(changes: Vec<(RepoPath, Change)>) -> Vec<FileChange> {
    changes
        .into_iter()
        .map(|(path, change)| FileChange {
            path: path.to_string(),
            kind: match change {
                Change::Added => ChangeKind::Added,
                Change::Modified => ChangeKind::Modified,
                Change::Deleted => ChangeKind::Deleted,
            },
        })
        .collect()
}

/// `tim:<instance>:<seq>` → seq, if it belongs to this database.
fn parse_clock(clock: &str, instance: &str, current: u64) -> Result<u64, String> {
    let mut parts = clock.splitn(3, ':');
    let (Some("tim"), Some(inst), Some(seq)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(format!("{clock:?} is not a tim clock"));
    };
    if inst != instance {
        return Err("the clock is from another database (it was rebuilt or replaced)".into());
    }
    match seq.parse::<u64>() {
        Ok(seq) if seq <= current => Ok(seq),
        Ok(_) => Err("the clock is ahead of this database".into()),
        Err(_) => Err(format!("{clock:?} is not a tim clock")),
    }
}

/// The files that differ from the merge base with `rev` (`--since`).
fn since_of(root: &Path, rev: Option<&str>) -> Result<Option<crate::pytest::Since>, PytestError> {
    let Some(rev) = rev else { return Ok(None) };
    let changed = crate::git::changed_since(root, rev).map_err(PytestError::Since)?;
    Ok(Some(crate::pytest::Since {
        rev: rev.to_owned(),
        changed,
    }))
}

/// The answer to a query that failed inside the daemon.
fn internal_error(error: &str, layout: &Layout) -> Reply {
    tracing::error!(error, "query failed");
    Reply::plain(Response::Error(ErrorReply::new(
        ErrorCode::Internal,
        format!(
            "the daemon could not answer: {error}; see {}",
            layout.log().display()
        ),
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clocks() {
        assert_eq!(parse_clock("tim:abc:3", "abc", 5), Ok(3));
        assert!(
            parse_clock("tim:abc:6", "abc", 5)
                .unwrap_err()
                .contains("ahead")
        );
        assert!(
            parse_clock("tim:xyz:3", "abc", 5)
                .unwrap_err()
                .contains("another database")
        );
        assert!(parse_clock("c:1", "abc", 5).is_err());
        assert_eq!(
            cookie_number(Path::new("/r/.tim/cookies/42-7"), 42),
            Some(7)
        );
        assert_eq!(cookie_number(Path::new("/r/.tim/cookies/41-7"), 42), None);
    }
}
