"""Many as-of times for a chunk of users from one read: the backfill's engine.

A backfill computes snapshots at every as_of T₁ < … < Tₙ of a range. Read one T at a time, a
chunk of users would read the same rollups n times (each 90-day grid overlaps the next one by
all but a day). Here a chunk's rollups are read **once**, for the span from the first grid's
start to the last T, with what each point-in-time rule needs to be decided per T afterwards:

* every rollup row of the chunk's devices in the span, whatever the consent (consent is a
  property of T, applied per T to the (device, signal) pairs);
* for rows ingested after the first T's cut-off (``known_by(T₁)``) and after their own bucket
  ended, their ingest time: such a row is known at T only if ingested by T, else its bucket
  is recomputed from raw rows at T (any other row is known wherever it is usable);
* each device's earliest reading before the span (tenure), by signal, with the same cut-off,
  and the later-ingested ones apart.

:func:`chunk_at` then builds, for each T, the very :class:`Chunk` that
:func:`features.engine.load.load_chunk` reads for T alone — the same bins in the same order,
the same value dictionary, the same tenure and consent arrays — from those arrays plus, only
when some bucket is not usable as stored at T (late rows, the bucket holding T, rows newer than
the rollup watermark), the same raw recomputation the single-date read does, at T. Computing
it (:func:`features.engine.compute.compute_chunk`) gives bit for bit the vectors of a
single-date run (docs/invariants.md#8; ``tests/integration/test_backfill.py``).
"""

from __future__ import annotations

import bisect
import functools
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import numpy as np
import numpy.typing as npt

from features.catalogue.library.base import CategoricalBins, Chunk, LocalGrid, NumericBins
from features.engine.as_of import Knowledge, known_by
from features.engine.bins import (
    SIGNAL_INDEX,
    SIGNAL_NAMES,
    add_categorical_rows,
    add_numeric_rows,
    bin_key,
    fill_single_readings,
    select_categorical,
)
from features.engine.compute import ChunkResults, compute_chunk
from features.engine.graph import load_sightings
from features.engine.grid import grid_bounds, local_grid
from features.engine.sql import NEW_RAW_SQL, RECOMPUTE_SQL, SIGNAL_HASHES_SQL
from features.engine.types import Timings
from features.engine.wire import HOUR_US, TEXT, TIMESTAMP, array_literal, fetch_arrays, pg_us
from hearth import ledger
from hearth.db import Conn
from hearth.signals import Category, stored_signals

I64 = npt.NDArray[np.int64]
Bool = npt.NDArray[np.bool_]
_KINDS = ("numeric", "categorical")
_NO_TIME = np.iinfo(np.int64).max  # "never" in µs columns (min() ignores it)
# Signals of each category as SIGNAL_INDEX positions.
_CATEGORY_SIGNALS = {
    c: np.array(sorted(SIGNAL_INDEX[s] for s in stored_signals(c) if s in SIGNAL_INDEX))
    for c in Category
}

_DEVICES_CTE = """
    dv AS MATERIALIZED (SELECT device_id, user_id, didx
             FROM unnest(%(d_device)s::text[], %(d_user)s::text[], %(d_didx)s::int4[])
                  AS dv(device_id, user_id, didx))
"""


