-- Schema 4: what each project module's import ran, and the format of each
-- record's dependencies.

-- Per project module: the code its import ran (module level, and every
-- function called from there). A test that imports the module depends on
-- it, whichever test file happened to import the module first.
CREATE TABLE module_import (
    file      TEXT PRIMARY KEY NOT NULL,
    depset_id INTEGER NOT NULL REFERENCES depset (id),
    env_id    INTEGER NOT NULL REFERENCES env (id),
    run_id    INTEGER NOT NULL REFERENCES run (id)
) WITHOUT ROWID;

-- Records made before import records existed (version 1) lack what the
-- imports they rely on ran: the daemon treats them as no usable record.
ALTER TABLE test ADD COLUMN deps_version INTEGER NOT NULL DEFAULT 1;
ALTER TABLE collection ADD COLUMN deps_version INTEGER NOT NULL DEFAULT 1;
