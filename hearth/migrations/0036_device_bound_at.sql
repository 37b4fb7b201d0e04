-- When a device was bound to its user (issue 11 §3). The collector refuses readings dated
-- before it (`before_binding`), so an external id registered again to another user never
-- receives the first owner's queued messages. Existing devices were bound when registered.
ALTER TABLE devices ADD COLUMN bound_at timestamptz;
UPDATE devices SET bound_at = registered_at;
ALTER TABLE devices ALTER COLUMN bound_at SET DEFAULT now(), ALTER COLUMN bound_at SET NOT NULL;
-- Registering an external id again looks up when another user's device last had it.
CREATE INDEX devices_retired_external_id ON devices (format, external_id)
    WHERE retired_at IS NOT NULL;
