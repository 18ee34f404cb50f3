//! Expected failures of the client, each with what to do next, and the
//! exit codes they map to. Anything else is a bug and exits with
//! [`exit::INTERNAL`].

use std::path::PathBuf;
use tim_proto::{ErrorCode, ProtocolVersion};

/// Exit codes. 0–5 mean what they mean for pytest; the rest are tim's own.
/// They are part of tim's stable interface (see README.md).
pub mod exit {
    /// Success.
    pub const OK: u8 = 0;
    /// Tests ran and some failed.
    pub const TESTS_FAILED: u8 = 1;
    /// Interrupted by the user.
    pub const INTERRUPTED: u8 = 2;
    /// A bug in tim; the message says where to look.
    pub const INTERNAL: u8 = 3;
    /// The command line or the configuration is wrong.
    pub const USAGE: u8 = 4;
    /// No tests were collected.
    pub const NO_TESTS: u8 = 5;
    /// The daemon could not be started or reached, or answered with an error.
    pub const DAEMON: u8 = 6;
    /// The running daemon is newer than this tim.
    pub const INCOMPATIBLE: u8 = 7;
    /// `tim daemon status`: no daemon is running for this root.
    pub const NOT_RUNNING: u8 = 8;
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("{context}: {source}")]
    Io {
        context: String,
        source: std::io::Error,
    },
    #[error(
        "the daemon closed the connection; run the command again (it restarts the daemon), and see .tim/daemon.log if it keeps happening"
    )]
    Disconnected,
    #[error(
        "unexpected answer from the daemon: {0} (run `tim daemon restart` and try again; if it persists, report it with .tim/daemon.log)"
    )]
    Protocol(String),
    #[error("{message}")]
    Daemon { code: ErrorCode, message: String },
    #[error("the daemon did not start: {message} (its log: {})", log.display())]
    DaemonStart { message: String, log: PathBuf },
    #[error(
        "a daemon{} holds {} but does not answer; stop it (`kill {}`) and run the command again",
        pid.map(|p| format!(" (pid {p})")).unwrap_or_default(),
        lock.display(),
        pid.map(|p| p.to_string()).unwrap_or_else(|| "<pid>".into())
    )]
    DaemonUnresponsive { pid: Option<u32>, lock: PathBuf },
    #[error(
        "the running daemon (timd {daemon_version}, protocol {daemon_protocol}, pid {pid}) is newer than this tim ({}, protocol {}); use the newer tim, upgrade this one (`cargo install --path client` in a newer checkout), or stop that daemon with `tim daemon stop` so this tim can start its own",
        crate::connect::VERSION,
        ProtocolVersion::advertised()
    )]
    DaemonNewer {
        daemon_version: String,
        daemon_protocol: ProtocolVersion,
        pid: u32,
    },
    #[error("{0}")]
    Usage(String),
}

impl ClientError {
    pub fn io(context: impl Into<String>, source: std::io::Error) -> ClientError {
        ClientError::Io {
            context: context.into(),
            source,
        }
    }

    pub fn exit_code(&self) -> u8 {
        match self {
            ClientError::DaemonNewer { .. } => exit::INCOMPATIBLE,
            ClientError::Usage(_) => exit::USAGE,
            ClientError::Io { .. }
            | ClientError::Disconnected
            | ClientError::Protocol(_)
            | ClientError::Daemon { .. }
            | ClientError::DaemonStart { .. }
            | ClientError::DaemonUnresponsive { .. } => exit::DAEMON,
        }
    }
}