def _span_arrays_sql(kind: str) -> str:
    """Every rollup row of the chunk's devices in [start, end), consent aside, as one row of
    column arrays per device (the single-date read's shape, :mod:`features.engine.sql`), with
    the ingest time of rows ingested after ``known_by`` (the first T's cut-off)."""
    if kind == "numeric":
        columns = """array_agg(b.n) AS n, array_agg(b.sum) AS sum,
                  array_agg(b.first_time) AS first_time, array_agg(b.min) FILTER (WHERE b.n <> 1)
                  AS min, array_agg(b.max) FILTER (WHERE b.n <> 1) AS max,
                  array_agg(b.first) FILTER (WHERE b.n <> 1) AS first,
                  array_agg(b.last) FILTER (WHERE b.n <> 1) AS last,
                  array_agg(b.last_time) FILTER (WHERE b.n <> 1) AS last_time"""
    else:
        columns = """array_agg(b.value) AS value, array_agg(octet_length(b.value)) AS value_len,
                  array_agg(b.share) AS share, array_agg(b.n) AS n"""
    # Only a row ingested after its own bucket ended can be late at a T where it is usable.
    late = """FILTER (WHERE b.max_ingested_at > %(known_by)s
                            AND b.max_ingested_at > b.bucket + INTERVAL '1 hour')"""
    return f"""
    WITH {_DEVICES_CTE}
    SELECT 0, dv.didx, x.*
      FROM dv CROSS JOIN LATERAL (
           SELECT array_agg(hashtext(b.signal)) AS sig, array_agg(b.bucket) AS bucket,
                  {columns},
                  array_agg(hashtext(b.signal)) {late} AS late_sig,
                  array_agg(b.bucket) {late} AS late_bucket,
                  array_agg(b.max_ingested_at) {late} AS late_ingested
             FROM rollup_{kind}_hourly b
            WHERE b.device_id = dv.device_id
              AND b.bucket >= %(start)s AND b.bucket < %(end)s
              AND b.user_id = dv.user_id) x
     WHERE x.bucket IS NOT NULL
    """


_SPAN_SQL = {kind: _span_arrays_sql(kind) for kind in _KINDS}
_LATE_COLUMNS = (("late_sig", ">i4"), ("late_bucket", TIMESTAMP), ("late_ingested", TIMESTAMP))
_SPAN_COLUMNS: dict[str, tuple[tuple[str, str], ...]] = {
    "numeric": (
        ("sig", ">i4"),
        ("bucket", TIMESTAMP),
        ("n", ">i4"),
        ("sum", ">f8"),
        ("first_time", TIMESTAMP),
        ("min", ">f8"),
        ("max", ">f8"),
        ("first", ">f8"),
        ("last", ">f8"),
        ("last_time", TIMESTAMP),
        *_LATE_COLUMNS,
    ),
    "categorical": (
        ("sig", ">i4"),
        ("bucket", TIMESTAMP),
        ("value", TEXT),
        ("value_len", ">i4"),
        ("share", ">f8"),
        ("n", ">i4"),
        *_LATE_COLUMNS,
    ),
}

# Each device's earliest reading before the span, by signal (tenure; the single-date read's
# FIRST_SEEN_SQL per T): of rows known at the first T's cut-off, and of each later ingest time
# up to the last T's cut-off apart, so that every T can take the ones it knows.
_BEFORE_SPAN_SQL = f"""
    WITH {_DEVICES_CTE}
    SELECT dv.didx, hashtext(f.signal), f.first, f.ingested FROM dv CROSS JOIN LATERAL (
        SELECT r.signal, min(r.first_time) AS first, NULL::timestamptz AS ingested
          FROM rollup_numeric_hourly r
         WHERE r.device_id = dv.device_id AND r.bucket < %(start)s
           AND r.max_ingested_at <= %(known_by)s AND r.user_id = dv.user_id
         GROUP BY r.signal
        UNION ALL
        SELECT r.signal, min(r.bucket), NULL FROM rollup_categorical_hourly r
         WHERE r.device_id = dv.device_id AND r.bucket < %(start)s
           AND r.max_ingested_at <= %(known_by)s AND r.user_id = dv.user_id
         GROUP BY r.signal
        UNION ALL
        SELECT r.signal, min(r.first_time), r.max_ingested_at FROM rollup_numeric_hourly r
         WHERE r.device_id = dv.device_id AND r.bucket < %(start)s
           AND r.max_ingested_at > %(known_by)s AND r.max_ingested_at <= %(known_by_last)s
           AND r.user_id = dv.user_id
         GROUP BY r.signal, r.max_ingested_at
        UNION ALL
        SELECT r.signal, min(r.bucket), r.max_ingested_at FROM rollup_categorical_hourly r
         WHERE r.device_id = dv.device_id AND r.bucket < %(start)s
           AND r.max_ingested_at > %(known_by)s AND r.max_ingested_at <= %(known_by_last)s
           AND r.user_id = dv.user_id
         GROUP BY r.signal, r.max_ingested_at
    ) f
"""


