//! The SQLite store at `.tim/tim.db`.
//!
//! Architecture invariant: this is the only module that uses rusqlite. Every
//! write is one transaction, so a daemon killed at any moment leaves a
//! database that opens and holds every committed batch. Opening is where the
//! safety rules live: a database written by a newer tim is refused (never
//! "upgraded" backwards); a corrupt one is moved aside, never deleted, and a
//! fresh one is built in its place.

use crate::impact::Dep;
use crate::index::{ContentHash, FileMeta, RepoPath, Stat};
use crate::pyenv::{Dist, Snapshot};
use rusqlite::{Connection, ErrorCode, OptionalExtension, params};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

include!(concat!(env!("OUT_DIR"), "/migrations.rs"));

/// The newest schema this build knows.
pub fn schema_version() -> u32 {
    MIGRATIONS.last().map_or(0, |m| m.0)
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(
        "{path} has schema version {found}, but this timd knows versions up to {known}: it was written by a newer tim. Upgrade tim, or move the file aside to start over"
    )]
    NewerSchema {
        path: PathBuf,
        found: u32,
        known: u32,
    },
    #[error("cannot open {path}: {source}")]
    Open {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error("cannot move the corrupt database {path} aside: {source}")]
    MoveAside {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
}

/// A change to the file table, part of one batch.
#[derive(Clone, Debug)]
pub enum FileUpdate {
    /// A file exists with this metadata. `content_changed` is false when only
    /// its stat moved (touch, copy with the same bytes): the clock of the
    /// file is then left alone.
    Upsert {
        path: RepoPath,
        meta: FileMeta,
        content_changed: bool,
    },
    Delete {
        path: RepoPath,
    },
}

/// How a file differs from what it was at an earlier clock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    Added,
    Modified,
    Deleted,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunRow {
    pub id: u64,
    pub started_at_ms: u64,
    pub finished_at_ms: Option<u64>,
    pub clock_seq: u64,
    pub command: String,
}

pub struct Store {
    conn: Connection,
    instance: String,
    seq: u64,
}

enum OpenFailure {
    Corrupt(String),
    Fatal(StoreError),
}

fn is_corruption(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(ErrorCode::NotADatabase | ErrorCode::DatabaseCorrupt)
    )
}

