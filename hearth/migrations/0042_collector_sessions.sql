-- Registry of collector replicas (issue 12 §1). Each replica's broker session lives on after the
-- replica stops: Mosquitto keeps routing a share of the group's messages to it and queues them
-- until the session expires. Replicas refresh their row on a heartbeat, so `collector sessions
-- list` can show every session that may still be queuing, and `collector sessions drain` can
-- mark the one it emptied and ended. No personal data here: client ids, hosts, pids, times.
CREATE TABLE collector_sessions (
    client_id         text PRIMARY KEY,           -- the MQTT client id (HEARTH_MQTT_CLIENT_ID)
    share_group       text NOT NULL,              -- HEARTH_MQTT_SHARE_GROUP
    host              text NOT NULL,
    pid               integer NOT NULL,
    session_expiry_s  bigint NOT NULL,            -- what the replica asked the broker for
    started_at        timestamptz NOT NULL,
    last_seen         timestamptz NOT NULL,       -- database clock, so hosts' clocks don't matter
    stopped_at        timestamptz,                -- clean stop (SIGTERM); the session still queues
    drained_at        timestamptz                 -- `sessions drain` stored its queue and ended it
);
CREATE INDEX collector_sessions_group ON collector_sessions (share_group, last_seen);
