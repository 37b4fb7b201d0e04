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

import functools
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import numpy as np
import psycopg

from features.catalogue.library.base import CategoricalBins, Chunk, LocalGrid, NumericBins
from features.engine.as_of import Knowledge, known_by
from features.engine.bins import (
    SIGNAL_INDEX,
    SIGNAL_NAMES,
    Columns,
    add_categorical_rows,
    add_numeric_rows,
    bin_key,
    categorical_from_arrays,
    columns_of,
    concat_columns,
    earliest_known,
    fill_single_readings,
    numeric_from_arrays,
    rollup_buckets,
    select_categorical,
    take_columns,
    window_rows,
)
from features.engine.grid import grid_bounds, local_grid
from features.engine.sql import (
    ARRAY_COLUMNS,
    FIRST_SEEN_COLUMNS,
    FIRST_SEEN_SQL,
    INGEST_TIMES_SQL,
    NEW_RAW_SQL,
    RECOMPUTE_SCAN_SQL,
    RECOMPUTE_SQL,
    ROLLUP_ARRAYS_SQL,
    SIGNAL_HASHES_SQL,
)
from features.engine.types import Timings
from features.engine.wire import HOUR_US, array_literal, fetch_arrays, pg_us, text_codes
from hearth import ledger
from hearth.db import Conn
from hearth.signals import Category, stored_signals

Cursor = psycopg.Cursor[tuple[object, ...]]
_PG_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)
_SIGNAL_NAME_ARRAY = np.asarray(SIGNAL_NAMES)


@dataclass(frozen=True)
class Pairs:
    """A chunk's devices and the (device, signal) pairs to read: ``params`` name them for the
    statements; per category, which users consented at T and which have withdrawn since."""

    params: dict[str, object]
    devices: list[ledger.UserDevice]
    consented: dict[Category, np.ndarray]
    withdrawn: dict[Category, np.ndarray]

    @functools.cached_property
    def _readable(self) -> np.ndarray:
        """[device, signal index] → read; the last column stands for signals outside the
        catalogue."""
        table = np.zeros((len(self.devices), len(SIGNAL_INDEX) + 1), dtype=bool)
        signals_of: list[str] = self.params["d_signals"]  # type: ignore[assignment]
        for di, signals in enumerate(signals_of):
            if signals == "*":
                table[di, :] = True
            elif signals:
                table[di, [SIGNAL_INDEX[n] for n in signals.split(",")]] = True
        return table

    @functools.cached_property
    def _columns(self) -> dict[str, np.ndarray]:
        return {k: np.asarray(self.params[k]) for k in ("d_device", "d_user", "d_uidx")}

    def column(self, name: str) -> np.ndarray:
        """A ``d_*`` parameter (device id, user id, user index) as a numpy array, to index by
        device."""
        return self._columns[name]

    def readable(self, d: np.ndarray, s: np.ndarray) -> np.ndarray:
        """Whether each (device index, signal index; -1: outside the catalogue) is read at
        T: what the statements' ``d_signals`` select (``'*'``: every signal, even unknown
        ones)."""
        out: np.ndarray = self._readable[d, np.where(s < 0, len(SIGNAL_INDEX), s)]
        return out


def device_params(
    users: Sequence[str], devices: Sequence[ledger.UserDevice], d_signals: Sequence[str]
) -> dict[str, object]:
    """The statements' ``d_*`` and ``s_*`` parameters (:mod:`features.engine.sql`), as lists:
    the devices of ``users``, each with the signals it reads (``'*'``: all)."""
    uidx = {u: i for i, u in enumerate(users)}
    return {
        "d_device": [d.device_id for d in devices],
        "d_user": [d.user_id for d in devices],
        "d_uidx": [uidx[d.user_id] for d in devices],
        "d_didx": list(range(len(devices))),
        "d_signals": list(d_signals),
        "s_name": list(SIGNAL_INDEX),
        "s_idx": list(SIGNAL_INDEX.values()),
    }


def as_literals(params: dict[str, object]) -> dict[str, object]:
    """``params`` with every list as one PostgreSQL array literal (wire.array_literal)."""
    return {k: array_literal(v) if isinstance(v, list) else v for k, v in params.items()}


