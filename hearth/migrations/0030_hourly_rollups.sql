-- Hourly rollups of raw telemetry (features.rollups keeps them exact; Apache edition only:
-- no continuous aggregates). One row per (device, signal, hour, user). user_id and signal
-- columns let the consent purge find these tables and delete by (user, category signals).
-- max_ingested_at is what makes point-in-time reads possible: a bucket whose rows were all
-- ingested at or before T can be used as is for an as-of-T feature; otherwise the engine
-- recomputes that bucket from raw rows filtered by ingested_at <= T.

CREATE TABLE rollup_numeric_hourly (
    bucket           timestamptz NOT NULL,
    device_id        text NOT NULL,
    user_id          text NOT NULL,
    signal           text NOT NULL,
    n                integer NOT NULL,
    sum              double precision NOT NULL,
    sumsq            double precision NOT NULL,
    min              double precision NOT NULL,
    max              double precision NOT NULL,
    first            double precision NOT NULL,   -- value at the earliest event time in the bucket
    last             double precision NOT NULL,   -- value at the latest event time in the bucket
    first_time       timestamptz NOT NULL,
    last_time        timestamptz NOT NULL,
    max_ingested_at  timestamptz NOT NULL,
    PRIMARY KEY (device_id, signal, bucket, user_id)
);
SELECT create_hypertable('rollup_numeric_hourly', by_range('bucket', INTERVAL '30 days'),
                         create_default_indexes => false);

-- Categorical signals (geohash, hashed Wi-Fi, net type): the dominant value of the hour (most
-- readings; ties broken by the smallest value so that the result never depends on arrival order).
CREATE TABLE rollup_categorical_hourly (
    bucket           timestamptz NOT NULL,
    device_id        text NOT NULL,
    user_id          text NOT NULL,
    signal           text NOT NULL,
    value            text NOT NULL,
    share            double precision NOT NULL,   -- readings with the dominant value / n
    n                integer NOT NULL,
    max_ingested_at  timestamptz NOT NULL,
    PRIMARY KEY (device_id, signal, bucket, user_id)
);
SELECT create_hypertable('rollup_categorical_hourly', by_range('bucket', INTERVAL '30 days'),
                         create_default_indexes => false);

-- Raw rows with ingested_at above the watermark are the ones not yet reflected in the rollups.
CREATE TABLE rollup_watermarks (
    name        text PRIMARY KEY,
    watermark   timestamptz NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now()
);

-- Finding "rows ingested after the watermark" must not scan every chunk row by row. Rows are
-- appended in ingest order, so a BRIN index is tiny, costs next to nothing per insert and
-- narrows the scan to the recently written pages (plus any late rows' pages).
CREATE INDEX numeric_readings_ingested_brin ON numeric_readings USING brin (ingested_at)
    WITH (pages_per_range = 32, autosummarize = on);
CREATE INDEX categorical_readings_ingested_brin ON categorical_readings USING brin (ingested_at)
    WITH (pages_per_range = 32, autosummarize = on);
