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
pub const DAEMON_CAPABILITIES: &[&str] = &["status", "changes", "subscribe", "shutdown"];

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
}

impl Request {
    pub fn type_name(&self) -> &'static str {
        match self {
            Request::Hello(_) => "hello",
            Request::Status(_) => "status",
            Request::Changes(_) => "changes",
            Request::Subscribe(_) => "subscribe",
            Request::Shutdown(_) => "shutdown",
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