def pairs_at(
    conn: Conn, users: Sequence[str], as_of: datetime, devices: list[ledger.UserDevice]
) -> Pairs:
    """Parameters naming the chunk's devices (those of ``users``) and, per device, the
    signals consented at T.

    A category consented at T but withdrawn since counts as not consented: the withdrawal
    purged its data, so what is left of it would read as a confident "nothing happened".
    """
    consent = ledger.consented_categories_many(conn, users, as_of)
    since = ledger.categories_withdrawn_after(conn, users, as_of)
    lost = {u: consent[u] & since[u] for u in consent.keys() & since.keys()}
    for u, gone in lost.items():
        consent[u] = consent[u] - gone
    signals_of: dict[frozenset[Category], str] = {frozenset(Category): "*"}
    d_signals = []
    for dev in devices:
        cats = frozenset(consent.get(dev.user_id, ()))
        if cats not in signals_of:
            stored = {name for c in cats for name in stored_signals(c)}
            signals_of[cats] = ",".join(n for n in SIGNAL_NAMES if n in stored)
        d_signals.append(signals_of[cats])
    params = device_params(users, devices, d_signals)
    consented = {
        c: np.array([c in consent.get(u, ()) for u in users], dtype=bool) for c in Category
    }
    withdrawn = {c: np.array([c in lost.get(u, ()) for u in users], dtype=bool) for c in Category}
    return Pairs(params, devices, consented, withdrawn)


@dataclass(frozen=True)
class Read:
    """What one chunk's read as of T needs: its devices and consent, the statements'
    parameters, the grid, and whether raw rows may be newer than the rollups."""

    pairs: Pairs
    params: dict[str, object]
    start: datetime
    as_of: datetime
    hours: int
    n_users: int
    knowledge: Knowledge
    check_new_raw: bool

    @property
    def known_by_us(self) -> int:
        return known_by_us(self.as_of, self.knowledge)


def known_by_us(as_of: datetime, knowledge: Knowledge) -> int:
    """The latest ``ingested_at`` known at T as binary timestamptz (bins compare it)."""
    at = known_by(as_of, knowledge)
    return pg_us(at) if isinstance(at, datetime) else int(np.iinfo(np.int64).max)


def read_at(
    pairs: Pairs,
    n_users: int,
    as_of: datetime,
    watermark: datetime | None,
    knowledge: Knowledge,
) -> Read:
    """The read as of T of the chunk of ``n_users`` users whose devices and consent at T
    ``pairs`` holds."""
    start, _, hours = grid_bounds(as_of)
    params = as_literals(pairs.params)
    params.update(
        start=start,
        as_of=as_of,
        known_by=known_by(as_of, knowledge),
        watermark=watermark or "-infinity",
    )
    # Replayed history (EVENT) may hold rows ingested after the watermark at any past T.
    check_new_raw = watermark is None or watermark < as_of or knowledge is Knowledge.EVENT
    return Read(pairs, params, start, as_of, hours, n_users, knowledge, check_new_raw)


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
    pairs = pairs_at(conn, users, as_of, ledger.devices_of_users(conn, users))
    read = read_at(pairs, len(users), as_of, watermark, knowledge)
    with conn.cursor() as cur:
        sig_hash, arrays = read_rollups(cur, read.params)
        first_arrays = {
            kind: fetch_arrays(cur, sql, read.params, FIRST_SEEN_COLUMNS[kind], per="hours")
            for kind, sql in FIRST_SEEN_SQL.items()
        }
    sql_s = time.perf_counter() - t0

    t1 = time.perf_counter()
    buckets = decode_rollups(arrays, sig_hash)
    numeric, usable, categorical, cat_usable, values = window_bins(buckets, read)
    first_rows = first_known(
        [rollup_buckets(cols, sig_hash) for cols in first_arrays.values()], read
    )
    py_s = time.perf_counter() - t1

    # Pass 2: corrections from raw rows (usually nothing to do).
    t2 = time.perf_counter()
    numeric, categorical, values = correct(
        conn, read, numeric, usable, categorical, cat_usable, values
    )
    sql_s += time.perf_counter() - t2

    t3 = time.perf_counter()
    chunk = build_chunk(
        read, local_grid(tzs, read.start, read.hours), numeric, categorical, values, first_rows
    )
    if timings is not None:
        timings.add(sql_s=sql_s, python_s=py_s + time.perf_counter() - t3)
    return chunk


_Arrays = dict[str, dict[str, np.ndarray]]  # per kind, fetched columns