@dataclass
class _Rows:
    """One kind's rollup rows over the span, in the single-date read's order (device, then
    the index order within it), decoded once: index columns ``u``, ``d``, ``s`` (signal index;
    unknown signals dropped), ``bucket`` (µs), the statistics, and ``first`` (the tenure
    time: a numeric row's first reading, a categorical row's bucket)."""

    cols: dict[str, np.ndarray]
    late_key: I64  # (device, signal, bucket) keys of rows that may be late at some T
    late_ingested: I64  # their max_ingested_at (µs)
    values: list[str] = field(default_factory=list)  # categorical: the code dictionary
    # Per (device, signal) with rows: device, signal, and the first row's bucket and tenure
    # time (rows are in bucket order within a pair, and a later bucket never reads earlier).
    earliest: dict[str, I64] = field(default_factory=dict)

    @property
    def size(self) -> int:
        return int(self.cols["u"].size)


@dataclass
class Span:
    """Everything read once for a chunk of users and every as_of of a range."""

    users: list[str]
    tzs: list[str]
    as_ofs: list[datetime]  # ascending, UTC
    knowledge: Knowledge
    watermark: datetime | None
    devices: list[ledger.UserDevice]
    d_uidx: I64
    numeric: _Rows
    categorical: _Rows
    first_known: dict[tuple[int, int], int]  # (device, signal) → earliest µs before the span
    first_later: list[tuple[int, int, int, int]]  # (device, signal, µs, ingested µs)
    unknown_signal: int  # the signal index standing for signals outside the catalogue
    start: datetime  # the first T's grid start: the span's first hour
    hours: int  # hours from ``start`` to the end of the last T's grid

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


def _late_key(d: np.ndarray, s: np.ndarray, bucket_us: np.ndarray) -> I64:
    hours = np.asarray(bucket_us, dtype=np.int64) // HOUR_US
    out: I64 = (d.astype(np.int64) * (len(SIGNAL_INDEX) + 1) + s) * (1 << 32) + hours
    return out


def _signal_lookup(sig_hash: dict[int, int]) -> tuple[I64, I64]:
    hashes = np.array(sorted(sig_hash), dtype=np.int64)
    index = np.array([sig_hash[h] for h in sorted(sig_hash)], dtype=np.int64)
    return hashes, index


