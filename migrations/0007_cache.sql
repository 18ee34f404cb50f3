-- Schema 7: the fixture artifact cache. One entry per key (a fixture and
-- its inputs); the artifact itself is a file under .tim/cache/blobs/ named
-- by its blake3 hash.
CREATE TABLE cache_entry (
    key        TEXT PRIMARY KEY,
    fixture    TEXT NOT NULL,
    blob       TEXT NOT NULL,
    size       INTEGER NOT NULL,
    serializer TEXT NOT NULL,
    -- What producing it ran and read (encoded like a depset), or NULL for
    -- an entry that depends on its inputs only.
    deps       TEXT,
    env_id     INTEGER REFERENCES env (id),
    produce_s  REAL NOT NULL,
    created_ms INTEGER NOT NULL,
    used_ms    INTEGER NOT NULL,
    hits       INTEGER NOT NULL DEFAULT 0
);

-- Counters per fixture, kept when its entries are replaced or evicted.
CREATE TABLE cache_fixture (
    fixture TEXT PRIMARY KEY,
    hits    INTEGER NOT NULL DEFAULT 0,
    misses  INTEGER NOT NULL DEFAULT 0,
    saved_s REAL NOT NULL DEFAULT 0
);