def read_rollups(cur: Cursor, params: dict[str, object]) -> tuple[dict[int, int], _Arrays]:
    """Pass 1: each signal's hash and the packed rollups of each kind over the days from
    ``start``'s to ``as_of`` (:data:`features.engine.sql.ROLLUP_ARRAYS_SQL`)."""
    sig_hash = {
        int(str(h)): int(str(i)) for h, i in cur.execute(SIGNAL_HASHES_SQL, params).fetchall()
    }
    arrays = {
        kind: fetch_arrays(cur, sql, params, ARRAY_COLUMNS[kind], per="hours")
        for kind, sql in ROLLUP_ARRAYS_SQL.items()
    }
    return sig_hash, arrays


@dataclass
class Buckets:
    """Pass 1's rollups decoded: per kind, one entry per bucket
    (:func:`features.engine.bins.rollup_buckets`); categorical values as codes into
    ``dictionary`` (UTF-8)."""

    numeric: dict[str, np.ndarray]
    categorical: dict[str, np.ndarray]
    dictionary: list[bytes]


def decode_rollups(arrays: _Arrays, sig_hash: dict[int, int]) -> Buckets:
    """Pass 1's arrays (consumed) as buckets."""
    numeric = rollup_buckets(fill_single_readings(arrays.pop("numeric"), "numeric"), sig_hash)
    cols = fill_single_readings(arrays.pop("categorical"), "categorical")
    cols["value"], dictionary = text_codes(cols["value"], cols.pop("value_len"))
    return Buckets(numeric, rollup_buckets(cols, sig_hash), dictionary)


def window_bins(
    buckets: Buckets, read: Read
) -> tuple[NumericBins, np.ndarray, CategoricalBins, np.ndarray, list[str]]:
    """The bins a read as of T takes from ``buckets`` (not modified; of the (device, signal)
    pairs it reads), each kind with whether each bin is usable as it is
    (:func:`features.engine.bins.window_rows`), and the categorical value dictionary."""
    kb, n, c = read.known_by_us, buckets.numeric, buckets.categorical
    readable = read.pairs.readable
    cols, usable = window_rows(n, read.start, read.as_of, kb, readable(n["d"], n["s"]))
    numeric = numeric_from_arrays(cols)
    cols, cat_usable = window_rows(c, read.start, read.as_of, kb, readable(c["d"], c["s"]))
    categorical, values = categorical_from_arrays(cols, buckets.dictionary)
    return numeric, usable, categorical, cat_usable, values


def first_known(
    tenure: Sequence[dict[str, np.ndarray]], read: Read
) -> list[tuple[int, int, datetime]]:
    """(user, device, time) of each device's earliest reading before the grid known at T, of
    the signals it reads at T, from buckets (:func:`features.engine.bins.rollup_buckets` of
    FIRST_SEEN rows; with ``s``, the reads' consent is applied here)."""
    parts = [
        earliest_known(
            b,
            read.start,
            read.known_by_us,
            read.pairs.readable(b["d"], b["s"]) if "s" in b else None,
        )
        for b in tenure
    ]
    u = np.concatenate([p[0] for p in parts])
    d = np.concatenate([p[1] for p in parts])
    t = np.concatenate([p[2] for p in parts])
    best: dict[int, tuple[int, int]] = {}
    for ui, di, ti in zip(u.tolist(), d.tolist(), t.tolist(), strict=True):
        if di not in best or ti < best[di][1]:
            best[di] = (ui, ti)
    return [(ui, di, _PG_EPOCH + timedelta(microseconds=ti)) for di, (ui, ti) in best.items()]


def correct(
    conn: Conn,
    read: Read,
    numeric: NumericBins,
    usable: np.ndarray,
    categorical: CategoricalBins,
    cat_usable: np.ndarray,
    values: list[str],
    memo: RecomputeMemo | None = None,
) -> tuple[NumericBins, CategoricalBins, list[str]]:
    """Pass 2: the bins not usable as they are and those with raw rows newer than the rollup
    watermark replaced by their buckets recomputed from raw rows as of T (usually nothing to
    do); categorical codes into the returned dictionary. With ``memo`` (a backfill's) buckets
    recomputed at an earlier as_of from the same raw rows are taken from it."""
    keep, fixed_numeric = _recomputed(conn, "numeric", numeric, usable, read, memo)
    numeric = add_numeric_rows(numeric, fixed_numeric, keep)
    keep, fixed_cat = _recomputed(conn, "categorical", categorical, cat_usable, read, memo)
    if keep is not None:
        categorical = select_categorical(categorical, keep)
    if fixed_cat["d"].size:
        categorical, values = add_categorical_rows(categorical, values, fixed_cat)
    return numeric, categorical, values


