//! The in-memory file index: what the daemon believes is on disk.
//!
//! Pure data: no IO happens here. The scanner produces [`Listing`]s (what a
//! directory holds now); [`Index::diff_listing`] compares one with what the
//! index holds and says which files need hashing and which are gone.
//!
//! Architecture invariant: paths in the index are [`RepoPath`]s (relative to
//! the root, `/`-separated); the daemon never resolves them against its own
//! current directory.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

/// A root-relative, `/`-separated path. The root itself is `""`.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RepoPath(String);

impl RepoPath {
    pub fn root() -> RepoPath {
        RepoPath(String::new())
    }

    /// From a path already in `/`-separated relative form.
    pub fn new(s: impl Into<String>) -> RepoPath {
        RepoPath(s.into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn is_root(&self) -> bool {
        self.0.is_empty()
    }

    pub fn join(&self, name: &str) -> RepoPath {
        if self.0.is_empty() {
            RepoPath(name.to_owned())
        } else {
            RepoPath(format!("{}/{}", self.0, name))
        }
    }

    /// `(parent, file name)`; the root has no parent.
    pub fn split(&self) -> Option<(RepoPath, &str)> {
        if self.0.is_empty() {
            return None;
        }
        Some(match self.0.rsplit_once('/') {
            Some((dir, name)) => (RepoPath(dir.to_owned()), name),
            None => (RepoPath::root(), self.0.as_str()),
        })
    }

    /// True when `self` is `dir` or lies below it.
    pub fn starts_with_dir(&self, dir: &RepoPath) -> bool {
        dir.is_root()
            || self.0 == dir.0
            || (self.0.starts_with(&dir.0) && self.0.as_bytes().get(dir.0.len()) == Some(&b'/'))
    }
}

impl fmt::Display for RepoPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A blake3 digest of a file's content.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ContentHash(pub [u8; 32]);

impl ContentHash {
    pub fn of(bytes: &[u8]) -> ContentHash {
        ContentHash(*blake3::hash(bytes).as_bytes())
    }

    pub fn to_hex(&self) -> String {
        // Called for every dependency of every recorded test: no `format!`.
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        let mut out = String::with_capacity(64);
        for b in self.0 {
            out.push(DIGITS[usize::from(b >> 4)] as char);
            out.push(DIGITS[usize::from(b & 0xf)] as char);
        }
        out
    }

    pub fn from_hex(text: &str) -> Option<ContentHash> {
        if text.len() != 64 {
            return None;
        }
        let mut out = [0u8; 32];
        for (i, byte) in out.iter_mut().enumerate() {
            *byte = u8::from_str_radix(text.get(2 * i..2 * i + 2)?, 16).ok()?;
        }
        Some(ContentHash(out))
    }
}

impl fmt::Debug for ContentHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in &self.0[..8] {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

/// What `stat` says about a file: enough to decide whether it must be
/// re-hashed. Any field differing means "hash again".
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stat {
    pub size: u64,
    pub mtime_ns: i64,
    pub ctime_ns: i64,
    pub inode: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileMeta {
    pub stat: Stat,
    pub hash: ContentHash,
    /// The stat was taken so soon after the file's last write that a later
    /// write within the same timestamp tick would leave it unchanged; such a
    /// file is hashed again whenever it is looked at.
    pub racy: bool,
}

/// The files and subdirectories one directory holds now, after ignore rules.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Listing {
    pub dir: RepoPath,
    pub files: BTreeMap<String, Stat>,
    pub subdirs: BTreeSet<String>,
}

/// What a listing differs in from the index.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ListingDiff {
    /// New files, and files whose stat changed or is racy: hash them.
    pub to_hash: Vec<(RepoPath, Stat)>,
    /// Files the index has and the directory no longer shows.
    pub removed: Vec<RepoPath>,
    /// Subdirectories the index does not know yet: walk them.
    pub new_subdirs: Vec<RepoPath>,
    /// Subdirectories the index knows and the directory no longer shows
    /// (deleted, renamed away, or now ignored): forget everything below.
    pub removed_subdirs: Vec<RepoPath>,
}

/// A directory's entries: files with their metadata, and subdirectory names.
#[derive(Clone, Debug, Default)]
struct DirEntries {
    files: BTreeMap<String, FileMeta>,
    subdirs: BTreeSet<String>,
}

#[derive(Debug, Default)]
pub struct Index {
    dirs: BTreeMap<RepoPath, DirEntries>,
    file_count: usize,
}

impl Index {
    pub fn file_count(&self) -> usize {
        self.file_count
    }

    pub fn has_dir(&self, dir: &RepoPath) -> bool {
        self.dirs.contains_key(dir)
    }

    pub fn get(&self, path: &RepoPath) -> Option<&FileMeta> {
        let (dir, name) = path.split()?;
        self.dirs.get(&dir)?.files.get(name)
    }

    /// Every tracked file, in path order within each directory.
    pub fn files(&self) -> impl Iterator<Item = (RepoPath, &FileMeta)> {
        self.dirs.iter().flat_map(|(dir, entries)| {
            entries
                .files
                .iter()
                .map(move |(name, meta)| (dir.join(name), meta))
        })
    }

    /// The names of a directory's tracked files and subdirectories, sorted.
    pub fn dir_entries(&self, dir: &RepoPath) -> Option<Vec<&str>> {
        let entries = self.dirs.get(dir)?;
        let mut names: Vec<&str> = entries
            .files
            .keys()
            .chain(entries.subdirs.iter())
            .map(String::as_str)
            .collect();
        names.sort_unstable();
        Some(names)
    }

    /// Known directories at or below `dir`.
    pub fn dirs_under(&self, dir: &RepoPath) -> Vec<RepoPath> {
        self.dirs
            .range(dir.clone()..)
            .take_while(|(d, _)| d.as_str().starts_with(dir.as_str()))
            .filter(|(d, _)| d.starts_with_dir(dir))
            .map(|(d, _)| d.clone())
            .collect()
    }

    /// Records that `dir` exists (and its parent lists it).
    pub fn add_dir(&mut self, dir: &RepoPath) {
        if self.dirs.contains_key(dir) {
            return;
        }
        self.dirs.insert(dir.clone(), DirEntries::default());
        if let Some((parent, name)) = dir.split() {
            self.add_dir(&parent);
            if let Some(p) = self.dirs.get_mut(&parent) {
                p.subdirs.insert(name.to_owned());
            }
        }
    }

    pub fn insert(&mut self, path: &RepoPath, meta: FileMeta) {
        let Some((dir, name)) = path.split() else {
            return;
        };
        self.add_dir(&dir);
        let entries = self.dirs.get_mut(&dir).expect("added above");
        if entries.files.insert(name.to_owned(), meta).is_none() {
            self.file_count += 1;
        }
    }

    pub fn remove(&mut self, path: &RepoPath) -> Option<FileMeta> {
        let (dir, name) = path.split()?;
        let removed = self.dirs.get_mut(&dir)?.files.remove(name);
        if removed.is_some() {
            self.file_count -= 1;
        }
        removed
    }

    /// Forgets `dir` and everything below it; returns the files forgotten.
    pub fn remove_dir(&mut self, dir: &RepoPath) -> Vec<RepoPath> {
        let mut gone = Vec::new();
        for d in self.dirs_under(dir) {
            if let Some(entries) = self.dirs.remove(&d) {
                self.file_count -= entries.files.len();
                gone.extend(entries.files.keys().map(|name| d.join(name)));
            }
        }
        if let Some((parent, name)) = dir.split()
            && let Some(p) = self.dirs.get_mut(&parent)
        {
            p.subdirs.remove(name);
        }
        gone
    }

    /// Compares what a directory holds now with the index.
    pub fn diff_listing(&self, listing: &Listing) -> ListingDiff {
        let mut diff = ListingDiff::default();
        let empty = DirEntries::default();
        let known = self.dirs.get(&listing.dir).unwrap_or(&empty);
        for (name, stat) in &listing.files {
            let needs_hash = match known.files.get(name) {
                None => true,
                Some(meta) => meta.racy || meta.stat != *stat,
            };
            if needs_hash {
                diff.to_hash.push((listing.dir.join(name), *stat));
            }
        }
        for name in known.files.keys() {
            if !listing.files.contains_key(name) {
                diff.removed.push(listing.dir.join(name));
            }
        }
        for name in &listing.subdirs {
            if !known.subdirs.contains(name) || !self.dirs.contains_key(&listing.dir.join(name)) {
                diff.new_subdirs.push(listing.dir.join(name));
            }
        }
        for name in &known.subdirs {
            if !listing.subdirs.contains(name) {
                diff.removed_subdirs.push(listing.dir.join(name));
            }
        }
        diff
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_hashes_round_trip_through_hex() {
        let h = ContentHash::of(b"tim");
        let hex = h.to_hex();
        assert_eq!(hex, blake3::hash(b"tim").to_hex().as_str());
        assert_eq!(ContentHash::from_hex(&hex), Some(h));
        assert_eq!(ContentHash::from_hex(&hex[1..]), None);
    }

    fn meta(size: u64) -> FileMeta {
        FileMeta {
            stat: Stat {
                size,
                ..Stat::default()
            },
            hash: ContentHash([size as u8; 32]),
            racy: false,
        }
    }

    fn listing(dir: &str, files: &[(&str, u64)], subdirs: &[&str]) -> Listing {
        Listing {
            dir: RepoPath::new(dir),
            files: files
                .iter()
                .map(|(n, s)| {
                    (
                        n.to_string(),
                        Stat {
                            size: *s,
                            ..Stat::default()
                        },
                    )
                })
                .collect(),
            subdirs: subdirs.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn repo_path_relations() {
        let p = RepoPath::new("a/b/c.py");
        assert_eq!(p.split().unwrap(), (RepoPath::new("a/b"), "c.py"));
        assert_eq!(RepoPath::new("x").split().unwrap(), (RepoPath::root(), "x"));
        assert!(p.starts_with_dir(&RepoPath::new("a")));
        assert!(p.starts_with_dir(&RepoPath::root()));
        assert!(!RepoPath::new("ab/c").starts_with_dir(&RepoPath::new("a")));
        assert_eq!(RepoPath::root().join("x").join("y").as_str(), "x/y");
    }

    #[test]
    fn diff_finds_new_changed_removed_and_subdirs() {
        let mut index = Index::default();
        index.insert(&RepoPath::new("src/keep.py"), meta(1));
        index.insert(&RepoPath::new("src/edit.py"), meta(2));
        index.insert(&RepoPath::new("src/gone.py"), meta(3));
        index.insert(&RepoPath::new("src/old/x.py"), meta(4));
        let mut racy = meta(5);
        racy.racy = true;
        index.insert(&RepoPath::new("src/racy.py"), racy);

        let now = listing(
            "src",
            &[
                ("keep.py", 1),
                ("edit.py", 20),
                ("new.py", 9),
                ("racy.py", 5),
            ],
            &["fresh"],
        );
        let diff = index.diff_listing(&now);
        let hashed: Vec<_> = diff.to_hash.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(hashed, ["src/edit.py", "src/new.py", "src/racy.py"]);
        assert_eq!(diff.removed, [RepoPath::new("src/gone.py")]);
        assert_eq!(diff.new_subdirs, [RepoPath::new("src/fresh")]);
        assert_eq!(diff.removed_subdirs, [RepoPath::new("src/old")]);
    }

    #[test]
    fn remove_dir_forgets_the_subtree_only() {
        let mut index = Index::default();
        for p in ["a/1", "a/b/2", "a/b/c/3", "ab/4", "z"] {
            index.insert(&RepoPath::new(p), meta(1));
        }
        assert_eq!(index.file_count(), 5);
        let mut gone = index.remove_dir(&RepoPath::new("a/b"));
        gone.sort();
        assert_eq!(gone, [RepoPath::new("a/b/2"), RepoPath::new("a/b/c/3")]);
        assert_eq!(index.file_count(), 3);
        assert!(index.get(&RepoPath::new("ab/4")).is_some());
        assert!(!index.has_dir(&RepoPath::new("a/b/c")));
        // The parent no longer lists the subdirectory.
        let diff = index.diff_listing(&listing("a", &[("1", 1)], &[]));
        assert!(diff.removed_subdirs.is_empty());
    }
}
