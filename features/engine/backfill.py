"""Many as-of times for a chunk of users from one read: the backfill's engine.

A backfill computes snapshots at every as_of T₁ < … < Tₙ of a range. Read one T at a time, a
chunk of users would read the same rollups n times (each 90-day grid overlaps the next one by
all but a day). Here a chunk's rollups are read **once**, with the single-date read's own
statement (:data:`features.engine.sql.ROLLUP_ARRAYS_SQL`) over the days from the first grid's
start to the last T and every signal of every device (consent is a property of T), and decoded
once into per-bucket arrays (:func:`features.engine.load.decode_rollups`): each bucket keeps
its ``ingested`` time and its row's ``first_ingested_at``, so every point-in-time rule is
decided per T afterwards. Tenure before the span comes from
:data:`features.engine.sql.FIRST_SEEN_SPAN_SQL`: per device and signal, the rows before the span
that can hold the earliest bucket known at some T of the range.

For each T, :func:`chunk_at` then takes from those arrays what the single-date read
(:func:`features.engine.load.load_chunk`) takes for T alone, with the same functions: consent
at T (:func:`features.engine.load.pairs_at`) as a per-(device, signal) mask, the buckets of
[T's grid start, T) whose row has something known at T, usable when they ended by T and were
ingested by T (:func:`features.engine.load.window_bins`), tenure from the buckets before T's
grid known at T (:func:`features.engine.load.first_known`), and pass 2 — late buckets, the
bucket holding T and rows newer than the rollup watermark recomputed from raw at T
(:func:`features.engine.load.correct`; a late bucket recomputed at an earlier T from the same
raw rows comes from the span's :class:`features.engine.load.RecomputeMemo`). The chunk is the
same bins in the same order, the same value dictionary, the same tenure and consent arrays, so
computing it (:func:`features.engine.compute.compute_chunk`) gives bit for bit the vectors of
a single-date run (docs/invariants.md#8; ``tests/integration/test_backfill.py``).
"""

from __future__ import annotations

import bisect
import functools
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import numpy as np

from features.catalogue.library.base import Chunk, LocalGrid
from features.engine.as_of import Knowledge, known_by
from features.engine.bins import rollup_buckets
from features.engine.compute import ChunkResults, compute_chunk
from features.engine.graph import load_sightings
from features.engine.grid import grid_bounds, local_grid
from features.engine.load import (
    Buckets,
    Pairs,
    RecomputeMemo,
    as_literals,
    build_chunk,
    correct,
    decode_rollups,
    device_params,
    first_known,
    known_by_us,
    pairs_at,
    read_at,
    read_rollups,
    recompute_memo,
    window_bins,
)
from features.engine.sql import FIRST_SEEN_SPAN_COLUMNS, FIRST_SEEN_SPAN_SQL
from features.engine.types import Timings
from features.engine.wire import fetch_arrays, pg_us
from hearth import ledger
from hearth.db import Conn

# Users per chunk of a backfill. A span holds the buckets of 90 days plus the range, up to
# twice a single-date chunk's, and its read peaks at about twice the arrays it keeps; half the
# single-date chunk keeps a worker near a single-date chunk's memory. Measured on 250
# synthetic users x 90 daily as_ofs: one chunk peaked at 640 MB and computed in 70.1 s, two
# chunks of 125 peaked at 355 MB and took 2 x 31.8 s (smaller arrays stay in cache).
DEFAULT_SPAN_USERS = 125

# The per-bucket columns tenure needs (earliest_known): numeric buckets also ``first_time``.
_TENURE = ("u", "d", "s", "bucket", "ingested")


@dataclass
class Span:
    """Everything read once for a chunk of users and every as_of of a range."""

    users: list[str]
    tzs: list[str]
    as_ofs: list[datetime]  # ascending, UTC
    knowledge: Knowledge
    watermark: datetime | None
    devices: list[ledger.UserDevice]
    buckets: Buckets  # every rollup bucket of the devices from ``start``'s day to the last T
    # Per kind, buckets that may be a device's earliest before some T's grid: those before the
    # span (FIRST_SEEN_SPAN_SQL) and the span's before the last T's grid.
    tenure: list[dict[str, np.ndarray]]
    start: datetime  # the first T's grid start: the span's first hour
    hours: int  # hours from ``start`` to the end of the last T's grid
    # Buckets recomputed from raw at one T, reused at later ones reading the same raw rows
    memo: RecomputeMemo

    @functools.cached_property
    def grid(self) -> LocalGrid:
        """The users' local clocks over the whole span; a T's grid is a slice of it."""
        return local_grid(self.tzs, self.start, self.hours)

    def grid_at(self, start: datetime, hours: int) -> LocalGrid:
        """What :func:`features.engine.grid.local_grid` gives for a grid inside the span: the
        same clock, local days counted from the grid's first one."""
        o = int((start - self.start) / timedelta(hours=1))
        g = self.grid
        day = g.day[:, o : o + hours]
        return LocalGrid(
            tod=np.ascontiguousarray(g.tod[:, o : o + hours]),
            day=day - day[:, :1],
            weekday=np.ascontiguousarray(g.weekday[:, o : o + hours]),
        )