def _recomputed(
    conn: Conn,
    kind: str,
    bins: NumericBins | CategoricalBins,
    usable: np.ndarray,
    read: Read,
    memo: RecomputeMemo | None = None,
) -> tuple[np.ndarray | None, Columns]:
    """Pass 2 for one kind: which rollup bins to keep (None: all of them) and the buckets
    recomputed from raw rows in place of the others, in (device, signal, hour) order."""
    stale = (bins.d[~usable], bins.s[~usable], bins.h[~usable])
    keys, codes = _dirty_keys(conn, kind, read, stale)
    if keys.size == 0:
        return (None if usable.all() else usable), columns_of(kind)
    drop = _find(codes, bin_key(bins.d, bins.s, bins.h, read.hours)) >= 0
    if memo is None:
        rows = _recompute(conn, kind, keys, read, bins)
    else:
        rows = memo.recompute(conn, kind, keys, read, bins)
    # One order however the rows came (one statement, or a memo and a statement): the bins'
    # order is the chunk's, and a backfill's chunk is the single-date run's bin for bin.
    return usable & ~drop, take_columns(rows, np.lexsort((rows["h"], rows["s"], rows["d"])))


def _dirty_keys(
    conn: Conn,
    kind: str,
    read: Read,
    stale: tuple[np.ndarray, np.ndarray, np.ndarray],
) -> tuple[np.ndarray, np.ndarray]:
    """(device, signal, hour) keys [K, 3] of buckets to recompute from raw, in that order,
    and their :func:`features.engine.bins.bin_key` codes (ascending)."""
    parts = [np.stack(stale, axis=1)] if stale[0].size else []
    if read.check_new_raw:
        rows = conn.execute(NEW_RAW_SQL[kind], read.params).fetchall()
        if rows:
            parts.append(np.array(rows, dtype=np.int64))
    if not parts:
        return np.zeros((0, 3), dtype=np.int64), np.zeros(0, dtype=np.int64)
    keys = np.concatenate(parts).astype(np.int64)
    # Distinct by code (ascending codes are (device, signal, hour) order): np.unique over
    # rows (axis=0) sorts a structured view, several times slower.
    codes, first = np.unique(
        bin_key(keys[:, 0], keys[:, 1], keys[:, 2], read.hours), return_index=True
    )
    return keys[first], codes


# Pass 2 scans the raw rows of a range instead of probing each key when the range holds at
# most this many raw rows per key (RECOMPUTE_SCAN_SQL's costs: ~45 µs a probe, ~0.5 µs a row).
SCAN_ROWS_PER_KEY = 50


def _key_params(
    keys: np.ndarray, device: np.ndarray, user: np.ndarray, uidx: np.ndarray, start: datetime
) -> dict[str, object]:
    """The ``k_*`` parameters of [K, 3] (device, signal, hour from ``start``) keys
    (:data:`features.engine.sql.RECOMPUTE_SQL`), given each device's id, user and user index,
    with ``k_devices``, ``lo`` and ``hi`` for the statements that scan the keys' devices' raw
    rows from the first key's hour to the end of the last one's."""
    d = keys[:, 0]
    params = as_literals(
        {
            "k_device": device[d].tolist(),
            "k_user": user[d].tolist(),
            "k_signal": _SIGNAL_NAME_ARRAY[keys[:, 1]].tolist(),
            "k_hour": keys[:, 2].tolist(),
            "k_uidx": uidx[d].tolist(),
            "k_didx": d.tolist(),
            "k_sidx": keys[:, 1].tolist(),
        }
    )
    params.update(
        start=start,
        k_devices=array_literal(np.unique(device[d]).tolist()),
        lo=start + timedelta(hours=int(keys[:, 2].min())),
        hi=start + timedelta(hours=int(keys[:, 2].max()) + 1),
    )
    return params


