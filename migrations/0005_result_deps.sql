-- Schema 5: each result remembers which dependencies it ran with (the
-- digest of its dependency set), so a changed outcome with unchanged
-- dependencies shows as flaky. Null for results recorded before.
ALTER TABLE result ADD COLUMN deps_digest BLOB;
