-- Consent state now (0035-0039: consent and identity, issue 11 §2-§3).
--
-- consent_state holds, per (user, purpose, category), the latest ledger event and `since`: the
-- start of the unbroken run of grants under that event's notice version that is in force (for
-- a withdrawal, its own time). A trigger keeps it in the same transaction as every append to
-- consent_events, so a writer can enforce consent at its commit with one indexed join instead
-- of a DISTINCT ON over the whole ledger per row (collector.writer, features.materialize).
-- "Latest" is by (at, event_id), the same order as "active at T" in hearth/ledger.py.
CREATE TABLE consent_state (
    user_id         text NOT NULL REFERENCES users (user_id) ON DELETE CASCADE,
    purpose         text NOT NULL,
    category        text NOT NULL,
    action          text NOT NULL,
    notice_version  text NOT NULL,
    at              timestamptz NOT NULL,
    event_id        bigint NOT NULL,
    since           timestamptz NOT NULL,
    PRIMARY KEY (user_id, purpose, category)
);

-- The state of one (user, purpose, category) computed from the ledger: the latest event, and
-- the earliest grant of the same notice version with no other kind of event after it.
CREATE FUNCTION hearth_consent_state_of(p_user text, p_purpose text, p_category text)
RETURNS SETOF consent_state LANGUAGE sql STABLE AS $$
    SELECT l.user_id, l.purpose, l.category, l.action, l.notice_version, l.at, l.event_id,
           CASE WHEN l.action <> 'grant' THEN l.at ELSE (
               SELECT min(g.at) FROM consent_events g
                WHERE g.user_id = l.user_id AND g.purpose = l.purpose
                  AND g.category = l.category AND g.action = 'grant'
                  AND g.notice_version = l.notice_version
                  AND NOT EXISTS (
                      SELECT 1 FROM consent_events b
                       WHERE b.user_id = l.user_id AND b.purpose = l.purpose
                         AND b.category = l.category
                         AND (b.action <> 'grant' OR b.notice_version <> l.notice_version)
                         AND (b.at, b.event_id) > (g.at, g.event_id)))
           END
      FROM (SELECT * FROM consent_events
             WHERE user_id = p_user AND purpose = p_purpose AND category = p_category
             ORDER BY at DESC, event_id DESC LIMIT 1) l
$$;

CREATE FUNCTION hearth_consent_state_apply() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    -- Concurrent appends for one key are serialised by the admin operations (they lock the
    -- user's row); the WHERE keeps the newest event should anything else race.
    INSERT INTO consent_state AS s
    SELECT * FROM hearth_consent_state_of(NEW.user_id, NEW.purpose, NEW.category)
    ON CONFLICT (user_id, purpose, category) DO UPDATE
       SET action = excluded.action, notice_version = excluded.notice_version,
           at = excluded.at, event_id = excluded.event_id, since = excluded.since
     WHERE (excluded.at, excluded.event_id) >= (s.at, s.event_id);
    RETURN NULL;
END $$;

CREATE TRIGGER consent_events_state AFTER INSERT ON consent_events
    FOR EACH ROW EXECUTE FUNCTION hearth_consent_state_apply();

INSERT INTO consent_state
SELECT s.* FROM (SELECT DISTINCT user_id, purpose, category FROM consent_events) k,
                LATERAL hearth_consent_state_of(k.user_id, k.purpose, k.category) s;
