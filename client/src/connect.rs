//! Reaching a project's daemon: connect, say hello, check versions, and
//! start (or replace) the daemon when needed.
//!
//! Start-up is race-free: a client that must start a daemon first takes
//! `.tim/start.lock`, checks once more whether a daemon answers (another
//! client may have just started one), and only then spawns `timd`, which
//! reports `ready` (or why it failed) on a pipe. Two clients starting at the
//! same moment therefore end with exactly one daemon, and nobody polls.

use crate::error::ClientError;
use interprocess::local_socket::{GenericFilePath, Stream, prelude::*};
use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use tim_proto::layout::Layout;
use tim_proto::version::compare_release;
use tim_proto::{
    Compatibility, FrameReader, Hello, HelloReply, ProtocolVersion, Request, RequestFrame,
    Response, ResponseFrame, ShutdownParams, StartupReport, decode_response, encode_request,
};

pub const VERSION: &str = env!("CARGO_PKG_VERSION");
/// Overrides where `tim` finds the `timd` executable.
pub const DAEMON_BIN_ENV: &str = "TIM_DAEMON";

/// An open, greeted connection to a daemon.
pub struct Connection {
    reader: FrameReader<BufReader<Stream>>,
    next_id: u64,
    pub hello: HelloReply,
}

impl Connection {
    /// Opens the socket and says hello; `None` when no daemon listens.
    fn open(layout: &Layout) -> Result<Option<Connection>, ClientError> {
        let name = layout
            .socket
            .as_path()
            .to_fs_name::<GenericFilePath>()
            .map_err(|e| {
                ClientError::io(format!("bad socket path {}", layout.socket.display()), e)
            })?;
        let stream = match Stream::connect(name) {
            Ok(s) => s,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
                ) =>
            {
                return Ok(None);
            }
            Err(e) => {
                return Err(ClientError::io(
                    format!(
                        "cannot connect to the daemon at {}",
                        layout.socket.display()
                    ),
                    e,
                ));
            }
        };
        let mut conn = Connection {
            reader: FrameReader::new(BufReader::new(stream)),
            next_id: 1,
            hello: HelloReply {
                protocol: ProtocolVersion { major: 0, minor: 0 },
                daemon_version: String::new(),
                pid: 0,
                root: String::new(),
                capabilities: Vec::new(),
            },
        };
        let hello = Request::Hello(Hello {
            protocol: ProtocolVersion::advertised(),
            client: "tim".into(),
            client_version: VERSION.into(),
            capabilities: Vec::new(),
        });
        match conn.request(hello) {
            Ok((Response::Hello(reply), _)) => {
                conn.hello = reply;
                Ok(Some(conn))
            }
            // A daemon that died between accept and hello: treat as absent.
            Err(ClientError::Disconnected) => Ok(None),
            Ok((other, _)) => Err(ClientError::Protocol(format!(
                "the daemon answered hello with `{}`",
                other.type_name()
            ))),
            Err(e) => Err(e),
        }
    }

    fn send(&mut self, request: Request) -> Result<u64, ClientError> {
        let id = self.next_id;
        self.next_id += 1;
        let line = encode_request(&RequestFrame { id, request });
        let stream = self.reader.get_mut().get_mut();
        stream
            .write_all(&line)
            .and_then(|()| stream.flush())
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset => {
                    ClientError::Disconnected
                }
                _ => ClientError::io("cannot send to the daemon", e),
            })?;
        Ok(id)
    }

    /// The next frame from the daemon; `Disconnected` at end of stream.
    pub fn next_frame(&mut self) -> Result<ResponseFrame, ClientError> {
        let line = match self.reader.next_line() {
            Ok(Some(line)) => line,
            Ok(None) => return Err(ClientError::Disconnected),
            Err(tim_proto::ReadError::Io(e)) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                return Err(ClientError::Disconnected);
            }
            Err(e) => return Err(ClientError::Protocol(e.to_string())),
        };
        decode_response(line).map_err(|e| ClientError::Protocol(e.to_string()))
    }

    /// Sends a request and returns its answer with the daemon's warnings.
    /// An `error` answer becomes [`ClientError::Daemon`].
    pub fn request(&mut self, request: Request) -> Result<(Response, Vec<String>), ClientError> {
        let id = self.send(request)?;
        loop {
            let frame = self.next_frame()?;
            if frame.id.is_some() && frame.id != Some(id) {
                continue;
            }
            return match frame.response {
                Response::Error(e) => Err(ClientError::Daemon {
                    code: e.code,
                    message: e.message,
                }),
                response => Ok((response, frame.warnings)),
            };
        }
    }

    /// Asks the daemon to exit and waits until it has released its lock
    /// (its end of the connection closes only then).
    pub fn shutdown(mut self, reason: &str) -> Result<u32, ClientError> {
        let pid = self.hello.pid;
        match self.request(Request::Shutdown(ShutdownParams {
            reason: reason.to_owned(),
        })) {
            Ok(_) | Err(ClientError::Disconnected) => {}
            Err(e) => return Err(e),
        }
        loop {
            match self.next_frame() {
                Ok(_) => continue,
                Err(ClientError::Disconnected) => return Ok(pid),
                Err(ClientError::Protocol(_)) => return Ok(pid),
                Err(e) => return Err(e),
            }
        }
    }
}

