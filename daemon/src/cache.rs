//! The fixture artifact cache's files and leases. The index lives in the
//! store (`cache_entry`); whether an entry is still valid is the pytest
//! adapter's call (the same dependency machinery as tests); the core ties
//! them together. This module owns `.tim/cache/`:
//!
//! * `blobs/<2 hex>/<blake3 hex>`: artifacts, named by their content. A blob
//!   is only ever created by renaming a complete file into place, and its
//!   digest is checked on every hit, so a torn or corrupted blob is found
//!   and recomputed, never handed out.
//! * `tmp/`: where producers write before `cache_put` moves the file in.
//!
//! A **lease** says "this connection is computing key K". Whoever asks for
//! K meanwhile waits (its answer is parked) and gets the stored artifact
//! once the holder puts it; if the holder gives up or its connection closes
//! (its process died), the first waiter gets the lease. Nobody polls and no
//! lease needs a timeout.

use crate::index::ContentHash;
use crate::scan;
use crate::store::{CacheRow, decode_deps, encode_deps, now_ms};
use foldhash::{HashMap, HashSet};
use serde_json::{Value, json};
use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use tim_proto::CacheGetParams;

/// Default size cap of the blobs (`tim cache gc` without `--max-size`,
/// and after each store).
pub const DEFAULT_MAX_BYTES: u64 = 2 << 30;

/// A question parked until a lease is released.
pub struct Waiter<R> {
    pub params: CacheGetParams,
    pub conn: u64,
    pub reply: R,
}

struct Lease<R> {
    id: u64,
    conn: u64,
    waiters: VecDeque<Waiter<R>>,
}

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("cannot store the artifact {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0} is not a file under the cache's tmp/ directory")]
    NotInTmp(String),
    #[error(
        "the lease for {key} was given to another worker (it took too long, or its connection closed); the result was not stored"
    )]
    LeaseLost { key: String },
    #[error("{dir} is not a tim cache export ({why}); make one with `tim cache export DIR`")]
    NotAnExport { dir: PathBuf, why: String },
}

/// The index file of an exported cache directory.
pub const EXPORT_INDEX: &str = "tim-cache.json";
const EXPORT_FORMAT: u64 = 1;

/// `R` is how a parked question is answered (a reply channel in the core).
pub struct ArtifactCache<R> {
    dir: PathBuf,
    leases: HashMap<String, Lease<R>>,
    next_lease: u64,
    /// (run, key) recomputed by a refresh run: later questions of the same
    /// run use the fresh entry instead of recomputing it again.
    refreshed: HashSet<(u64, String)>,
}

/// What to do with a question, as far as leases go.
pub enum Claim<R> {
    /// Another connection is computing the key: the question was parked.
    Parked,
    /// Nobody is computing it: answer the question.
    Free(Waiter<R>),
}

