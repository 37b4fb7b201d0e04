"""Hourly rollups of raw telemetry, kept exact under late, out-of-order and duplicate data.

Apache-edition TimescaleDB has no continuous aggregates, so Hearth maintains its own:

1. Raw rows with ``ingested_at`` above the watermark are the ones the rollups have not seen.
   Their (device, signal, UTC day) rows are *dirty*.
2. Each dirty row is recomputed from **all** its raw rows and replaces the stored one (delete +
   insert in one transaction). Recomputing, not merging, is what makes the result independent
   of arrival order and of duplicates (raw rows are unique by natural key).
3. The watermark advances to ``now() - grace``. The grace period covers collector transactions
   that started (and stamped ``ingested_at = now()``) before this run but commit after it; rows
   in the overlap are simply recomputed again next time (idempotent).
4. Only days whose raw rows still exist are rebuilt: nothing before the first whole day after
   the raw table's retention horizon (``raw_retention_horizons``, moved by ``collector retention
   run``) and, in a full rebuild, nothing before the day of its oldest raw row. A late reading
   in a dropped range would otherwise replace the row's aggregates with ones computed from that
   reading alone; such readings are logged and left out.

Storage (migration 0050): the buckets of one (device, signal, day) share one row, each
statistic a bytea of fixed-width big-endian values in hour order; columns a single-reading
bucket would repeat hold the other buckets only. :data:`NUMERIC_PACK` and
:data:`CATEGORICAL_PACK` say how; :func:`bucket_rows` unpacks rows for people and tests.

Speed: work is cut into week slices of event time aligned with the raw chunks (one scan of a
chunk per slice), each in its own transaction holding the consent gate shared; with a database
URL, ``jobs`` connections run slices side by side (a backend each, so several cores).

The per-bucket aggregate expressions live here once and the point-in-time engine reuses them to
recompute buckets "as they were at T", so a rollup and an engine recompute of the same rows are
the same numbers.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import psycopg
from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from hearth.db import Conn
from hearth.ledger import GATE_DERIVED, gate_sql
from hearth.signals import LINK_SIGNALS

log = logging.getLogger(__name__)

WATERMARK_NAME = "hourly"
DEFAULT_GRACE = timedelta(seconds=60)
DEFAULT_JOBS = 2  # slices side by side: a backend per core of a small machine
_LOCK_KEY = 0x524F4C4C  # "ROLL": one rollup run at a time
_DAY = timedelta(days=1)
_WEEK = timedelta(days=7)  # a slice: one raw chunk (7-day chunks aligned on the Unix epoch)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
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
    min(r.time) AS first_time, max(r.time) AS last_time, max(r.ingested_at) AS max_ingested_at,
    min(r.ingested_at) AS min_ingested_at
"""
NUMERIC_GROUP_BY = "GROUP BY 1, 2, 3, 4"

