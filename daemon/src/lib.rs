//! `timd`, the tim daemon: one per project root.
//!
//! Start-up order matters and is the daemon's contract with its clients:
//! take the root's lock (one daemon per root), load the configuration, open
//! the store (refusing a newer schema, repairing a corrupt file), bind the
//! socket, write the pid file, report `ready` on stdout, then scan. Clients
//! may connect as soon as `ready` is reported; queries wait for the scan.
//!
//! Shutdown is the reverse, ordered so that "my connection closed" tells a
//! client the lock is free: stop accepting, stop the core, close the store
//! (checkpointing the WAL), remove the pid file and socket, release the lock,
//! and only then let the process exit, which closes the open connections.

pub mod audit;
pub mod cache;
mod cargo;
pub mod config;
pub mod core;
pub mod git;
pub mod impact;
pub mod imports;
pub mod index;
pub mod partition;
pub mod pyenv;
pub mod pyparse;
pub mod pytest;
pub mod scan;
pub mod server;
pub mod stats;
pub mod store;
pub mod watch;

use crate::config::Config;
use crate::core::{Core, Event, Identity};
use crate::store::Store;
use clap::Parser;
use std::fs::{File, OpenOptions, TryLockError};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;
use tim_proto::layout::{self, Layout};
use tim_proto::{DaemonInfo, ProtocolVersion, StartupReport};

/// The daemon's release version.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
/// Log filter variable, e.g. `TIM_LOG=debug` or `TIM_LOG=tim_daemon::core=trace`.
pub const LOG_ENV: &str = "TIM_LOG";
/// The log file is rotated to `daemon.log.1` at start when larger than this.
const LOG_ROTATE_BYTES: u64 = 8 * 1024 * 1024;

/// Exit codes of `timd`.
pub mod exit {
    pub const OK: u8 = 0;
    pub const FAILED: u8 = 1;
    pub const ALREADY_RUNNING: u8 = 2;
}

#[derive(Parser, Debug)]
#[command(
    name = "timd",
    version,
    about = "The tim daemon: watches one project, keeps its file hashes and answers tim's queries",
    long_about = "The tim daemon. `tim` starts it on demand; run it by hand with --foreground to debug (logs go to stderr; filter them with TIM_LOG, e.g. TIM_LOG=debug)."
)]
struct Args {
    /// Project root (default: found from the current directory, like `tim` does).
    #[arg(long, value_name = "DIR")]
    root: Option<PathBuf>,
    /// Stay attached to the terminal and log to stderr instead of .tim/daemon.log.
    #[arg(long)]
    foreground: bool,
    /// Print one JSON start-up report on stdout (used by `tim` when it starts the daemon).
    #[arg(long, hide = true)]
    notify_ready: bool,
}

/// Entry point of the `timd` binary.
pub fn main() -> ExitCode {
    let args = Args::parse();
    let mut reporter = Reporter {
        enabled: args.notify_ready,
    };
    match run(&args, &mut reporter) {
        Ok(()) => ExitCode::from(exit::OK),
        Err(Failure::AlreadyRunning(pid)) => {
            reporter.report(&StartupReport::AlreadyRunning { pid });
            if !args.notify_ready {
                eprintln!(
                    "timd: a daemon{} is already running for this root; stop it with `tim daemon stop`",
                    pid.map(|p| format!(" (pid {p})")).unwrap_or_default()
                );
            }
            ExitCode::from(exit::ALREADY_RUNNING)
        }
        Err(Failure::Failed(message)) => {
            tracing::error!(%message, "start-up failed");
            reporter.report(&StartupReport::Failed {
                message: message.clone(),
            });
            if !args.notify_ready {
                eprintln!("timd: {message}");
            }
            ExitCode::from(exit::FAILED)
        }
    }
}

enum Failure {
    AlreadyRunning(Option<u32>),
    Failed(String),
}

/// Writes the one start-up report, once.
struct Reporter {
    enabled: bool,
}

