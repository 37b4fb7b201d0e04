"""Loading a chunk of users as of T: everything its features need from data with event time
< T, ingest time ≤ T, of categories consented at T (docs/invariants.md#8).

Read path, per chunk of users and one as-of time T (one SQL round trip per kind of bin):

* the user's devices and the signals of the categories consented at T give (device, signal)
  pairs; only those are read (a withdrawn category contributes nothing);
* an hourly rollup bucket is used as is when it ended by T and every raw row in it was
  ingested by T (its ``ingested`` ≤ T; migration 0050 packs a day's buckets in one row);
* every other bucket — late rows ingested after T, the bucket containing T, rows newer than the
  rollup watermark — is recomputed from raw rows filtered by ``time < T AND ingested_at ≤ T``
  with the same aggregate expressions the rollup job uses (features.rollups);
* bins arrive as one binary-format row per device holding its packed rollup rows end to end,
  decoded by ``np.frombuffer`` (no Python object per bin; see :mod:`features.engine.sql`).

The feature functions (features.catalogue.library) then run vectorised over the chunk.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import numpy as np
import psycopg

from features.catalogue.library.base import CategoricalBins, Chunk, NumericBins
from features.engine.as_of import Knowledge, known_by
from features.engine.bins import (
    SIGNAL_INDEX,
    SIGNAL_NAMES,
    add_categorical_rows,
    add_numeric_rows,
    bin_key,
    categorical_from_arrays,
    earliest_known,
    fill_single_readings,
    numeric_from_arrays,
    rollup_rows,
    select_categorical,
)
from features.engine.grid import grid_bounds, local_grid
from features.engine.sql import (
    ARRAY_COLUMNS,
    FIRST_SEEN_COLUMNS,
    FIRST_SEEN_SQL,
    NEW_RAW_SQL,
    RECOMPUTE_SQL,
    ROLLUP_ARRAYS_SQL,
    SIGNAL_HASHES_SQL,
)
from features.engine.types import Timings
from features.engine.wire import array_literal, fetch_arrays, pg_us, text_codes
from hearth import ledger
from hearth.db import Conn
from hearth.signals import Category, stored_signals

Cursor = psycopg.Cursor[tuple[object, ...]]
_PG_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class _Pairs:
    """A chunk's devices and the (device, signal) pairs to read: ``params`` name them for the
    statements; per category, which users consented at T and which have withdrawn since."""

    params: dict[str, object]
    devices: list[ledger.UserDevice]
    consented: dict[Category, np.ndarray]
    withdrawn: dict[Category, np.ndarray]


def _pairs(conn: Conn, users: Sequence[str], as_of: datetime) -> _Pairs:
    """Parameters naming the chunk's devices and, per device, the signals consented at T.

    A category consented at T but withdrawn since counts as not consented: the withdrawal
    purged its data, so what is left of it would read as a confident "nothing happened".
    """
    consent = ledger.consented_categories_many(conn, users, as_of)
    since = ledger.categories_withdrawn_after(conn, users, as_of)
    lost = {u: consent[u] & since[u] for u in consent.keys() & since.keys()}
    for u, gone in lost.items():
        consent[u] = consent[u] - gone
    devices = ledger.devices_of_users(conn, users)
    uidx = {u: i for i, u in enumerate(users)}
    signals_of: dict[frozenset[Category], str] = {frozenset(Category): "*"}
    d_signals = []
    for dev in devices:
        cats = frozenset(consent.get(dev.user_id, ()))
        if cats not in signals_of:
            stored = {name for c in cats for name in stored_signals(c)}
            signals_of[cats] = ",".join(n for n in SIGNAL_NAMES if n in stored)
        d_signals.append(signals_of[cats])
    params: dict[str, object] = {
        "d_device": [d.device_id for d in devices],
        "d_user": [d.user_id for d in devices],
        "d_uidx": [uidx[d.user_id] for d in devices],
        "d_didx": list(range(len(devices))),
        "d_signals": d_signals,
        "s_name": list(SIGNAL_INDEX),
        "s_idx": list(SIGNAL_INDEX.values()),
    }
    consented = {
        c: np.array([c in consent.get(u, ()) for u in users], dtype=bool) for c in Category
    }
    withdrawn = {c: np.array([c in lost.get(u, ()) for u in users], dtype=bool) for c in Category}
    return _Pairs(params, devices, consented, withdrawn)


@dataclass(frozen=True)
class _Read:
    """What one chunk's read as of T needs: its devices and consent, the statements'
    parameters, the grid, and whether raw rows may be newer than the rollups."""

    pairs: _Pairs
    params: dict[str, object]
    start: datetime
    as_of: datetime
    hours: int
    n_users: int
    knowledge: Knowledge
    check_new_raw: bool

    @property
    def known_by_us(self) -> int:
        """The latest ``ingested_at`` known at T as binary timestamptz (bins compare it)."""
        at = known_by(self.as_of, self.knowledge)
        return pg_us(at) if isinstance(at, datetime) else np.iinfo(np.int64).max


def _plan(
    conn: Conn,
    users: Sequence[str],
    as_of: datetime,
    watermark: datetime | None,
    knowledge: Knowledge,
) -> _Read:
    start, _, hours = grid_bounds(as_of)
    pairs = _pairs(conn, users, as_of)
    params: dict[str, object] = {
        k: array_literal(v) if isinstance(v, list) else v for k, v in pairs.params.items()
    }
    params.update(
        start=start,
        as_of=as_of,
        known_by=known_by(as_of, knowledge),
        watermark=watermark or "-infinity",
    )
    # Replayed history (EVENT) may hold rows ingested after the watermark at any past T.
    check_new_raw = watermark is None or watermark < as_of or knowledge is Knowledge.EVENT
    return _Read(pairs, params, start, as_of, hours, len(users), knowledge, check_new_raw)


def load_chunk(
    conn: Conn,
    users: Sequence[str],
    tzs: Sequence[str],
    as_of: datetime,
    watermark: datetime | None,
    timings: Timings | None = None,
    knowledge: Knowledge = Knowledge.INGESTED,
) -> Chunk:
    """Read everything the features of ``users`` (all known) need as of ``as_of``.

    Pass 1 streams the rollups; buckets not usable as is (late rows, the bucket containing
    T) and buckets with raw rows newer than the rollup watermark are recomputed from raw in
    pass 2 and replace their rollup rows.
    """
    t0 = time.perf_counter()
    read = _plan(conn, users, as_of, watermark, knowledge)
    with conn.cursor() as cur:
        sig_hash, arrays, first_arrays = _read_rollups(cur, read.params)
    sql_s = time.perf_counter() - t0

    t1 = time.perf_counter()
    numeric, usable, categorical, cat_usable, values = _decode_rollups(arrays, sig_hash, read)
    first_rows = _first_known(first_arrays, read)
    py_s = time.perf_counter() - t1

    # Pass 2: corrections from raw rows (usually nothing to do).
    t2 = time.perf_counter()
    keep, fixed_numeric = _recomputed(conn, "numeric", numeric, usable, read)
    if keep is not None:
        numeric = numeric.select(keep)
    keep, fixed_cat = _recomputed(conn, "categorical", categorical, cat_usable, read)
    if keep is not None:
        categorical = select_categorical(categorical, keep)
    sql_s += time.perf_counter() - t2

    t3 = time.perf_counter()
    if fixed_numeric:
        numeric = add_numeric_rows(numeric, fixed_numeric)
    if fixed_cat:
        categorical, values = add_categorical_rows(categorical, values, fixed_cat)
    chunk = _chunk(read, tzs, numeric, categorical, values, first_rows)
    if timings is not None:
        timings.add(sql_s=sql_s, python_s=py_s + time.perf_counter() - t3)
    return chunk


_Arrays = dict[str, dict[str, np.ndarray]]  # per kind, fetched columns


def _read_rollups(
    cur: Cursor, params: dict[str, object]
) -> tuple[dict[int, int], _Arrays, _Arrays]:
    """Pass 1: each signal's hash, the packed rollups of each kind in the grid, and the rows
    telling each device's first reading before it."""
    sig_hash = {
        int(str(h)): int(str(i)) for h, i in cur.execute(SIGNAL_HASHES_SQL, params).fetchall()
    }
    arrays = {
        kind: fetch_arrays(cur, sql, params, ARRAY_COLUMNS[kind], per="hours")
        for kind, sql in ROLLUP_ARRAYS_SQL.items()
    }
    first = {
        kind: fetch_arrays(cur, sql, params, FIRST_SEEN_COLUMNS[kind], per="hours")
        for kind, sql in FIRST_SEEN_SQL.items()
    }
    return sig_hash, arrays, first


