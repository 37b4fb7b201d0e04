-- Hourly rollups packed one row per (device, signal, UTC day) (issue 16 §3).
--
-- One row per hourly bucket cost more than the raw readings it summarised: 85 % of buckets
-- hold a single reading, and every bucket row repeated the device, user and signal ids, a
-- tuple header and a primary-key entry INCLUDE-ing nearly every column (0031). On the demo
-- fleet the rollups took 1.6-2x the raw tables' bytes. Packed, a day's buckets of one
-- (device, signal) share one row, one key entry and one header, and each statistic is a
-- bytea holding one fixed-width big-endian value per bucket in hour order (what float8send,
-- int4send and timestamptz_send write: binary wire format, decoded by np.frombuffer with no
-- per-value work on either side, features.engine.wire). Columns a single-reading bucket would
-- repeat (min = max = first = last = sum, last_time = first_time, sumsq = sum^2, share = 1)
-- hold the buckets with n <> 1 only, in the same order.
--
-- Point in time (docs/invariants.md#8) stays per bucket: ``ingested`` holds each bucket's
-- max(ingested_at); ``known_at`` (the earliest of them) and ``max_ingested_at`` (the latest)
-- let a reader skip or take whole rows, and ``first_ingested_at`` (the earliest ingest of any
-- reading in the row) tells a bucket ingested after T that has nothing known at T (replayed
-- history: no recompute from raw needed) from one that must be recomputed. Rows converted
-- below never knew it: -infinity, so their late buckets are always recomputed. user_id and signal stay plain columns, so the consent
-- purge (hearth.admin.purge) still finds and deletes these tables by (user, category signals).
-- features.rollups writes them; features.engine reads them.

CREATE TABLE rollup_numeric_packed (
    day              timestamptz NOT NULL,   -- UTC midnight
    device_id        text NOT NULL,
    user_id          text NOT NULL,
    signal           text NOT NULL,
    readings         integer NOT NULL,       -- raw readings summarised (sum of n)
    hours            bytea NOT NULL,         -- one byte per bucket: its hour of the day, ascending
    n                bytea NOT NULL,         -- int4 per bucket
    sum              bytea NOT NULL,         -- float8 per bucket
    first_time       bytea NOT NULL,         -- timestamptz (int8 µs since 2000) per bucket
    ingested         bytea NOT NULL,         -- timestamptz per bucket: max(ingested_at)
    sumsq            bytea NOT NULL,         -- float8 per bucket with n <> 1 (these six)
    min              bytea NOT NULL,
    max              bytea NOT NULL,
    first            bytea NOT NULL,         -- value at the earliest event time of the bucket
    last             bytea NOT NULL,         -- value at the latest event time of the bucket
    last_time        bytea NOT NULL,         -- timestamptz
    known_at         timestamptz NOT NULL,   -- min over buckets of max(ingested_at)
    max_ingested_at  timestamptz NOT NULL,   -- max over buckets
    first_ingested_at timestamptz NOT NULL,  -- min(ingested_at) of the readings (a lower bound)
    CONSTRAINT rollup_numeric_packed_pkey PRIMARY KEY (device_id, signal, day, user_id)
);
SELECT create_hypertable('rollup_numeric_packed', by_range('day', INTERVAL '28 days'),
                         create_default_indexes => false);

-- Categorical signals: per bucket the dominant value (most readings, ties to the smallest).
CREATE TABLE rollup_categorical_packed (
    day              timestamptz NOT NULL,
    device_id        text NOT NULL,
    user_id          text NOT NULL,
    signal           text NOT NULL,
    readings         integer NOT NULL,
    hours            bytea NOT NULL,
    n                bytea NOT NULL,         -- int4 per bucket
    value_len        bytea NOT NULL,         -- int4 per bucket: octet length of its value
    value            bytea NOT NULL,         -- the values' UTF-8 bytes, end to end
    ingested         bytea NOT NULL,         -- timestamptz per bucket
    share            bytea NOT NULL,         -- float8 per bucket with n <> 1 (readings with the value / n)
    known_at         timestamptz NOT NULL,
    max_ingested_at  timestamptz NOT NULL,
    first_ingested_at timestamptz NOT NULL,
    CONSTRAINT rollup_categorical_packed_pkey PRIMARY KEY (device_id, signal, day, user_id)
);
SELECT create_hypertable('rollup_categorical_packed', by_range('day', INTERVAL '28 days'),
                         create_default_indexes => false);

-- The buckets already rolled up, packed (history before the raw retention horizon included:
-- it cannot be rebuilt from raw). The input is sorted by the grouping keys then the bucket, so
-- a sorted aggregate needs no sort of its own and a hashed one sees each row's buckets in
-- arrival order; with no parallel plan every string_agg gets its row's buckets in hour order
-- (features.rollups packs the same way).
SET LOCAL max_parallel_workers_per_gather = 0;
INSERT INTO rollup_numeric_packed
SELECT day, device_id, user_id, signal, sum(n)::integer,
       string_agg(set_byte('\x00'::bytea, 0, extract(hour FROM bucket AT TIME ZONE 'UTC')::int),
                  ''::bytea),
       string_agg(int4send(n), ''::bytea), string_agg(float8send(sum), ''::bytea),
       string_agg(timestamptz_send(first_time), ''::bytea),
       string_agg(timestamptz_send(max_ingested_at), ''::bytea),
       coalesce(string_agg(float8send(sumsq), ''::bytea) FILTER (WHERE n <> 1), ''::bytea),
       coalesce(string_agg(float8send(min), ''::bytea) FILTER (WHERE n <> 1), ''::bytea),
       coalesce(string_agg(float8send(max), ''::bytea) FILTER (WHERE n <> 1), ''::bytea),
       coalesce(string_agg(float8send(first), ''::bytea) FILTER (WHERE n <> 1), ''::bytea),
       coalesce(string_agg(float8send(last), ''::bytea) FILTER (WHERE n <> 1), ''::bytea),
       coalesce(string_agg(timestamptz_send(last_time), ''::bytea) FILTER (WHERE n <> 1),
                ''::bytea),
       min(max_ingested_at), max(max_ingested_at), '-infinity'
  FROM (SELECT time_bucket(INTERVAL '1 day', bucket) AS day, * FROM rollup_numeric_hourly
         ORDER BY device_id, signal, user_id, day, bucket) b
 GROUP BY device_id, signal, user_id, day;
INSERT INTO rollup_categorical_packed
SELECT day, device_id, user_id, signal, sum(n)::integer,
       string_agg(set_byte('\x00'::bytea, 0, extract(hour FROM bucket AT TIME ZONE 'UTC')::int),
                  ''::bytea),
       string_agg(int4send(n), ''::bytea),
       string_agg(int4send(octet_length(convert_to(value, 'UTF8'))), ''::bytea),
       string_agg(convert_to(value, 'UTF8'), ''::bytea),
       string_agg(timestamptz_send(max_ingested_at), ''::bytea),
       coalesce(string_agg(float8send(share), ''::bytea) FILTER (WHERE n <> 1), ''::bytea),
       min(max_ingested_at), max(max_ingested_at), '-infinity'
  FROM (SELECT time_bucket(INTERVAL '1 day', bucket) AS day, * FROM rollup_categorical_hourly
         ORDER BY device_id, signal, user_id, day, bucket) b
 GROUP BY device_id, signal, user_id, day;

DROP TABLE rollup_numeric_hourly;
DROP TABLE rollup_categorical_hourly;
ALTER TABLE rollup_numeric_packed RENAME TO rollup_numeric_hourly;
ALTER TABLE rollup_numeric_hourly
    RENAME CONSTRAINT rollup_numeric_packed_pkey TO rollup_numeric_hourly_pkey;
ALTER TABLE rollup_categorical_packed RENAME TO rollup_categorical_hourly;
ALTER TABLE rollup_categorical_hourly
    RENAME CONSTRAINT rollup_categorical_packed_pkey TO rollup_categorical_hourly_pkey;
