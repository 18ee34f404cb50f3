-- tim's store, schema 1.
-- Paths are root-relative and '/'-separated. Sequence numbers ("seq") are
-- the daemon's logical clock: every batch of observed changes gets the next
-- one, so "what changed since clock N" is a range query.

-- Facts about this database: `instance` (a random id that makes clocks from
-- another database recognisable) and `seq` (the last clock value handed out).
CREATE TABLE meta (
    key   TEXT PRIMARY KEY NOT NULL,
    value TEXT NOT NULL
) WITHOUT ROWID;

-- Every file the watcher tracks, and tombstones of deleted ones.
CREATE TABLE file (
    path        TEXT PRIMARY KEY NOT NULL,
    hash        BLOB,                       -- blake3 of the content; NULL = deleted
    size        INTEGER NOT NULL DEFAULT 0,
    mtime_ns    INTEGER NOT NULL DEFAULT 0,
    ctime_ns    INTEGER NOT NULL DEFAULT 0,
    inode       INTEGER NOT NULL DEFAULT 0,
    racy        INTEGER NOT NULL DEFAULT 0, -- stat taken too close to a write to be trusted
    created_seq INTEGER NOT NULL,           -- since when the file exists
    changed_seq INTEGER NOT NULL            -- last content change, creation or deletion
) WITHOUT ROWID;

CREATE INDEX file_by_changed_seq ON file (changed_seq);

-- Recorded test runs. Later schemas add per-test results.
CREATE TABLE run (
    id             INTEGER PRIMARY KEY,
    started_at_ms  INTEGER NOT NULL,
    finished_at_ms INTEGER,
    clock_seq      INTEGER NOT NULL,        -- the clock when the run started
    command        TEXT NOT NULL DEFAULT ''
);
