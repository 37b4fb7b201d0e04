-- The feature engine reads rollups per device through the primary key. Carrying the aggregate
-- columns in the key index (INCLUDE) turns those reads into index-only scans: no heap page per
-- row, which was most of the read cost (bench/features.py). Rollup writes are few; the extra
-- index width is the price.
ALTER TABLE rollup_numeric_hourly
    DROP CONSTRAINT rollup_numeric_hourly_pkey,
    ADD PRIMARY KEY (device_id, signal, bucket, user_id)
        INCLUDE (n, sum, min, max, first, last, first_time, last_time, max_ingested_at);
ALTER TABLE rollup_categorical_hourly
    DROP CONSTRAINT rollup_categorical_hourly_pkey,
    ADD PRIMARY KEY (device_id, signal, bucket, user_id)
        INCLUDE (value, share, n, max_ingested_at);