/// Connects to the root's daemon if one is running, without starting one
/// and without judging its version.
pub fn connect_existing(layout: &Layout) -> Result<Option<Connection>, ClientError> {
    Connection::open(layout)
}

/// Connects to the root's daemon, starting it when none runs and replacing
/// it when it is older than this client.
pub fn connect(layout: &Layout) -> Result<Connection, ClientError> {
    if let Some(conn) = Connection::open(layout)? {
        return vet(layout, conn);
    }
    start(layout)
}

/// Creates the (private) runtime directory if need be.
pub fn ensure_runtime_dir(layout: &Layout) -> Result<(), ClientError> {
    layout.ensure_runtime_dir().map_err(|e| {
        ClientError::io(
            format!(
                "cannot use the runtime directory {}",
                layout.runtime_dir.display()
            ),
            e,
        )
    })
}

/// Starts a daemon unless one answers already; returns a connection to it.
pub fn start(layout: &Layout) -> Result<Connection, ClientError> {
    layout
        .ensure_state_dir()
        .map_err(|e| ClientError::io(format!("cannot create {}", layout.state_dir.display()), e))?;
    ensure_runtime_dir(layout)?;
    let lock = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(layout.start_lock())
        .map_err(|e| {
            ClientError::io(format!("cannot open {}", layout.start_lock().display()), e)
        })?;
    lock.lock().map_err(|e| {
        ClientError::io(format!("cannot lock {}", layout.start_lock().display()), e)
    })?;
    // Another client may have started the daemon while we waited.
    if let Some(conn) = Connection::open(layout)? {
        drop(lock);
        return vet(layout, conn);
    }
    let report = spawn_daemon(layout)?;
    let result = match report {
        StartupReport::Ready { warnings, .. } => {
            for w in warnings {
                eprintln!("tim: warning: {w}");
            }
            match Connection::open(layout)? {
                Some(conn) => Ok(conn),
                None => Err(ClientError::DaemonStart {
                    message: "the daemon reported ready but does not answer".into(),
                    log: layout.log(),
                }),
            }
        }
        StartupReport::AlreadyRunning { pid } => match Connection::open(layout)? {
            Some(conn) => Ok(conn),
            None => Err(ClientError::DaemonUnresponsive {
                pid,
                lock: layout.daemon_lock(),
            }),
        },
        StartupReport::Failed { message } => Err(ClientError::DaemonStart {
            message,
            log: layout.log(),
        }),
    };
    drop(lock);
    result
}