# Dominant value per bucket: most readings, ties to the smallest value (order independent).
CATEGORICAL_AGGREGATE_FROM = """
    SELECT bucket, device_id, user_id, signal, value, c::double precision / total AS share,
           total::integer AS n, max_ingested_at, min_ingested_at
      FROM (SELECT time_bucket(INTERVAL '1 hour', r.time) AS bucket, r.device_id, r.user_id,
                   r.signal, r.value, count(*) AS c,
                   sum(count(*)) OVER w AS total,
                   max(max(r.ingested_at)) OVER w AS max_ingested_at,
                   min(min(r.ingested_at)) OVER w AS min_ingested_at,
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

# Packing per-bucket rows ``b`` (columns of the aggregates above) into one row per (device,
# signal, day). ``b`` arrives sorted by the grouping keys then the bucket: a sorted aggregate
# needs no sort of its own and a hashed one sees each group's rows in arrival order, so with no
# parallel plan (the caller turns it off) every string_agg gets its row's buckets in hour order.
_HOUR_BYTE = "set_byte('\\x00'::bytea, 0, extract(hour FROM b.bucket AT TIME ZONE 'UTC')::int)"
_MULTI = "FILTER (WHERE b.n <> 1), ''::bytea)"
NUMERIC_PACK = f"""
    b.day, b.device_id, b.user_id, b.signal, sum(b.n)::integer,
    string_agg({_HOUR_BYTE}, ''::bytea), string_agg(int4send(b.n), ''::bytea),
    string_agg(float8send(b.sum), ''::bytea),
    string_agg(timestamptz_send(b.first_time), ''::bytea),
    string_agg(timestamptz_send(b.max_ingested_at), ''::bytea),
    coalesce(string_agg(float8send(b.sumsq), ''::bytea) {_MULTI},
    coalesce(string_agg(float8send(b.min), ''::bytea) {_MULTI},
    coalesce(string_agg(float8send(b.max), ''::bytea) {_MULTI},
    coalesce(string_agg(float8send(b.first), ''::bytea) {_MULTI},
    coalesce(string_agg(float8send(b.last), ''::bytea) {_MULTI},
    coalesce(string_agg(timestamptz_send(b.last_time), ''::bytea) {_MULTI},
    min(b.max_ingested_at), max(b.max_ingested_at), min(b.min_ingested_at)
"""
NUMERIC_PACKED_COLUMNS = (
    "day, device_id, user_id, signal, readings, hours, n, sum, first_time, ingested, "
    "sumsq, min, max, first, last, last_time, known_at, max_ingested_at, first_ingested_at"
)
CATEGORICAL_PACK = f"""
    b.day, b.device_id, b.user_id, b.signal, sum(b.n)::integer,
    string_agg({_HOUR_BYTE}, ''::bytea), string_agg(int4send(b.n), ''::bytea),
    string_agg(int4send(octet_length(convert_to(b.value, 'UTF8'))), ''::bytea),
    string_agg(convert_to(b.value, 'UTF8'), ''::bytea),
    string_agg(timestamptz_send(b.max_ingested_at), ''::bytea),
    coalesce(string_agg(float8send(b.share), ''::bytea) {_MULTI},
    min(b.max_ingested_at), max(b.max_ingested_at), min(b.min_ingested_at)
"""
CATEGORICAL_PACKED_COLUMNS = (
    "day, device_id, user_id, signal, readings, hours, n, value_len, value, ingested, share, "
    "known_at, max_ingested_at, first_ingested_at"
)


def pack_sql(rollup: str, buckets: str) -> str:
    """INSERT the packed rows of per-bucket rows ``buckets`` (a query) into ``rollup``;
    the statement returns (rows, buckets, readings) written."""
    numeric = rollup == "rollup_numeric_hourly"
    pack, columns = (
        (NUMERIC_PACK, NUMERIC_PACKED_COLUMNS)
        if numeric
        else (CATEGORICAL_PACK, CATEGORICAL_PACKED_COLUMNS)
    )
    return f"""
    WITH ins AS (
        INSERT INTO {rollup} ({columns})
        SELECT {pack}
          FROM (SELECT time_bucket(INTERVAL '1 day', b.bucket) AS day, b.*
                  FROM ({buckets}) b
                 ORDER BY b.device_id, b.signal, b.user_id, 1, b.bucket) b
         GROUP BY b.device_id, b.signal, b.user_id, b.day
        RETURNING readings, octet_length(hours) AS buckets)
    SELECT count(*), coalesce(sum(buckets), 0), coalesce(sum(readings), 0) FROM ins
    """


# The household graph's sightings (migration 0071): per (device, signal, day, dominant value)
# of the two link signals, the hours the value was the bucket's dominant one as a bit mask and
# the row's latest and earliest ingest, from the same per-bucket rows as the packed rollup.
_LINK_SIGNALS_SQL = ", ".join(f"'{name}'" for name in LINK_SIGNALS)
_SIGHTINGS_SQL = """
    INSERT INTO network_sightings (day, device_id, user_id, signal, value, hours,
                                   max_ingested_at, first_ingested_at)
    SELECT time_bucket(INTERVAL '1 day', b.bucket), b.device_id, b.user_id, b.signal, b.value,
           bit_or(1 << extract(hour FROM b.bucket AT TIME ZONE 'UTC')::int),
           max(b.max_ingested_at), min(b.min_ingested_at)
      FROM ({buckets}) b
     GROUP BY 1, 2, 3, 4, 5
"""

# Which sightings a slice rewrites: every row of its days, or the rows of its dirty
# (device, signal, day) rows.
_SIGHTINGS_DELETE = {
    True: "WHERE o.day >= %(d0)s AND o.day < %(d1)s",
    False: """USING rollup_dirty d WHERE o.device_id = d.device_id AND o.signal = d.signal
              AND o.day = d.day AND o.day >= %(d0)s AND o.day < %(d1)s""",
}


def write_sightings(conn: Conn, buckets: str, params: Mapping[str, Any]) -> None:
    """Insert the network sightings of per-bucket categorical rows ``buckets`` (a query with
    the columns of :data:`CATEGORICAL_AGGREGATE_FROM`), after the caller deleted the
    sightings of their (device, signal, day) rows in the same transaction."""
    link = f"SELECT * FROM ({buckets}) a WHERE a.signal IN ({_LINK_SIGNALS_SQL})"
    conn.execute(_SIGHTINGS_SQL.format(buckets=link), params)


@dataclass(frozen=True)
class SliceDone:
    """One slice written: what the progress display adds up."""

    table: str
    days: int
    rows: int  # packed rows
    buckets: int
    readings: int  # raw readings summarised


@dataclass(frozen=True)
class RollupResult:
    numeric_buckets: int
    categorical_buckets: int
    watermark: datetime
    seconds: float
    rows: int = 0  # packed (device, signal, day) rows written
    readings: int = 0  # raw readings they summarise
    days: int = 0  # event-time days recomputed (per table)
    jobs: int = 1

    @property
    def readings_per_s(self) -> float:
        return self.readings / self.seconds if self.seconds > 0 else 0.0


@dataclass
class _Slice:
    raw: str
    rollup: str
    start: datetime  # first day recomputed
    end: datetime
    days: list[datetime] = field(default_factory=list)  # dirty days (incremental)


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
    database_url: str | None = None,
    jobs: int = DEFAULT_JOBS,
    progress: Callable[[SliceDone, int], None] | None = None,
) -> RollupResult:
    """Recompute every row touched by rows ingested since the watermark; advance it.

    Work is cut into week slices of event time (one raw chunk each), each recomputed in its
    own transaction against that week's raw rows only. With ``database_url``, ``jobs``
    connections of their own run slices side by side; without, ``conn`` runs them in turn.
    ``progress`` is called after each slice with it and the number of days in the run. An
    interrupted run leaves the watermark where it was, so the next run redoes the same slices
    (recompute is idempotent).

    ``full`` ignores the watermark and rebuilds every row from the oldest raw row on (after a
    restore, or when rows were written with a back-dated ``ingested_at``), dropping rows in that
    range whose raw rows are gone. Rows before the retention horizon's next day or the oldest
    raw row's day are history and stay as they are. Safe to run concurrently: runs serialise on
    an advisory lock.
    """
    started = time.monotonic()
    conn.execute("SELECT pg_advisory_lock(%s)", (_LOCK_KEY,))
    try:
        previous = None if full else read_watermark(conn)
        since: datetime | str = previous if previous is not None else "-infinity"
        # Taken before any scan: rows stamped later are picked up by the next run.
        row = conn.execute("SELECT now() - %s::interval", (grace,)).fetchone()
        assert row is not None
        new_watermark: datetime = row[0]  # type: ignore[assignment]
        everything = full or since == "-infinity"
        slices = [
            s
            for raw, rollup in _TABLES
            for s in _slices(conn, raw, rollup, since, everything, rebuild_floor(conn, raw))
        ]
        done = _run_slices(conn, slices, since, everything, database_url, jobs, progress)
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
    used = min(jobs, len(slices)) if database_url and jobs > 1 else 1
    result = RollupResult(
        numeric_buckets=sum(d.buckets for d in done if d.table == _TABLES[0][1]),
        categorical_buckets=sum(d.buckets for d in done if d.table == _TABLES[1][1]),
        watermark=new_watermark,
        seconds=time.monotonic() - started,
        rows=sum(d.rows for d in done),
        readings=sum(d.readings for d in done),
        days=sum(d.days for d in done),
        jobs=max(used, 1),
    )
    log.info(
        "rollups refreshed%s: %d days, %d raw readings into %d rows (%d numeric and %d "
        "categorical buckets) in %.2fs, %.0f readings/s on %d connection(s); watermark %s",
        " (full rebuild)" if full else "",
        result.days,
        result.readings,
        result.rows,
        result.numeric_buckets,
        result.categorical_buckets,
        result.seconds,
        result.readings_per_s,
        result.jobs,
        result.watermark.isoformat(),
    )
    return result


def rebuild_floor(conn: Conn, raw: str) -> datetime | None:
    """The first day whose rows may be rebuilt from ``raw``: the UTC day after its retention
    horizon (raw rows before it may have been dropped), or None when nothing was dropped."""
    row = conn.execute(
        "SELECT horizon FROM raw_retention_horizons WHERE hypertable = %s", (raw,)
    ).fetchone()
    if row is None:
        return None
    horizon: datetime = row[0]  # type: ignore[assignment]
    day = horizon.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    return day if day == horizon else day + _DAY


def _week(day: datetime) -> datetime:
    """Start of the raw chunk (7 days, aligned on the Unix epoch) holding ``day``."""
    return _EPOCH + (day - _EPOCH) // _WEEK * _WEEK


def _slices(
    conn: Conn,
    raw: str,
    rollup: str,
    since: datetime | str,
    everything: bool,
    floor: datetime | None,
) -> list[_Slice]:
    """The week slices to recompute. Incremental: the weeks holding days with rows ingested
    after ``since``, with those days. Everything: every week holding raw rows or (from the
    first raw row's day on) rollup rows. Days before ``floor`` are left out."""
    if everything:
        # Weeks with raw rows (their chunks: no scan), and weeks with rollup rows but no raw
        # rows left (to drop them) — yet never before the first raw row's day: rows older than
        # every raw row have nothing to be rebuilt from, and deleting them would destroy
        # history that retention kept.
        first_row = conn.execute(f"SELECT min(time) FROM {raw}").fetchone()
        first = first_row[0] if first_row else None
        if not isinstance(first, datetime):
            return []
        first_day = first.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
        rows = conn.execute(
            """SELECT range_start FROM timescaledb_information.chunks
                WHERE hypertable_schema = 'public' AND hypertable_name = %s""",
            (raw,),
        ).fetchall()
        weeks = {_week(r[0]) for r in rows if isinstance(r[0], datetime)}
        rows = conn.execute(
            f"SELECT DISTINCT day FROM {rollup} WHERE day >= %s", (first_day,)
        ).fetchall()
        weeks |= {_week(r[0]) for r in rows if isinstance(r[0], datetime)}
        low = max(first_day, floor) if floor is not None else first_day
        return [
            _Slice(raw, rollup, max(w, low), w + _WEEK) for w in sorted(weeks) if w + _WEEK > low
        ]
    rows = conn.execute(
        f"""SELECT DISTINCT time_bucket(INTERVAL '1 day', time) FROM {raw}
             WHERE ingested_at > %s ORDER BY 1""",
        (since,),
    ).fetchall()
    days: list[datetime] = [r[0] for r in rows if r[0] is not None]  # type: ignore[misc]
    kept = days if floor is None else [d for d in days if d >= floor]
    if len(kept) < len(days):
        log.warning(
            "rollups: %s has late rows on %d day(s) before %s (retention horizon); "
            "their rollups are kept as they were",
            raw,
            len(days) - len(kept),
            floor.isoformat() if floor else "",
        )
    by_week: dict[datetime, list[datetime]] = {}
    for d in kept:
        by_week.setdefault(_week(d), []).append(d)
    return [_Slice(raw, rollup, w, w + _WEEK, ds) for w, ds in sorted(by_week.items())]


def _run_slices(
    conn: Conn,
    slices: Sequence[_Slice],
    since: datetime | str,
    everything: bool,
    database_url: str | None,
    jobs: int,
    progress: Callable[[SliceDone, int], None] | None,
) -> list[SliceDone]:
    """Every slice, on ``conn`` or on ``jobs`` connections of their own; newest first (the
    days features read most), largest tables first within a week."""
    total_days = sum(_days(s, everything) for s in slices)
    todo = sorted(slices, key=lambda s: (s.start, s.raw), reverse=True)
    done: list[SliceDone] = []
    lock = threading.Lock()

    def finished(d: SliceDone) -> None:
        with lock:
            done.append(d)
            if progress is not None:
                progress(d, total_days)

    if not database_url or jobs <= 1 or len(todo) <= 1:
        for s in todo:
            finished(_refresh_slice(conn, s, since, everything))
        return done
    work: queue.SimpleQueue[_Slice] = queue.SimpleQueue()
    for s in todo:
        work.put(s)
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            with psycopg.connect(database_url, autocommit=True) as own:
                while not errors:
                    try:
                        s = work.get_nowait()
                    except queue.Empty:
                        return
                    finished(_refresh_slice(own, s, since, everything))
        except BaseException as exc:  # surfaced in the caller's thread below
            errors.append(exc)

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(min(jobs, len(todo)))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return done


def _days(s: _Slice, everything: bool) -> int:
    return (s.end - s.start) // _DAY if everything else len(s.days)


def _refresh_slice(conn: Conn, s: _Slice, since: datetime | str, everything: bool) -> SliceDone:
    """Recompute one slice's rows (every row of its days, or the dirty rows of its dirty
    days) in one transaction."""
    window = {"d0": s.start, "d1": s.end, "since": since, "days": s.days}
    with conn.transaction():
        # Shared consent gate (hearth.ledger): a purge waits for this slice to commit and
        # deletes what it wrote, and no slice reads rows a running purge is deleting.
        conn.execute(gate_sql(GATE_DERIVED))
        # A week's groups sort and hash comfortably in this much; no parallel plan (the
        # packing relies on arrival order, see NUMERIC_PACK); no JIT (compiling costs more
        # than these short scans save).
        conn.execute("SET LOCAL work_mem = '64MB'")
        conn.execute("SET LOCAL max_parallel_workers_per_gather = 0")
        conn.execute("SET LOCAL jit = off")
        where = "WHERE r.time >= %(d0)s AND r.time < %(d1)s"
        if everything:
            # Every row of the slice: aggregate its raw rows directly, no dirty set to join.
            # A full rebuild also drops rows whose raw rows are gone.
            conn.execute(f"DELETE FROM {s.rollup} WHERE day >= %(d0)s AND day < %(d1)s", window)
            source = f"{s.raw} r"
        else:
            conn.execute("DROP TABLE IF EXISTS rollup_dirty")
            conn.execute(
                f"""CREATE TEMP TABLE rollup_dirty ON COMMIT DROP AS
                    SELECT DISTINCT device_id, signal,
                           time_bucket(INTERVAL '1 day', time) AS day
                      FROM {s.raw}
                     WHERE time >= %(d0)s AND time < %(d1)s AND ingested_at > %(since)s
                       AND time_bucket(INTERVAL '1 day', time) = ANY(%(days)s)""",
                window,
            )
            conn.execute("ANALYZE rollup_dirty")
            conn.execute(
                f"""DELETE FROM {s.rollup} o USING rollup_dirty d
                     WHERE o.device_id = d.device_id AND o.signal = d.signal
                       AND o.day = d.day AND o.day >= %(d0)s AND o.day < %(d1)s""",
                window,
            )
            source = f"""{s.raw} r JOIN rollup_dirty d
                           ON r.device_id = d.device_id AND r.signal = d.signal
                          AND r.time >= d.day AND r.time < d.day + INTERVAL '1 day'"""
        if s.raw == "numeric_readings":
            buckets = f"SELECT {NUMERIC_AGGREGATE} FROM {source} {where} {NUMERIC_GROUP_BY}"
        else:
            buckets = CATEGORICAL_AGGREGATE_FROM.format(source=source, where=where)
            link_where = f"{where} AND r.signal IN ({_LINK_SIGNALS_SQL})"
            conn.execute(f"DELETE FROM network_sightings o {_SIGHTINGS_DELETE[everything]}", window)
            write_sightings(
                conn, CATEGORICAL_AGGREGATE_FROM.format(source=source, where=link_where), window
            )
        row = conn.execute(pack_sql(s.rollup, buckets), window).fetchone()
    rows, n_buckets, readings = (int(str(x)) for x in row) if row else (0, 0, 0)
    log.debug("rollups: %s %s: %d rows, %d buckets", s.rollup, s.start.date(), rows, n_buckets)
    return SliceDone(s.rollup, _days(s, everything), rows, n_buckets, readings)


@contextlib.contextmanager
def rollup_progress(
    enabled: bool = True,
) -> Iterator[Callable[[SliceDone, int], None] | None]:
    """A rich progress bar on stderr for :func:`refresh_rollups` (days done of the run's, raw
    readings per second, time left) as its ``progress`` callback; None when not ``enabled``."""
    if not enabled:
        yield None
        return
    bar = Progress(
        TextColumn("[bold]rollup"),
        BarColumn(),
        TextColumn("{task.completed:.0f}/{task.total:.0f} days"),
        TextColumn("{task.fields[rate]} readings/s"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),  # stdout keeps the command's key=value line
        transient=False,
    )
    started = time.monotonic()
    readings = 0
    with bar:
        task = bar.add_task("rollup", total=0, rate="-")

        def on_slice(done: SliceDone, total_days: int) -> None:
            nonlocal readings
            readings += done.readings
            rate = readings / max(time.monotonic() - started, 1e-9)
            bar.update(task, total=total_days, advance=done.days, rate=f"{rate:,.0f}")

        yield on_slice


# -- reading packed rows back, one bucket at a time (people, tests, tools) -------------------

_NUMERIC_BUCKET_FIELDS = (
    "bucket", "n", "sum", "sumsq", "min", "max", "first", "last", "first_time", "last_time",
    "max_ingested_at",
)  # fmt: skip
_CATEGORICAL_BUCKET_FIELDS = ("bucket", "value", "share", "n", "max_ingested_at")
_PG_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)


def _times(blob: bytes) -> list[datetime]:
    return [_PG_EPOCH + timedelta(microseconds=int(us)) for us in np.frombuffer(blob, dtype=">i8")]


def bucket_rows(
    conn: Conn, rollup: str, device_id: str, signal: str | None = None
) -> list[dict[str, object]]:
    """The hourly buckets of one device (and signal) in ``rollup`` unpacked, in (bucket,
    signal) order: per bucket ``signal``, ``user_id`` and the per-bucket fields (numeric:
    n, sum, sumsq, min, max, first, last, first_time, last_time, max_ingested_at;
    categorical: value, share, n, max_ingested_at). For people and tests; the engine reads the
    packed bytes directly (features.engine)."""
    numeric = rollup == "rollup_numeric_hourly"
    cols = NUMERIC_PACKED_COLUMNS if numeric else CATEGORICAL_PACKED_COLUMNS
    rows = conn.execute(
        f"""SELECT {cols} FROM {rollup}
             WHERE device_id = %s AND (%s::text IS NULL OR signal = %s)""",
        (device_id, signal, signal),
    ).fetchall()
    out: list[dict[str, object]] = []
    for r in rows:
        rec: dict[str, Any] = dict(zip([c.strip() for c in cols.split(",")], r, strict=True))
        day: datetime = rec["day"]
        hours = list(bytes(rec["hours"]))
        n = np.frombuffer(bytes(rec["n"]), dtype=">i4").astype(int)
        multi = np.flatnonzero(n != 1)
        ingested = _times(bytes(rec["ingested"]))
        if numeric:
            total = np.frombuffer(bytes(rec["sum"]), dtype=">f8")
            firsts = _times(bytes(rec["first_time"]))
            per: dict[str, list[object]] = {
                "sum": [float(x) for x in total],
                "sumsq": [float(x) * float(x) for x in total],
                "min": [float(x) for x in total],
                "max": [float(x) for x in total],
                "first": [float(x) for x in total],
                "last": [float(x) for x in total],
                "first_time": list(firsts),
                "last_time": list(firsts),
            }
            for name in ("sumsq", "min", "max", "first", "last", "last_time"):
                blob = bytes(rec[name])
                values: list[object] = (
                    list(_times(blob))
                    if name == "last_time"
                    else [float(x) for x in np.frombuffer(blob, dtype=">f8")]
                )
                for j, v in zip(multi.tolist(), values, strict=True):
                    per[name][j] = v
        else:
            lengths = np.frombuffer(bytes(rec["value_len"]), dtype=">i4")
            blob = bytes(rec["value"])
            ends = np.cumsum(lengths)
            per = {
                "value": [
                    blob[e - ln : e].decode("utf-8")
                    for e, ln in zip(ends.tolist(), lengths.tolist(), strict=True)
                ],
                "share": [1.0] * len(hours),
            }
            shares = np.frombuffer(bytes(rec["share"]), dtype=">f8")
            for j, share in zip(multi.tolist(), shares.tolist(), strict=True):
                per["share"][j] = share
        for i, hour in enumerate(hours):
            bucket: dict[str, object] = {
                "bucket": day + timedelta(hours=hour),
                "signal": rec["signal"],
                "user_id": rec["user_id"],
                "n": int(n[i]),
                "max_ingested_at": ingested[i],
            }
            bucket.update({k: v[i] for k, v in per.items()})
            out.append(bucket)
    out.sort(key=lambda b: (str(b["bucket"]), str(b["signal"])))
    return out


def write_buckets(conn: Conn, rollup: str, buckets: Sequence[dict[str, object]]) -> None:
    """Store per-bucket rows (the fields :func:`bucket_rows` returns, ``device_id`` too;
    numeric ones may leave out what a single reading implies) packed, replacing the rows of
    their (device, signal, day), and the network sightings of categorical ones. For fixtures
    and repairs; the rollup job packs in SQL."""
    numeric = rollup == "rollup_numeric_hourly"
    fields = (
        ("bucket", "timestamptz"), ("device_id", "text"), ("user_id", "text"),
        ("signal", "text"), ("n", "int4"), ("max_ingested_at", "timestamptz"),
        ("min_ingested_at", "timestamptz"),
    ) + (
        (("sum", "float8"), ("sumsq", "float8"), ("min", "float8"), ("max", "float8"),
         ("first", "float8"), ("last", "float8"), ("first_time", "timestamptz"),
         ("last_time", "timestamptz"))
        if numeric else (("value", "text"), ("share", "float8"))
    )  # fmt: skip
    defaults: dict[str, Callable[[dict[str, object]], object]] = {
        "sumsq": lambda b: float(str(b["sum"])) ** 2,
        "min": lambda b: b["sum"],
        "max": lambda b: b["sum"],
        "first": lambda b: b["sum"],
        "last": lambda b: b["sum"],
        "first_time": lambda b: b["bucket"],
        "last_time": lambda b: b.get("first_time", b["bucket"]),
        "share": lambda b: 1.0,
        "min_ingested_at": lambda b: b["max_ingested_at"],
    }
    params = {
        name: [b[name] if name in b else defaults[name](b) for b in buckets] for name, _ in fields
    }
    unnest = ", ".join(f"%({name})s::{typ}[]" for name, typ in fields)
    names = ", ".join(name for name, _ in fields)
    source = f"SELECT * FROM unnest({unnest}) AS b({names})"
    with conn.transaction():
        conn.execute("SET LOCAL max_parallel_workers_per_gather = 0")
        conn.execute(
            f"""DELETE FROM {rollup} o USING (SELECT DISTINCT device_id, signal,
                       time_bucket(INTERVAL '1 day', bucket) AS day FROM ({source}) s) k
                 WHERE o.device_id = k.device_id AND o.signal = k.signal AND o.day = k.day""",
            params,
        )
        conn.execute(pack_sql(rollup, source), params)
        if not numeric:
            conn.execute(
                f"""DELETE FROM network_sightings o USING (SELECT DISTINCT device_id, signal,
                           time_bucket(INTERVAL '1 day', bucket) AS day FROM ({source}) s) k
                     WHERE o.device_id = k.device_id AND o.signal = k.signal AND o.day = k.day""",
                params,
            )
            write_sightings(conn, source, params)
