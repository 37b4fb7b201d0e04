-- The household graph (features.engine.graph, issue 18) looks up, for every network a chunk's
-- users saw, the other people whose devices saw it: rollup rows of two categorical signals by
-- value. A partial index on (signal, value, bucket) carrying what the lookup reads makes that an
-- index-only range scan per network; rollup writes of the other signals never touch it.
CREATE INDEX rollup_categorical_network ON rollup_categorical_hourly (signal, value, bucket)
    INCLUDE (user_id, device_id, max_ingested_at)
    WHERE signal IN ('wifi_bssid_hash', 'geohash');
