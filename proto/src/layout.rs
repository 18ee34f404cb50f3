//! Where a project's daemon keeps its state and where its socket lives.
//!
//! Every client (`tim`, the pytest plugin through `.tim/daemon.json`) must
//! find the same daemon for the same root, so this is part of the stable
//! boundary even though nothing here is serialized.
//!
//! * State: `<root>/.tim/` (database, log, pid file, locks, cookies), with a
//!   `.gitignore` of `*` so it never shows up in `git status`.
//! * Socket: `<runtime dir>/<name>-<hash>.sock`, where the runtime directory
//!   is `$TIM_RUNTIME_DIR`, else `$XDG_RUNTIME_DIR/tim`, else `/tmp/tim-<uid>`,
//!   always mode 0700 and owned by the user, so no other user can connect.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

pub const STATE_DIR: &str = ".tim";
pub const RUNTIME_DIR_ENV: &str = "TIM_RUNTIME_DIR";

/// Paths of one project's daemon.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    /// The canonical project root.
    pub root: PathBuf,
    pub state_dir: PathBuf,
    pub runtime_dir: PathBuf,
    pub socket: PathBuf,
}

impl Layout {
    /// Computes the layout for a canonical root, without touching the disk.
    pub fn new(root: &Path, runtime_dir: PathBuf) -> Layout {
        let socket = runtime_dir.join(socket_file_name(root));
        Layout {
            root: root.to_path_buf(),
            state_dir: root.join(STATE_DIR),
            runtime_dir,
            socket,
        }
    }

    /// The layout for `root` in the runtime directory chosen by the
    /// environment (see the module docs).
    pub fn from_env(root: &Path) -> Layout {
        Layout::new(root, runtime_dir_from_env())
    }

    pub fn db(&self) -> PathBuf {
        self.state_dir.join("tim.db")
    }
    pub fn log(&self) -> PathBuf {
        self.state_dir.join("daemon.log")
    }
    /// JSON `{pid, socket, protocol, daemon_version}` of the running daemon.
    pub fn pid_file(&self) -> PathBuf {
        self.state_dir.join("daemon.json")
    }
    /// Held (exclusively) by the running daemon for its whole life.
    pub fn daemon_lock(&self) -> PathBuf {
        self.state_dir.join("daemon.lock")
    }
    /// Held by a client while it starts a daemon, so that two clients
    /// starting at the same moment end with one daemon.
    pub fn start_lock(&self) -> PathBuf {
        self.state_dir.join("start.lock")
    }
    /// Sync cookies: the daemon writes a file here and waits for the watcher
    /// to report it, so a query sees every change made before it.
    pub fn cookie_dir(&self) -> PathBuf {
        self.state_dir.join("cookies")
    }
    pub fn config_file(&self) -> PathBuf {
        self.root.join("tim.toml")
    }

    /// Creates the state directory (and its `.gitignore`) if missing.
    pub fn ensure_state_dir(&self) -> io::Result<()> {
        fs::create_dir_all(&self.state_dir)?;
        let ignore = self.state_dir.join(".gitignore");
        if !ignore.exists() {
            fs::write(&ignore, "*\n")?;
        }
        Ok(())
    }

    /// Creates the runtime directory with mode 0700 if missing, and refuses
    /// one that another user owns or that others can enter.
    pub fn ensure_runtime_dir(&self) -> io::Result<()> {
        ensure_private_dir(&self.runtime_dir)
    }
}

pub fn runtime_dir_from_env() -> PathBuf {
    if let Some(dir) = std::env::var_os(RUNTIME_DIR_ENV).filter(|v| !v.is_empty()) {
        return PathBuf::from(dir);
    }
    if let Some(dir) = std::env::var_os("XDG_RUNTIME_DIR").filter(|v| !v.is_empty()) {
        return PathBuf::from(dir).join("tim");
    }
    std::env::temp_dir().join(format!("tim-{}", current_uid()))
}

#[cfg(unix)]
fn current_uid() -> u32 {
    use std::os::unix::fs::MetadataExt;
    // `/proc/self` is owned by the effective uid on Linux; elsewhere the home
    // directory's owner is right for every normal login. Either way the
    // directory's ownership is verified when it is used, so a wrong guess
    // ends in a clear error, never in a shared directory. (This avoids a libc
    // dependency in the protocol crate.)
    fs::metadata("/proc/self")
        .or_else(|_| fs::metadata(std::env::var_os("HOME").unwrap_or_default()))
        .map(|m| m.uid())
        .unwrap_or(0)
}

#[cfg(not(unix))]
fn current_uid() -> u32 {
    0
}

