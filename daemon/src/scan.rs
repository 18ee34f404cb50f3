//! Walking, stat-ing and hashing the tree.
//!
//! Architecture invariant: this is the only module that uses `ignore` and
//! `blake3`. Which files are tracked is decided here and nowhere else, for
//! full walks and single-directory listings alike, so the two can never
//! disagree: both go through [`Filter::builder`].
//!
//! Rules, in order: the always-skipped directories ([`ALWAYS_SKIPPED`] and
//! any virtualenv, recognised by its `pyvenv.cfg`); `.gitignore` files (as
//! git applies them, inside a git repository), `.git/info/exclude`, the
//! global git excludes, `.ignore` and `.timignore` files; then the
//! configured `exclude` globs. Hidden files are tracked.

use crate::index::{ContentHash, FileMeta, Listing, RepoPath, Stat};
use ignore::overrides::{Override, OverrideBuilder};
use ignore::{DirEntry, WalkBuilder, WalkState};
use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

/// Directory names never tracked, wherever they appear.
pub const ALWAYS_SKIPPED: &[&str] = &[
    ".tim",
    ".git",
    ".hg",
    ".svn",
    ".jj",
    "__pycache__",
    "target",
    "node_modules",
    ".venv",
    "venv",
    ".tox",
    ".nox",
    ".mypy_cache",
    ".pytest_cache",
    ".ruff_cache",
    ".hypothesis",
    ".eggs",
    ".idea",
    ".vscode",
];

/// Ignore files whose change re-evaluates the rules below their directory.
pub const IGNORE_FILES: &[&str] = &[".gitignore", ".ignore", ".timignore"];

/// A stat taken within this long of the file's mtime is not trusted to
/// reveal a later write (timestamp granularity; see [`FileMeta::racy`]).
const RACY_WINDOW: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    #[error("invalid exclude pattern {pattern:?} in the configuration: {source}")]
    BadExclude {
        pattern: String,
        source: ignore::Error,
    },
}

/// Which paths are tracked. Cheap to clone.
#[derive(Clone)]
pub struct Filter {
    root: PathBuf,
    overrides: Override,
}

