-- A counter of consent revocations (issue 11 §2). The collector checks consent with a cached
-- copy of consent_state; a batch whose messages were checked at the epoch still current when
-- it commits (under the consent gate, hearth/ledger.py) cannot hold a revoked category, so its
-- rows are moved without a per-row consent join. Any change that can take consent away bumps
-- the epoch in the same transaction: a consent_state row deleted (erasure), or a grant changed
-- into anything but the same grant from the same time or earlier.
CREATE TABLE consent_epoch (
    singleton  boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    epoch      bigint NOT NULL
);
INSERT INTO consent_epoch (epoch) VALUES (0);

CREATE FUNCTION hearth_consent_epoch_bump() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' OR (OLD.action = 'grant' AND NOT (
            NEW.action = 'grant' AND NEW.notice_version = OLD.notice_version
            AND NEW.since <= OLD.since)) THEN
        UPDATE consent_epoch SET epoch = epoch + 1;
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER consent_state_revoked AFTER UPDATE OR DELETE ON consent_state
    FOR EACH ROW EXECUTE FUNCTION hearth_consent_epoch_bump();