fn classify(path: &Path, e: rusqlite::Error) -> OpenFailure {
    if is_corruption(&e) {
        OpenFailure::Corrupt(e.to_string())
    } else {
        OpenFailure::Fatal(StoreError::Open {
            path: path.to_owned(),
            source: e,
        })
    }
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Store {
    /// Opens (creating or migrating) the database. Warnings say what was
    /// repaired and where the old data went; they are for the user.
    pub fn open(path: &Path) -> Result<(Store, Vec<String>), StoreError> {
        match Store::try_open(path) {
            Ok(store) => Ok((store, Vec::new())),
            Err(OpenFailure::Fatal(e)) => Err(e),
            Err(OpenFailure::Corrupt(reason)) => {
                let moved = move_aside(path)?;
                tracing::warn!(path = %path.display(), moved = %moved.display(), %reason, "database corrupt; moved aside");
                let store = Store::try_open(path).map_err(|f| match f {
                    OpenFailure::Fatal(e) => e,
                    OpenFailure::Corrupt(reason) => StoreError::Open {
                        path: path.to_owned(),
                        source: rusqlite::Error::InvalidParameterName(format!(
                            "a fresh database is reported corrupt too ({reason}); check the disk"
                        )),
                    },
                })?;
                let warning = format!(
                    "{} was corrupt ({reason}); it was moved to {} and a new, empty database was created, so every test counts as unrecorded until the next full run",
                    path.display(),
                    moved.display()
                );
                Ok((store, vec![warning]))
            }
        }
    }

    fn try_open(path: &Path) -> Result<Store, OpenFailure> {
        let conn = Connection::open(path).map_err(|e| classify(path, e))?;
        // The schema version is read before anything is written (even the
        // journal mode), so a database from a newer tim is left untouched.
        let found: u32 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(|e| classify(path, e))?;
        if found > schema_version() {
            return Err(OpenFailure::Fatal(StoreError::NewerSchema {
                path: path.to_owned(),
                found,
                known: schema_version(),
            }));
        }
        let setup = || -> rusqlite::Result<String> {
            conn.busy_timeout(std::time::Duration::from_secs(5))?;
            // WAL: readers never block the writer, and a killed process loses
            // nothing that was committed. NORMAL sync is durable across
            // process crashes (not across power loss), the trade-off WAL is
            // designed for.
            let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
            conn.pragma_update(None, "synchronous", "NORMAL")?;
            conn.pragma_update(None, "foreign_keys", true)?;
            conn.query_row("PRAGMA quick_check", [], |r| r.get::<_, String>(0))
                .map(|check| {
                    if check == "ok" {
                        mode
                    } else {
                        format!("corrupt:{check}")
                    }
                })
        };
        match setup() {
            Ok(check) if check.starts_with("corrupt:") => {
                return Err(OpenFailure::Corrupt(format!(
                    "integrity check failed: {}",
                    &check["corrupt:".len()..]
                )));
            }
            Ok(_) => {}
            Err(e) => return Err(classify(path, e)),
        }
        let mut store = Store {
            conn,
            instance: String::new(),
            seq: 0,
        };
        store.migrate(path).map_err(|e| match e {
            StoreError::Sqlite(inner) if is_corruption(&inner) => {
                OpenFailure::Corrupt(inner.to_string())
            }
            other => OpenFailure::Fatal(other),
        })?;
        Ok(store)
    }

    fn migrate(&mut self, path: &Path) -> Result<(), StoreError> {
        let found: u32 = self
            .conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))?;
        let known = schema_version();
        if found > known {
            return Err(StoreError::NewerSchema {
                path: path.to_owned(),
                found,
                known,
            });
        }
        let tx = self.conn.transaction()?;
        for (num, name, sql) in MIGRATIONS.iter().filter(|m| m.0 > found) {
            tracing::info!(num, name, "applying migration");
            tx.execute_batch(sql)?;
        }
        if found < known {
            tx.pragma_update(None, "user_version", known)?;
        }
        let instance: Option<String> = tx
            .query_row("SELECT value FROM meta WHERE key = 'instance'", [], |r| {
                r.get(0)
            })
            .optional()?;
        let instance = match instance {
            Some(i) => i,
            None => {
                let fresh = new_instance_id();
                tx.execute(
                    "INSERT INTO meta (key, value) VALUES ('instance', ?1)",
                    [&fresh],
                )?;
                fresh
            }
        };
        let seq: Option<String> = tx
            .query_row("SELECT value FROM meta WHERE key = 'seq'", [], |r| r.get(0))
            .optional()?;
        tx.commit()?;
        self.instance = instance;
        self.seq = seq.and_then(|s| s.parse().ok()).unwrap_or(0);
        Ok(())
    }

    /// A random id of this database, part of every clock it hands out.
    pub fn instance(&self) -> &str {
        &self.instance
    }

    /// The last clock value committed.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// Every live (not deleted) file.
    pub fn load_files(&self) -> Result<Vec<(RepoPath, FileMeta)>, StoreError> {
        let mut stmt = self.conn.prepare(
            "SELECT path, hash, size, mtime_ns, ctime_ns, inode, racy FROM file WHERE hash IS NOT NULL",
        )?;
        let rows = stmt.query_map([], |r| {
            let hash: Vec<u8> = r.get(1)?;
            Ok((
                RepoPath::new(r.get::<_, String>(0)?),
                hash,
                Stat {
                    size: r.get::<_, i64>(2)? as u64,
                    mtime_ns: r.get(3)?,
                    ctime_ns: r.get(4)?,
                    inode: r.get::<_, i64>(5)? as u64,
                },
                r.get::<_, bool>(6)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (path, hash, stat, racy) = row?;
            // A hash of the wrong length can only come from outside tim; the
            // file is then simply hashed again.
            let Ok(hash) = <[u8; 32]>::try_from(hash.as_slice()) else {
                continue;
            };
            out.push((
                path,
                FileMeta {
                    stat,
                    hash: ContentHash(hash),
                    racy,
                },
            ));
        }
        Ok(out)
    }

    /// Commits one batch atomically. When any file's content changed (or a
    /// file appeared or vanished) the batch gets the next clock value, which
    /// is returned; a batch of stat-only updates keeps the clock.
    pub fn commit(&mut self, updates: &[FileUpdate]) -> Result<u64, StoreError> {
        if updates.is_empty() {
            return Ok(self.seq);
        }
        let bumps = updates.iter().any(|u| match u {
            FileUpdate::Upsert {
                content_changed, ..
            } => *content_changed,
            FileUpdate::Delete { .. } => true,
        });
        let seq = if bumps { self.seq + 1 } else { self.seq };
        let tx = self.conn.transaction()?;
        {
            let mut upsert = tx.prepare_cached(
                "INSERT INTO file (path, hash, size, mtime_ns, ctime_ns, inode, racy, created_seq, changed_seq)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?8)
                 ON CONFLICT (path) DO UPDATE SET
                   created_seq = CASE WHEN file.hash IS NULL THEN excluded.created_seq ELSE file.created_seq END,
                   changed_seq = CASE WHEN ?9 OR file.hash IS NULL THEN excluded.changed_seq ELSE file.changed_seq END,
                   hash = excluded.hash, size = excluded.size, mtime_ns = excluded.mtime_ns,
                   ctime_ns = excluded.ctime_ns, inode = excluded.inode, racy = excluded.racy",
            )?;
            let mut delete = tx.prepare_cached(
                "UPDATE file SET hash = NULL, changed_seq = ?2 WHERE path = ?1 AND hash IS NOT NULL",
            )?;
            for update in updates {
                match update {
                    FileUpdate::Upsert {
                        path,
                        meta,
                        content_changed,
                    } => {
                        upsert.execute(params![
                            path.as_str(),
                            &meta.hash.0[..],
                            meta.stat.size as i64,
                            meta.stat.mtime_ns,
                            meta.stat.ctime_ns,
                            meta.stat.inode as i64,
                            meta.racy,
                            seq as i64,
                            content_changed,
                        ])?;
                    }
                    FileUpdate::Delete { path } => {
                        delete.execute(params![path.as_str(), seq as i64])?;
                    }
                }
            }
            if bumps {
                tx.execute(
                    "INSERT INTO meta (key, value) VALUES ('seq', ?1)
                     ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                    [seq.to_string()],
                )?;
            }
        }
        tx.commit()?;
        self.seq = seq;
        Ok(seq)
    }

    /// Files whose content changed after clock `since`, in path order.
    pub fn changes_since(&self, since: u64) -> Result<Vec<(RepoPath, Change)>, StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT path, hash IS NULL, created_seq FROM file WHERE changed_seq > ?1 ORDER BY path",
        )?;
        let rows = stmt.query_map([since as i64], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, bool>(1)?,
                r.get::<_, i64>(2)? as u64,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (path, deleted, created) = row?;
            let change = match (deleted, created > since) {
                // Appeared and vanished again since then: no difference.
                (true, true) => continue,
                (true, false) => Change::Deleted,
                (false, true) => Change::Added,
                (false, false) => Change::Modified,
            };
            out.push((RepoPath::new(path), change));
        }
        Ok(out)
    }

    pub fn last_run(&self) -> Result<Option<RunRow>, StoreError> {
        Ok(self
            .conn
            .query_row(
                "SELECT id, started_at_ms, finished_at_ms, clock_seq, command FROM run ORDER BY id DESC LIMIT 1",
                [],
                |r| {
                    Ok(RunRow {
                        id: r.get::<_, i64>(0)? as u64,
                        started_at_ms: r.get::<_, i64>(1)? as u64,
                        finished_at_ms: r.get::<_, Option<i64>>(2)?.map(|v| v as u64),
                        clock_seq: r.get::<_, i64>(3)? as u64,
                        command: r.get(4)?,
                    })
                },
            )
            .optional()?)
    }

    /// The clock at which `path`'s content last changed (or it appeared or
    /// vanished); `None` for a path never seen.
    pub fn file_changed_seq(&self, path: &RepoPath) -> Result<Option<u64>, StoreError> {
        Ok(self
            .conn
            .prepare_cached("SELECT changed_seq FROM file WHERE path = ?1")?
            .query_row([path.as_str()], |r| r.get::<_, i64>(0))
            .optional()?
            .map(|v| v as u64))
    }

    /// Stores an environment snapshot (deduplicated); returns its id.
    pub fn intern_env(&mut self, env: &Snapshot) -> Result<i64, StoreError> {
        let data = encode_env(env).to_string();
        intern(&self.conn, "env", &data)
    }

    pub fn load_envs(&self) -> Result<Vec<(i64, Snapshot)>, StoreError> {
        self.load_interned("SELECT id, data FROM env", decode_env)
    }

    /// Every dependency set still referenced by a test, a collection or an
    /// import record.
    pub fn load_depsets(&self) -> Result<Vec<(i64, Vec<Dep>)>, StoreError> {
        self.load_interned(
            "SELECT id, data FROM depset WHERE id IN (SELECT depset_id FROM test UNION SELECT depset_id FROM collection
               UNION SELECT depset_id FROM module_import)",
            decode_deps,
        )
    }

    /// `(id, JSON data)` rows, decoded. An unreadable row is left out: what
    /// refers to it counts as unrecorded (its tests run).
    fn load_interned<T>(
        &self,
        query: &str,
        decode: impl Fn(&Value) -> Option<T>,
    ) -> Result<Vec<(i64, T)>, StoreError> {
        let mut stmt = self.conn.prepare(query)?;
        let rows = stmt.query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?)))?;
        let mut out = Vec::new();
        for row in rows {
            let (id, data) = row?;
            if let Some(item) = serde_json::from_str(&data).ok().and_then(|v| decode(&v)) {
                out.push((id, item));
            }
        }
        Ok(out)
    }

    pub fn load_tests(&self) -> Result<Vec<TestRow>, StoreError> {
        let mut stmt = self.conn.prepare(
            "SELECT node_id, file, outcome, setup_s, call_s, teardown_s, depset_id, env_id, run_id, deps_version, markers FROM test",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok(TestRow {
                node_id: r.get(0)?,
                file: RepoPath::new(r.get::<_, String>(1)?),
                outcome: r.get(2)?,
                durations: [r.get(3)?, r.get(4)?, r.get(5)?],
                depset: r.get(6)?,
                env: r.get(7)?,
                run: r.get::<_, i64>(8)? as u64,
                current_format: r.get::<_, i64>(9)? >= DEPS_VERSION,
                // Unreadable markers are no markers: the default budget.
                markers: serde_json::from_str(&r.get::<_, String>(10)?).unwrap_or_default(),
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// What each project module's import ran, as last recorded.
    pub fn load_imports(&self) -> Result<Vec<CollectionRow>, StoreError> {
        // Import records exist only in the current format.
        self.load_file_records(&format!(
            "SELECT file, depset_id, env_id, run_id, {DEPS_VERSION} FROM module_import"
        ))
    }

    pub fn load_collections(&self) -> Result<Vec<CollectionRow>, StoreError> {
        self.load_file_records(
            "SELECT file, depset_id, env_id, run_id, deps_version FROM collection",
        )
    }

    fn load_file_records(&self, query: &str) -> Result<Vec<CollectionRow>, StoreError> {
        let mut stmt = self.conn.prepare(query)?;
        let rows = stmt.query_map([], |r| {
            Ok(CollectionRow {
                file: RepoPath::new(r.get::<_, String>(0)?),
                depset: r.get(1)?,
                env: r.get(2)?,
                run: r.get::<_, i64>(3)? as u64,
                current_format: r.get::<_, i64>(4)? >= DEPS_VERSION,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Records the start of a test run at the current clock.
    pub fn begin_run(&mut self, run: &NewRun<'_>) -> Result<u64, StoreError> {
        self.conn.execute(
            "INSERT INTO run (started_at_ms, clock_seq, command, mode, env_id, known, git_commit)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![
                now_ms() as i64,
                self.seq as i64,
                run.command,
                run.mode,
                run.env,
                run.known as i64,
                run.git_commit
            ],
        )?;
        Ok(self.conn.last_insert_rowid() as u64)
    }

    /// Results from elsewhere (a JUnit report): a finished run of mode
    /// `import` with a history row per result (the whole duration as call
    /// time, no dependencies), each test trimmed to its `keep` newest.
    /// Returns the run's id.
    pub fn import_results(
        &mut self,
        source: &str,
        results: &[(&str, &str, f64)],
        keep: u32,
    ) -> Result<u64, StoreError> {
        let tx = self.conn.transaction()?;
        let now = now_ms() as i64;
        tx.execute(
            "INSERT INTO run (started_at_ms, finished_at_ms, clock_seq, command, mode, exit_status, selected)
             VALUES (?1, ?1, ?2, ?3, 'import', 0, ?4)",
            params![now, self.seq as i64, source, results.len() as i64],
        )?;
        let run = tx.last_insert_rowid();
        {
            let mut insert = tx.prepare_cached(
                "INSERT OR REPLACE INTO result (run_id, node_id, outcome, setup_s, call_s, teardown_s)
                 VALUES (?1, ?2, ?3, 0, ?4, 0)",
            )?;
            let mut trim = tx.prepare_cached(
                "DELETE FROM result WHERE node_id = ?1 AND run_id <
                   (SELECT run_id FROM result WHERE node_id = ?1 ORDER BY run_id DESC LIMIT 1 OFFSET ?2)",
            )?;
            for (id, outcome, seconds) in results {
                insert.execute(params![run, id, outcome, seconds])?;
                trim.execute(params![id, keep.max(1) - 1])?;
            }
        }
        tx.commit()?;
        Ok(run as u64)
    }

    /// How many tests a run selected (once its first process selected).
    pub fn set_run_selected(&mut self, run: u64, selected: u64) -> Result<(), StoreError> {
        self.conn.execute(
            "UPDATE run SET selected = ?2 WHERE id = ?1 AND selected IS NULL",
            params![run as i64, selected as i64],
        )?;
        Ok(())
    }

    /// A run as stored.
    pub fn run(&self, run: u64) -> Result<Option<RunInfo>, StoreError> {
        Ok(self
            .conn
            .query_row(
                "SELECT id, started_at_ms, finished_at_ms, command, mode, exit_status, selected, known, git_commit
                 FROM run WHERE id = ?1",
                [run as i64],
                |r| {
                    Ok(RunInfo {
                        id: r.get::<_, i64>(0)? as u64,
                        started_at_ms: r.get::<_, i64>(1)? as u64,
                        finished_at_ms: r.get::<_, Option<i64>>(2)?.map(|v| v as u64),
                        command: r.get(3)?,
                        mode: r.get(4)?,
                        exit_status: r.get(5)?,
                        selected: r.get::<_, Option<i64>>(6)?.map(|v| v as u64),
                        known: r.get::<_, Option<i64>>(7)?.map(|v| v as u64),
                        git_commit: r.get(8)?,
                    })
                },
            )
            .optional()?)
    }

    /// Every result kept, grouped by test and oldest first within a test,
    /// for statistics.
    pub fn all_results(&self) -> Result<Vec<ResultRow>, StoreError> {
        let mut stmt = self.conn.prepare(
            "SELECT node_id, run_id, outcome, setup_s + call_s + teardown_s, deps_digest FROM result
             ORDER BY node_id, run_id",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok(ResultRow {
                node_id: r.get(0)?,
                run: r.get::<_, i64>(1)? as u64,
                outcome: r.get(2)?,
                seconds: r.get(3)?,
                deps_digest: r.get(4)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The median duration in the history of every test without a record
    /// (known from imported results only).
    pub fn unrecorded_medians(&self) -> Result<Vec<(String, f64)>, StoreError> {
        let mut stmt = self.conn.prepare(
            "SELECT node_id, setup_s + call_s + teardown_s FROM result
             WHERE node_id NOT IN (SELECT node_id FROM test) ORDER BY node_id",
        )?;
        let rows: Vec<(String, f64)> = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<Result<_, _>>()?;
        let mut out = Vec::new();
        for group in rows.chunk_by(|a, b| a.0 == b.0) {
            let mut seconds: Vec<f64> = group.iter().map(|r| r.1).collect();
            seconds.sort_by(f64::total_cmp);
            out.push((group[0].0.clone(), seconds[seconds.len() / 2]));
        }
        Ok(out)
    }

    /// How many runs are recorded.
    pub fn run_count(&self) -> Result<u64, StoreError> {
        Ok(self
            .conn
            .query_row("SELECT count(*) FROM run", [], |r| r.get::<_, i64>(0))? as u64)
    }

    /// A test's history, newest first: (run, outcome, setup/call/teardown
    /// seconds).
    pub fn history(&self, node_id: &str) -> Result<Vec<HistoryRow>, StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT run_id, outcome, setup_s, call_s, teardown_s FROM result
             WHERE node_id = ?1 ORDER BY run_id DESC",
        )?;
        let rows = stmt.query_map([node_id], |r| {
            Ok(HistoryRow {
                run: r.get::<_, i64>(0)? as u64,
                outcome: r.get(1)?,
                durations: [r.get(2)?, r.get(3)?, r.get(4)?],
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    pub fn end_run(&mut self, run: u64, exit_status: i32) -> Result<(), StoreError> {
        self.conn.execute(
            "UPDATE run SET finished_at_ms = ?2, exit_status = ?3 WHERE id = ?1",
            params![run as i64, now_ms() as i64, exit_status],
        )?;
        Ok(())
    }

    /// The clock at which a run started.
    pub fn run_clock(&self, run: u64) -> Result<Option<u64>, StoreError> {
        Ok(self
            .conn
            .query_row(
                "SELECT clock_seq FROM run WHERE id = ?1",
                [run as i64],
                |r| r.get::<_, i64>(0),
            )
            .optional()?
            .map(|v| v as u64))
    }

    /// Stores a batch of results in one transaction: each test's latest
    /// record, its history row, the collection records and the import
    /// records. Dependency sets are interned; returns their ids in input
    /// order (tests, collections, imports).
    ///
    /// Each test keeps its `keep` newest history rows (at least one).
    pub fn record(
        &mut self,
        run: u64,
        env: i64,
        keep: u32,
        batch: &Batch<'_>,
    ) -> Result<BatchSets, StoreError> {
        let Batch {
            tests,
            collections,
            imports,
        } = batch;
        let tx = self.conn.transaction()?;
        let mut test_sets = Vec::with_capacity(tests.len());
        let mut collection_sets = Vec::with_capacity(collections.len());
        let mut import_sets = Vec::with_capacity(imports.len());
        {
            let mut import = tx.prepare_cached(
                "INSERT INTO module_import (file, depset_id, env_id, run_id) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (file) DO UPDATE SET depset_id = excluded.depset_id,
                   env_id = excluded.env_id, run_id = excluded.run_id",
            )?;
            for (file, deps) in imports.iter() {
                let set = intern(&tx, "depset", &encode_deps(deps).to_string())?;
                import.execute(params![file.as_str(), set, env, run as i64])?;
                import_sets.push(set);
            }
            let mut upsert = tx.prepare_cached(
                "INSERT INTO test (node_id, file, outcome, setup_s, call_s, teardown_s, depset_id, env_id, run_id, deps_version, markers)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)
                 ON CONFLICT (node_id) DO UPDATE SET file = excluded.file, outcome = excluded.outcome,
                   setup_s = excluded.setup_s, call_s = excluded.call_s, teardown_s = excluded.teardown_s,
                   depset_id = excluded.depset_id, env_id = excluded.env_id, run_id = excluded.run_id,
                   deps_version = excluded.deps_version, markers = excluded.markers",
            )?;
            let mut history = tx.prepare_cached(
                "INSERT OR REPLACE INTO result (run_id, node_id, outcome, setup_s, call_s, teardown_s, deps_digest)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )?;
            // Rows older than the `keep`-th newest; an index range per test.
            let mut trim = tx.prepare_cached(
                "DELETE FROM result WHERE node_id = ?1 AND run_id <
                   (SELECT run_id FROM result WHERE node_id = ?1 ORDER BY run_id DESC LIMIT 1 OFFSET ?2)",
            )?;
            for t in tests {
                let data = encode_deps(t.deps).to_string();
                let hash = blake3::hash(data.as_bytes());
                let digest = &hash.as_bytes()[..16];
                let set = intern(&tx, "depset", &data)?;
                upsert.execute(params![
                    t.node_id,
                    t.file.as_str(),
                    t.outcome,
                    t.durations[0],
                    t.durations[1],
                    t.durations[2],
                    set,
                    env,
                    run as i64,
                    DEPS_VERSION,
                    serde_json::to_string(t.markers).expect("strings serialize")
                ])?;
                history.execute(params![
                    run as i64,
                    t.node_id,
                    t.outcome,
                    t.durations[0],
                    t.durations[1],
                    t.durations[2],
                    digest
                ])?;
                trim.execute(params![t.node_id, keep.max(1) - 1])?;
                test_sets.push(set);
            }
            let mut collection = tx.prepare_cached(
                "INSERT INTO collection (file, depset_id, env_id, run_id, deps_version) VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (file) DO UPDATE SET depset_id = excluded.depset_id,
                   env_id = excluded.env_id, run_id = excluded.run_id, deps_version = excluded.deps_version",
            )?;
            for (file, deps) in collections.iter() {
                let set = intern(&tx, "depset", &encode_deps(deps).to_string())?;
                collection.execute(params![file.as_str(), set, env, run as i64, DEPS_VERSION])?;
                collection_sets.push(set);
            }
        }
        tx.commit()?;
        Ok(BatchSets {
            tests: test_sets,
            collections: collection_sets,
            imports: import_sets,
        })
    }

    /// Deletes dependency sets no test or collection refers to any more
    /// (replaced by newer records).
    pub fn drop_unused_depsets(&mut self) -> Result<usize, StoreError> {
        Ok(self.conn.execute(
            "DELETE FROM depset WHERE id NOT IN (SELECT depset_id FROM test UNION SELECT depset_id FROM collection
               UNION SELECT depset_id FROM module_import)",
            [],
        )?)
    }

    /// Forgets tests that no longer exist (and collection records of test
    /// files that are gone).
    pub fn forget(&mut self, tests: &[String], files: &[RepoPath]) -> Result<(), StoreError> {
        if tests.is_empty() && files.is_empty() {
            return Ok(());
        }
        let tx = self.conn.transaction()?;
        {
            let mut del = tx.prepare_cached("DELETE FROM test WHERE node_id = ?1")?;
            for t in tests {
                del.execute([t])?;
            }
            let mut del = tx.prepare_cached("DELETE FROM collection WHERE file = ?1")?;
            for f in files {
                del.execute([f.as_str()])?;
            }
            tx.execute(
                "DELETE FROM depset WHERE id NOT IN (SELECT depset_id FROM test UNION SELECT depset_id FROM collection
                   UNION SELECT depset_id FROM module_import)",
                [],
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Folds the write-ahead log into the database file, so that copying
    /// `tim.db` alone carries all the data, and closes the connection.
    pub fn close(self) -> Result<(), StoreError> {
        self.conn
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
        self.conn.close().map_err(|(_, e)| StoreError::Sqlite(e))
    }
}

/// The format of dependency records this tim writes. 2: tests and
/// collections expanded with what the imports they rely on ran.
pub const DEPS_VERSION: i64 = 2;

/// One `record` batch to store.
#[derive(Default)]
pub struct Batch<'a> {
    pub tests: Vec<NewTest<'a>>,
    pub collections: Vec<(RepoPath, &'a [Dep])>,
    pub imports: Vec<(RepoPath, &'a [Dep])>,
}

/// The interned dependency-set ids of a stored batch, in input order.
pub struct BatchSets {
    pub tests: Vec<i64>,
    pub collections: Vec<i64>,
    pub imports: Vec<i64>,
}

/// A test's latest record as stored.
#[derive(Clone, Debug)]
pub struct TestRow {
    pub node_id: String,
    pub file: RepoPath,
    pub outcome: String,
    /// setup, call, teardown seconds.
    pub durations: [f64; 3],
    pub depset: i64,
    pub env: i64,
    pub run: u64,
    /// Written in the [`DEPS_VERSION`] format (else: no usable record).
    pub current_format: bool,
    pub markers: Vec<String>,
}

#[derive(Clone, Debug)]
pub struct CollectionRow {
    pub file: RepoPath,
    pub depset: i64,
    pub env: i64,
    pub run: u64,
    pub current_format: bool,
}

/// A run to begin.
pub struct NewRun<'a> {
    pub command: &'a str,
    pub mode: &'a str,
    pub env: i64,
    /// Tests known when it began.
    pub known: u64,
    pub git_commit: Option<&'a str>,
}

/// A run as stored.
#[derive(Clone, Debug, PartialEq)]
pub struct RunInfo {
    pub id: u64,
    pub started_at_ms: u64,
    pub finished_at_ms: Option<u64>,
    pub command: String,
    pub mode: String,
    pub exit_status: Option<i32>,
    pub selected: Option<u64>,
    pub known: Option<u64>,
    pub git_commit: Option<String>,
}

/// One result kept, for statistics.
#[derive(Clone, Debug, PartialEq)]
pub struct ResultRow {
    pub node_id: String,
    pub run: u64,
    pub outcome: String,
    /// setup + call + teardown.
    pub seconds: f64,
    /// Which dependencies it ran with (`None`: recorded before tim kept it).
    pub deps_digest: Option<Vec<u8>>,
}

/// One past result of a test.
#[derive(Clone, Debug, PartialEq)]
pub struct HistoryRow {
    pub run: u64,
    pub outcome: String,
    /// setup, call, teardown seconds.
    pub durations: [f64; 3],
}

/// A result to record.
pub struct NewTest<'a> {
    pub node_id: &'a str,
    pub file: &'a RepoPath,
    pub outcome: &'a str,
    pub durations: [f64; 3],
    pub deps: &'a [Dep],
    pub markers: &'a [String],
}

/// Inserts `data` into `table` (`env` or `depset`) unless present; its id.
fn intern(conn: &Connection, table: &str, data: &str) -> Result<i64, StoreError> {
    let digest = blake3::hash(data.as_bytes());
    let digest = &digest.as_bytes()[..16];
    conn.prepare_cached(&format!(
        "INSERT INTO {table} (digest, data) VALUES (?1, ?2) ON CONFLICT (digest) DO NOTHING"
    ))?
    .execute(params![digest, data])?;
    Ok(conn
        .prepare_cached(&format!("SELECT id FROM {table} WHERE digest = ?1"))?
        .query_row([digest], |r| r.get(0))?)
}

fn hex(hash: &Option<ContentHash>) -> Value {
    hash.map_or(Value::Null, |h| Value::String(h.to_hex()))
}

fn unhex(value: &Value) -> Option<Option<ContentHash>> {
    match value {
        Value::Null => Some(None),
        Value::String(s) => ContentHash::from_hex(s).map(Some),
        _ => None,
    }
}

/// One entry of the artifact cache's index.
#[derive(Clone, Debug, PartialEq)]
pub struct CacheRow {
    pub key: String,
    pub fixture: String,
    /// blake3 hex of the artifact.
    pub blob: String,
    pub size: u64,
    pub serializer: String,
    /// `None`: depends on its inputs only. `Some(None)`: unreadable (an
    /// entry of another tim), treated as invalid.
    pub deps: Option<Option<Vec<Dep>>>,
    pub env: Option<i64>,
    pub produce_seconds: f64,
    pub created_ms: u64,
    pub used_ms: u64,
    pub hits: u64,
}

/// Per-fixture counters of the artifact cache.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CacheCounters {
    pub fixture: String,
    pub hits: u64,
    pub misses: u64,
    pub saved_seconds: f64,
}

const CACHE_COLUMNS: &str =
    "key, fixture, blob, size, serializer, deps, env_id, produce_s, created_ms, used_ms, hits";

fn cache_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<CacheRow> {
    let deps: Option<String> = r.get(5)?;
    Ok(CacheRow {
        key: r.get(0)?,
        fixture: r.get(1)?,
        blob: r.get(2)?,
        size: r.get::<_, i64>(3)? as u64,
        serializer: r.get(4)?,
        deps: deps.map(|text| {
            serde_json::from_str::<Value>(&text)
                .ok()
                .and_then(|v| decode_deps(&v))
        }),
        env: r.get(6)?,
        produce_seconds: r.get(7)?,
        created_ms: r.get::<_, i64>(8)? as u64,
        used_ms: r.get::<_, i64>(9)? as u64,
        hits: r.get::<_, i64>(10)? as u64,
    })
}

impl Store {
    pub fn cache_entry(&self, key: &str) -> Result<Option<CacheRow>, StoreError> {
        let mut stmt = self.conn.prepare_cached(&format!(
            "SELECT {CACHE_COLUMNS} FROM cache_entry WHERE key = ?1"
        ))?;
        Ok(stmt.query_row([key], cache_row).optional()?)
    }

    /// (key, blob, size) of every entry, least recently used first: what
    /// eviction and the adapter's artifact map need, without decoding any
    /// dependencies.
    pub fn cache_slots(&self) -> Result<Vec<(String, String, u64)>, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT key, blob, size FROM cache_entry ORDER BY used_ms, key")?;
        let rows = stmt.query_map([], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get::<_, i64>(2)? as u64))
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Every entry, least recently used first.
    pub fn cache_entries(&self) -> Result<Vec<CacheRow>, StoreError> {
        let mut stmt = self.conn.prepare(&format!(
            "SELECT {CACHE_COLUMNS} FROM cache_entry ORDER BY used_ms, key"
        ))?;
        let rows = stmt.query_map([], cache_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Stores (or replaces) an entry; `miss`: counts the miss that
    /// produced it.
    pub fn cache_put(&mut self, row: &CacheRow, miss: bool) -> Result<(), StoreError> {
        let deps = row
            .deps
            .as_ref()
            .map(|d| encode_deps(d.as_deref().unwrap_or(&[])).to_string());
        let tx = self.conn.transaction()?;
        tx.execute(
            &format!(
                "INSERT OR REPLACE INTO cache_entry ({CACHE_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, 0)"
            ),
            params![
                row.key,
                row.fixture,
                row.blob,
                row.size as i64,
                row.serializer,
                deps,
                row.env,
                row.produce_seconds,
                row.created_ms as i64,
                row.used_ms as i64,
            ],
        )?;
        let misses = i64::from(miss);
        tx.execute(
            "INSERT INTO cache_fixture (fixture, misses) VALUES (?1, ?2)
             ON CONFLICT (fixture) DO UPDATE SET misses = misses + ?2",
            params![row.fixture, misses],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// Counts a hit: the entry was used now, sparing its producing time.
    pub fn cache_hit(&mut self, key: &str, fixture: &str, saved: f64) -> Result<(), StoreError> {
        let tx = self.conn.transaction()?;
        tx.execute(
            "UPDATE cache_entry SET hits = hits + 1, used_ms = ?2 WHERE key = ?1",
            params![key, now_ms() as i64],
        )?;
        tx.execute(
            "INSERT INTO cache_fixture (fixture, hits, saved_s) VALUES (?1, 1, ?2)
             ON CONFLICT (fixture) DO UPDATE SET hits = hits + 1, saved_s = saved_s + ?2",
            params![fixture, saved],
        )?;
        tx.commit()?;
        Ok(())
    }

    pub fn cache_remove(&mut self, keys: &[String]) -> Result<(), StoreError> {
        let tx = self.conn.transaction()?;
        {
            let mut del = tx.prepare_cached("DELETE FROM cache_entry WHERE key = ?1")?;
            for key in keys {
                del.execute([key])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Whether another entry still uses the blob `blob`.
    pub fn cache_blob_used(&self, blob: &str) -> Result<bool, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT 1 FROM cache_entry WHERE blob = ?1 LIMIT 1")?;
        Ok(stmt.exists([blob])?)
    }

    pub fn cache_counters(&self) -> Result<Vec<CacheCounters>, StoreError> {
        let mut stmt = self
            .conn
            .prepare("SELECT fixture, hits, misses, saved_s FROM cache_fixture ORDER BY fixture")?;
        let rows = stmt.query_map([], |r| {
            Ok(CacheCounters {
                fixture: r.get(0)?,
                hits: r.get::<_, i64>(1)? as u64,
                misses: r.get::<_, i64>(2)? as u64,
                saved_seconds: r.get(3)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Forgets the per-fixture counters (`tim cache clear`).
    pub fn cache_clear_counters(&mut self) -> Result<(), StoreError> {
        self.conn.execute("DELETE FROM cache_fixture", [])?;
        Ok(())
    }
}

/// Dependency sets are stored as JSON arrays of short tagged arrays:
/// `["c", file, file_hash, block, hash]`, `["f", path, hash]`,
/// `["d", path, hash]`, `["g", path, hash]`, `["x", module]`, `["i", why]`,
/// `["a", cache key, artifact digest]`. Readable with `sqlite3` when
/// debugging; compact enough.
pub(crate) fn encode_deps(deps: &[Dep]) -> Value {
    Value::Array(
        deps.iter()
            .map(|d| match d {
                Dep::Code {
                    file,
                    file_hash,
                    block,
                    hash,
                } => json!(["c", file.as_str(), hex(file_hash), block, hex(hash)]),
                Dep::File { path, hash } => json!(["f", path.as_str(), hex(hash)]),
                Dep::Dir { path, hash } => json!(["d", path.as_str(), hex(hash)]),
                Dep::Config { path, hash } => json!(["g", path.as_str(), hex(hash)]),
                Dep::External { module } => json!(["x", module]),
                Dep::Incomplete { why } => json!(["i", why]),
                Dep::Artifact { key, blob } => json!(["a", key, blob]),
                Dep::Lock {
                    lock,
                    package,
                    hash,
                } => json!(["l", lock.as_str(), package, hex(hash)]),
                Dep::EnvVar { name, hash } => json!(["e", name, hex(hash)]),
            })
            .collect(),
    )
}

pub(crate) fn decode_deps(value: &Value) -> Option<Vec<Dep>> {
    let mut out = Vec::new();
    for item in value.as_array()? {
        let a = item.as_array()?;
        let text = |i: usize| a.get(i).and_then(Value::as_str).map(str::to_owned);
        out.push(match a.first()?.as_str()? {
            "c" => Dep::Code {
                file: RepoPath::new(text(1)?),
                file_hash: unhex(a.get(2)?)?,
                block: text(3),
                hash: unhex(a.get(4)?)?,
            },
            "f" => Dep::File {
                path: RepoPath::new(text(1)?),
                hash: unhex(a.get(2)?)?,
            },
            "d" => Dep::Dir {
                path: RepoPath::new(text(1)?),
                hash: unhex(a.get(2)?)?,
            },
            "g" => Dep::Config {
                path: RepoPath::new(text(1)?),
                hash: unhex(a.get(2)?)?,
            },
            "x" => Dep::External { module: text(1)? },
            "i" => Dep::Incomplete { why: text(1)? },
            "a" => Dep::Artifact {
                key: text(1)?,
                blob: text(2)?,
            },
            "l" => Dep::Lock {
                lock: RepoPath::new(text(1)?),
                package: text(2)?,
                hash: unhex(a.get(3)?)?,
            },
            "e" => Dep::EnvVar {
                name: text(1)?,
                hash: unhex(a.get(2)?)?,
            },
            _ => return None,
        });
    }
    Some(out)
}

fn encode_env(env: &Snapshot) -> Value {
    let dists: serde_json::Map<String, Value> = env
        .dists
        .iter()
        .map(|(name, d)| {
            (
                name.clone(),
                json!({"version": d.version, "top_level": d.top_level, "requires": d.requires, "affects_all": d.affects_all}),
            )
        })
        .collect();
    json!({
        "python": env.python, "version": env.version, "implementation": env.implementation,
        "site_dirs": env.site_dirs, "root_paths": env.root_paths, "dists": dists,
        "python_files": env.python_files, "testpaths": env.testpaths,
    })
}

fn decode_env(value: &Value) -> Option<Snapshot> {
    let strings = |v: &Value| -> Option<Vec<String>> {
        v.as_array()?
            .iter()
            .map(|s| s.as_str().map(str::to_owned))
            .collect()
    };
    let text = |k: &str| {
        value
            .get(k)
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned()
    };
    let mut dists = std::collections::BTreeMap::new();
    for (name, d) in value.get("dists")?.as_object()? {
        dists.insert(
            name.clone(),
            Dist {
                version: d.get("version")?.as_str()?.to_owned(),
                top_level: strings(d.get("top_level")?)?,
                requires: strings(d.get("requires")?)?,
                affects_all: d.get("affects_all")?.as_bool()?,
            },
        );
    }
    Some(Snapshot {
        python: text("python"),
        version: text("version"),
        implementation: text("implementation"),
        site_dirs: strings(value.get("site_dirs")?)?,
        root_paths: strings(value.get("root_paths")?)?,
        dists,
        python_files: value
            .get("python_files")
            .and_then(strings)
            .unwrap_or_default(),
        testpaths: value.get("testpaths").and_then(strings).unwrap_or_default(),
    })
}

fn new_instance_id() -> String {
    use std::hash::{BuildHasher, Hasher};
    // RandomState is seeded from the OS; mixing in time and pid keeps two
    // databases created in the same process apart.
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.write_u32(std::process::id());
    format!("{:016x}", h.finish())
}

/// Renames `tim.db` (and its `-wal`/`-shm` companions) to
/// `tim.db.corrupt-<unix seconds>`; returns the new path of the database.
fn move_aside(path: &Path) -> Result<PathBuf, StoreError> {
    let stamp = now_ms() / 1000;
    let mut target = PathBuf::from(format!("{}.corrupt-{stamp}", path.display()));
    let mut n = 1;
    while target.exists() {
        target = PathBuf::from(format!("{}.corrupt-{stamp}-{n}", path.display()));
        n += 1;
    }
    for suffix in ["", "-wal", "-shm"] {
        let from = PathBuf::from(format!("{}{suffix}", path.display()));
        let to = PathBuf::from(format!("{}{suffix}", target.display()));
        match std::fs::rename(&from, &to) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !suffix.is_empty() => {}
            Err(source) => {
                return Err(StoreError::MoveAside { path: from, source });
            }
        }
    }
    Ok(target)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(byte: u8) -> FileMeta {
        FileMeta {
            stat: Stat {
                size: byte as u64,
                ..Stat::default()
            },
            hash: ContentHash([byte; 32]),
            racy: false,
        }
    }

    fn upsert(path: &str, byte: u8, content_changed: bool) -> FileUpdate {
        FileUpdate::Upsert {
            path: RepoPath::new(path),
            meta: meta(byte),
            content_changed,
        }
    }

    fn changes(store: &Store, since: u64) -> Vec<(String, Change)> {
        store
            .changes_since(since)
            .unwrap()
            .into_iter()
            .map(|(p, c)| (p.to_string(), c))
            .collect()
    }

    #[test]
    fn clocks_classify_changes() {
        let dir = tempfile::tempdir().unwrap();
        let (mut store, warnings) = Store::open(&dir.path().join("tim.db")).unwrap();
        assert!(warnings.is_empty());
        let s1 = store
            .commit(&[upsert("a.py", 1, true), upsert("b.py", 2, true)])
            .unwrap();
        assert_eq!(s1, 1);
        // Stat-only: no new clock, nothing reported.
        assert_eq!(store.commit(&[upsert("a.py", 1, false)]).unwrap(), 1);
        assert!(changes(&store, s1).is_empty());
        let s2 = store
            .commit(&[
                upsert("a.py", 3, true),
                FileUpdate::Delete {
                    path: RepoPath::new("b.py"),
                },
                upsert("c.py", 4, true),
            ])
            .unwrap();
        assert_eq!(s2, 2);
        assert_eq!(
            changes(&store, s1),
            [
                ("a.py".into(), Change::Modified),
                ("b.py".into(), Change::Deleted),
                ("c.py".into(), Change::Added)
            ]
        );
        // Created and deleted after the clock: not a difference.
        store
            .commit(&[FileUpdate::Delete {
                path: RepoPath::new("c.py"),
            }])
            .unwrap();
        assert_eq!(
            changes(&store, s1),
            [
                ("a.py".into(), Change::Modified),
                ("b.py".into(), Change::Deleted)
            ]
        );
        let live: Vec<_> = store
            .load_files()
            .unwrap()
            .into_iter()
            .map(|(p, _)| p.to_string())
            .collect();
        assert_eq!(live, ["a.py"]);
    }

    #[test]
    fn records_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let (mut store, _) = Store::open(&dir.path().join("tim.db")).unwrap();
        let mut env = Snapshot {
            python: "/v/bin/python".into(),
            version: "3.11.7".into(),
            ..Snapshot::default()
        };
        env.dists.insert(
            "attrs".into(),
            Dist {
                version: "23.1".into(),
                top_level: vec!["attr".into()],
                requires: vec![],
                affects_all: false,
            },
        );
        let env_id = store.intern_env(&env).unwrap();
        assert_eq!(store.intern_env(&env).unwrap(), env_id, "deduplicated");
        let run = store.begin_run(&new_run(env_id)).unwrap();
        let deps = vec![
            Dep::Code {
                file: RepoPath::new("m.py"),
                file_hash: Some(ContentHash([1; 32])),
                block: Some("f".into()),
                hash: None,
            },
            Dep::File {
                path: RepoPath::new("d.json"),
                hash: Some(ContentHash([2; 32])),
            },
            Dep::Dir {
                path: RepoPath::new("cases"),
                hash: None,
            },
            Dep::Config {
                path: RepoPath::new("pyproject.toml"),
                hash: Some(ContentHash([3; 32])),
            },
            Dep::External {
                module: "attr".into(),
            },
            Dep::Lock {
                lock: RepoPath::new("Cargo.lock"),
                package: "itoa".into(),
                hash: Some(ContentHash([4; 32])),
            },
            Dep::EnvVar {
                name: "CORE_FACTOR".into(),
                hash: None,
            },
        ];
        let file = RepoPath::new("tests/test_m.py");
        let tests = vec![
            NewTest {
                node_id: "tests/test_m.py::test_a",
                file: &file,
                outcome: "passed",
                durations: [0.1, 0.2, 0.3],
                deps: &deps,
                markers: &[],
            },
            NewTest {
                node_id: "tests/test_m.py::test_b",
                file: &file,
                outcome: "failed",
                durations: [0.0, 1.0, 0.0],
                deps: &deps,
                markers: &[],
            },
        ];
        let module = RepoPath::new("m.py");
        let batch = Batch {
            tests,
            collections: vec![(file.clone(), &deps[..1])],
            imports: vec![(module.clone(), &deps[..2])],
        };
        let sets = store.record(run, env_id, 50, &batch).unwrap();
        assert_eq!(
            sets.tests[0], sets.tests[1],
            "identical sets are stored once"
        );
        let imports = store.load_imports().unwrap();
        assert_eq!(imports.len(), 1);
        assert_eq!(
            (&imports[0].file, imports[0].depset),
            (&module, sets.imports[0])
        );
        assert!(store.load_tests().unwrap().iter().all(|t| t.current_format));
        store.end_run(run, 1).unwrap();
        let loaded = store.load_tests().unwrap();
        assert_eq!(loaded.len(), 2);
        assert_eq!(store.load_envs().unwrap(), vec![(env_id, env)]);
        let sets = store.load_depsets().unwrap();
        assert_eq!(sets.len(), 3, "the tests', the collection's, the import's");
        assert!(sets.iter().any(|(_, d)| *d == deps));
        assert_eq!(store.load_collections().unwrap().len(), 1);
        store
            .forget(
                &["tests/test_m.py::test_a".into()],
                std::slice::from_ref(&file),
            )
            .unwrap();
        assert_eq!(store.load_tests().unwrap().len(), 1);
        assert_eq!(
            store.load_depsets().unwrap().len(),
            2,
            "unreferenced sets are dropped (the collection's); the test's and the import's stay"
        );
    }

    fn new_run(env: i64) -> NewRun<'static> {
        NewRun {
            command: "pytest",
            mode: "all",
            env,
            known: 0,
            git_commit: None,
        }
    }

    /// Each test keeps its newest `keep` results, whatever the order in
    /// which tests come and go; runs keep what they were.
    #[test]
    fn history_grows_to_its_bound_then_keeps_the_newest() {
        let dir = tempfile::tempdir().unwrap();
        let (mut store, _) = Store::open(&dir.path().join("tim.db")).unwrap();
        let env = store.intern_env(&Snapshot::default()).unwrap();
        let file = RepoPath::new("t.py");
        let test = |id: &'static str, secs: f64| NewTest {
            node_id: id,
            file: &file,
            outcome: "passed",
            durations: [0.0, secs, 0.0],
            deps: &[],
            markers: &[],
        };
        let mut runs = Vec::new();
        for i in 0..7 {
            let run = store
                .begin_run(&NewRun {
                    command: "tim run",
                    mode: "affected",
                    env,
                    known: 2,
                    git_commit: Some("0123456789abcdef0123456789abcdef01234567"),
                })
                .unwrap();
            // `a` runs every time, `b` every other time.
            let mut batch = vec![test("t.py::a", f64::from(i))];
            if i % 2 == 0 {
                batch.push(test("t.py::b", f64::from(i)));
            }
            store.set_run_selected(run, batch.len() as u64).unwrap();
            store.set_run_selected(run, 99).unwrap(); // a later worker: ignored
            let batch = Batch {
                tests: batch,
                ..Batch::default()
            };
            store.record(run, env, 3, &batch).unwrap();
            store.end_run(run, 0).unwrap();
            runs.push(run);
        }
        let calls = |id| -> Vec<f64> {
            store
                .history(id)
                .unwrap()
                .iter()
                .map(|h| h.durations[1])
                .collect()
        };
        assert_eq!(calls("t.py::a"), [6.0, 5.0, 4.0]);
        assert_eq!(calls("t.py::b"), [6.0, 4.0, 2.0]);
        let first = store.run(runs[0]).unwrap().unwrap();
        assert_eq!(first.selected, Some(2));
        assert_eq!(first.known, Some(2));
        assert_eq!(first.exit_status, Some(0));
        assert!(first.finished_at_ms.is_some());
        assert_eq!(
            first.git_commit.as_deref(),
            Some("0123456789abcdef0123456789abcdef01234567")
        );
        assert_eq!(store.run(runs[1]).unwrap().unwrap().selected, Some(1));
        assert_eq!(store.run(999).unwrap(), None);
    }

    #[test]
    fn reopen_keeps_instance_and_clock() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tim.db");
        let (mut store, _) = Store::open(&path).unwrap();
        store.commit(&[upsert("a.py", 1, true)]).unwrap();
        let instance = store.instance().to_owned();
        store.close().unwrap();
        assert!(
            !dir.path().join("tim.db-wal").exists()
                || std::fs::metadata(dir.path().join("tim.db-wal"))
                    .unwrap()
                    .len()
                    == 0
        );
        let (store, _) = Store::open(&path).unwrap();
        assert_eq!(store.instance(), instance);
        assert_eq!(store.seq(), 1);
        assert_eq!(store.load_files().unwrap().len(), 1);
    }

    #[test]
    fn newer_schema_is_refused_and_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tim.db");
        let conn = Connection::open(&path).unwrap();
        conn.pragma_update(None, "user_version", schema_version() + 1)
            .unwrap();
        drop(conn);
        let err = Store::open(&path).err().unwrap();
        assert!(matches!(err, StoreError::NewerSchema { .. }), "{err}");
        assert!(err.to_string().contains("newer tim"), "{err}");
        assert!(path.exists());
    }

    #[test]
    fn corrupt_database_is_moved_aside_and_rebuilt() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tim.db");
        std::fs::write(
            &path,
            b"this is not a database, it is a shopping list\n".repeat(200),
        )
        .unwrap();
        let (store, warnings) = Store::open(&path).unwrap();
        assert_eq!(warnings.len(), 1);
        assert!(warnings[0].contains("corrupt"), "{}", warnings[0]);
        assert_eq!(store.seq(), 0);
        let moved: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("tim.db.corrupt-"))
            .collect();
        assert_eq!(moved.len(), 1, "{moved:?}");
        assert!(
            std::fs::read(dir.path().join(&moved[0]))
                .unwrap()
                .starts_with(b"this is not a database")
        );
    }
}