/// Checks the daemon's root and version; replaces an older daemon.
fn vet(layout: &Layout, conn: Connection) -> Result<Connection, ClientError> {
    if conn.hello.root != layout.root.display().to_string() {
        return Err(ClientError::Protocol(format!(
            "the daemon at {} serves {}, not {}; remove the socket file and retry",
            layout.socket.display(),
            conn.hello.root,
            layout.root.display()
        )));
    }
    let ours = ProtocolVersion::advertised();
    let theirs = conn.hello.protocol;
    let older = match ours.compatibility(theirs) {
        Compatibility::DaemonNewer => {
            return Err(ClientError::DaemonNewer {
                daemon_version: conn.hello.daemon_version.clone(),
                daemon_protocol: theirs,
                pid: conn.hello.pid,
            });
        }
        Compatibility::DaemonOlder => true,
        Compatibility::Compatible => {
            theirs == ours
                && compare_release(&conn.hello.daemon_version, VERSION) == std::cmp::Ordering::Less
        }
    };
    if !older {
        return Ok(conn);
    }
    let old = format!("timd {} (protocol {theirs})", conn.hello.daemon_version);
    conn.shutdown(&format!("replaced by tim {VERSION} (protocol {ours})"))?;
    let conn = start(layout)?;
    eprintln!(
        "tim: replaced the running {old} with timd {} (protocol {})",
        conn.hello.daemon_version, conn.hello.protocol
    );
    Ok(conn)
}

fn daemon_binary() -> PathBuf {
    if let Some(path) = std::env::var_os(DAEMON_BIN_ENV).filter(|p| !p.is_empty()) {
        return PathBuf::from(path);
    }
    if let Ok(exe) = std::env::current_exe()
        && let Some(dir) = exe.parent()
    {
        let beside = dir.join("timd");
        if beside.exists() {
            return beside;
        }
    }
    PathBuf::from("timd")
}

/// Spawns `timd` detached (own session, stdin closed, stderr to its log)
/// and reads its one-line start-up report.
fn spawn_daemon(layout: &Layout) -> Result<StartupReport, ClientError> {
    use std::os::unix::process::CommandExt;
    let binary = daemon_binary();
    let log = File::options()
        .create(true)
        .append(true)
        .open(layout.log())
        .map_err(|e| ClientError::io(format!("cannot open {}", layout.log().display()), e))?;
    let mut command = Command::new(&binary);
    command
        .arg("--root")
        .arg(&layout.root)
        .arg("--notify-ready")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log);
    // SAFETY: setsid is async-signal-safe; it detaches the daemon from the
    // terminal so Ctrl-C or closing the terminal does not stop it.
    unsafe {
        command.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    let mut child = command.spawn().map_err(|e| ClientError::DaemonStart {
        message: format!(
            "cannot run {}: {e}; install timd next to tim (`cargo install --path client` installs both) or set {DAEMON_BIN_ENV}",
            binary.display()
        ),
        log: layout.log(),
    })?;
    let stdout = child.stdout.take().expect("stdout is piped");
    let mut line = String::new();
    let read = BufReader::new(stdout).read_line(&mut line);
    // Reap the daemon when it eventually exits, so a long-lived client
    // (`tim watch`) does not collect a zombie.
    std::thread::spawn(move || child.wait());
    if let Err(e) = read {
        return Err(ClientError::io(
            "cannot read the daemon's start-up report",
            e,
        ));
    }
    if line.trim().is_empty() {
        return Err(ClientError::DaemonStart {
            message: "timd exited during start-up without a report".into(),
            log: layout.log(),
        });
    }
    serde_json::from_str(&line).map_err(|e| ClientError::DaemonStart {
        message: format!(
            "timd printed an unreadable start-up report ({e}): {}",
            line.trim()
        ),
        log: layout.log(),
    })
}