impl Reporter {
    fn report(&mut self, report: &StartupReport) {
        if !std::mem::take(&mut self.enabled) {
            return;
        }
        let mut stdout = std::io::stdout().lock();
        let line = serde_json::to_string(report).expect("report serializes");
        let _ = writeln!(stdout, "{line}");
        let _ = stdout.flush();
        drop(stdout);
        // Nothing else is ever written to stdout; pointing it at /dev/null
        // lets the client close its end without the daemon noticing.
        redirect_to_dev_null(1);
    }
}

fn redirect_to_dev_null(fd: i32) {
    if let Ok(null) = OpenOptions::new().write(true).open("/dev/null") {
        use std::os::fd::AsRawFd;
        // SAFETY: dup2 onto a standard descriptor we own; both are valid.
        unsafe {
            libc::dup2(null.as_raw_fd(), fd);
        }
    }
}

fn resolve_root(args: &Args) -> Result<PathBuf, Failure> {
    let start = match &args.root {
        Some(root) => root.clone(),
        None => std::env::current_dir()
            .map_err(|e| Failure::Failed(format!("cannot read the current directory: {e}")))?,
    };
    let start = start.canonicalize().map_err(|e| {
        Failure::Failed(format!(
            "the project root {} is not usable: {e}",
            start.display()
        ))
    })?;
    if args.root.is_some() {
        return Ok(start);
    }
    layout::find_root(&start).ok_or_else(|| {
        Failure::Failed(format!(
            "no project root found from {}: none of it or its parents holds {}; pass --root DIR",
            start.display(),
            layout::ROOT_MARKERS.join(", ")
        ))
    })
}

fn run(args: &Args, reporter: &mut Reporter) -> Result<(), Failure> {
    let root = resolve_root(args)?;
    // Everything below uses absolute paths; leaving the directory we were
    // started in keeps it unmountable and deletable.
    let _ = std::env::set_current_dir("/");
    let layout = Layout::from_env(&root);
    layout.ensure_state_dir().map_err(|e| {
        Failure::Failed(format!(
            "cannot create the state directory {}: {e}",
            layout.state_dir.display()
        ))
    })?;
    init_logging(&layout, args.foreground);
    install_panic_hook();

    // One daemon per root: the lock is held for the life of the process and
    // released by the kernel however the process ends.
    let lock = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(layout.daemon_lock())
        .map_err(|e| {
            Failure::Failed(format!(
                "cannot open {}: {e}",
                layout.daemon_lock().display()
            ))
        })?;
    match lock.try_lock() {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => {
            return Err(Failure::AlreadyRunning(read_pid(&layout)));
        }
        Err(TryLockError::Error(e)) => {
            return Err(Failure::Failed(format!(
                "cannot lock {}: {e}",
                layout.daemon_lock().display()
            )));
        }
    }

    let started = Instant::now();
    let protocol = ProtocolVersion::advertised();
    tracing::info!(root = %root.display(), version = VERSION, %protocol, pid = std::process::id(), "timd starting");

    let config = Config::load(&root).map_err(|e| Failure::Failed(format!("{e}")))?;
    let (store, warnings) =
        Store::open(&layout.db()).map_err(|e| Failure::Failed(e.to_string()))?;
    layout.ensure_runtime_dir().map_err(|e| {
        Failure::Failed(format!(
            "cannot use the runtime directory {}: {e}",
            layout.runtime_dir.display()
        ))
    })?;

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::Failed(format!("cannot start the async runtime: {e}")))?;
    let listener = {
        let _guard = runtime.enter();
        server::bind(&layout.socket).map_err(|e| {
            Failure::Failed(format!("cannot listen on {}: {e}", layout.socket.display()))
        })?
    };

    let identity = Identity {
        daemon_version: VERSION.to_owned(),
        protocol,
        pid: std::process::id(),
        root: root.clone(),
        started,
    };
    write_pid_file(&layout, &identity).map_err(|e| {
        Failure::Failed(format!("cannot write {}: {e}", layout.pid_file().display()))
    })?;

    let (events_tx, events_rx) = std::sync::mpsc::channel::<Event>();
    let core = Core::new(
        identity.clone(),
        layout.clone(),
        config,
        store,
        events_tx.clone(),
        warnings.clone(),
    )
    .map_err(|e| Failure::Failed(e.to_string()))?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let core_thread = std::thread::Builder::new()
        .name("tim-core".into())
        .spawn(move || {
            let store = core.run(events_rx);
            let _ = stop_tx.send(true);
            store
        })
        .map_err(|e| Failure::Failed(format!("cannot start the core thread: {e}")))?;

    reporter.report(&StartupReport::Ready {
        pid: identity.pid,
        socket: layout.socket.display().to_string(),
        warnings,
    });
    if !args.foreground {
        redirect_to_dev_null(0);
    }

    let server = Arc::new(server::Server::new(events_tx.clone(), identity));
    runtime.block_on(async {
        let signals = tokio::spawn(forward_signals(events_tx));
        server::serve(listener, server.clone(), stop_rx).await;
        signals.abort();
        server.drained(std::time::Duration::from_secs(2)).await;
    });

    match core_thread.join() {
        Ok(store) => {
            if let Err(e) = store.close() {
                tracing::error!(error = %e, "closing the database failed");
            }
        }
        Err(_) => tracing::error!("the core thread panicked; the database was not checkpointed"),
    }
    let _ = std::fs::remove_file(layout.pid_file());
    // The socket file went with the listener. Release the lock before the
    // runtime (and with it every open connection) is dropped.
    drop(lock);
    tracing::info!(uptime = ?started.elapsed(), "timd stopped");
    drop(runtime);
    Ok(())
}