def _signals(hashes: I64, index: I64, sig: np.ndarray, unknown: int) -> I64:
    """Signal indexes of hashes, ``unknown`` for signals outside the catalogue."""
    sig = sig.astype(np.int64)
    pos = np.clip(np.searchsorted(hashes, sig), 0, max(len(hashes) - 1, 0))
    found = hashes[pos] == sig if len(hashes) else np.zeros(sig.size, dtype=bool)
    out: I64 = np.where(found, index[pos] if len(hashes) else unknown, unknown)
    return out


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
    _, end, _ = grid_bounds(times[-1])
    devices = ledger.devices_of_users(conn, users)
    uidx = {u: i for i, u in enumerate(users)}
    params: dict[str, object] = {
        "d_device": array_literal([d.device_id for d in devices]),
        "d_user": array_literal([d.user_id for d in devices]),
        "d_didx": array_literal(list(range(len(devices)))),
        "s_name": array_literal(SIGNAL_NAMES),
        "s_idx": array_literal(list(SIGNAL_INDEX.values())),
        "start": start,
        "end": end,
        "known_by": known_by(times[0], knowledge),
        "known_by_last": known_by(times[-1], knowledge),
    }
    d_uidx = np.array([uidx[d.user_id] for d in devices], dtype=np.int64)
    with conn.cursor() as cur:
        sig_hash = {
            int(str(h)): int(str(i)) for h, i in cur.execute(SIGNAL_HASHES_SQL, params).fetchall()
        }
        arrays = {
            kind: fetch_arrays(cur, _SPAN_SQL[kind], params, _SPAN_COLUMNS[kind]) for kind in _KINDS
        }
        before = cur.execute(_BEFORE_SPAN_SQL, params).fetchall()
    sql_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    unknown = len(SIGNAL_INDEX)
    hashes, index = _signal_lookup(sig_hash)
    numeric = _numeric_rows(arrays.pop("numeric"), hashes, index, d_uidx, unknown)
    categorical = _categorical_rows(
        arrays.pop("categorical"), hashes, index, d_uidx, unknown, conn.info.encoding
    )
    first_known: dict[tuple[int, int], int] = {}
    first_later: list[tuple[int, int, int, int]] = []
    for didx, h, first, ingested in before:
        assert isinstance(didx, int) and isinstance(first, datetime)
        s = int(_signals(hashes, index, np.array([int(str(h))]), unknown)[0])
        at = pg_us(first)
        if ingested is None:
            key = (didx, s)
            first_known[key] = min(first_known.get(key, at), at)
        else:
            assert isinstance(ingested, datetime)
            first_later.append((didx, s, at, pg_us(ingested)))
    if timings is not None:
        timings.add(sql_s=sql_s, python_s=time.perf_counter() - t1)
    return Span(
        list(users),
        list(tzs),
        times,
        knowledge,
        watermark,
        devices,
        d_uidx,
        numeric,
        categorical,
        first_known,
        first_later,
        unknown,
        start,
        int((end - start) / timedelta(hours=1)),
    )


def _earliest(cols: dict[str, np.ndarray]) -> dict[str, I64]:
    """The first row of each (device, signal) pair (rows come grouped by device, then in the
    index order (signal, bucket) within it)."""
    d, s = cols["d"], cols["s"]
    if not d.size:
        z = np.zeros(0, dtype=np.int64)
        return {"d": z, "s": z, "bucket": z, "first": z}
    starts = np.flatnonzero(np.r_[True, (d[1:] != d[:-1]) | (s[1:] != s[:-1])])
    return {
        "d": d[starts].astype(np.int64),
        "s": s[starts].astype(np.int64),
        "bucket": cols["bucket"][starts].astype(np.int64),
        "first": cols["first"][starts].astype(np.int64),
    }


def _late(cols: dict[str, np.ndarray], hashes: I64, index: I64, unknown: int) -> tuple[I64, I64]:
    s = _signals(hashes, index, cols.pop("late_sig"), unknown)
    key = _late_key(cols.pop("late_d"), s, cols.pop("late_bucket"))
    return key, cols.pop("late_ingested").astype(np.int64)


def _numeric_rows(
    cols: dict[str, np.ndarray], hashes: I64, index: I64, d_uidx: I64, unknown: int
) -> _Rows:
    late_key, late_ingested = _late(cols, hashes, index, unknown)
    cols = fill_single_readings(cols)
    s = _signals(hashes, index, cols.pop("sig"), unknown)
    bucket = cols.pop("bucket")
    first_time = cols.pop("first_time")
    last_time = cols.pop("last_time")
    out = {
        "u": d_uidx[cols["d"]] if cols["d"].size else cols["d"],
        "d": cols["d"],
        "s": s,
        "bucket": bucket,
        "first": first_time,
        # as features.engine.bins.numeric_from_arrays computes them
        "first_off": (first_time - bucket).astype(np.float64) / 1e6,
        "last_off": (last_time - bucket).astype(np.float64) / 1e6,
    }
    for name in ("n", "sum", "min", "max", "last"):
        out[name] = np.asarray(cols[name], dtype=np.float64)
    out["first_value"] = np.asarray(cols["first"], dtype=np.float64)
    return _Rows(out, late_key, late_ingested, earliest=_earliest(out))


