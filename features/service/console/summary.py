"""The console's summary tables (migration 0065), refreshed by ``python -m features rollup``.

Three aggregates are too slow to compute from the raw tables while a page renders (the
2,000-household demo holds 17.5 M raw rows; a page has 300 ms):

- ``console_ingest_minutes``: rows and messages stored per minute of ingest time, with the
  event-to-ingest lag (the Ingest page's rates and charts);
- ``console_device_signals``: per device and signal, the latest reading and the readings of
  the 7 days up to it (the Fleet page's "last seen", usual interval and silent devices);
- ``console_feature_stats`` (migration 0066): per snapshot date and feature, the cells, non-null
  cells, coverage and sorted values the Features page's coverage and PSI come from, read from
  the snapshots' packed columns (:func:`snapshot_cells`). A date's stats are deleted by any
  write to its snapshots (statement triggers, 0066-0067) and computed again here, newest
  dates first, ``FEATURE_DATES_PER_REFRESH`` per refresh.

The first two are recomputed like the rollups (features/rollups.py), never incremented: the raw rows
ingested in each minute since the watermark are aggregated again as a whole, and every (device,
signal) they touch gets its latest reading and 7-day count recounted from the raw rows (the
``(device_id, signal, time)`` key index), so a refresh run twice, or interrupted and run again,
leaves the same numbers. The watermark is minute-aligned and trails the clock by ``grace``:
a collector batch stamps ``ingested_at`` when its transaction starts, so a batch still
committing when a refresh runs lands after the watermark and is counted by the next refresh.
The pages show the watermark ("as of"), so a summary never passes for fresher than it is.
Minutes are kept for ``KEEP_MINUTES``; a first refresh reads older history once, for the
devices' latest readings only. Minutes are written six hours of ingest time per transaction;
the devices touched since the watermark in one pass (each recounted once, however many hours
it reported in), in the transaction that moves the watermark.

That transaction holds the shared DERIVED consent gate, like a rollup slice (hearth.ledger):
``console_device_signals`` is derived from personal data, so no refresh computed from rows a
withdrawal or erasure is deleting commits after it. That table has ``user_id`` and ``signal``
columns, so purges and erasures reach it (hearth.admin.purge). The minutes are fleet-wide
counts and need no gate.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

import numpy as np

from features.catalogue import FEATURE_SET_VERSION
from features.snapshots.store import date_matrices
from hearth.db import Conn
from hearth.ledger import GATE_DERIVED, gate_sql

log = logging.getLogger(__name__)

WATERMARK_NAME = "console"
DEFAULT_GRACE = timedelta(seconds=60)  # as features.rollups.DEFAULT_GRACE
KEEP_MINUTES = timedelta(days=14)  # ingest minutes kept (the pages show a day)
USUAL_WINDOW = timedelta(days=7)  # readings behind a device's usual interval
_LOCK_KEY = 0x434F4E53  # "CONS": one refresh at a time
_SLICE = timedelta(hours=6)  # ingest time per transaction
_MAX_SLICE = timedelta(days=1)  # empty stretches are crossed in growing slices up to this
_RAW_TABLES = ("numeric_readings", "categorical_readings")


FEATURE_DATES = 120  # snapshot dates with stats (the Features page offers as many)
# Dates whose stats one refresh computes, newest first: after a backfill of many dates the rest
# follow in the next runs (shown from the snapshots meanwhile), and a backfill still writing
# (which discards its dates' stats chunk after chunk) costs a refresh at most this many.
FEATURE_DATES_PER_REFRESH = 12


@dataclass(frozen=True)
class SummaryResult:
    minutes: int  # ingest minutes (re)written
    device_signals: int  # (device, signal) rows (re)written
    watermark: datetime | None  # rows ingested before it are in the summaries
    seconds: float
    feature_dates: int = 0  # snapshot dates whose feature stats were computed


def _raw_rows(columns: str, where: str) -> str:
    """Both raw tables as one relation, ``columns`` of the rows matching ``where``."""
    return " UNION ALL ".join(f"SELECT {columns} FROM {t} r WHERE {where}" for t in _RAW_TABLES)


_IN_SLICE = "r.ingested_at >= %(s0)s AND r.ingested_at < %(s1)s"

_MINUTES_SQL = f"""
INSERT INTO console_ingest_minutes (minute, rows, messages, lag_p50_s, lag_p95_s)
SELECT time_bucket(INTERVAL '1 minute', x.ingested_at), count(*),
       count(DISTINCT (x.device_id, x.time)),
       percentile_cont(0.5) WITHIN GROUP (ORDER BY x.lag),
       percentile_cont(0.95) WITHIN GROUP (ORDER BY x.lag)
  FROM ({
    _raw_rows(
        "r.device_id, r.time, r.ingested_at, extract(epoch FROM r.ingested_at - r.time)::float8 "
        "AS lag",
        _IN_SLICE,
    )
}) x
 GROUP BY 1
