"""Hourly rollups of raw telemetry, kept exact under late, out-of-order and duplicate data.

Apache-edition TimescaleDB has no continuous aggregates, so Hearth maintains its own:

1. Raw rows with ``ingested_at`` above the watermark are the ones the rollups have not seen.
   Their (device, signal, hour) buckets are *dirty*.
2. Each dirty bucket is recomputed from **all** its raw rows and replaces the stored row
   (delete + insert in one transaction). Recomputing, not merging, is what makes the result
   independent of arrival order and of duplicates (raw rows are unique by natural key).
3. The watermark advances to ``now() - grace``. The grace period covers collector transactions
   that started (and stamped ``ingested_at = now()``) before this run but commit after it; rows
   in the overlap are simply recomputed again next time (idempotent).

The aggregate expressions live here once and the point-in-time engine reuses them to
recompute buckets "as they were at T", so a rollup row and an engine recompute of the same
rows are the same numbers.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import datetime, timedelta

import psycopg

log = logging.getLogger(__name__)

WATERMARK_NAME = "hourly"
DEFAULT_GRACE = timedelta(seconds=60)
_LOCK_KEY = 0x524F4C4C  # "ROLL": one rollup run at a time
BULK_DIRTY_BUCKETS = 50_000  # above this, recompute with hash joins (see refresh_rollups)

# SELECT list of a numeric bucket aggregate over raw alias ``r``, grouped by the first four.
NUMERIC_AGGREGATE = """
    time_bucket(INTERVAL '1 hour', r.time) AS bucket, r.device_id, r.user_id, r.signal,
    count(*)::integer AS n, sum(r.value) AS sum, sum(r.value * r.value) AS sumsq,
    min(r.value) AS min, max(r.value) AS max,
    first(r.value, r.time) AS first, last(r.value, r.time) AS last,
    min(r.time) AS first_time, max(r.time) AS last_time, max(r.ingested_at) AS max_ingested_at
"""
NUMERIC_GROUP_BY = "GROUP BY 1, 2, 3, 4"

# Dominant value per bucket: most readings, ties to the smallest value (order independent).
CATEGORICAL_AGGREGATE_FROM = """
    SELECT bucket, device_id, user_id, signal, value, c::double precision / total AS share,
           total::integer AS n, max_ingested_at
      FROM (SELECT time_bucket(INTERVAL '1 hour', r.time) AS bucket, r.device_id, r.user_id,
                   r.signal, r.value, count(*) AS c,
                   sum(count(*)) OVER w AS total,
                   max(max(r.ingested_at)) OVER w AS max_ingested_at,
                   row_number() OVER (PARTITION BY time_bucket(INTERVAL '1 hour', r.time),
                                      r.device_id, r.user_id, r.signal
                                      ORDER BY count(*) DESC, r.value) AS rank
              FROM {source}
             {where}
             GROUP BY 1, 2, 3, 4, 5
            WINDOW w AS (PARTITION BY time_bucket(INTERVAL '1 hour', r.time),
                         r.device_id, r.user_id, r.signal)) ranked
     WHERE rank = 1
"""

NUMERIC_COLUMNS = (
    "bucket, device_id, user_id, signal, n, sum, sumsq, min, max, first, last, "
    "first_time, last_time, max_ingested_at"
)
CATEGORICAL_COLUMNS = "bucket, device_id, user_id, signal, value, share, n, max_ingested_at"


@dataclass(frozen=True)
class RollupResult:
    numeric_buckets: int
    categorical_buckets: int
    previous_watermark: datetime | None
    watermark: datetime
    seconds: float


def read_watermark(conn: psycopg.Connection[tuple[object, ...]]) -> datetime | None:
    row = conn.execute(
        "SELECT watermark FROM rollup_watermarks WHERE name = %s", (WATERMARK_NAME,)
    ).fetchone()
    return row[0] if row else None  # type: ignore[return-value]


def refresh_rollups(
    conn: psycopg.Connection[tuple[object, ...]],
    *,
    grace: timedelta = DEFAULT_GRACE,
    full: bool = False,
) -> RollupResult:
    """Recompute every bucket touched by rows ingested since the watermark; advance it.

    ``full`` ignores the watermark and rebuilds every bucket (after a restore, or when rows
    were written with a back-dated ``ingested_at``). Safe to run concurrently: runs serialise
    on an advisory lock.
    """
    started = time.monotonic()
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_KEY,))
        previous = None if full else read_watermark(conn)
        since = previous if previous is not None else "-infinity"
        row = conn.execute("SELECT now() - %s::interval", (grace,)).fetchone()
        assert row is not None
        new_watermark: datetime = row[0]  # type: ignore[assignment]
        counts = []
        for raw, rollup in (
            ("numeric_readings", "rollup_numeric_hourly"),
            ("categorical_readings", "rollup_categorical_hourly"),
        ):
            conn.execute("DROP TABLE IF EXISTS rollup_dirty")
            conn.execute(
                f"""CREATE TEMP TABLE rollup_dirty ON COMMIT DROP AS
                    SELECT DISTINCT device_id, signal,
                           time_bucket(INTERVAL '1 hour', time) AS bucket
                      FROM {raw} WHERE ingested_at > %s""",
                (since,),
            )
            conn.execute("ANALYZE rollup_dirty")
            dirty = conn.execute("SELECT count(*) FROM rollup_dirty").fetchone()
            if dirty is not None and int(str(dirty[0])) > BULK_DIRTY_BUCKETS:
                # A backfill: one hash join over a scan of the raw table beats millions of
                # index probes into every chunk (the nested loop the planner picks otherwise).
                conn.execute("SET LOCAL enable_nestloop = off")
            if full:  # also drops buckets whose raw rows are gone
                conn.execute(f"DELETE FROM {rollup}")
            conn.execute(
                f"""DELETE FROM {rollup} o USING rollup_dirty d
                     WHERE o.device_id = d.device_id AND o.signal = d.signal
                       AND o.bucket = d.bucket"""
            )
            source = f"""{raw} r JOIN rollup_dirty d
                           ON r.device_id = d.device_id AND r.signal = d.signal
                          AND r.time >= d.bucket AND r.time < d.bucket + INTERVAL '1 hour'"""
            if raw == "numeric_readings":
                select = f"SELECT {NUMERIC_AGGREGATE} FROM {source} {NUMERIC_GROUP_BY}"
            else:
                select = CATEGORICAL_AGGREGATE_FROM.format(source=source, where="")
            columns = NUMERIC_COLUMNS if raw == "numeric_readings" else CATEGORICAL_COLUMNS
            cur = conn.execute(f"INSERT INTO {rollup} ({columns}) {select}")
            counts.append(cur.rowcount)
            conn.execute("DROP TABLE rollup_dirty")
        # The watermark never moves backwards (a full rebuild with a clock step back).
        conn.execute(
            """INSERT INTO rollup_watermarks (name, watermark) VALUES (%s, %s)
               ON CONFLICT (name) DO UPDATE
                  SET watermark = greatest(rollup_watermarks.watermark, excluded.watermark),
                      updated_at = now()""",
            (WATERMARK_NAME, new_watermark),
        )
    result = RollupResult(counts[0], counts[1], previous, new_watermark, time.monotonic() - started)
    log.info(
        "rollups refreshed: %d numeric and %d categorical buckets in %.2fs (watermark %s)",
        result.numeric_buckets,
        result.categorical_buckets,
        result.seconds,
        result.watermark.isoformat(),
    )
    return result
