-- Scores (0075-0079, issue 17). The score log: one row per score given, batch or online, with
-- what a person may ask about it (PIPL Art. 24, GDPR Art. 22): which model and feature set,
-- the points, the reason codes (feature, text, points: never the applicant's values), who asked
-- and when. It is evidence, so it is append-only like the consent ledger (migration 0020):
-- UPDATE is refused, DELETE and TRUNCATE only inside an erasure (hearth.erasing = 'on', set by
-- hearth.admin.privacy.erase_user), which must remove the data subject's scores. A withdrawal
-- keeps them: the decision happened. No `category` or `signal` column, so a withdrawal's purge
-- (hearth.admin.purge, which finds category data by those columns) never touches it.
CREATE TABLE score_log (
    scored_at            timestamptz NOT NULL DEFAULT now(),
    user_id              text NOT NULL REFERENCES users (user_id),
    as_of                timestamptz NOT NULL,
    model_version        text NOT NULL,
    feature_set_version  text NOT NULL,
    points               integer NOT NULL,
    probability          double precision NOT NULL,
    reasons              jsonb NOT NULL,          -- [{"feature", "text", "points"}], at most 4
    requested_by         text NOT NULL,           -- "token:<hash prefix>" or "cli:<operator>"
    channel              text NOT NULL CHECK (channel IN ('batch', 'online')),
    batch_id             uuid                     -- the batch run (python -m features score)
);
SELECT create_hypertable('score_log', by_range('scored_at', INTERVAL '7 days'),
                         create_default_indexes => false);
CREATE INDEX score_log_user ON score_log (user_id, scored_at DESC);

CREATE FUNCTION hearth_score_log_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' OR TG_OP = 'TRUNCATE' THEN
        IF coalesce(current_setting('hearth.erasing', true), '') = 'on' THEN
            RETURN OLD;
        END IF;
    END IF;
    RAISE EXCEPTION 'score_log is append-only: % refused (erase a user with `python -m collector users erase`)', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END $$;

CREATE TRIGGER score_log_append_only BEFORE UPDATE OR DELETE ON score_log
    FOR EACH ROW EXECUTE FUNCTION hearth_score_log_append_only();
CREATE TRIGGER score_log_no_truncate BEFORE TRUNCATE ON score_log
    FOR EACH STATEMENT EXECUTE FUNCTION hearth_score_log_append_only();

-- The parts of a batch run whose scores are in the log: a resumed run logs each part once.
CREATE TABLE score_batch_parts (
    batch_id   uuid NOT NULL,
    part       integer NOT NULL,
    rows       integer NOT NULL,
    logged_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (batch_id, part)
);