impl Filter {
    /// `root` must be canonical; `excludes` are gitignore-style globs
    /// relative to it.
    pub fn new(root: &Path, excludes: &[String]) -> Result<Filter, ScanError> {
        let mut builder = OverrideBuilder::new(root);
        for pattern in excludes {
            builder
                .add(&format!("!{pattern}"))
                .map_err(|source| ScanError::BadExclude {
                    pattern: pattern.clone(),
                    source,
                })?;
        }
        let overrides = builder.build().map_err(|source| ScanError::BadExclude {
            pattern: excludes.join(", "),
            source,
        })?;
        Ok(Filter {
            root: root.to_path_buf(),
            overrides,
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn abs(&self, path: &RepoPath) -> PathBuf {
        if path.is_root() {
            self.root.clone()
        } else {
            self.root.join(path.as_str())
        }
    }

    /// The root-relative form of an absolute path under the root.
    pub fn relative(&self, abs: &Path) -> Option<RepoPath> {
        let rel = abs.strip_prefix(&self.root).ok()?;
        let mut out = String::new();
        for part in rel.components() {
            let std::path::Component::Normal(part) = part else {
                return None;
            };
            if !out.is_empty() {
                out.push('/');
            }
            out.push_str(part.to_str()?);
        }
        Some(RepoPath::new(out))
    }

    /// A walker from `start` with every rule applied. `on_dir` is called for
    /// each directory that will be descended into, before it is opened, so a
    /// watch added there sees every file created after.
    fn builder(&self, start: &Path, on_dir: Option<DirHook>) -> WalkBuilder {
        let mut b = WalkBuilder::new(start);
        b.hidden(false)
            .parents(true)
            .ignore(true)
            .git_ignore(true)
            .git_global(true)
            .git_exclude(true)
            .follow_links(false)
            .add_custom_ignore_filename(".timignore")
            .overrides(self.overrides.clone());
        b.filter_entry(move |entry| {
            let is_dir = entry.file_type().is_some_and(|t| t.is_dir());
            if is_dir && entry.depth() > 0 {
                if is_skipped_dir(entry) {
                    return false;
                }
                if let Some(hook) = &on_dir {
                    hook(entry.path());
                }
            }
            true
        });
        b
    }

    /// What `dir` holds now, or `None` when it is gone (or is no longer a
    /// directory).
    pub fn list_dir(&self, dir: &RepoPath) -> Option<Listing> {
        let abs = self.abs(dir);
        if !std::fs::symlink_metadata(&abs).is_ok_and(|m| m.is_dir()) {
            return None;
        }
        let mut listing = Listing {
            dir: dir.clone(),
            ..Listing::default()
        };
        for entry in self.builder(&abs, None).max_depth(Some(1)).build() {
            let Ok(entry) = entry else { continue };
            if entry.depth() == 0 {
                continue;
            }
            let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
                tracing::debug!(path = %entry.path().display(), "skipping a path that is not UTF-8");
                continue;
            };
            match classify(&entry) {
                Some(Entry::Dir) => {
                    listing.subdirs.insert(name);
                }
                Some(Entry::File(stat)) => {
                    listing.files.insert(name, stat);
                }
                None => {}
            }
        }
        Some(listing)
    }

    /// Every directory at and below `start`, listed, using all cores.
    /// `on_dir` sees each directory (including `start`) before it is read.
    pub fn walk(&self, start: &RepoPath, on_dir: DirHook) -> Vec<Listing> {
        let abs = self.abs(start);
        if !std::fs::symlink_metadata(&abs).is_ok_and(|m| m.is_dir()) {
            return Vec::new();
        }
        on_dir(&abs);
        let found: Mutex<Vec<(RepoPath, Entry)>> = Mutex::new(Vec::new());
        let walker = self
            .builder(&abs, Some(on_dir))
            .threads(walk_threads())
            .build_parallel();
        walker.run(|| {
            // Each thread collects locally and hands its findings over when
            // the walker drops its closure: one lock per thread, not per file.
            struct Flush<'a>(&'a Mutex<Vec<(RepoPath, Entry)>>, Vec<(RepoPath, Entry)>);
            impl Drop for Flush<'_> {
                fn drop(&mut self) {
                    self.0
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .append(&mut self.1);
                }
            }
            let mut flush = Flush(&found, Vec::new());
            Box::new(move |entry| {
                let Ok(entry) = entry else {
                    return WalkState::Continue;
                };
                let Some(rel) = self.relative(entry.path()) else {
                    return WalkState::Continue;
                };
                if let Some(kind) = classify(&entry) {
                    flush.1.push((rel, kind));
                }
                WalkState::Continue
            })
        });
        let mut listings: BTreeMap<RepoPath, Listing> = BTreeMap::new();
        let mut ensure = |dir: &RepoPath| {
            listings.entry(dir.clone()).or_insert_with(|| Listing {
                dir: dir.clone(),
                ..Listing::default()
            });
        };
        ensure(start);
        let entries = found.into_inner().unwrap_or_else(|e| e.into_inner());
        for (path, kind) in &entries {
            if let Entry::Dir = kind {
                ensure(path);
            }
        }
        for (path, kind) in entries {
            if path == *start {
                continue;
            }
            let Some((parent, name)) = path.split() else {
                continue;
            };
            let Some(listing) = listings.get_mut(&parent) else {
                continue;
            };
            match kind {
                Entry::Dir => {
                    listing.subdirs.insert(name.to_owned());
                }
                Entry::File(stat) => {
                    listing.files.insert(name.to_owned(), stat);
                }
            }
        }
        listings.into_values().collect()
    }
}

pub type DirHook = Arc<dyn Fn(&Path) + Send + Sync>;

fn walk_threads() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get().min(8))
}

fn is_skipped_dir(entry: &DirEntry) -> bool {
    let name = entry.file_name().to_string_lossy();
    ALWAYS_SKIPPED.contains(&name.as_ref())
        || name.ends_with(".egg-info")
        || entry.path().join("pyvenv.cfg").exists()
}

enum Entry {
    Dir,
    File(Stat),
}

fn classify(entry: &DirEntry) -> Option<Entry> {
    let file_type = entry.file_type()?;
    if file_type.is_dir() {
        return Some(Entry::Dir);
    }
    // Regular files and symlinks (hashed as their target, never followed);
    // sockets, fifos and devices have no content worth tracking.
    if !file_type.is_file() && !file_type.is_symlink() {
        return None;
    }
    let meta = entry.metadata().ok()?;
    Some(Entry::File(stat_of(&meta)))
}

