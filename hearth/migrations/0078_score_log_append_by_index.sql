-- The score-log append (0077) looked its rows' users up with a join. Taking jsonb_to_recordset
-- for 100 rows, the planner made it a hash join over a sequential scan of `users` on books of
-- up to ~100,000 users (1.5 ms of server CPU for a one-row append with 20,000 users; index
-- probes only on larger books). The users that still exist are now found by their primary key,
-- as an array computed once
-- (one index probe per distinct id), and the rows are kept by membership in it: no join, so
-- no plan that scans `users`. Same contract as 0077: the DERIVED gate first (a new snapshot
-- per statement, so the look at `users` comes after it is held), only rows of users that still
-- exist inserted, the count returned.
CREATE OR REPLACE FUNCTION hearth_score_log_append(gate bigint, log_rows jsonb) RETURNS bigint
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    inserted bigint;
    present text[];
BEGIN
    PERFORM pg_advisory_xact_lock_shared(gate);
    present := ARRAY(
        SELECT u.user_id FROM users u
         WHERE u.user_id = ANY (ARRAY(SELECT DISTINCT e ->> 'user_id'
                                        FROM jsonb_array_elements(log_rows) AS e)));
    INSERT INTO score_log (user_id, as_of, model_version, feature_set_version, points,
                           probability, reasons, requested_by, channel, batch_id)
    SELECT r.user_id, r.as_of, r.model_version, r.feature_set_version, r.points,
           r.probability, r.reasons, r.requested_by, r.channel, r.batch_id
      FROM jsonb_to_recordset(log_rows)
           AS r(user_id text, as_of timestamptz, model_version text, feature_set_version text,
                points integer, probability double precision, reasons jsonb,
                requested_by text, channel text, batch_id uuid)
     WHERE r.user_id = ANY (present);
    GET DIAGNOSTICS inserted = ROW_COUNT;
    RETURN inserted;
END $$;
