-- Device passwords now live only in the broker's dynamic-security plugin (salted PBKDF2, set at
-- registration through its control API, hearth/broker.py): the registry keeps no second copy.
-- Devices registered before this migration keep working only if `broker init` imported their
-- hashes into the plugin's file first (scripts/services up runs it before migrating);
-- otherwise registering them again issues a new password.
ALTER TABLE devices DROP COLUMN mqtt_password_hash;