#[cfg(unix)]
pub fn stat_of(meta: &std::fs::Metadata) -> Stat {
    use std::os::unix::fs::MetadataExt;
    Stat {
        size: meta.len(),
        mtime_ns: meta.mtime() * 1_000_000_000 + meta.mtime_nsec(),
        ctime_ns: meta.ctime() * 1_000_000_000 + meta.ctime_nsec(),
        inode: meta.ino(),
    }
}

#[cfg(not(unix))]
pub fn stat_of(meta: &std::fs::Metadata) -> Stat {
    let mtime_ns = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos() as i64);
    Stat {
        size: meta.len(),
        mtime_ns,
        ctime_ns: 0,
        inode: 0,
    }
}

/// The outcome of hashing one file.
pub enum Hashed {
    Present(FileMeta),
    /// The file vanished between listing and hashing.
    Gone,
}

/// Hashes one file (a symlink as its target path). A file that cannot be
/// read gets a hash naming the error, marked racy so it is retried: it is
/// tracked as "something is there, and it may change".
pub fn hash_file(abs: &Path, listed: Stat) -> Hashed {
    let now = SystemTime::now();
    let meta = match std::fs::symlink_metadata(abs) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Hashed::Gone,
        Err(e) => return Hashed::Present(unreadable(listed, &e)),
    };
    let stat = stat_of(&meta);
    let mut hasher = blake3::Hasher::new();
    let read = if meta.file_type().is_symlink() {
        std::fs::read_link(abs).map(|target| {
            hasher.update(b"symlink\0");
            hasher.update(target.as_os_str().as_encoded_bytes());
        })
    } else {
        std::fs::File::open(abs).and_then(|f| hasher.update_reader(f).map(|_| ()))
    };
    match read {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Hashed::Gone,
        Err(e) => return Hashed::Present(unreadable(stat, &e)),
    }
    let mtime = SystemTime::UNIX_EPOCH + Duration::from_nanos(stat.mtime_ns.max(0) as u64);
    let racy = match now.duration_since(mtime) {
        Ok(age) => age < RACY_WINDOW,
        Err(_) => true, // mtime in the future
    };
    Hashed::Present(FileMeta {
        stat,
        hash: ContentHash(*hasher.finalize().as_bytes()),
        racy,
    })
}

/// The blake3 hash of a file's contents and its length (artifacts of the
/// fixture cache are named by it).
pub fn hash_contents(path: &Path) -> io::Result<(ContentHash, u64)> {
    let mut hasher = blake3::Hasher::new();
    hasher.update_reader(std::fs::File::open(path)?)?;
    Ok((ContentHash(*hasher.finalize().as_bytes()), hasher.count()))
}

fn unreadable(stat: Stat, error: &io::Error) -> FileMeta {
    let mut hasher = blake3::Hasher::new();
    hasher.update(b"unreadable\0");
    hasher.update(format!("{:?}", error.kind()).as_bytes());
    FileMeta {
        stat,
        hash: ContentHash(*hasher.finalize().as_bytes()),
        racy: true,
    }
}