def _categorical_rows(
    cols: dict[str, np.ndarray],
    hashes: I64,
    index: I64,
    d_uidx: I64,
    unknown: int,
    encoding: str,
) -> _Rows:
    late_key, late_ingested = _late(cols, hashes, index, unknown)
    s = _signals(hashes, index, cols.pop("sig"), unknown)
    raw, code = np.unique(cols["value"], return_inverse=True)
    decoded = [bytes(v).decode(encoding) for v in raw]
    order = sorted(range(len(decoded)), key=decoded.__getitem__)
    rank = np.empty(len(order), dtype=np.int64)
    rank[order] = np.arange(len(order))
    out = {
        "u": d_uidx[cols["d"]] if cols["d"].size else cols["d"],
        "d": cols["d"],
        "s": s,
        "bucket": cols["bucket"],
        "first": cols["bucket"],
        "code": rank[code.ravel()] if len(order) else code.astype(np.int64).ravel(),
        "share": cols["share"].astype(np.float64),
        "n": cols["n"].astype(np.float64),
    }
    return _Rows(out, late_key, late_ingested, [decoded[i] for i in order], _earliest(out))


# --- one T ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Consent:
    """Per category, which users consented at T and which have withdrawn since, and per
    device the signals it may contribute at T (None: every signal, as the single-date read's
    ``'*'``)."""

    consented: dict[Category, Bool]
    withdrawn: dict[Category, Bool]
    allowed: list[frozenset[int] | None]
    d_signals: list[str]


def consent_at(conn: Conn, span: Span, as_of: datetime) -> _Consent:
    """The consent the single-date read applies at T (features.engine.load: a category
    consented at T but withdrawn since counts as not consented)."""
    users = span.users
    consent = ledger.consented_categories_many(conn, users, as_of)
    since = ledger.categories_withdrawn_after(conn, users, as_of)
    lost = {u: consent[u] & since[u] for u in consent.keys() & since.keys()}
    for u, gone in lost.items():
        consent[u] = consent[u] - gone
    every = frozenset(Category)
    names: dict[frozenset[Category], str] = {every: "*"}
    signals: dict[frozenset[Category], frozenset[int] | None] = {every: None}
    allowed, d_signals = [], []
    for dev in span.devices:
        cats = frozenset(consent.get(dev.user_id, ()))
        if cats not in names:
            stored = {name for c in cats for name in stored_signals(c)}
            names[cats] = ",".join(n for n in SIGNAL_NAMES if n in stored)
            signals[cats] = frozenset(SIGNAL_INDEX[n] for n in SIGNAL_NAMES if n in stored)
        allowed.append(signals[cats])
        d_signals.append(names[cats])
    consented = {
        c: np.array([c in consent.get(u, ()) for u in users], dtype=bool) for c in Category
    }
    withdrawn = {c: np.array([c in lost.get(u, ()) for u in users], dtype=bool) for c in Category}
    return _Consent(consented, withdrawn, allowed, d_signals)


def _allowed_mask(d: np.ndarray, s: np.ndarray, consent: _Consent, unknown: int) -> Bool:
    """Rows whose (device, signal) is readable at T: every signal (even one outside the
    catalogue) for a device whose user consented to every category, else the consented
    categories' signals."""
    n_dev = len(consent.allowed)
    table = np.zeros((n_dev, unknown + 1), dtype=bool)
    for di, signals in enumerate(consent.allowed):
        if signals is None:
            table[di, :] = True
        elif signals:
            table[di, list(signals)] = True
    out: Bool = table[d, s] if d.size else np.zeros(0, dtype=bool)
    return out


def _window(rows: _Rows, at: _At, allowed: Bool) -> Bool:
    """Rows in T's grid, before T, of readable signals (the single-date read's WHERE)."""
    bucket = rows.cols["bucket"]
    out: Bool = (bucket >= at.start_us) & (bucket < at.as_of_us) & allowed
    return out


