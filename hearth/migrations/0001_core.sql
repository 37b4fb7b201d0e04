-- Core schema: registry, consent ledger, raw telemetry, dead letters, audit log, snapshots.
-- Numbering: 0001-0009 foundation, 0010-0019 collector, 0020-0029 consent/identity,
-- 0030-0039 rollups/features, 0040-0049 feature service.

CREATE TABLE users (
    user_id     text PRIMARY KEY CHECK (user_id ~ '^[A-Za-z0-9._:-]{1,64}$'),
    tz          text NOT NULL DEFAULT 'UTC',   -- IANA zone; local hour/night/weekday use it
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE devices (
    device_id           text PRIMARY KEY CHECK (device_id ~ '^[A-Za-z0-9._:-]{1,64}$'),
    user_id             text NOT NULL REFERENCES users (user_id) ON DELETE CASCADE,
    kind                text NOT NULL,          -- phone, router, plug, contact, motion, thermostat, sensor
    format              text NOT NULL,          -- hearth, owntracks, zigbee2mqtt, tasmota, ...
    external_id         text NOT NULL,          -- the id the format carries (topic part, friendly name)
    tz                  text,                   -- zone for naive device timestamps; NULL = user's
    mqtt_username       text UNIQUE,
    mqtt_password_hash  text,                   -- never the password itself
    registered_at       timestamptz NOT NULL DEFAULT now(),
    retired_at          timestamptz
);
-- One live device per (format, external id); a retired id may be registered again.
CREATE UNIQUE INDEX devices_live_external_id ON devices (format, external_id) WHERE retired_at IS NULL;
CREATE INDEX devices_user ON devices (user_id);

-- Append-only consent history: "active at T" is the latest event at or before T.
CREATE TABLE consent_events (
    event_id        bigserial PRIMARY KEY,
    user_id         text NOT NULL REFERENCES users (user_id) ON DELETE CASCADE,
    purpose         text NOT NULL DEFAULT 'credit_scoring',
    category        text NOT NULL CHECK (category IN
                      ('location','connectivity','device_health','energy','presence','climate','usage')),
    notice_version  text NOT NULL,
    action          text NOT NULL CHECK (action IN ('grant', 'withdraw')),
    at              timestamptz NOT NULL DEFAULT now(),
    evidence_hash   text
);
CREATE INDEX consent_events_lookup ON consent_events (user_id, purpose, category, at);

-- Raw telemetry. Natural key (device, signal, event time) makes every write idempotent.
-- user_id is denormalised (the device's bound user) so purges and exports need no join.
CREATE TABLE numeric_readings (
    time            timestamptz NOT NULL,
    device_id       text NOT NULL,
    user_id         text NOT NULL,
    signal          text NOT NULL,
    value           double precision NOT NULL,
    ingested_at     timestamptz NOT NULL DEFAULT now(),
    time_received   boolean NOT NULL DEFAULT false  -- no device timestamp: receive time used
);
SELECT create_hypertable('numeric_readings', by_range('time', INTERVAL '7 days'),
                         create_default_indexes => false);
CREATE UNIQUE INDEX numeric_readings_key ON numeric_readings (device_id, signal, time);

CREATE TABLE categorical_readings (
    time            timestamptz NOT NULL,
    device_id       text NOT NULL,
    user_id         text NOT NULL,
    signal          text NOT NULL,
    value           text NOT NULL,
    ingested_at     timestamptz NOT NULL DEFAULT now(),
    time_received   boolean NOT NULL DEFAULT false
);
SELECT create_hypertable('categorical_readings', by_range('time', INTERVAL '7 days'),
                         create_default_indexes => false);
CREATE UNIQUE INDEX categorical_readings_key ON categorical_readings (device_id, signal, time);

-- Quarantine for rejected input. The digest makes a redelivered poison message land once.
CREATE TABLE dead_letters (
    id              bigserial PRIMARY KEY,
    received_at     timestamptz NOT NULL DEFAULT now(),
    topic           text NOT NULL,
    reason          text NOT NULL,
    detail          text NOT NULL DEFAULT '',
    payload         bytea,                     -- truncated; NULL when redacted (no consent)
    payload_bytes   integer NOT NULL,
    digest          bytea NOT NULL UNIQUE      -- sha256(topic, payload)
);
CREATE INDEX dead_letters_reason ON dead_letters (reason, received_at);

-- What was done to personal data, without personal data: subjects are keyed hashes.
CREATE TABLE audit_log (
    id           bigserial PRIMARY KEY,
    at           timestamptz NOT NULL DEFAULT now(),
    action       text NOT NULL,                -- purge_category, erase_user, retention, ...
    subject_ref  text,                         -- HMAC of the user id, never the id
    details      jsonb NOT NULL DEFAULT '{}'
);

-- One denormalised feature vector per (user, as_of, feature-set version):
-- vector = {"<feature>": {"value": number|null, "coverage": number}}.
CREATE TABLE feature_snapshots (
    user_id              text NOT NULL REFERENCES users (user_id) ON DELETE CASCADE,
    as_of                timestamptz NOT NULL,
    feature_set_version  text NOT NULL,
    computed_at          timestamptz NOT NULL DEFAULT now(),
    vector               jsonb NOT NULL,
    PRIMARY KEY (user_id, as_of, feature_set_version)
);