def _decode_rollups(
    arrays: _Arrays, sig_hash: dict[int, int], read: _Read
) -> tuple[NumericBins, np.ndarray, CategoricalBins, np.ndarray, list[str]]:
    """Pass 1's arrays (consumed) as bins, each kind with whether each bin is usable as it is
    (:func:`features.engine.bins.rollup_rows`), and the categorical value dictionary."""
    known_by_us = read.known_by_us
    cols = fill_single_readings(arrays.pop("numeric"), "numeric")
    cols, usable = rollup_rows(cols, sig_hash, read.start, read.as_of, read.hours, known_by_us)
    numeric = numeric_from_arrays(cols)
    cols = fill_single_readings(arrays.pop("categorical"), "categorical")
    cols["value"], dictionary = text_codes(cols["value"], cols.pop("value_len"))
    cols, cat_usable = rollup_rows(cols, sig_hash, read.start, read.as_of, read.hours, known_by_us)
    categorical, values = categorical_from_arrays(cols, dictionary)
    return numeric, usable, categorical, cat_usable, values


def _first_known(first: _Arrays, read: _Read) -> list[tuple[int, int, datetime]]:
    """(user, device, time) of each device's earliest reading before the grid known at T."""
    parts = [earliest_known(cols, read.start, read.known_by_us) for cols in first.values()]
    u = np.concatenate([p[0] for p in parts])
    d = np.concatenate([p[1] for p in parts])
    t = np.concatenate([p[2] for p in parts])
    best: dict[int, tuple[int, int]] = {}
    for ui, di, ti in zip(u.tolist(), d.tolist(), t.tolist(), strict=True):
        if di not in best or ti < best[di][1]:
            best[di] = (ui, ti)
    return [(ui, di, _PG_EPOCH + timedelta(microseconds=ti)) for di, (ui, ti) in best.items()]


