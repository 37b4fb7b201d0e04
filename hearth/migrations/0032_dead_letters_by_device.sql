-- Dead letters keep nothing that identifies anyone (issue 11 §4).
-- * device_id: the live device allowed to publish on the topic when the message arrived, so
--   withdrawal and erasure find a user's dead letters by device id, never by topic text.
-- * received_at index: HEARTH_DEAD_LETTER_RETENTION_DAYS deletes by age (collector retention run).
-- * digest: from now on an HMAC under HEARTH_PSEUDONYM_KEY (collector.minimise); the unkeyed
--   sha256(topic, payload) of older rows could confirm a guessed payload, so it is replaced by
--   random bytes (those rows lose deduplication only).
-- * no_consent rows keep no topic (it can name the user, e.g. owntracks/<user>/<device>).
-- * net_type is closed-vocabulary (hearth/signals.py): values stored before the allow-list are
--   deleted with their rollups.
ALTER TABLE dead_letters ADD COLUMN device_id text;
CREATE INDEX dead_letters_device ON dead_letters (device_id) WHERE device_id IS NOT NULL;
CREATE INDEX dead_letters_received ON dead_letters (received_at);
COMMENT ON COLUMN dead_letters.digest IS
    'HMAC-SHA256 under HEARTH_PSEUDONYM_KEY of (topic, payload): the dedupe key';

-- Existing rows: the device that was live on the topic's (format, external id) at receive time.
-- Equality on the external id derived from the topic, so this is a hash join, not a scan per row.
UPDATE dead_letters d
   SET device_id = v.device_id
  FROM devices v
 WHERE d.device_id IS NULL
   AND v.format = CASE split_part(d.topic, '/', 1)
                    WHEN 'hearth' THEN 'hearth'
                    WHEN 'owntracks' THEN 'owntracks'
                    WHEN 'zigbee2mqtt' THEN 'zigbee2mqtt'
                    WHEN 'tele' THEN 'tasmota'
                    ELSE 'shelly' END
   AND v.external_id = CASE split_part(d.topic, '/', 1)
                         WHEN 'hearth' THEN split_part(d.topic, '/', 3)
                         WHEN 'owntracks'
                           THEN split_part(d.topic, '/', 2) || '/' || split_part(d.topic, '/', 3)
                         WHEN 'zigbee2mqtt' THEN split_part(d.topic, '/', 2)
                         WHEN 'tele' THEN split_part(d.topic, '/', 2)
                         ELSE split_part(d.topic, '/', 1) END
   AND v.registered_at <= d.received_at
   AND (v.retired_at IS NULL OR v.retired_at > d.received_at);

UPDATE dead_letters SET digest = sha256(convert_to(gen_random_uuid()::text, 'UTF8'));
UPDATE dead_letters SET topic = '', detail = '', payload = NULL WHERE reason = 'no_consent';

DELETE FROM categorical_readings
 WHERE signal = 'net_type' AND value NOT IN ('wifi', 'mobile', 'offline', 'ethernet');
DELETE FROM rollup_categorical_hourly
 WHERE signal = 'net_type' AND value NOT IN ('wifi', 'mobile', 'offline', 'ethernet');