def _usable(rows: _Rows, mask: Bool, as_of_us: int, kb_us: int) -> Bool:
    """Of the rows in ``mask``: bucket ended by T and not ingested after T's cut-off."""
    bucket = rows.cols["bucket"][mask]
    usable: Bool = bucket + HOUR_US <= as_of_us
    late = rows.late_key[rows.late_ingested > kb_us]
    if late.size:
        c = rows.cols
        usable &= ~np.isin(_late_key(c["d"][mask], c["s"][mask], bucket), late)
    return usable


@dataclass(frozen=True)
class _At:
    """One T's grid and parameters."""

    as_of: datetime
    start: datetime
    hours: int
    as_of_us: int
    start_us: int
    kb_us: int
    check_new_raw: bool


def _at(span: Span, as_of: datetime) -> _At:
    start, _, hours = grid_bounds(as_of)
    kb = known_by(as_of, span.knowledge)
    kb_us = pg_us(kb) if isinstance(kb, datetime) else _NO_TIME
    check = span.watermark is None or span.watermark < as_of or span.knowledge is Knowledge.EVENT
    return _At(as_of, start, hours, pg_us(as_of), pg_us(start), kb_us, check)


def chunk_at(conn: Conn, span: Span, as_of: datetime, consent: _Consent) -> Chunk:
    """The chunk :func:`features.engine.load.load_chunk` reads for ``span.users`` as of T."""
    at = _at(span, as_of)
    unknown = span.unknown_signal
    n = span.numeric
    c = span.categorical
    n_mask = _window(n, at, _allowed_mask(n.cols["d"], n.cols["s"], consent, unknown))
    c_mask = _window(c, at, _allowed_mask(c.cols["d"], c.cols["s"], consent, unknown))
    # Rows of signals outside the catalogue are read but dropped (bins.rollup_rows).
    n_mask &= n.cols["s"] != unknown
    c_mask &= c.cols["s"] != unknown
    params = _params(span, at, consent)

    numeric = _numeric_bins(n, n_mask, at)
    n_usable = _usable(n, n_mask, at.as_of_us, at.kb_us)
    categorical, values = _categorical_bins(c, c_mask, at)
    c_usable = _usable(c, c_mask, at.as_of_us, at.kb_us)

    keep, fixed_numeric = _recomputed(conn, "numeric", numeric, n_usable, at, span, params)
    if keep is not None:
        numeric = numeric.select(keep)
    keep, fixed_cat = _recomputed(conn, "categorical", categorical, c_usable, at, span, params)
    if keep is not None:
        categorical = select_categorical(categorical, keep)
    if fixed_numeric:
        numeric = add_numeric_rows(numeric, fixed_numeric)
    if fixed_cat:
        categorical, values = add_categorical_rows(categorical, values, fixed_cat)
    return _chunk(span, at, consent, numeric, categorical, values)


def _numeric_bins(rows: _Rows, mask: Bool, at: _At) -> NumericBins:
    c = rows.cols
    take = np.flatnonzero(mask)
    return NumericBins(
        u=c["u"][take],
        d=c["d"][take],
        s=c["s"][take],
        h=np.rint((c["bucket"][take] - at.start_us) / HOUR_US).astype(np.int64),
        n=c["n"][take],
        sum=c["sum"][take],
        min=c["min"][take],
        max=c["max"][take],
        first=c["first_value"][take],
        last=c["last"][take],
        first_off=c["first_off"][take],
        last_off=c["last_off"][take],
    )


def _categorical_bins(rows: _Rows, mask: Bool, at: _At) -> tuple[CategoricalBins, list[str]]:
    """The window's categorical bins, coded over the values present in the window (what the
    single-date read's dictionary holds: sorted, stale rows included)."""
    c = rows.cols
    take = np.flatnonzero(mask)
    present, code = np.unique(c["code"][take], return_inverse=True)
    bins = CategoricalBins(
        u=c["u"][take],
        d=c["d"][take],
        s=c["s"][take],
        h=np.rint((c["bucket"][take] - at.start_us) / HOUR_US).astype(np.int64),
        code=code.astype(np.int64).ravel(),
        share=c["share"][take],
        n=c["n"][take],
    )
    return bins, [rows.values[i] for i in present.tolist()]


