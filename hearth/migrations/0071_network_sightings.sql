-- Network sightings for the household graph (features.engine.graph, issue 18).
--
-- The graph looks up, for every network a chunk's users saw, the other people whose devices
-- saw it: categorical buckets of two signals by value. The packed rollups (0050) hold a day's
-- values as bytes end to end, which no index can find by value, so the rollup job
-- (features.rollups) keeps this small table beside them, written in the same slice
-- transactions from the same per-bucket aggregate: one row per (device, signal, UTC day,
-- dominant value) of the two network signals, with the hours that value was the bucket's
-- dominant one as a 24-bit mask.
--
-- Point in time (docs/invariants.md#8) per row: max_ingested_at (latest ingest of any reading
-- in those buckets: by T, every bucket is as it was at T), first_ingested_at (earliest: after
-- T, nothing in the row was known at T); between the two the engine recomputes the row's
-- buckets from raw rows as of T.
--
-- The lookup index on (signal, value, user_id, day) carrying what the graph reads lets it step
-- from one person to the next on a network (a few index probes each, never the rows of the
-- chunk's own users) and then read just the others' rows of the 90-day window, index-only.
-- user_id and signal are plain columns, so a withdrawal of connectivity (wifi_bssid_hash) or
-- location (geohash) deletes the user's rows and an erasure all of them (hearth.admin.purge
-- finds the table by its columns).
CREATE TABLE network_sightings (
    day                timestamptz NOT NULL,  -- UTC midnight
    device_id          text NOT NULL,
    user_id            text NOT NULL,
    signal             text NOT NULL,         -- wifi_bssid_hash or geohash
    value              text NOT NULL,         -- the bucket's dominant value
    hours              integer NOT NULL,      -- bit h set: the bucket at day + h hours
    max_ingested_at    timestamptz NOT NULL,
    first_ingested_at  timestamptz NOT NULL,
    CONSTRAINT network_sightings_pkey PRIMARY KEY (device_id, signal, day, value, user_id),
    CONSTRAINT network_sightings_signal CHECK (signal IN ('wifi_bssid_hash', 'geohash'))
);
CREATE INDEX network_sightings_lookup
    ON network_sightings (signal, value, user_id, day)
    INCLUDE (device_id, hours, max_ingested_at, first_ingested_at);

-- The sightings of the raw rows still held (history older than the raw retention horizon has
-- no raw rows to find its values in, and no sightings).
SET LOCAL max_parallel_workers_per_gather = 0;
INSERT INTO network_sightings
SELECT time_bucket(INTERVAL '1 day', b.bucket), b.device_id, b.user_id, b.signal, b.value,
       bit_or(1 << extract(hour FROM b.bucket AT TIME ZONE 'UTC')::int),
       max(b.max_ingested_at), min(b.min_ingested_at)
  FROM (SELECT bucket, device_id, user_id, signal, value, max_ingested_at, min_ingested_at
          FROM (SELECT time_bucket(INTERVAL '1 hour', r.time) AS bucket, r.device_id,
                       r.user_id, r.signal, r.value,
                       max(max(r.ingested_at)) OVER w AS max_ingested_at,
                       min(min(r.ingested_at)) OVER w AS min_ingested_at,
                       row_number() OVER (PARTITION BY time_bucket(INTERVAL '1 hour', r.time),
                                          r.device_id, r.user_id, r.signal
                                          ORDER BY count(*) DESC, r.value) AS rank
                  FROM categorical_readings r
                 WHERE r.signal IN ('wifi_bssid_hash', 'geohash')
                 GROUP BY 1, 2, 3, 4, 5
                WINDOW w AS (PARTITION BY time_bucket(INTERVAL '1 hour', r.time),
                             r.device_id, r.user_id, r.signal)) ranked
         WHERE rank = 1) b
 GROUP BY 1, 2, 3, 4, 5;