def load_span(
    conn: Conn,
    users: Sequence[str],
    tzs: Sequence[str],
    as_ofs: Sequence[datetime],
    watermark: datetime | None,
    timings: Timings | None = None,
    knowledge: Knowledge = Knowledge.INGESTED,
) -> Span:
    """Read what every as_of in ``as_ofs`` needs for ``users`` (all known; ``tzs`` theirs)."""
    t0 = time.perf_counter()
    times = sorted({t.astimezone(UTC) for t in as_ofs})
    start, _, _ = grid_bounds(times[0])
    last_start, end, _ = grid_bounds(times[-1])
    devices = ledger.devices_of_users(conn, users)
    # The single-date read's parameters with every signal of every device, over the days from
    # the first grid's start to the last T.
    params = as_literals(device_params(users, devices, ["*"] * len(devices)))
    params.update(
        start=start,
        as_of=times[-1],
        known_by=known_by(times[0], knowledge),
        known_by_last=known_by(times[-1], knowledge),
    )
    with conn.cursor() as cur:
        sig_hash, arrays = read_rollups(cur, params)
        before = {
            kind: fetch_arrays(cur, sql, params, FIRST_SEEN_SPAN_COLUMNS[kind], per="hours")
            for kind, sql in FIRST_SEEN_SPAN_SQL.items()
        }
    sql_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    buckets = decode_rollups(arrays, sig_hash)
    last_start_us = pg_us(last_start)
    tenure = []
    for kind, inside in (("numeric", buckets.numeric), ("categorical", buckets.categorical)):
        earlier = rollup_buckets(before[kind], sig_hash)
        early = inside["bucket"] < last_start_us
        names = _TENURE + (("first_time",) if kind == "numeric" else ())
        tenure.append({n: np.concatenate([earlier[n], inside[n][early]]) for n in names})
    py_s = time.perf_counter() - t1
    hours = int((end - start) / timedelta(hours=1))
    t2 = time.perf_counter()
    memo = recompute_memo(conn, devices, buckets, start, hours, known_by_us(times[0], knowledge))
    if timings is not None:
        timings.add(sql_s=sql_s + time.perf_counter() - t2, python_s=py_s)
    return Span(
        list(users),
        list(tzs),
        times,
        knowledge,
        watermark,
        devices,
        buckets,
        tenure,
        start,
        hours,
        memo,
    )


def consent_at(conn: Conn, span: Span, as_of: datetime) -> Pairs:
    """The devices' (device, signal) pairs read at T and the users' consent at T, as the
    single-date read has them (:func:`features.engine.load.pairs_at`)."""
    return pairs_at(conn, span.users, as_of, span.devices)


def chunk_at(conn: Conn, span: Span, as_of: datetime, pairs: Pairs) -> Chunk:
    """The chunk :func:`features.engine.load.load_chunk` reads for ``span.users`` as of T
    (``pairs``: :func:`consent_at` T)."""
    read = read_at(pairs, len(span.users), as_of, span.watermark, span.knowledge)
    numeric, usable, categorical, cat_usable, values = window_bins(span.buckets, read)
    first_rows = first_known(span.tenure, read)
    numeric, categorical, values = correct(
        conn, read, numeric, usable, categorical, cat_usable, values, span.memo
    )
    grid = span.grid_at(read.start, read.hours)
    return build_chunk(read, grid, numeric, categorical, values, first_rows)


def compute_span(
    conn: Conn,
    span: Span,
    as_ofs: Sequence[datetime] | None = None,
    timings: Timings | None = None,
) -> Iterator[tuple[datetime, ChunkResults]]:
    """Every definition's arrays for the span's users at each of ``as_ofs`` (default: all
    the span's), ascending. Consent is read once per stretch of as_ofs between two of the
    users' consent events (it cannot change within one)."""
    times = sorted({t.astimezone(UTC) for t in as_ofs}) if as_ofs is not None else span.as_ofs
    if not times:
        return
    changes = ledger.consent_change_times(conn, span.users, times[0], times[-1])
    consent: Pairs | None = None
    stretch = -1
    for as_of in times:
        t0 = time.perf_counter()
        k = bisect.bisect_right(changes, as_of)
        if consent is None or k != stretch:
            consent, stretch = consent_at(conn, span, as_of), k
        chunk = chunk_at(conn, span, as_of, consent)
        # The household graph is read per as_of (its neighbours' sightings at T).
        chunk.sightings = load_sightings(
            conn, span.users, span.tzs, chunk, as_of, span.watermark, span.knowledge
        )
        t1 = time.perf_counter()
        results = compute_chunk(chunk)
        del chunk
        if timings is not None:
            timings.add(sql_s=t1 - t0, python_s=time.perf_counter() - t1)
        yield as_of, results
