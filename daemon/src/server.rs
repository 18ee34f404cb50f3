//! The socket server: accepts connections, reads frames, enforces the
//! protocol's rules and forwards requests to the core.
//!
//! Architecture invariants: this is the only module that uses sockets; it
//! holds no project state (everything it knows about the tree comes from the
//! core's replies); no frame, however malformed or large, can take the
//! daemon down: the worst a client can do is lose its own connection.

use crate::core::{Event, Identity, Query, Reply};
use interprocess::local_socket::tokio::{Listener, Stream, prelude::*};
use interprocess::local_socket::{GenericFilePath, ListenerOptions};
use interprocess::os::unix::local_socket::ListenerOptionsExt;
use std::io;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use tim_proto::{
    DAEMON_CAPABILITIES, ErrorCode, ErrorReply, HelloReply, MAX_FRAME_BYTES, Request, RequestFrame,
    Response, ResponseFrame, decode_request, encode_response,
};
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::{mpsc, oneshot, watch};

/// Binds the socket with mode 0600 (set before `bind`, so there is no
/// window where it is open to others). A stale socket file is replaced:
/// the caller holds the daemon lock, so no live daemon owns it.
pub fn bind(socket: &Path) -> io::Result<Listener> {
    let name = socket.to_fs_name::<GenericFilePath>()?;
    ListenerOptions::new()
        .name(name)
        .mode(0o600)
        .try_overwrite(true)
        .create_tokio()
}

pub struct Server {
    pub core: std::sync::mpsc::Sender<Event>,
    pub identity: Identity,
    next_subscription: AtomicU64,
    /// Requests read but not yet answered; shutdown waits for them.
    in_flight: AtomicUsize,
    answered: tokio::sync::Notify,
}

impl Server {
    pub fn new(core: std::sync::mpsc::Sender<Event>, identity: Identity) -> Server {
        Server {
            core,
            identity,
            next_subscription: AtomicU64::new(1),
            in_flight: AtomicUsize::new(0),
            answered: tokio::sync::Notify::new(),
        }
    }

    /// Waits (at most `limit`) until every request read so far has been
    /// answered, so that stopping the runtime does not swallow a reply, such
    /// as the `ok` to the `shutdown` that caused the stop.
    pub async fn drained(&self, limit: std::time::Duration) {
        let wait = async {
            loop {
                let notified = self.answered.notified();
                if self.in_flight.load(Ordering::SeqCst) == 0 {
                    return;
                }
                notified.await;
            }
        };
        if tokio::time::timeout(limit, wait).await.is_err() {
            tracing::warn!("shutting down with requests still unanswered");
        }
    }
}

/// Counts one request as in flight until dropped.
struct InFlight(Arc<Server>);

impl InFlight {
    fn new(server: &Arc<Server>) -> Self {
        server.in_flight.fetch_add(1, Ordering::SeqCst);
        InFlight(server.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if self.0.in_flight.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.answered.notify_waiters();
        }
    }
}

/// Accepts connections until `stop` flips to true.
pub async fn serve(listener: Listener, server: Arc<Server>, mut stop: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(stream) => {
                    let server = server.clone();
                    tokio::spawn(async move {
                        if let Err(e) = connection(stream, server).await {
                            tracing::debug!(error = %e, "connection ended with an error");
                        }
                    });
                }
                Err(e) => tracing::warn!(error = %e, "accept failed"),
            },
            _ = stop.changed() => break,
        }
    }
    // Dropping the listener removes the socket file.
    drop(listener);
}

enum Frame {
    Line,
    Eof,
    TooLarge,
}

/// Reads one `\n`-terminated line into `buf`, refusing lines longer than
/// `limit` without buffering them.
async fn read_frame<R: AsyncBufRead + Unpin>(
    reader: &mut R,
    buf: &mut Vec<u8>,
    limit: usize,
) -> io::Result<Frame> {
    buf.clear();
    loop {
        let available = reader.fill_buf().await?;
        if available.is_empty() {
            return Ok(if buf.is_empty() {
                Frame::Eof
            } else {
                Frame::Line
            });
        }
        let (chunk, done) = match available.iter().position(|&b| b == b'\n') {
            Some(i) => (&available[..i], Some(i + 1)),
            None => (available, None),
        };
        if buf.len() + chunk.len() >= limit {
            return Ok(Frame::TooLarge);
        }
        buf.extend_from_slice(chunk);
        let consumed = done.unwrap_or(chunk.len());
        reader.consume(consumed);
        if done.is_some() {
            return Ok(Frame::Line);
        }
    }
}

