-- The household graph (features.engine.graph, issue 18) looks up, for every network a chunk's
-- users saw, the other people whose devices saw it: rollup rows of two categorical signals by
-- value. A partial index on (signal, value, user_id, bucket) carrying what the lookup reads lets
-- it step from one person to the next on a network (a few index probes each, never the rows of
-- the chunk's own users) and then read just the others' rows of the 90-day window, index-only;
-- rollup writes of the other signals never touch it.
CREATE INDEX rollup_categorical_network
    ON rollup_categorical_hourly (signal, value, user_id, bucket)
    INCLUDE (device_id, max_ingested_at)
    WHERE signal IN ('wifi_bssid_hash', 'geohash');