def _recomputed(
    conn: Conn,
    kind: str,
    bins: NumericBins | CategoricalBins,
    usable: np.ndarray,
    read: _Read,
) -> tuple[np.ndarray | None, list[tuple[object, ...]]]:
    """Pass 2 for one kind: which rollup bins to keep (None: all of them) and the buckets
    recomputed from raw rows in place of the others."""
    stale = (bins.d[~usable], bins.s[~usable], bins.h[~usable])
    keys = _dirty_keys(conn, kind, read, stale)
    if keys.size == 0:
        return (None if usable.all() else usable), []
    drop = np.isin(
        bin_key(bins.d, bins.s, bins.h, read.hours),
        bin_key(keys[:, 0], keys[:, 1], keys[:, 2], read.hours),
    )
    return usable & ~drop, _recompute(conn, kind, keys, read)


def _dirty_keys(
    conn: Conn,
    kind: str,
    read: _Read,
    stale: tuple[np.ndarray, np.ndarray, np.ndarray],
) -> np.ndarray:
    """(device, signal, hour) keys [K, 3] of buckets to recompute from raw."""
    parts = [np.stack(stale, axis=1)] if stale[0].size else []
    if read.check_new_raw:
        rows = conn.execute(NEW_RAW_SQL[kind], read.params).fetchall()
        if rows:
            parts.append(np.array(rows, dtype=np.int64))
    if not parts:
        return np.zeros((0, 3), dtype=np.int64)
    return np.unique(np.concatenate(parts).astype(np.int64), axis=0)