async fn send(mut writer: &Stream, frame: &ResponseFrame) -> io::Result<()> {
    writer.write_all(&encode_response(frame)).await?;
    writer.flush().await
}

fn error(id: Option<u64>, code: ErrorCode, message: impl Into<String>) -> ResponseFrame {
    ResponseFrame {
        id,
        response: Response::Error(ErrorReply::new(code, message)),
        warnings: Vec::new(),
    }
}

fn frame(id: u64, reply: Reply) -> ResponseFrame {
    ResponseFrame {
        id: Some(id),
        response: reply.response,
        warnings: reply.warnings,
    }
}

/// Tells the core when a connection ends, however it ends: the artifact
/// cache's leases belong to connections (a worker that died gives its
/// lease to the next in line).
struct ConnectionGuard {
    id: u64,
    core: std::sync::mpsc::Sender<Event>,
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        let _ = self.core.send(Event::Disconnected { conn: self.id });
    }
}

async fn connection(stream: Stream, server: Arc<Server>) -> io::Result<()> {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    let conn = ConnectionGuard {
        id: NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        core: server.core.clone(),
    };
    // `&Stream` reads and writes; the buffered reader and the writer share it.
    let writer = &stream;
    let mut reader = BufReader::new(&stream);
    let mut buf = Vec::new();
    // `None` until hello; then whether the client's major version matches.
    let mut compatible: Option<bool> = None;
    let protocol = server.identity.protocol;
    loop {
        match read_frame(&mut reader, &mut buf, MAX_FRAME_BYTES).await? {
            Frame::Eof => return Ok(()),
            Frame::TooLarge => {
                let msg =
                    format!("frame larger than {MAX_FRAME_BYTES} bytes; the connection is closed");
                send(writer, &error(None, ErrorCode::FrameTooLarge, msg)).await?;
                return Ok(());
            }
            Frame::Line => {}
        }
        if buf.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let _in_flight = InFlight::new(&server);
        let RequestFrame { id, request } = match decode_request(&buf) {
            Ok(frame) => frame,
            Err(e) => {
                let message = match e.code() {
                    ErrorCode::UnknownRequest => format!(
                        "{e}; this daemon (timd {}, protocol {protocol}) knows: hello, status, changes, subscribe, shutdown, begin_run, select, record, end_run, affected, why, stats, import_results, audit, cache_get, cache_put, cache_abandon, cache_stats, cache_gc, cache_export, cache_import, cargo_record",
                        server.identity.daemon_version
                    ),
                    _ => e.to_string(),
                };
                send(writer, &error(e.id(), e.code(), message)).await?;
                continue;
            }
        };
        match (&request, compatible) {
            (Request::Hello(hello), _) => {
                let same_major = hello.protocol.major == protocol.major;
                compatible = Some(same_major);
                tracing::debug!(client = %hello.client, version = %hello.client_version, protocol = %hello.protocol, "hello");
                let reply = HelloReply {
                    protocol,
                    daemon_version: server.identity.daemon_version.clone(),
                    pid: server.identity.pid,
                    root: server.identity.root.display().to_string(),
                    capabilities: DAEMON_CAPABILITIES.iter().map(|c| c.to_string()).collect(),
                };
                send(
                    writer,
                    &ResponseFrame {
                        id: Some(id),
                        response: Response::Hello(reply),
                        warnings: Vec::new(),
                    },
                )
                .await?;
                continue;
            }
            (_, None) => {
                let msg = format!(
                    "`{}` before `hello`: the first frame must be a hello with the protocol version; the connection is closed",
                    request.type_name()
                );
                send(writer, &error(Some(id), ErrorCode::HelloRequired, msg)).await?;
                return Ok(());
            }
            // A client of another major version may only ask the daemon to
            // go away (a newer tim replacing this daemon).
            (Request::Shutdown(_), Some(_)) => {}
            (_, Some(false)) => {
                let msg = format!(
                    "this daemon speaks protocol {protocol}; only `shutdown` is accepted from a client of another major version"
                );
                send(
                    writer,
                    &error(Some(id), ErrorCode::IncompatibleProtocol, msg),
                )
                .await?;
                continue;
            }
            (_, Some(true)) => {}
        }
        match request {
            Request::Hello(_) => unreachable!("handled above"),
            Request::Status(_) => query(&server, writer, id, Query::Status).await?,
            Request::Changes(p) => {
                query(&server, writer, id, Query::Changes { since: p.since }).await?
            }
            Request::Shutdown(params) => {
                let reason = if params.reason.is_empty() {
                    "requested by a client".to_owned()
                } else {
                    params.reason
                };
                let reply = ask(&server, |reply| Event::Shutdown {
                    reason,
                    reply: Some(reply),
                })
                .await;
                send(writer, &frame(id, reply)).await?;
                // Keep the connection open: it closes when the process
                // exits, after the lock is released, which is what the
                // client waits for.
            }
            Request::Subscribe(_) => {
                return subscription(id, reader, writer, server).await;
            }
            Request::BeginRun(p) => {
                query(&server, writer, id, Query::BeginRun(Box::new(p))).await?
            }
            Request::Select(p) => query(&server, writer, id, Query::Select(p)).await?,
            Request::Record(p) => query(&server, writer, id, Query::Record(p)).await?,
            Request::EndRun(p) => query(&server, writer, id, Query::EndRun(p)).await?,
            Request::Affected(p) => query(&server, writer, id, Query::Affected(p)).await?,
            Request::Why(p) => query(&server, writer, id, Query::Why(p)).await?,
            Request::Stats(p) => query(&server, writer, id, Query::Stats(p)).await?,
            Request::Audit(p) => query(&server, writer, id, Query::Audit(p)).await?,
            Request::ImportResults(p) => {
                query(&server, writer, id, Query::ImportResults(p)).await?
            }
            Request::CacheGet(p) => query(&server, writer, id, Query::CacheGet(p, conn.id)).await?,
            Request::CachePut(p) => {
                query(&server, writer, id, Query::CachePut(Box::new(p), conn.id)).await?
            }
            Request::CacheAbandon(p) => query(&server, writer, id, Query::CacheAbandon(p)).await?,
            Request::CacheStats(_) => query(&server, writer, id, Query::CacheStats).await?,
            Request::CacheGc(p) => query(&server, writer, id, Query::CacheGc(p)).await?,
            Request::CacheExport(p) => query(&server, writer, id, Query::CacheExport(p)).await?,
            Request::CacheImport(p) => query(&server, writer, id, Query::CacheImport(p)).await?,
            Request::CargoRecord(p) => query(&server, writer, id, Query::CargoRecord(p)).await?,
        }
    }
}

