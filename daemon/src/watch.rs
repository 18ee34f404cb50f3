//! OS file notifications.
//!
//! Architecture invariant: this is the only module that uses `notify`, and
//! it does no filtering by ignore rules and no debouncing: it reports which
//! paths were touched, in the order the OS reported them. Order matters for
//! sync cookies (a cookie's event arriving proves every earlier event has
//! arrived); the debouncer crates hold events per path and would break that,
//! so coalescing lives in the core's settle window instead.
//!
//! Each tracked directory gets its own non-recursive watch (added by the
//! scanner before it reads the directory), so ignored trees such as
//! `node_modules/` or `target/` cost no watches and produce no events.

use notify::event::{AccessKind, AccessMode, EventKind};
use notify::{RecommendedWatcher, RecursiveMode, Watcher as _};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// What the watcher reports.
#[derive(Debug)]
pub enum FsEvent {
    /// Something happened at these paths.
    Touched(Vec<PathBuf>),
    /// The OS dropped events (queue overflow): anything may have changed.
    Rescan,
    /// The watcher failed; the message says what to do.
    Failed(String),
}

#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    #[error(
        "the inotify watch limit is reached (fs.inotify.max_user_watches); raise it, e.g. `sudo sysctl fs.inotify.max_user_watches=524288` (and persist it in /etc/sysctl.d/), then run `tim daemon restart`"
    )]
    WatchLimit,
    #[error(
        "too many inotify instances are open (fs.inotify.max_user_instances); raise it, e.g. `sudo sysctl fs.inotify.max_user_instances=1024`, or stop other watchers, then run `tim daemon restart`"
    )]
    InstanceLimit,
    #[error("cannot watch {path}: {message}")]
    Other { path: PathBuf, message: String },
}

pub struct Watcher {
    inner: Mutex<RecommendedWatcher>,
}

fn limit_error(error: &notify::Error) -> Option<WatchError> {
    match &error.kind {
        notify::ErrorKind::MaxFilesWatch => Some(WatchError::WatchLimit),
        notify::ErrorKind::Io(io) => match io.raw_os_error() {
            Some(libc::ENOSPC) => Some(WatchError::WatchLimit),
            Some(libc::EMFILE) => Some(WatchError::InstanceLimit),
            _ => None,
        },
        _ => None,
    }
}

impl Watcher {
    /// Starts the OS watcher; `sink` is called on the watcher's thread.
    pub fn new(sink: impl Fn(FsEvent) + Send + 'static) -> Result<Watcher, WatchError> {
        let handler = move |result: notify::Result<notify::Event>| match result {
            Ok(event) => {
                if event.need_rescan() {
                    sink(FsEvent::Rescan);
                    return;
                }
                // Opening or reading a file changes nothing; the daemon's own
                // hashing would otherwise feed back into the watcher.
                if let EventKind::Access(kind) = event.kind
                    && !matches!(kind, AccessKind::Close(AccessMode::Write))
                {
                    return;
                }
                if !event.paths.is_empty() {
                    sink(FsEvent::Touched(event.paths));
                }
            }
            Err(error) => {
                let message = match limit_error(&error) {
                    Some(limit) => limit.to_string(),
                    None => format!("file watching failed: {error}"),
                };
                sink(FsEvent::Failed(message));
            }
        };
        let config = notify::Config::default().with_follow_symlinks(false);
        let inner = RecommendedWatcher::new(handler, config).map_err(|error| {
            limit_error(&error).unwrap_or(WatchError::Other {
                path: PathBuf::new(),
                message: error.to_string(),
            })
        })?;
        Ok(Watcher {
            inner: Mutex::new(inner),
        })
    }

    /// Watches the direct children of `dir`. A directory that vanished in
    /// the meantime is not an error: its parent's event reports it.
    pub fn watch_dir(&self, dir: &Path) -> Result<(), WatchError> {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        match inner.watch(dir, RecursiveMode::NonRecursive) {
            Ok(()) => Ok(()),
            Err(error) if matches!(error.kind, notify::ErrorKind::PathNotFound) => Ok(()),
            Err(error) if matches!(&error.kind, notify::ErrorKind::Io(io) if io.kind() == std::io::ErrorKind::NotFound) => {
                Ok(())
            }
            Err(error) => Err(limit_error(&error).unwrap_or(WatchError::Other {
                path: dir.to_owned(),
                message: error.to_string(),
            })),
        }
    }
}
