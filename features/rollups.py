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
4. Only buckets whose raw rows still exist are rebuilt: nothing before the raw table's
   retention horizon (``raw_retention_horizons``, moved by ``collector retention run``) and, in
   a full rebuild, nothing before its oldest raw row. A late reading in a dropped range would
   otherwise replace the bucket's aggregate with one computed from that reading alone.

The aggregate expressions live here once and the point-in-time engine reuses them to
recompute buckets "as they were at T", so a rollup row and an engine recompute of the same
rows are the same numbers.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from hearth.db import Conn
from hearth.ledger import GATE_DERIVED, gate_sql

log = logging.getLogger(__name__)

WATERMARK_NAME = "hourly"
DEFAULT_GRACE = timedelta(seconds=60)
_LOCK_KEY = 0x524F4C4C  # "ROLL": one rollup run at a time
_SLICE = timedelta(days=1)  # unit of work and of commit (see refresh_rollups)
_TABLES = (  # (raw table, its rollup)
    ("numeric_readings", "rollup_numeric_hourly"),
    ("categorical_readings", "rollup_categorical_hourly"),
)

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
    watermark: datetime
    seconds: float


def read_watermark(conn: Conn) -> datetime | None:
    row = conn.execute(
        "SELECT watermark FROM rollup_watermarks WHERE name = %s", (WATERMARK_NAME,)
    ).fetchone()
    return row[0] if row else None  # type: ignore[return-value]


def refresh_rollups(
    conn: Conn,
    *,
    grace: timedelta = DEFAULT_GRACE,
    full: bool = False,
) -> RollupResult:
    """Recompute every bucket touched by rows ingested since the watermark; advance it.

    Work is cut into one-day slices of event time, each recomputed in its own transaction
    against that day's raw rows only: a 90-day backfill becomes ninety small hash joins
    instead of one join that spills gigabytes. An interrupted run leaves the watermark where
    it was, so the next run redoes the same slices (recompute is idempotent).

    ``full`` ignores the watermark and rebuilds every bucket from the oldest raw row on (after
    a restore, or when rows were written with a back-dated ``ingested_at``), dropping buckets
    in that range whose raw rows are gone. Buckets before the retention horizon or the oldest
    raw row are history and stay as they are. Safe to run concurrently: runs serialise on an
    advisory lock.
    """
    started = time.monotonic()
    conn.execute("SELECT pg_advisory_lock(%s)", (_LOCK_KEY,))
    try:
        previous = None if full else read_watermark(conn)
        since = previous if previous is not None else "-infinity"
        # Taken before any scan: rows stamped later are picked up by the next run.
        row = conn.execute("SELECT now() - %s::interval", (grace,)).fetchone()
        assert row is not None
        new_watermark: datetime = row[0]  # type: ignore[assignment]
        counts = []
        for raw, rollup in _TABLES:
            floor = rebuild_floor(conn, raw)
            counts.append(
                sum(
                    _refresh_slice(conn, raw, rollup, day, since, full, floor)
                    for day in _slices(conn, raw, rollup, since, full, floor)
                )
            )
        # The watermark never moves backwards (a full rebuild with a clock step back).
        conn.execute(
            """INSERT INTO rollup_watermarks (name, watermark) VALUES (%s, %s)
               ON CONFLICT (name) DO UPDATE
                  SET watermark = greatest(rollup_watermarks.watermark, excluded.watermark),
                      updated_at = now()""",
            (WATERMARK_NAME, new_watermark),
        )
    finally:
        conn.execute("SELECT pg_advisory_unlock(%s)", (_LOCK_KEY,))
    result = RollupResult(counts[0], counts[1], new_watermark, time.monotonic() - started)
    log.info(
        "rollups refreshed: %d numeric and %d categorical buckets in %.2fs (watermark %s)",
        result.numeric_buckets,
        result.categorical_buckets,
        result.seconds,
        result.watermark.isoformat(),
    )
    return result


def rebuild_floor(conn: Conn, raw: str) -> datetime | None:
    """The first hour whose buckets may be rebuilt from ``raw``: the hour after its retention
    horizon (raw rows before it may have been dropped), or None when nothing was dropped."""
    row = conn.execute(
        "SELECT horizon FROM raw_retention_horizons WHERE hypertable = %s", (raw,)
    ).fetchone()
    if row is None:
        return None
    horizon: datetime = row[0]  # type: ignore[assignment]
    hour = horizon.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
    return hour if hour == horizon else hour + timedelta(hours=1)


