-- Every change to the registry or the consent ledger, by whatever path, wakes the collectors:
-- they reload their identity/consent caches on these channels (invariant 6: within seconds).
CREATE FUNCTION hearth_notify_registry() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('hearth_registry', '');
    RETURN NULL;
END $$;

CREATE FUNCTION hearth_notify_consent() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('hearth_consent', '');
    RETURN NULL;
END $$;

CREATE TRIGGER devices_changed AFTER INSERT OR UPDATE OR DELETE ON devices
    FOR EACH STATEMENT EXECUTE FUNCTION hearth_notify_registry();
CREATE TRIGGER users_changed AFTER INSERT OR UPDATE OR DELETE ON users
    FOR EACH STATEMENT EXECUTE FUNCTION hearth_notify_registry();
CREATE TRIGGER consent_changed AFTER INSERT OR UPDATE OR DELETE ON consent_events
    FOR EACH STATEMENT EXECUTE FUNCTION hearth_notify_consent();
