-- The console's Features page (issue 19): per feature-set version, snapshot date and feature,
-- what the page shows — cells, non-null cells, summed coverage, and the non-null values sorted
-- (the population PSI is computed from) — so the page reads a few rows per feature instead of
-- expanding every snapshot of two dates. `features rollup` computes the stats of a date that
-- has none (features/service/console/summary.py).
--
-- Never stale: every write to feature_snapshots — materialisation, the withdrawal purge that
-- nulls a category's cells, erasure, a cascade from users — deletes the stats of the dates it
-- touched, in its own transaction (the triggers below). A date without stats is shown from
-- the snapshots themselves until the next refresh computes them again. No user or device:
-- distributions of a date, gone with the cells they came from.
CREATE TABLE console_feature_stats (
    feature_set_version  text NOT NULL,
    as_of                timestamptz NOT NULL,
    feature              text NOT NULL,
    cells                integer NOT NULL,            -- snapshots of the date holding the feature
    non_null             integer NOT NULL,
    coverage_sum         double precision NOT NULL,
    sorted_values        bytea NOT NULL,              -- the non-null values, float64 LE, ascending
    computed_at          timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (feature_set_version, as_of, feature)
);

CREATE FUNCTION hearth_console_feature_stats_written() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM console_feature_stats c
     USING (SELECT DISTINCT feature_set_version, as_of FROM written_rows) w
     WHERE c.feature_set_version = w.feature_set_version AND c.as_of = w.as_of;
    RETURN NULL;
END $$;

CREATE FUNCTION hearth_console_feature_stats_replaced() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM console_feature_stats c
     USING (SELECT feature_set_version, as_of FROM old_rows
            UNION SELECT feature_set_version, as_of FROM new_rows) w
     WHERE c.feature_set_version = w.feature_set_version AND c.as_of = w.as_of;
    RETURN NULL;
END $$;

CREATE TRIGGER feature_snapshots_console_inserted AFTER INSERT ON feature_snapshots
    REFERENCING NEW TABLE AS written_rows
    FOR EACH STATEMENT EXECUTE FUNCTION hearth_console_feature_stats_written();
CREATE TRIGGER feature_snapshots_console_deleted AFTER DELETE ON feature_snapshots
    REFERENCING OLD TABLE AS written_rows
    FOR EACH STATEMENT EXECUTE FUNCTION hearth_console_feature_stats_written();
CREATE TRIGGER feature_snapshots_console_updated AFTER UPDATE ON feature_snapshots
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION hearth_console_feature_stats_replaced();
