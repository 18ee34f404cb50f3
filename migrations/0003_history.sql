-- Schema 3: what each run was, and a bounded history per test.

-- How many of the collected tests the run was to run (null until its first
-- pytest process collected), how many tests were known when it began, and
-- the git commit checked out then (null outside a git repository).
ALTER TABLE run ADD COLUMN selected INTEGER;
ALTER TABLE run ADD COLUMN known INTEGER;
ALTER TABLE run ADD COLUMN git_commit TEXT;