async fn forward_signals(events: std::sync::mpsc::Sender<Event>) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int), Ok(mut hup)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::hangup()),
    ) else {
        tracing::warn!("cannot install signal handlers; SIGTERM will not shut down cleanly");
        return;
    };
    let reason = loop {
        tokio::select! {
            _ = term.recv() => break "SIGTERM",
            _ = int.recv() => break "SIGINT",
            // A closed terminal must not stop a daemon other terminals use.
            _ = hup.recv() => continue,
        }
    };
    let _ = events.send(Event::Shutdown {
        reason: reason.to_owned(),
        reply: None,
    });
}

fn read_pid(layout: &Layout) -> Option<u32> {
    let text = std::fs::read_to_string(layout.pid_file()).ok()?;
    serde_json::from_str::<DaemonInfo>(&text)
        .ok()
        .map(|i| i.pid)
}

fn write_pid_file(layout: &Layout, identity: &Identity) -> std::io::Result<()> {
    let info = DaemonInfo {
        pid: identity.pid,
        socket: layout.socket.display().to_string(),
        protocol: identity.protocol,
        daemon_version: identity.daemon_version.clone(),
        started_at_ms: store::now_ms(),
    };
    // Written to a temporary file and renamed, so readers never see half.
    let tmp = layout
        .state_dir
        .join(format!(".daemon.json.{}", identity.pid));
    std::fs::write(&tmp, serde_json::to_vec_pretty(&info).expect("serializes"))?;
    std::fs::rename(&tmp, layout.pid_file())
}

fn init_logging(layout: &Layout, foreground: bool) {
    use tracing_subscriber::EnvFilter;
    let (filter, bad_filter) = match std::env::var(LOG_ENV) {
        Ok(spec) => match EnvFilter::try_new(&spec) {
            Ok(f) => (f, None),
            Err(e) => (
                EnvFilter::new("info"),
                Some(format!(
                    "{LOG_ENV}={spec:?} is not a valid filter ({e}); using `info`"
                )),
            ),
        },
        Err(_) => (EnvFilter::new("info"), None),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false);
    let installed = if foreground {
        builder.with_writer(std::io::stderr).try_init()
    } else {
        match open_log(&layout.log()) {
            Some(file) => builder
                .with_ansi(false)
                .with_writer(std::sync::Mutex::new(file))
                .try_init(),
            None => builder.with_writer(std::io::stderr).try_init(),
        }
    };
    if installed.is_ok()
        && let Some(message) = bad_filter
    {
        tracing::warn!("{message}");
    }
}

fn open_log(path: &Path) -> Option<File> {
    if std::fs::metadata(path).is_ok_and(|m| m.len() > LOG_ROTATE_BYTES) {
        let _ = std::fs::rename(path, path.with_extension("log.1"));
    }
    OpenOptions::new().create(true).append(true).open(path).ok()
}

fn install_panic_hook() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        tracing::error!(panic = %info, "panic");
        default(info);
    }));
}