/// Forwards a query to the core and writes its answer.
async fn query(server: &Server, writer: &Stream, id: u64, query: Query) -> io::Result<()> {
    let reply = ask(server, |reply| Event::Query { query, reply }).await;
    send(writer, &frame(id, reply)).await
}

/// Sends an event to the core and waits for its reply.
async fn ask(server: &Server, make: impl FnOnce(oneshot::Sender<Reply>) -> Event) -> Reply {
    let (tx, rx) = oneshot::channel();
    if server.core.send(make(tx)).is_err() {
        return shutting_down();
    }
    rx.await.unwrap_or_else(|_| shutting_down())
}

fn shutting_down() -> Reply {
    Reply {
        response: Response::Error(ErrorReply::new(
            ErrorCode::ShuttingDown,
            "the daemon is shutting down; run the command again to start a new one",
        )),
        warnings: Vec::new(),
    }
}

/// Streams `files_changed` notifications until the client hangs up.
async fn subscription(
    request_id: u64,
    mut reader: BufReader<&Stream>,
    writer: &Stream,
    server: Arc<Server>,
) -> io::Result<()> {
    let id = server.next_subscription.fetch_add(1, Ordering::Relaxed);
    let (sink, mut notifications) = mpsc::unbounded_channel();
    let reply = ask(&server, |reply| Event::Subscribe {
        id,
        sink,
        request_id,
        reply,
    })
    .await;
    let subscribed = matches!(reply.response, Response::Subscribed(_));
    send(writer, &frame(request_id, reply)).await?;
    if !subscribed {
        return Ok(());
    }
    let mut buf = Vec::new();
    let result = loop {
        tokio::select! {
            note = notifications.recv() => match note {
                Some(note) => {
                    if let Err(e) = send(writer, &note).await {
                        break Err(e);
                    }
                }
                // The core dropped the sink: it is shutting down.
                None => break Ok(()),
            },
            read = read_frame(&mut reader, &mut buf, MAX_FRAME_BYTES) => match read {
                Ok(Frame::Eof) | Err(_) | Ok(Frame::TooLarge) => break Ok(()),
                Ok(Frame::Line) => {
                    let msg = "this connection is subscribed and accepts no further requests; open another connection";
                    if let Err(e) = send(writer, &error(None, ErrorCode::InvalidRequest, msg)).await {
                        break Err(e);
                    }
                }
            },
        }
    };
    let _ = server.core.send(Event::Unsubscribe { id });
    result
}