def _params(span: Span, at: _At, consent: _Consent) -> dict[str, object]:
    """The single-date statements' parameters at T (features.engine.sql)."""
    return {
        "d_device": array_literal([d.device_id for d in span.devices]),
        "d_user": array_literal([d.user_id for d in span.devices]),
        "d_uidx": array_literal(span.d_uidx.tolist()),
        "d_didx": array_literal(list(range(len(span.devices)))),
        "d_signals": array_literal(consent.d_signals),
        "s_name": array_literal(SIGNAL_NAMES),
        "s_idx": array_literal(list(SIGNAL_INDEX.values())),
        "start": at.start,
        "as_of": at.as_of,
        "known_by": known_by(at.as_of, span.knowledge),
        "watermark": span.watermark or "-infinity",
    }


def _recomputed(
    conn: Conn,
    kind: str,
    bins: NumericBins | CategoricalBins,
    usable: Bool,
    at: _At,
    span: Span,
    params: dict[str, object],
) -> tuple[Bool | None, list[tuple[object, ...]]]:
    """Which bins to keep (None: all) and the buckets recomputed from raw rows at T in place
    of the others: the single-date read's pass 2 (features.engine.load)."""
    parts = [np.stack((bins.d[~usable], bins.s[~usable], bins.h[~usable]), axis=1)]
    if at.check_new_raw:
        found = conn.execute(NEW_RAW_SQL[kind], params).fetchall()
        if found:
            parts.append(np.array(found, dtype=np.int64))
    keys = np.concatenate(parts).astype(np.int64)
    if keys.size == 0:
        return (None if usable.all() else usable), []
    keys = np.unique(keys, axis=0)
    drop = np.isin(
        bin_key(bins.d, bins.s, bins.h, at.hours),
        bin_key(keys[:, 0], keys[:, 1], keys[:, 2], at.hours),
    )
    devices = [span.devices[int(d)] for d in keys[:, 0]]
    recompute = {
        "k_device": [d.device_id for d in devices],
        "k_user": [d.user_id for d in devices],
        "k_signal": [SIGNAL_NAMES[int(s)] for s in keys[:, 1]],
        "k_bucket": [at.start + timedelta(hours=int(h)) for h in keys[:, 2]],
        "k_uidx": [int(span.d_uidx[int(d)]) for d in keys[:, 0]],
        "k_didx": [int(d) for d in keys[:, 0]],
        "k_sidx": [int(s) for s in keys[:, 1]],
        "start": at.start,
        "as_of": at.as_of,
        "known_by": known_by(at.as_of, span.knowledge),
    }
    return usable & ~drop, conn.execute(RECOMPUTE_SQL[kind], recompute).fetchall()


def _chunk(
    span: Span,
    at: _At,
    consent: _Consent,
    numeric: NumericBins,
    categorical: CategoricalBins,
    values: list[str],
) -> Chunk:
    end_hours = (at.as_of - at.start).total_seconds() / 3600.0
    first_seen, dev_first_seen = _first_seen(span, at, consent, numeric, categorical, end_hours)
    retired = np.array(
        [
            (at.as_of - d.retired_at).total_seconds() / 3600.0
            if d.retired_at is not None and d.retired_at <= at.as_of
            else np.nan
            for d in span.devices
        ],
        dtype=np.float64,
    )
    return Chunk(
        n_users=len(span.users),
        hours=at.hours,
        numeric=numeric,
        categorical=categorical,
        categorical_values=values,
        grid=span.grid_at(at.start, at.hours),
        signal_index=SIGNAL_INDEX,
        first_seen_hours=first_seen,
        consented=consent.consented,
        withdrawn=consent.withdrawn,
        device_kinds=[d.kind for d in span.devices],
        device_owner=span.d_uidx,
        device_first_seen_hours=dev_first_seen,
        device_retired_hours=retired,
        as_of_hours=end_hours,
    )


