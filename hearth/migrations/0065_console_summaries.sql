-- The operator's console (issue 19; 0065-0069): summary tables for the aggregates a console page
-- cannot compute from the raw tables in its 300 ms budget. `python -m features rollup` refreshes
-- them after the rollups (features/service/console/summary.py). Like the rollups they are
-- recomputed from the raw rows of every ingest minute since the last refresh, never
-- incremented, so a refresh that runs twice or is interrupted leaves them exact; and the pages
-- say up to which ingest time they are, so they never pass for fresher than they are.

-- Rows and messages stored per minute of ingest time (ingested_at: the collector batch that
-- stored them), with the event-to-ingest lag. Fleet-wide counts: no user, no device.
CREATE TABLE console_ingest_minutes (
    minute     timestamptz PRIMARY KEY,
    rows       bigint NOT NULL CHECK (rows > 0),
    messages   bigint NOT NULL,              -- distinct (device, event time) among those rows
    lag_p50_s  double precision NOT NULL,    -- ingested_at - event time, median
    lag_p95_s  double precision NOT NULL
);

-- Per device and signal: its latest reading and the readings of the 7 days up to it, from
-- which the console derives the device's usual interval and whether it has gone silent.
-- Derived from personal data, so it carries user_id and signal: a withdrawal purges a
-- category's rows here and an erasure a user's (hearth.admin.purge finds tables by these
-- columns), an export lists them, and the refresh holds the DERIVED consent gate like the
-- rollups (hearth.ledger).
CREATE TABLE console_device_signals (
    device_id      text NOT NULL,
    signal         text NOT NULL,
    user_id        text NOT NULL,
    last_time      timestamptz NOT NULL,     -- event time of the latest reading
    readings_7d    bigint NOT NULL CHECK (readings_7d > 0),  -- readings in [last_time - 7 days, last_time]
    first_time_7d  timestamptz NOT NULL,     -- event time of the first of those
    PRIMARY KEY (device_id, signal)
);

-- Up to which ingest time the summaries are complete (minute-aligned), and when refreshed.
CREATE TABLE console_summary_watermarks (
    name          text PRIMARY KEY,
    watermark     timestamptz NOT NULL,
    refreshed_at  timestamptz NOT NULL DEFAULT now()
);