def _recompute(
    conn: Conn, kind: str, keys: np.ndarray, read: Read, bins: NumericBins | CategoricalBins
) -> Columns:
    column = read.pairs.column
    params = _key_params(keys, column("d_device"), column("d_user"), column("d_uidx"), read.start)
    params.update(as_of=read.as_of, known_by=known_by(read.as_of, read.knowledge))
    lo_h, hi_h = int(keys[:, 2].min()), int(keys[:, 2].max()) + 1
    # The raw rows a scan would read, from the rollups' counts of the keys' devices' buckets.
    in_range = np.isin(bins.d, keys[:, 0]) & (bins.h >= lo_h) & (bins.h < hi_h)
    scan = float(bins.n[in_range].sum()) <= SCAN_ROWS_PER_KEY * len(keys)
    sql = RECOMPUTE_SCAN_SQL[kind] if scan else RECOMPUTE_SQL[kind]
    return columns_of(kind, conn.execute(sql, params).fetchall())


def _versionable(
    code: np.ndarray, bounds: np.ndarray, times: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The memo's candidate keys (codes, offsets into ``times``, ingest times) less those
    whose versions would not fit an int64 (key code · _COUNTS + count): such a key is
    recomputed at every as_of, as without a memo."""
    per_key = np.diff(bounds)
    fits = (per_key < _COUNTS) & (code < np.iinfo(np.int64).max // _COUNTS)
    if fits.all():
        return code, bounds, times
    kept = np.concatenate([[0], np.cumsum(per_key[fits])]).astype(np.int64)
    return code[fits], kept, times[np.repeat(fits, per_key)]


def _no_versions(kind: str) -> tuple[np.ndarray, np.ndarray, Columns]:
    z = np.zeros(0, dtype=np.int64)
    return z, z, columns_of(kind)


def _find(haystack: np.ndarray, needles: np.ndarray) -> np.ndarray:
    """Each needle's index in ``haystack`` (distinct int64 codes, any order); -1 if absent."""
    if not haystack.size:
        return np.full(needles.size, -1, dtype=np.int64)
    order = np.argsort(haystack)
    p = order[np.minimum(np.searchsorted(haystack, needles, sorter=order), order.size - 1)]
    out: np.ndarray = np.where(haystack[p] == needles, p, -1)
    return out


# Versions code a key and its count of known rows as key · _COUNTS + count: counts of raw
# rows in one hourly bucket stay far below it (one a second is 3,600).
_COUNTS = 1 << 24


@dataclass
class RecomputeMemo:
    """Buckets recomputed from raw at one as_of of a backfill, reused at the later ones that
    read the same raw rows (features.engine.backfill).

    A bucket that ended by T is recomputed from its raw rows ingested by T
    (:data:`features.engine.sql.RECOMPUTE_SQL`). Its rows' ingest times, read once for the
    span (:data:`features.engine.sql.INGEST_TIMES_SQL`), tell how many of them are known at
    each T; two as_ofs that know as many know the same ones (a later T knows a superset), so
    the bucket recomputed at the first of them stands for the other. Late rows arriving after
    every T of a range (the usual case) make a bucket stale at all of them: it is recomputed
    once instead of at every as_of. Only cut-offs before ``read_us`` (when the ingest times
    were read) are reused: a row ingested later is not in them. A bucket that holds T, and
    keys outside the span's candidates, are recomputed as before.
    """

    start_us: int  # the span's first hour (binary timestamptz); keys count hours from it
    read_us: int  # the database clock when the ingest times were read, less a margin
    # Per kind: candidate keys ((device · signals + signal) · hours + hour, ascending), the
    # offsets of each key's ingest times in ``times`` (K + 1) and the times (µs, ascending
    # within a key)
    keys: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]
    hours: int  # hours of the span: the keys' hour range
    # Per kind: recomputed buckets as columns (``h`` as the span counts hours), and their
    # versions, key code · _COUNTS + rows known, ascending, with each one's row in the
    # columns (-1: no raw row known, no bucket)
    stored: dict[str, tuple[np.ndarray, np.ndarray, Columns]] = field(default_factory=dict)

    def versions(self, kind: str) -> list[tuple[int, int]]:
        """The (key code, rows known) of every bucket recomputed so far."""
        v = self.stored[kind][0] if kind in self.stored else np.zeros(0, dtype=np.int64)
        return list(zip((v // _COUNTS).tolist(), (v % _COUNTS).tolist(), strict=True))

    def recompute(
        self,
        conn: Conn,
        kind: str,
        keys: np.ndarray,
        read: Read,
        bins: NumericBins | CategoricalBins,
    ) -> Columns:
        """What :func:`_recompute` gives for ``keys`` at T (in any order), from the memo
        where an earlier as_of read the same raw rows of a bucket."""
        offset = (pg_us(read.start) - self.start_us) // HOUR_US
        known_us = read.known_by_us
        codes, bounds, times = self.keys[kind]
        if known_us >= self.read_us or not codes.size:
            return _recompute(conn, kind, keys, read, bins)
        code = bin_key(keys[:, 0], keys[:, 1], keys[:, 2] + offset, self.hours)  # span hours
        pos = _find(codes, code)
        ended = (keys[:, 2] + 1) * HOUR_US <= pg_us(read.as_of) - pg_us(read.start)
        reusable = ended & (pos >= 0)
        known = np.concatenate([[0], np.cumsum(times <= known_us)])
        pos = np.maximum(pos, 0)
        version = code * _COUNTS + (known[bounds[pos + 1]] - known[bounds[pos]])
        versions, at, columns = self.stored.get(kind) or _no_versions(kind)
        stored = np.where(reusable, _find(versions, version), -1)
        hit = stored >= 0
        row = np.full(len(keys), -1, dtype=np.int64)  # each hit's row in the columns
        row[hit] = at[stored[hit]]
        missing = keys[~hit]
        fresh = _recompute(conn, kind, missing, read, bins) if missing.size else columns_of(kind)
        # Store what was recomputed of the reusable keys (found by their keys in T's grid).
        new = reusable & ~hit
        if new.any():
            found = _find(
                bin_key(fresh["d"], fresh["s"], fresh["h"], read.hours),
                bin_key(keys[new, 0], keys[new, 1], keys[new, 2], read.hours),
            )
            versions = np.concatenate([versions, version[new]])
            at = np.concatenate([at, np.where(found >= 0, columns["d"].size + found, -1)])
            columns = concat_columns([columns, dict(fresh, h=fresh["h"] + offset)])
            order = np.argsort(versions)
            self.stored[kind] = (versions[order], at[order], columns)
        # The stored buckets with the hour as T's grid counts it, then the fresh ones.
        reused = take_columns(columns, row[row >= 0])
        reused["h"] = reused["h"] - offset
        return concat_columns([reused, fresh])


def recompute_memo(
    conn: Conn,
    devices: Sequence[ledger.UserDevice],
    buckets: Buckets,
    start: datetime,
    hours: int,
    known_by_us: int,
) -> RecomputeMemo:
    """A backfill span's memo: the ingest times of the raw rows of every rollup bucket of
    the span not wholly known at its first as_of (``known_by_us``), the only ones pass 2 can
    recompute at a later as_of without holding it."""
    start_us = pg_us(start)
    # Rows get ingested_at = now() at their transaction's start: one still open when the
    # times are read may hold an earlier time than the read's; ten minutes cover any.
    now = conn.execute("SELECT now() - INTERVAL '10 minutes'").fetchone()
    read_us = pg_us(now[0]) if now is not None and isinstance(now[0], datetime) else 0
    device = np.asarray([d.device_id for d in devices])
    user = np.asarray([d.user_id for d in devices])
    no_uidx = np.zeros(len(devices), dtype=np.int64)  # the statement does not return it
    keys: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
    for kind, b in (("numeric", buckets.numeric), ("categorical", buckets.categorical)):
        late = (b["ingested"] > known_by_us) & (b["s"] >= 0)
        hour = (b["bucket"][late] - start_us) // HOUR_US
        late_keys = np.stack([b["d"][late], b["s"][late], hour], axis=1).astype(np.int64)
        rows: list[tuple[object, ...]] = []
        if late_keys.size:
            params = _key_params(late_keys, device, user, no_uidx, start)
            with conn.cursor(binary=True) as cur:
                rows = cur.execute(INGEST_TIMES_SQL[kind], params).fetchall()
        dsh = np.array([r[:3] for r in rows], dtype=np.int64).reshape(-1, 3)
        code = bin_key(dsh[:, 0], dsh[:, 1], dsh[:, 2], hours)
        blobs = [r[3] if isinstance(r[3], bytes) else b"" for r in rows]
        bounds = np.concatenate([[0], np.cumsum([len(x) // 8 for x in blobs])]).astype(np.int64)
        times = np.frombuffer(b"".join(blobs), dtype=">i8").astype(np.int64)
        code, bounds, times = _versionable(code, bounds, times)
        keys[kind] = (code, bounds, times)
    return RecomputeMemo(start_us, read_us, keys, hours)


def build_chunk(
    read: Read,
    grid: LocalGrid,
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
        grid=grid,
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
    read: Read,
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