def _first_seen(
    span: Span,
    at: _At,
    consent: _Consent,
    numeric: NumericBins,
    categorical: CategoricalBins,
    end_hours: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Tenure per user and per device as the single-date read computes it: the first bin in
    the grid, or earlier history known at T (from before the span, and from the span's rows
    before this T's grid)."""
    n_users, n_dev = len(span.users), len(span.devices)
    first_h = np.full(n_users, np.inf)
    dev_first_h = np.full(n_dev, np.inf)
    for b in (numeric, categorical):
        if b.u.size:
            np.minimum.at(first_h, b.u, b.h.astype(np.float64))
            np.minimum.at(dev_first_h, b.d, b.h.astype(np.float64))
    first_seen = np.where(np.isinf(first_h), np.nan, end_hours - first_h)
    dev_first_seen = np.where(np.isinf(dev_first_h), np.nan, end_hours - dev_first_h)
    earliest = _earliest_before_grid(span, at, consent)
    for di in np.flatnonzero(earliest != _NO_TIME).tolist():
        before = (at.as_of_us - int(earliest[di])) / 1e6 / 3600.0
        ui = int(span.d_uidx[di])
        first_seen[ui] = np.fmax(first_seen[ui], before)
        dev_first_seen[di] = before
    return first_seen, dev_first_seen


def _earliest_before_grid(span: Span, at: _At, consent: _Consent) -> I64:
    """Per device, the earliest reading (µs) before T's grid known at T, of the signals
    readable at T (``_NO_TIME`` when none): FIRST_SEEN_SQL of the single-date read."""
    unknown = span.unknown_signal
    earliest = np.full(len(span.devices), _NO_TIME, dtype=np.int64)

    def readable(di: int, s: int) -> bool:
        signals = consent.allowed[di]
        return signals is None or (s != unknown and s in signals)

    for (di, s), t in span.first_known.items():
        if readable(di, s):
            earliest[di] = min(int(earliest[di]), t)
    for di, s, t, ingested in span.first_later:
        if ingested <= at.kb_us and readable(di, s):
            earliest[di] = min(int(earliest[di]), t)
    for rows in (span.numeric, span.categorical):
        # A pair's first row is its earliest: if it is before the grid, no other row of the
        # pair reads earlier; rows that may be late at T are decided one by one.
        e = rows.earliest
        ok = (e["bucket"] < at.start_us) & _allowed_mask(e["d"], e["s"], consent, unknown)
        late_at_t = rows.late_key[rows.late_ingested > at.kb_us]
        if late_at_t.size:
            c = rows.cols
            maybe = np.isin(_late_key(c["d"], c["s"], c["bucket"]), rows.late_key)
            # Pairs holding a row that may be late: the known rows before the grid, exactly.
            pairs = np.isin(
                _late_key(e["d"], e["s"], np.zeros_like(e["d"])),
                _late_key(c["d"][maybe], c["s"][maybe], np.zeros(int(maybe.sum()), np.int64)),
            )
            ok &= ~pairs
            known = ~np.isin(_late_key(c["d"], c["s"], c["bucket"]), late_at_t)
            exact = (c["bucket"] < at.start_us) & known
            exact &= np.isin(
                _late_key(c["d"], c["s"], np.zeros_like(c["d"])),
                _late_key(e["d"][pairs], e["s"][pairs], np.zeros(int(pairs.sum()), np.int64)),
            )
            exact &= _allowed_mask(c["d"], c["s"], consent, unknown)
            if exact.any():
                np.minimum.at(earliest, c["d"][exact], c["first"][exact].astype(np.int64))
        if ok.any():
            np.minimum.at(earliest, e["d"][ok], e["first"][ok])
    return earliest


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
    consent: _Consent | None = None
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