def _recompute(conn: Conn, kind: str, keys: np.ndarray, read: _Read) -> list[tuple[object, ...]]:
    pairs, start, as_of = read.pairs, read.start, read.as_of
    devices = [pairs.devices[int(d)] for d in keys[:, 0]]
    params = {
        "k_device": [d.device_id for d in devices],
        "k_user": [d.user_id for d in devices],
        "k_signal": [SIGNAL_NAMES[int(s)] for s in keys[:, 1]],
        "k_bucket": [start + timedelta(hours=int(h)) for h in keys[:, 2]],
        "k_uidx": [int(pairs.params["d_uidx"][int(d)]) for d in keys[:, 0]],  # type: ignore[index]
        "k_didx": [int(d) for d in keys[:, 0]],
        "k_sidx": [int(s) for s in keys[:, 1]],
        "start": start,
        "as_of": as_of,
        "known_by": known_by(as_of, read.knowledge),
    }
    return conn.execute(RECOMPUTE_SQL[kind], params).fetchall()


def _chunk(
    read: _Read,
    tzs: Sequence[str],
    numeric: NumericBins,
    categorical: CategoricalBins,
    values: list[str],
    first_rows: Sequence[tuple[int, int, datetime]],
) -> Chunk:
    end_hours = (read.as_of - read.start).total_seconds() / 3600.0
    first_seen, dev_first_seen = _first_seen(read, numeric, categorical, first_rows, end_hours)
    retired = np.array(
        [
            (read.as_of - d.retired_at).total_seconds() / 3600.0
            if d.retired_at is not None and d.retired_at <= read.as_of
            else np.nan
            for d in read.pairs.devices
        ],
        dtype=np.float64,
    )
    return Chunk(
        n_users=read.n_users,
        hours=read.hours,
        numeric=numeric,
        categorical=categorical,
        categorical_values=values,
        grid=local_grid(tzs, read.start, read.hours),
        signal_index=SIGNAL_INDEX,
        first_seen_hours=first_seen,
        consented=read.pairs.consented,
        withdrawn=read.pairs.withdrawn,
        device_kinds=[d.kind for d in read.pairs.devices],
        device_owner=np.asarray(read.pairs.params["d_uidx"], dtype=np.int64),
        device_first_seen_hours=dev_first_seen,
        device_retired_hours=retired,
        as_of_hours=end_hours,
    )


def _first_seen(
    read: _Read,
    numeric: NumericBins,
    categorical: CategoricalBins,
    first_rows: Sequence[tuple[int, int, datetime]],
    end_hours: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Tenure, per user and per device (hours before T): the first bin in the grid, or earlier
    history from the rollups."""
    first_h = np.full(read.n_users, np.inf)
    dev_first_h = np.full(len(read.pairs.devices), np.inf)
    for b in (numeric, categorical):
        if b.u.size:
            np.minimum.at(first_h, b.u, b.h.astype(np.float64))
            np.minimum.at(dev_first_h, b.d, b.h.astype(np.float64))
    first_seen = np.where(np.isinf(first_h), np.nan, end_hours - first_h)
    dev_first_seen = np.where(np.isinf(dev_first_h), np.nan, end_hours - dev_first_h)
    for ui, di, t in first_rows:
        before = (read.as_of - t).total_seconds() / 3600.0
        first_seen[ui] = np.fmax(first_seen[ui], before)
        dev_first_seen[di] = before
    return first_seen, dev_first_seen
