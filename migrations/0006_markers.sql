-- Schema 6: each test's marker names (JSON list), for time budgets by marker.
ALTER TABLE test ADD COLUMN markers TEXT NOT NULL DEFAULT '[]';
