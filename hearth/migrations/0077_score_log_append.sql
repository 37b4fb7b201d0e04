-- One score-log append in one statement (issue 17): the DERIVED gate taken shared, then the rows
-- of users that still exist inserted, as features.book.score_log did in four (BEGIN, gate,
-- INSERT, COMMIT). A VOLATILE plpgsql function takes a new snapshot for each statement inside
-- it, so the INSERT's look at `users` comes after the gate is held, exactly as when the gate was
-- a statement of its own: a score either commits before an erasure (which holds the gate
-- exclusively) or finds the user gone. The rows come as one JSON array (one parameter to send,
-- not one array per column); the gate's key is a parameter, defined once in hearth.ledger.
-- Returns the rows inserted.
CREATE FUNCTION hearth_score_log_append(gate bigint, log_rows jsonb) RETURNS bigint
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    inserted bigint;
BEGIN
    PERFORM pg_advisory_xact_lock_shared(gate);
    INSERT INTO score_log (user_id, as_of, model_version, feature_set_version, points,
                           probability, reasons, requested_by, channel, batch_id)
    SELECT r.user_id, r.as_of, r.model_version, r.feature_set_version, r.points,
           r.probability, r.reasons, r.requested_by, r.channel, r.batch_id
      FROM jsonb_to_recordset(log_rows)
           AS r(user_id text, as_of timestamptz, model_version text, feature_set_version text,
                points integer, probability double precision, reasons jsonb,
                requested_by text, channel text, batch_id uuid)
      JOIN users u ON u.user_id = r.user_id;
    GET DIAGNOSTICS inserted = ROW_COUNT;
    RETURN inserted;
END $$;