def _slices(
    conn: Conn,
    raw: str,
    rollup: str,
    since: datetime | str,
    full: bool,
    floor: datetime | None,
) -> list[datetime]:
    """Start of every event-time day holding rows ingested after ``since``; for a full
    rebuild, every day holding raw rows or (from the first raw row on) rollup rows. Days
    wholly before ``floor`` are left out."""
    if full:
        # Days with raw rows, and days with buckets but no raw rows left (to drop them) — yet
        # never before the first raw row: buckets older than every raw row have nothing to be
        # rebuilt from, and deleting them would destroy history that retention kept.
        sql = f"""SELECT time_bucket(INTERVAL '1 day', time) FROM {raw}
                  UNION
                  SELECT time_bucket(INTERVAL '1 day', o.bucket) FROM {rollup} o
                   WHERE o.bucket >= (SELECT time_bucket(INTERVAL '1 day', min(time)) FROM {raw})
                  ORDER BY 1"""
        rows = conn.execute(sql).fetchall()
    else:
        rows = conn.execute(
            f"""SELECT DISTINCT time_bucket(INTERVAL '1 day', time) FROM {raw}
                 WHERE ingested_at > %s ORDER BY 1""",
            (since,),
        ).fetchall()
    days: list[datetime] = [r[0] for r in rows if r[0] is not None]  # type: ignore[misc]
    if floor is None:
        return days
    kept = [d for d in days if d + _SLICE > floor]
    if len(kept) < len(days) and not full:
        log.warning(
            "rollups: %s has late rows on %d day(s) before its retention horizon %s; "
            "their buckets are kept as they were",
            raw,
            len(days) - len(kept),
            floor.isoformat(),
        )
    return kept


def _refresh_slice(
    conn: Conn,
    raw: str,
    rollup: str,
    day: datetime,
    since: datetime | str,
    full: bool,
    floor: datetime | None,
) -> int:
    """Recompute the dirty buckets of one event-time day (from ``floor`` on, if it falls in
    the day); return how many were written."""
    start = day if floor is None else max(day, floor)
    window = {"d0": start, "d1": day + _SLICE, "since": since}
    everything = full or since == "-infinity"
    with conn.transaction():
        # Shared consent gate (hearth.ledger): a purge waits for this slice to commit and
        # deletes what it wrote, and no slice reads rows a running purge is deleting.
        conn.execute(gate_sql(GATE_DERIVED))
        # A day's groups (≤ devices x signals x 24) sort and hash comfortably in this much.
        conn.execute("SET LOCAL work_mem = '64MB'")
        where = "WHERE r.time >= %(d0)s AND r.time < %(d1)s"
        if everything:
            # Every bucket of the day: aggregate its raw rows directly, no dirty set to join.
            # A full rebuild also drops buckets whose raw rows are gone.
            conn.execute(f"DELETE FROM {rollup} WHERE bucket >= %(d0)s AND bucket < %(d1)s", window)
            source = f"{raw} r"
        else:
            conn.execute("DROP TABLE IF EXISTS rollup_dirty")
            conn.execute(
                f"""CREATE TEMP TABLE rollup_dirty ON COMMIT DROP AS
                    SELECT DISTINCT device_id, signal,
                           time_bucket(INTERVAL '1 hour', time) AS bucket
                      FROM {raw}
                     WHERE time >= %(d0)s AND time < %(d1)s AND ingested_at > %(since)s""",
                window,
            )
            conn.execute("ANALYZE rollup_dirty")
            conn.execute(
                f"""DELETE FROM {rollup} o USING rollup_dirty d
                     WHERE o.device_id = d.device_id AND o.signal = d.signal
                       AND o.bucket = d.bucket AND o.bucket >= %(d0)s AND o.bucket < %(d1)s""",
                window,
            )
            source = f"""{raw} r JOIN rollup_dirty d
                           ON r.device_id = d.device_id AND r.signal = d.signal
                          AND r.time >= d.bucket AND r.time < d.bucket + INTERVAL '1 hour'"""
        if raw == "numeric_readings":
            select = f"SELECT {NUMERIC_AGGREGATE} FROM {source} {where} {NUMERIC_GROUP_BY}"
        else:
            select = CATEGORICAL_AGGREGATE_FROM.format(source=source, where=where)
        columns = NUMERIC_COLUMNS if raw == "numeric_readings" else CATEGORICAL_COLUMNS
        written = conn.execute(f"INSERT INTO {rollup} ({columns}) {select}", window).rowcount
    log.debug("rollups: %s day %s: %d buckets", rollup, day.date(), written)
    return max(written, 0)