"""

_WINDOW = (
    "r.device_id = l.device_id AND r.signal = l.signal "
    f"AND r.time >= l.last_time - INTERVAL '{USUAL_WINDOW.days} days' AND r.time <= l.last_time"
)

# Touched (device, signal) pairs: the latest reading is the later of the stored one and the
# slice's (a purge deletes the stored row with the raw rows behind it); the 7-day count is
# recounted from the raw rows around it.
_DEVICE_SIGNALS_SQL = f"""
WITH touched AS (
    SELECT x.device_id, x.signal, max(x.user_id) AS user_id, max(x.time) AS last_time
      FROM ({_raw_rows("r.device_id, r.signal, r.user_id, r.time", _IN_SLICE)}) x
     GROUP BY 1, 2
), latest AS (
    SELECT t.device_id, t.signal, t.user_id, greatest(t.last_time, s.last_time) AS last_time
      FROM touched t
      LEFT JOIN console_device_signals s USING (device_id, signal)
)
INSERT INTO console_device_signals AS c
       (device_id, signal, user_id, last_time, readings_7d, first_time_7d)
SELECT l.device_id, l.signal, l.user_id, l.last_time, w.n, w.first
  FROM latest l
 CROSS JOIN LATERAL (
       SELECT count(*) AS n, min(y.time) AS first
         FROM ({_raw_rows("r.time", _WINDOW)}) y
 ) w
 WHERE w.n > 0
ON CONFLICT (device_id, signal) DO UPDATE
   SET user_id = excluded.user_id, last_time = excluded.last_time,
       readings_7d = excluded.readings_7d, first_time_7d = excluded.first_time_7d
"""

_WATERMARK_SQL = """
INSERT INTO console_summary_watermarks (name, watermark, refreshed_at) VALUES (%s, %s, now())
ON CONFLICT (name) DO UPDATE
   SET watermark = greatest(console_summary_watermarks.watermark, excluded.watermark),
       refreshed_at = now()
"""


def read_summary_watermark(conn: Conn) -> tuple[datetime, datetime] | None:
    """(watermark, refreshed_at) of the summaries; None before the first refresh."""
    row = conn.execute(
        "SELECT watermark, refreshed_at FROM console_summary_watermarks WHERE name = %s",
        (WATERMARK_NAME,),
    ).fetchone()
    if row is None:
        return None
    watermark, refreshed_at = row
    assert isinstance(watermark, datetime) and isinstance(refreshed_at, datetime)
    return watermark, refreshed_at


def _first_ingest(conn: Conn) -> datetime | None:
    row = conn.execute(
        "SELECT time_bucket(INTERVAL '1 minute', least("
        + ", ".join(f"(SELECT min(ingested_at) FROM {t})" for t in _RAW_TABLES)
        + "))"
    ).fetchone()
    return row[0] if row else None  # type: ignore[return-value]


def refresh_console_summaries(
    conn: Conn, *, grace: timedelta = DEFAULT_GRACE, full: bool = False
) -> SummaryResult:
    """Bring the console's summaries up to ``now - grace`` (minute-aligned).

    The minutes from the watermark on are recomputed slice by slice, then the (device,
    signal) rows that the raw rows ingested since the watermark touch, in one pass, with the
    new watermark. On the first refresh, and with ``full`` (after rows were written with a
    back-dated ``ingested_at``), that is every raw row, of which the minutes of the last
    ``KEEP_MINUTES`` are kept. ``conn`` must be in autocommit mode: each slice commits on its
    own; an interrupted refresh leaves the watermark where it was and the next one redoes it.
    """
    started = time.monotonic()
    minutes = device_signals = 0
    conn.execute("SELECT pg_advisory_lock(%s)", (_LOCK_KEY,))
    try:
        row = conn.execute(
            "SELECT time_bucket(INTERVAL '1 minute', now() - %s::interval)", (grace,)
        ).fetchone()
        assert row is not None
        end: datetime = row[0]  # type: ignore[assignment]
        previous = None if full else read_summary_watermark(conn)
        since = previous[0] if previous is not None else None  # None: from the first row
        start = since if since is not None else _first_ingest(conn)
        if start is not None:
            start = max(start, end - KEEP_MINUTES)
        slice_ = _SLICE
        while start is not None and start < end:
            stop = min(start + slice_, end)
            written = _refresh_minutes(conn, start, stop)
            minutes += written
            # An empty stretch (a quiet night) is crossed in growing slices; data brings the
            # slice back to its usual size.
            slice_ = min(slice_ * 2, _MAX_SLICE) if written == 0 else _SLICE
            start = stop
        device_signals = _refresh_devices(conn, since, end)
        conn.execute("DELETE FROM console_ingest_minutes WHERE minute < %s", (end - KEEP_MINUTES,))
        feature_dates = refresh_feature_stats(conn)
    finally:
        conn.execute("SELECT pg_advisory_unlock(%s)", (_LOCK_KEY,))
    result = SummaryResult(minutes, device_signals, end, time.monotonic() - started, feature_dates)
    log.info(
        "console summaries refreshed: %d minutes, %d device signals, %d snapshot dates in %.2fs "
        "(watermark %s)",
        minutes,
        device_signals,
        feature_dates,
        result.seconds,
        end.isoformat(),
    )
    return result


def _refresh_minutes(conn: Conn, s0: datetime, s1: datetime) -> int:
    """Recompute the ingest minutes in [s0, s1); how many have rows."""
    window = {"s0": s0, "s1": s1}
    with conn.transaction():
        conn.execute("SET LOCAL work_mem = '64MB'")
        conn.execute(
            "DELETE FROM console_ingest_minutes WHERE minute >= %(s0)s AND minute < %(s1)s",
            window,
        )
        return max(conn.execute(_MINUTES_SQL, window).rowcount, 0)


def _refresh_devices(conn: Conn, s0: datetime | None, s1: datetime) -> int:
    """The (device, signal) rows touched by raw rows ingested in [s0, s1) (s0 None: from the
    first), and the watermark ``s1``, in one transaction under the shared DERIVED gate."""
    with conn.transaction():
        conn.execute(gate_sql(GATE_DERIVED))  # before the statement that reads raw rows
        conn.execute("SET LOCAL work_mem = '64MB'")
        window = {"s0": s0 if s0 is not None else "-infinity", "s1": s1}
        touched = conn.execute(_DEVICE_SIGNALS_SQL, window).rowcount
        conn.execute(_WATERMARK_SQL, (WATERMARK_NAME, s1))
    return max(touched, 0)


# --- feature stats (migration 0066) -----------------------------------------------------------

_MISSING_DATES_SQL = f"""
SELECT d.as_of
  FROM (SELECT DISTINCT as_of FROM feature_snapshots WHERE feature_set_version = %(version)s
         ORDER BY as_of DESC LIMIT {FEATURE_DATES}) d
 WHERE NOT EXISTS (SELECT 1 FROM console_feature_stats c
                    WHERE c.feature_set_version = %(version)s AND c.as_of = d.as_of)
 ORDER BY d.as_of DESC
 LIMIT %(limit)s