/// Hashes many files, on all cores when there are enough to be worth it.
pub fn hash_files(filter: &Filter, files: Vec<(RepoPath, Stat)>) -> Vec<(RepoPath, Hashed)> {
    const PER_THREAD_MIN: usize = 64;
    let threads = walk_threads()
        .min(files.len().div_ceil(PER_THREAD_MIN))
        .max(1);
    if threads == 1 {
        return files
            .into_iter()
            .map(|(path, stat)| {
                let hashed = hash_file(&filter.abs(&path), stat);
                (path, hashed)
            })
            .collect();
    }
    let chunk = files.len().div_ceil(threads);
    std::thread::scope(|scope| {
        let handles: Vec<_> = files
            .chunks(chunk)
            .map(|part| {
                scope.spawn(move || {
                    part.iter()
                        .map(|(path, stat)| (path.clone(), hash_file(&filter.abs(path), *stat)))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("hashing thread panicked"))
            .collect()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn tree(files: &[(&str, &str)]) -> (tempfile::TempDir, Filter) {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().canonicalize().unwrap();
        fs::create_dir(root.join(".git")).unwrap();
        for (path, content) in files {
            let p = root.join(path);
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::write(p, content).unwrap();
        }
        let filter = Filter::new(&root, &["data/big/**".to_owned()]).unwrap();
        (dir, filter)
    }

    fn tracked(filter: &Filter) -> Vec<String> {
        let mut out: Vec<String> = filter
            .walk(&RepoPath::root(), Arc::new(|_: &Path| {}))
            .into_iter()
            .flat_map(|l| {
                l.files
                    .keys()
                    .map(|n| l.dir.join(n).to_string())
                    .collect::<Vec<_>>()
            })
            .collect();
        out.sort();
        out
    }

    #[test]
    fn rules_decide_what_is_tracked() {
        let (_dir, filter) = tree(&[
            (".gitignore", "*.log\nbuild/\n!keep.log\n"),
            ("src/app.py", "x = 1"),
            ("src/app.log", "noise"),
            ("src/keep.log", "kept by negation"),
            ("build/out.py", "generated"),
            (".env", "hidden files are tracked"),
            ("node_modules/x/index.js", ""),
            ("pkg/__pycache__/a.pyc", ""),
            ("env1/pyvenv.cfg", "home = /usr"),
            ("env1/lib/site.py", ""),
            ("data/big/blob.bin", ""),
            ("data/small.json", "{}"),
            ("sub/.timignore", "secret.txt\n"),
            ("sub/secret.txt", ""),
            ("sub/open.txt", ""),
            ("x.egg-info/PKG-INFO", ""),
        ]);
        assert_eq!(
            tracked(&filter),
            [
                ".env",
                ".gitignore",
                "data/small.json",
                "src/app.py",
                "src/keep.log",
                "sub/.timignore",
                "sub/open.txt",
            ]
        );
    }

    #[test]
    fn listing_a_directory_applies_the_same_rules() {
        let (_dir, filter) = tree(&[
            (".gitignore", "*.log\n"),
            ("src/a.py", ""),
            ("src/a.log", ""),
            ("src/inner/b.py", ""),
            ("src/__pycache__/a.pyc", ""),
        ]);
        let listing = filter.list_dir(&RepoPath::new("src")).unwrap();
        assert_eq!(listing.files.keys().collect::<Vec<_>>(), ["a.py"]);
        assert_eq!(listing.subdirs.iter().collect::<Vec<_>>(), ["inner"]);
        assert!(filter.list_dir(&RepoPath::new("nope")).is_none());
    }

    #[test]
    fn walk_calls_the_hook_for_every_tracked_directory() {
        let (_dir, filter) = tree(&[("a/b/c.py", ""), ("target/x", ""), ("d/e.py", "")]);
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        let root = filter.root().to_path_buf();
        filter.walk(
            &RepoPath::root(),
            Arc::new(move |p: &Path| {
                s.lock()
                    .unwrap()
                    .push(p.strip_prefix(&root).unwrap().display().to_string())
            }),
        );
        let mut seen = seen.lock().unwrap().clone();
        seen.sort();
        assert_eq!(seen, ["", "a", "a/b", "d"]);
    }

    #[test]
    fn hashes_follow_content_not_metadata() {
        let (dir, filter) = tree(&[("a.txt", "same"), ("b.txt", "same"), ("c.txt", "other")]);
        let root = dir.path().canonicalize().unwrap();
        let h = |name: &str| match hash_file(&root.join(name), Stat::default()) {
            Hashed::Present(m) => m,
            Hashed::Gone => panic!("{name} gone"),
        };
        assert_eq!(h("a.txt").hash, h("b.txt").hash);
        assert_ne!(h("a.txt").hash, h("c.txt").hash);
        assert!(h("a.txt").racy, "just written, so racy");
        assert!(matches!(
            hash_file(&root.join("missing"), Stat::default()),
            Hashed::Gone
        ));
        std::os::unix::fs::symlink("a.txt", root.join("link")).unwrap();
        assert_ne!(h("link").hash, h("a.txt").hash);
        let many: Vec<_> = (0..200)
            .map(|i| (RepoPath::new(format!("f{i}")), Stat::default()))
            .collect();
        for i in 0..200 {
            fs::write(root.join(format!("f{i}")), i.to_string()).unwrap();
        }
        let hashed = hash_files(&filter, many);
        assert_eq!(hashed.len(), 200);
        assert!(hashed.iter().all(|(_, h)| matches!(h, Hashed::Present(_))));
    }
}