#[cfg(unix)]
fn ensure_private_dir(dir: &Path) -> io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
    match fs::DirBuilder::new()
        .recursive(false)
        .mode(0o700)
        .create(dir)
    {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            // Parents first (e.g. a fresh $XDG_RUNTIME_DIR/tim), then the
            // private directory itself with its mode.
            if let Some(parent) = dir.parent() {
                fs::create_dir_all(parent)?;
            }
            match fs::DirBuilder::new().mode(0o700).create(dir) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(e),
            }
        }
        Err(e) => return Err(e),
    }
    let meta = fs::symlink_metadata(dir)?;
    let probe_uid = {
        // Our uid as the kernel sees it: the owner of a file we create.
        let probe = dir.join(format!(".uid-probe-{}", std::process::id()));
        let uid = fs::File::create(&probe)
            .and_then(|f| f.metadata())
            .map(|m| m.uid());
        let _ = fs::remove_file(&probe);
        uid
    };
    if !meta.is_dir() {
        return Err(io::Error::other(format!(
            "{} is not a directory; remove it so tim can create its private runtime directory there",
            dir.display()
        )));
    }
    match probe_uid {
        Ok(uid) if uid == meta.uid() => {}
        Ok(_) | Err(_) => {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!(
                    "the runtime directory {} belongs to another user; set {RUNTIME_DIR_ENV} to a directory of your own",
                    dir.display()
                ),
            ));
        }
    }
    if meta.mode() & 0o077 != 0 {
        // Ours but too open (e.g. created by hand): tighten rather than fail.
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}

#[cfg(not(unix))]
fn ensure_private_dir(dir: &Path) -> io::Result<()> {
    fs::create_dir_all(dir)
}

/// Files whose presence marks a project root.
pub const ROOT_MARKERS: &[&str] = &["tim.toml", "pyproject.toml", "Cargo.toml", ".git"];

/// The project root for `start`: the nearest ancestor (or `start` itself)
/// holding one of [`ROOT_MARKERS`]. A `Cargo.toml` of a workspace member
/// defers to the workspace's `Cargo.toml` above it (within the same git
/// repository), so every member of a workspace shares one daemon. `start`
/// should be absolute.
pub fn find_root(start: &Path) -> Option<PathBuf> {
    let nearest = start
        .ancestors()
        .find(|dir| ROOT_MARKERS.iter().any(|m| dir.join(m).exists()))?;
    let only_cargo = nearest.join("Cargo.toml").exists()
        && !["tim.toml", "pyproject.toml", ".git"]
            .iter()
            .any(|m| nearest.join(m).exists());
    if only_cargo {
        for dir in nearest.ancestors().skip(1) {
            let manifest = dir.join("Cargo.toml");
            if manifest.exists() && is_cargo_workspace(&manifest) {
                return Some(dir.to_path_buf());
            }
            if dir.join(".git").exists() || dir.join("tim.toml").exists() {
                break;
            }
        }
    }
    Some(nearest.to_path_buf())
}

fn is_cargo_workspace(manifest: &Path) -> bool {
    fs::read_to_string(manifest)
        .map(|text| text.lines().any(|l| l.trim() == "[workspace]"))
        .unwrap_or(false)
}

/// `<up to 24 chars of the root's name>-<16 hex digits of its path hash>.sock`:
/// readable in `ls`, short enough for the 108-byte limit on socket paths.
pub fn socket_file_name(root: &Path) -> String {
    let name: String = root
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        .take(24)
        .collect();
    let hash = fnv1a64(root.as_os_str().as_encoded_bytes());
    if name.is_empty() {
        format!("{hash:016x}.sock")
    } else {
        format!("{name}-{hash:016x}.sock")
    }
}

/// FNV-1a: a stable, dependency-free hash. It only names sockets; collisions
/// are harmless because the daemon reports its root in `hello` and clients
/// check it.
fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_names_are_stable_short_and_distinct() {
        let a = socket_file_name(Path::new("/home/u/src/my project"));
        let b = socket_file_name(Path::new("/home/u/other/my project"));
        assert_ne!(a, b);
        assert!(a.starts_with("myproject-"), "{a}");
        assert!(a.ends_with(".sock"));
        assert_eq!(a, socket_file_name(Path::new("/home/u/src/my project")));
        let long = socket_file_name(Path::new(&format!("/x/{}", "n".repeat(200))));
        assert!(long.len() < 50, "{long}");
    }

    #[test]
    fn roots_are_found_by_markers() {
        let dir = std::env::temp_dir().join(format!("tim-layout-test-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let mk = |p: &str, text: &str| {
            let p = dir.join(p);
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::write(p, text).unwrap();
        };
        mk("repo/.git/HEAD", "");
        mk("repo/Cargo.toml", "[workspace]\nmembers = [\"crates/a\"]\n");
        mk("repo/crates/a/Cargo.toml", "[package]\nname = \"a\"\n");
        mk("repo/crates/a/src/lib.rs", "");
        mk("repo/py/pyproject.toml", "");
        mk("repo/py/pkg/mod.py", "");
        let root = |p: &str| {
            find_root(&dir.join(p)).map(|r| r.strip_prefix(&dir).unwrap().display().to_string())
        };
        assert_eq!(root("repo/crates/a/src").as_deref(), Some("repo"));
        assert_eq!(root("repo/py/pkg").as_deref(), Some("repo/py"));
        assert_eq!(root("repo").as_deref(), Some("repo"));
        fs::remove_dir_all(&dir).unwrap();
    }
}
