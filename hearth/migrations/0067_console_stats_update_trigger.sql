-- The console's feature stats (0066): an UPDATE of feature_snapshots captures only its new rows.
--
-- A backfill rewrites users x as_ofs in one upsert (features/snapshots/store.py): every
-- conflicting row is an UPDATE, and 0066's statement trigger kept both its old and its new rows
-- (each ~1.7 kB of packed vectors, migration 0055) in transition tables only to read their
-- (feature_set_version, as_of): about 15 % more time for the statement. The new rows name the
-- dates an UPDATE wrote; the old ones differ only when an UPDATE moves a snapshot to another
-- date or version, which a row trigger filtered by WHEN (evaluated without calling a function,
-- queued for no other row) catches. Every write still deletes the stats of each date it
-- touched, in its own transaction.

DROP TRIGGER feature_snapshots_console_updated ON feature_snapshots;
DROP FUNCTION hearth_console_feature_stats_replaced();

CREATE TRIGGER feature_snapshots_console_updated AFTER UPDATE ON feature_snapshots
    REFERENCING NEW TABLE AS written_rows
    FOR EACH STATEMENT EXECUTE FUNCTION hearth_console_feature_stats_written();

CREATE FUNCTION hearth_console_feature_stats_moved() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM console_feature_stats
     WHERE feature_set_version = OLD.feature_set_version AND as_of = OLD.as_of;
    RETURN NULL;
END $$;

CREATE TRIGGER feature_snapshots_console_moved AFTER UPDATE OF as_of, feature_set_version
    ON feature_snapshots FOR EACH ROW
    WHEN (OLD.as_of IS DISTINCT FROM NEW.as_of
          OR OLD.feature_set_version IS DISTINCT FROM NEW.feature_set_version)
    EXECUTE FUNCTION hearth_console_feature_stats_moved();