"""


@dataclass(frozen=True)
class DateCells:
    """One feature's cells on one date: values (NaN for a null one) and coverages."""

    values: np.ndarray
    coverages: np.ndarray

    @property
    def non_null(self) -> int:
        return int(np.count_nonzero(~np.isnan(self.values)))


def snapshot_cells(conn: Conn, version: str, as_of: datetime) -> dict[str, DateCells]:
    """Feature → its cells in every snapshot of ``version`` on ``as_of``, in one statement.

    The console's one reading of how ``feature_snapshots`` stores a vector (packed, migration
    0055), through the snapshot store's reader (:func:`features.snapshots.store.date_matrices`):
    the stats below and the Features page's reading of a date without stats both go through
    it. Every feature of the version's layout; none on a date without snapshots."""
    layout, values, coverage = date_matrices(conn, as_of, version)
    if not values.shape[0]:
        return {}
    by_feature, coverage_by_feature = (
        np.ascontiguousarray(values.T),
        np.ascontiguousarray(coverage.T),
    )
    return {
        name: DateCells(by_feature[j], coverage_by_feature[j])
        for j, name in enumerate(layout.names)
    }


def pack_values(values: Sequence[float] | np.ndarray) -> bytes:
    """Sorted non-null values as ``console_feature_stats.sorted_values`` stores them."""
    return np.asarray(values, dtype="<f8").tobytes()


def unpack_values(raw: bytes) -> np.ndarray:
    return np.frombuffer(raw, dtype="<f8")


def refresh_feature_stats(
    conn: Conn, version: str = FEATURE_SET_VERSION, limit: int = FEATURE_DATES_PER_REFRESH
) -> int:
    """Compute the stats of the newest ``limit`` of the recent snapshot dates of ``version``
    that have none (new, or changed since: the triggers of migrations 0066-0067 delete a date's
    stats on any write).

    Each date in its own transaction, holding ``feature_snapshots`` in SHARE mode: writes to it
    wait the few hundred milliseconds this takes, so the stats are exactly the snapshots of
    the date, and any write after them deletes them again."""
    dates: list[datetime] = [
        r[0]  # type: ignore[misc]
        for r in conn.execute(_MISSING_DATES_SQL, {"version": version, "limit": limit}).fetchall()
    ]
    for as_of in dates:
        with conn.transaction():
            conn.execute(gate_sql(GATE_DERIVED))
            conn.execute("LOCK TABLE feature_snapshots IN SHARE MODE")
            conn.execute("SET LOCAL work_mem = '64MB'")
            stats = [
                (
                    version,
                    as_of,
                    feature,
                    int(c.values.size),
                    c.non_null,
                    float(c.coverages.sum()),
                    pack_values(np.sort(c.values[~np.isnan(c.values)])),
                )
                for feature, c in snapshot_cells(conn, version, as_of).items()
            ]
            with conn.cursor() as cur:
                cur.executemany(
                    """INSERT INTO console_feature_stats (feature_set_version, as_of, feature,
                           cells, non_null, coverage_sum, sorted_values)
                       VALUES (%s, %s, %s, %s, %s, %s, %s)
                       ON CONFLICT (feature_set_version, as_of, feature) DO NOTHING""",
                    stats,
                )
    return len(dates)
