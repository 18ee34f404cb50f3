-- Schema 2: test runs, per-test records and their dependencies.

-- The Python environments runs used (interpreter, distributions), as JSON,
-- deduplicated by digest.
CREATE TABLE env (
    id     INTEGER PRIMARY KEY,
    digest BLOB NOT NULL UNIQUE,
    data   TEXT NOT NULL
);

-- Dependency sets with the hashes they had when recorded, as JSON,
-- deduplicated by digest: parametrized tests and tests of one file often
-- share one.
CREATE TABLE depset (
    id     INTEGER PRIMARY KEY,
    digest BLOB NOT NULL UNIQUE,
    data   TEXT NOT NULL
);

ALTER TABLE run ADD COLUMN mode TEXT NOT NULL DEFAULT '';
ALTER TABLE run ADD COLUMN exit_status INTEGER;
ALTER TABLE run ADD COLUMN env_id INTEGER REFERENCES env (id);

-- The latest record of every known test.
CREATE TABLE test (
    node_id    TEXT PRIMARY KEY NOT NULL,     -- pytest node id
    file       TEXT NOT NULL,                 -- root-relative test file
    outcome    TEXT NOT NULL,                 -- passed, failed, error, skipped, xfailed, xpassed
    setup_s    REAL NOT NULL DEFAULT 0,
    call_s     REAL NOT NULL DEFAULT 0,
    teardown_s REAL NOT NULL DEFAULT 0,
    depset_id  INTEGER NOT NULL REFERENCES depset (id),
    env_id     INTEGER NOT NULL REFERENCES env (id),
    run_id     INTEGER NOT NULL REFERENCES run (id)
) WITHOUT ROWID;

CREATE INDEX test_by_file ON test (file);

-- What collecting (importing) each test file depended on: dependencies of
-- every test in that file.
CREATE TABLE collection (
    file      TEXT PRIMARY KEY NOT NULL,
    depset_id INTEGER NOT NULL REFERENCES depset (id),
    env_id    INTEGER NOT NULL REFERENCES env (id),
    run_id    INTEGER NOT NULL REFERENCES run (id)
) WITHOUT ROWID;

-- Every result of every run: the timing and outcome history.
CREATE TABLE result (
    run_id     INTEGER NOT NULL REFERENCES run (id),
    node_id    TEXT NOT NULL,
    outcome    TEXT NOT NULL,
    setup_s    REAL NOT NULL DEFAULT 0,
    call_s     REAL NOT NULL DEFAULT 0,
    teardown_s REAL NOT NULL DEFAULT 0,
    PRIMARY KEY (run_id, node_id)
) WITHOUT ROWID;

CREATE INDEX result_by_test ON result (node_id, run_id);
