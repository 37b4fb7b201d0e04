-- Consent & identity (0020-0029).
--
-- The consent ledger is evidence: its history is append-only. UPDATE is always refused; DELETE
-- and TRUNCATE only inside a transaction that erases a data subject (hearth.admin.erase_user
-- sets the transaction-local setting hearth.erasing = 'on'), because erasure must remove the
-- user's consent history too (it is personal data) and users → consent_events cascades.
CREATE FUNCTION hearth_consent_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' OR TG_OP = 'TRUNCATE' THEN
        IF coalesce(current_setting('hearth.erasing', true), '') = 'on' THEN
            RETURN OLD;
        END IF;
    END IF;
    RAISE EXCEPTION 'consent_events is append-only: % refused (withdraw by appending an event; erase a user with `python -m collector users erase`)', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END $$;

CREATE TRIGGER consent_events_append_only BEFORE UPDATE OR DELETE ON consent_events
    FOR EACH ROW EXECUTE FUNCTION hearth_consent_append_only();
CREATE TRIGGER consent_events_no_truncate BEFORE TRUNCATE ON consent_events
    FOR EACH STATEMENT EXECUTE FUNCTION hearth_consent_append_only();

-- "Active at T" reads the latest event per (user, category) for a purpose; this index serves
-- both the per-user lookup and the all-users DISTINCT ON scan the collectors run on NOTIFY.
CREATE INDEX consent_events_latest ON consent_events (purpose, user_id, category, at DESC, event_id DESC);

-- Purges look up a user's devices (including retired ones) and audit records by subject.
CREATE INDEX audit_log_subject ON audit_log (subject_ref, at) WHERE subject_ref IS NOT NULL;