impl<R> ArtifactCache<R> {
    pub fn new(state_dir: &Path) -> ArtifactCache<R> {
        ArtifactCache {
            dir: state_dir.join("cache"),
            leases: HashMap::default(),
            next_lease: 1,
            refreshed: HashSet::default(),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn blob_path(&self, blob: &str) -> PathBuf {
        let prefix = blob.get(..2).unwrap_or("00");
        self.dir.join("blobs").join(prefix).join(blob)
    }

    /// Parks `waiter` if another connection holds the lease of its key.
    pub fn claim(&mut self, waiter: Waiter<R>) -> Claim<R> {
        match self.leases.get_mut(&waiter.params.key) {
            Some(lease) if lease.conn != waiter.conn => {
                lease.waiters.push_back(waiter);
                Claim::Parked
            }
            _ => Claim::Free(waiter),
        }
    }

    /// Gives `conn` the lease of `key` (its existing one if it holds it).
    pub fn lease(&mut self, key: &str, conn: u64) -> u64 {
        if let Some(lease) = self.leases.get(key)
            && lease.conn == conn
        {
            return lease.id;
        }
        let id = self.next_lease;
        self.next_lease += 1;
        self.leases.insert(
            key.to_owned(),
            Lease {
                id,
                conn,
                waiters: VecDeque::new(),
            },
        );
        id
    }

    /// Whether a refresh run must still recompute `key`.
    pub fn must_refresh(&self, run: Option<u64>, key: &str) -> bool {
        run.is_none_or(|run| !self.refreshed.contains(&(run, key.to_owned())))
    }

    /// Ends lease `id` of `key` (stored or given up); returns the questions
    /// that waited for it, to be asked again in order.
    pub fn release(
        &mut self,
        key: &str,
        id: u64,
        run: Option<u64>,
        stored: bool,
    ) -> Vec<Waiter<R>> {
        if stored && let Some(run) = run {
            self.refreshed.insert((run, key.to_owned()));
        }
        match self.leases.get(key) {
            Some(lease) if lease.id == id => {
                let lease = self.leases.remove(key).expect("just seen");
                lease.waiters.into()
            }
            _ => Vec::new(),
        }
    }

    /// Whether lease `id` of `key` is current (or nobody holds one).
    pub fn may_store(&self, key: &str, id: u64) -> bool {
        self.leases.get(key).is_none_or(|l| l.id == id)
    }

    /// The key of lease `id`.
    pub fn key_of(&self, id: u64) -> Option<String> {
        self.leases
            .iter()
            .find(|(_, l)| l.id == id)
            .map(|(k, _)| k.clone())
    }

    /// Every lease of connection `conn` (it closed): their keys and ids.
    pub fn leases_of(&self, conn: u64) -> Vec<(String, u64)> {
        self.leases
            .iter()
            .filter(|(_, l)| l.conn == conn)
            .map(|(k, l)| (k.clone(), l.id))
            .collect()
    }

    /// Whether anyone is computing anything (the daemon must not go idle
    /// while workers wait for it).
    pub fn busy(&self) -> bool {
        !self.leases.is_empty()
    }

    /// Whether `path` is a file directly in `tmp/`.
    pub fn in_tmp(&self, path: &Path) -> bool {
        path.parent()
            .and_then(|p| p.canonicalize().ok())
            .zip(self.dir.join("tmp").canonicalize().ok())
            .is_some_and(|(parent, tmp)| parent == tmp)
    }

    /// Removes what producers left in `tmp/` (killed before storing) and
    /// half-copied blobs: at start-up, when no lease can exist.
    pub fn sweep(&self) {
        if let Ok(entries) = std::fs::read_dir(self.dir.join("tmp")) {
            for e in entries.flatten() {
                let _ = std::fs::remove_file(e.path());
            }
        }
        if let Ok(dirs) = std::fs::read_dir(self.dir.join("blobs")) {
            for d in dirs.flatten() {
                for e in std::fs::read_dir(d.path()).into_iter().flatten().flatten() {
                    if e.file_name().to_string_lossy().starts_with('.') {
                        let _ = std::fs::remove_file(e.path());
                    }
                }
            }
        }
    }

    /// Whether someone is computing `key` now.
    pub fn leased(&self, key: &str) -> bool {
        self.leases.contains_key(key)
    }

    /// Checks a blob against its name: `Ok(true)` when it is intact.
    pub fn verify(&self, blob: &str) -> bool {
        match scan::hash_contents(&self.blob_path(blob)) {
            Ok((hash, _)) => hash.to_hex() == blob,
            Err(_) => false,
        }
    }

    /// Moves a producer's file into the store; returns its name and size.
    pub fn adopt(&self, tmp: &str) -> Result<(String, u64), CacheError> {
        let path = Path::new(tmp);
        if !self.in_tmp(path) {
            return Err(CacheError::NotInTmp(tmp.to_owned()));
        }
        let io = |source| CacheError::Io {
            path: path.to_owned(),
            source,
        };
        let (hash, size): (ContentHash, u64) = scan::hash_contents(path).map_err(io)?;
        let blob = hash.to_hex();
        let target = self.blob_path(&blob);
        if target.exists() && self.verify(&blob) {
            // The same content is stored already.
            let _ = std::fs::remove_file(path);
        } else {
            let parent = target.parent().expect("blob paths have a parent");
            std::fs::create_dir_all(parent).map_err(io)?;
            std::fs::rename(path, &target).map_err(io)?;
        }
        Ok((blob, size))
    }

    /// Deletes a blob file (no entry uses it any more, or it is corrupt).
    pub fn delete_blob(&self, blob: &str) {
        let _ = std::fs::remove_file(self.blob_path(blob));
    }

    /// Removes every blob and temp file.
    pub fn delete_all(&self) -> std::io::Result<()> {
        for sub in ["blobs", "tmp"] {
            match std::fs::remove_dir_all(self.dir.join(sub)) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
        std::fs::create_dir_all(self.dir.join("tmp"))
    }

    /// Writes `rows` and their blobs to `dir` (`tim-cache.json` and
    /// `blobs/`), for `import` elsewhere. Blobs are copied, never moved.
    pub fn export(
        &self,
        rows: &[CacheRow],
        dir: &Path,
    ) -> Result<tim_proto::CacheTransferReply, CacheError> {
        let io = |path: &Path| {
            let path = path.to_owned();
            move |source| CacheError::Io { path, source }
        };
        let blobs = dir.join("blobs");
        std::fs::create_dir_all(&blobs).map_err(io(&blobs))?;
        let (mut entries, mut skipped, mut bytes) = (Vec::new(), Vec::new(), 0);
        for row in rows {
            let deps = match &row.deps {
                None => Value::Null,
                Some(Some(deps)) => encode_deps(deps),
                Some(None) => {
                    skipped.push(format!(
                        "{}: recorded by another version of tim",
                        row.fixture
                    ));
                    continue;
                }
            };
            if !self.verify(&row.blob) {
                skipped.push(format!("{}: corrupt blob", row.fixture));
                continue;
            }
            let target = blobs.join(&row.blob);
            if !target.exists() {
                copy_into(&self.blob_path(&row.blob), &target).map_err(io(&target))?;
            }
            bytes += row.size;
            entries.push(json!({
                "key": row.key, "fixture": row.fixture, "blob": row.blob, "size": row.size,
                "serializer": row.serializer, "deps": deps, "produce_seconds": row.produce_seconds,
            }));
        }
        let count = entries.len() as u64;
        let index = dir.join(EXPORT_INDEX);
        let text = json!({"format": EXPORT_FORMAT, "entries": entries}).to_string();
        let tmp = dir.join(format!(".{EXPORT_INDEX}.{}", std::process::id()));
        std::fs::write(&tmp, text)
            .and_then(|()| std::fs::rename(&tmp, &index))
            .map_err(io(&index))?;
        Ok(tim_proto::CacheTransferReply {
            entries: count,
            bytes,
            skipped,
        })
    }

    /// Reads an exported directory: its entries (blobs copied in, each
    /// checked against its name) and the ones left out, with why. The
    /// environment they were recorded in is not judged: imported entries
    /// are valid while the project's files they depend on are unchanged.
    pub fn import(&self, dir: &Path) -> Result<(Vec<CacheRow>, Vec<String>), CacheError> {
        let not_export = |why: String| CacheError::NotAnExport {
            dir: dir.to_owned(),
            why,
        };
        let text = std::fs::read_to_string(dir.join(EXPORT_INDEX))
            .map_err(|e| not_export(format!("cannot read {EXPORT_INDEX}: {e}")))?;
        let index: Value =
            serde_json::from_str(&text).map_err(|e| not_export(format!("{EXPORT_INDEX}: {e}")))?;
        if index["format"].as_u64() != Some(EXPORT_FORMAT) {
            return Err(not_export(format!(
                "format {} (this tim reads {EXPORT_FORMAT})",
                index["format"]
            )));
        }
        let entries = index["entries"]
            .as_array()
            .ok_or_else(|| not_export("no entries list".into()))?;
        let (mut rows, mut skipped) = (Vec::new(), Vec::new());
        let now = now_ms();
        for e in entries {
            let text = |k: &str| e[k].as_str().map(str::to_owned);
            let (Some(key), Some(fixture), Some(blob), Some(serializer)) = (
                text("key"),
                text("fixture"),
                text("blob"),
                text("serializer"),
            ) else {
                skipped.push(format!("an unreadable entry: {e}"));
                continue;
            };
            let deps = match &e["deps"] {
                Value::Null => None,
                value => match decode_deps(value) {
                    Some(deps) => Some(Some(deps)),
                    None => {
                        skipped.push(format!("{fixture}: unreadable dependencies"));
                        continue;
                    }
                },
            };
            let source = dir.join("blobs").join(&blob);
            match scan::hash_contents(&source) {
                Ok((hash, _)) if hash.to_hex() == blob => {}
                Ok(_) => {
                    skipped.push(format!("{fixture}: its blob does not match its digest"));
                    continue;
                }
                Err(err) => {
                    skipped.push(format!(
                        "{fixture}: cannot read {}: {err}",
                        source.display()
                    ));
                    continue;
                }
            }
            let target = self.blob_path(&blob);
            if !(target.exists() && self.verify(&blob)) {
                copy_into(&source, &target).map_err(|source| CacheError::Io {
                    path: target.clone(),
                    source,
                })?;
            }
            rows.push(CacheRow {
                key,
                fixture,
                size: e["size"].as_u64().unwrap_or(0),
                blob,
                serializer,
                deps,
                env: None,
                produce_seconds: e["produce_seconds"].as_f64().unwrap_or(0.0),
                created_ms: now,
                used_ms: now,
                hits: 0,
            });
        }
        Ok((rows, skipped))
    }

    /// Creates `tmp/`, where producers write.
    pub fn prepare(&self) -> std::io::Result<()> {
        std::fs::create_dir_all(self.dir.join("tmp"))
    }
}

/// Copies `from` to `to` through a temp file next to `to`, so `to` is
/// complete or absent.
fn copy_into(from: &Path, to: &Path) -> std::io::Result<()> {
    let parent = to.parent().expect("blob paths have a parent");
    std::fs::create_dir_all(parent)?;
    let tmp = parent.join(format!(".{}.{}", std::process::id(), now_ms()));
    std::fs::copy(from, &tmp)?;
    std::fs::rename(&tmp, to).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ask(key: &str, conn: u64) -> Waiter<u32> {
        Waiter {
            params: CacheGetParams {
                run_id: Some(1),
                key: key.into(),
                fixture: "f".into(),
                mode: Default::default(),
            },
            conn,
            reply: conn as u32,
        }
    }

    #[test]
    fn one_computes_the_others_wait_and_a_dead_holder_hands_over() {
        let dir = tempfile::tempdir().unwrap();
        let mut c: ArtifactCache<u32> = ArtifactCache::new(dir.path());
        assert!(matches!(c.claim(ask("k", 1)), Claim::Free(_)));
        let lease = c.lease("k", 1);
        // The holder asking again keeps its lease.
        assert!(matches!(c.claim(ask("k", 1)), Claim::Free(_)));
        assert_eq!(c.lease("k", 1), lease);
        assert!(matches!(c.claim(ask("k", 2)), Claim::Parked));
        assert!(matches!(c.claim(ask("k", 3)), Claim::Parked));
        assert!(matches!(c.claim(ask("other", 2)), Claim::Free(_)));
        // Connection 1 dies: its waiters come back in order.
        assert_eq!(c.leases_of(1), vec![("k".to_owned(), lease)]);
        let waiters = c.release("k", lease, Some(1), false);
        assert_eq!(waiters.iter().map(|w| w.reply).collect::<Vec<_>>(), [2, 3]);
        assert!(!c.leased("k"));
        // A stale lease id releases nothing.
        let second = c.lease("k", 2);
        assert!(c.release("k", lease, Some(1), false).is_empty());
        assert!(c.may_store("k", second) && !c.may_store("k", lease));
        assert!(c.must_refresh(Some(1), "k"));
        c.release("k", second, Some(1), true);
        assert!(!c.must_refresh(Some(1), "k") && c.must_refresh(Some(2), "k"));
    }

    #[test]
    fn adopted_files_are_named_by_content_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let c: ArtifactCache<u32> = ArtifactCache::new(dir.path());
        c.prepare().unwrap();
        let tmp = c.dir().join("tmp").join("a");
        std::fs::write(&tmp, b"artifact").unwrap();
        let (blob, size) = c.adopt(tmp.to_str().unwrap()).unwrap();
        assert_eq!(size, 8);
        assert!(!tmp.exists() && c.blob_path(&blob).exists());
        assert!(c.verify(&blob));
        std::fs::write(c.blob_path(&blob), b"artifacT").unwrap();
        assert!(!c.verify(&blob), "a changed byte is found");
        let outside = dir.path().join("outside");
        std::fs::write(&outside, b"x").unwrap();
        assert!(matches!(
            c.adopt(outside.to_str().unwrap()),
            Err(CacheError::NotInTmp(_))
        ));
    }
}
