"""Point-in-time feature engine (DESIGN §3.8): features for (user, T) from data with event time
< T, ingest time ≤ T, of categories consented at T.

Read path, per chunk of users and one as-of time T (one SQL round trip per kind of bin):

* the user's devices and the signals of the categories consented at T give (device, signal)
  pairs; only those are read (a withdrawn category contributes nothing);
* an hourly rollup row is used as is when its bucket ended by T and every raw row in it was
  ingested by T (``max_ingested_at ≤ T``);
* every other bucket — late rows ingested after T, the bucket containing T, rows newer than the
  rollup watermark — is recomputed from raw rows filtered by ``time < T AND ingested_at ≤ T``
  with the same aggregate expressions the rollup job uses (features.rollups);
* bins arrive as one binary-format row per device holding column arrays, decoded by
  ``np.frombuffer`` (no Python object per bin; see ``_rollup_arrays_sql``).

The feature functions (features.catalogue.library) then run vectorised over the chunk.
"""

from __future__ import annotations

import json
import math
import queue
import threading
import time
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from functools import lru_cache
from itertools import islice
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import numpy as np
import psycopg

from features.catalogue import DEFINITIONS, FEATURE_SET_VERSION
from features.catalogue.library import SPECS, Window
from features.catalogue.library.base import CategoricalBins, Chunk, LocalGrid, NumericBins
from features.rollups import CATEGORICAL_AGGREGATE_FROM, NUMERIC_AGGREGATE, read_watermark
from hearth import ledger
from hearth.signals import SIGNALS, Category
from hearth.vectors import CellReason, cell

Conn = psycopg.Connection[tuple[object, ...]]

GRID_DAYS = 90  # the longest window; shorter windows are the tail of this grid
NUMERIC_SIGNALS = tuple(s.name for s in SIGNALS.values() if s.kind == "numeric")
CATEGORICAL_SIGNALS = tuple(s.name for s in SIGNALS.values() if s.kind == "categorical")
SIGNAL_INDEX = {name: i for i, name in enumerate(NUMERIC_SIGNALS + CATEGORICAL_SIGNALS)}
# Users per chunk: bounds memory (a chunk's [users, hours] matrices, times the chunks in flight)
DEFAULT_CHUNK_USERS = 250


@dataclass(frozen=True)
class FeatureValue:
    value: float | None
    coverage: float
    reason: CellReason | None = None  # why the value is null by consent (hearth.vectors)


@dataclass(frozen=True)
class FeatureVector:
    user_id: str
    as_of: datetime
    feature_set_version: str
    computed_at: datetime
    values: dict[str, FeatureValue] = field(default_factory=dict)

    def to_json(self) -> dict[str, object]:
        return {
            "user_id": self.user_id,
            "as_of": self.as_of.isoformat(),
            "feature_set_version": self.feature_set_version,
            "computed_at": self.computed_at.isoformat(),
            "features": self.vector_json(),
        }

    def vector_json(self) -> dict[str, dict[str, object]]:
        """The ``feature_snapshots.vector`` shape (:mod:`hearth.vectors`)."""
        return {k: cell(v.value, v.coverage, v.reason) for k, v in self.values.items()}


@dataclass
class Timings:
    """Where the time went (the benchmark prints the split). Thread-safe: with loader
    connections the next chunks are read while this one is computed, so loads overlap each
    other and the computing, and the sums can exceed the wall time."""

    sql_s: float = 0.0
    python_s: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, *, sql_s: float = 0.0, python_s: float = 0.0) -> None:
        with self._lock:
            self.sql_s += sql_s
            self.python_s += python_s


# --- grid and local time ----------------------------------------------------------------------


def grid_bounds(as_of: datetime) -> tuple[datetime, datetime, int]:
    """(start, end, hours) of the 90-day hourly grid ending at the hour that contains T."""
    if as_of.tzinfo is None:
        raise ValueError("as_of must be timezone-aware")
    as_of = as_of.astimezone(UTC)
    end = as_of.replace(minute=0, second=0, microsecond=0)
    if end < as_of:
        end += timedelta(hours=1)
    hours = GRID_DAYS * 24
    return end - timedelta(hours=hours), end, hours


def _zone(tz: str) -> ZoneInfo:
    try:
        return ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError):
        return ZoneInfo("UTC")


@lru_cache(maxsize=256)
def _local_clock(tz: str, start: datetime, hours: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Local time of day (hours), local day index and weekday of each grid hour, across DST."""
    zone = _zone(tz)
    tod = np.empty(hours)
    day = np.empty(hours, dtype=np.int64)
    wd = np.empty(hours, dtype=np.int64)
    base = start.astimezone(zone).date().toordinal()
    for h in range(hours):
        local = (start + timedelta(hours=h)).astimezone(zone)
        tod[h] = local.hour + local.minute / 60.0
        d = local.toordinal()
        day[h] = d - base
        wd[h] = local.weekday()
    return tod, day, wd


def local_grid(tzs: Sequence[str], start: datetime, hours: int) -> LocalGrid:
    parts = [_local_clock(tz, start, hours) for tz in tzs]
    if not parts:
        empty = np.zeros((0, hours))
        return LocalGrid(empty, empty.astype(np.int64), empty.astype(np.int64))
    return LocalGrid(
        tod=np.stack([p[0] for p in parts]),
        day=np.stack([p[1] for p in parts]),
        weekday=np.stack([p[2] for p in parts]),
    )


# --- SQL ---------------------------------------------------------------------------------------

_DEVICES_CTE = """
    dv AS MATERIALIZED (SELECT device_id, user_id, uidx, didx,
                  CASE WHEN signals = '*' THEN NULL ELSE string_to_array(signals, ',') END AS sigs
             FROM unnest(%(d_device)s::text[], %(d_user)s::text[], %(d_uidx)s::int4[],
                         %(d_didx)s::int4[], %(d_signals)s::text[])
                  AS dv(device_id, user_id, uidx, didx, signals)),
    sg AS (SELECT * FROM unnest(%(s_name)s::text[], %(s_idx)s::int4[]) AS sg(signal, sidx))
"""
_HOUR = "(date_part('epoch', b.bucket - %(start)s) / 3600)::int4"
_NUMERIC_OUT = f"""{_HOUR}, b.n, b.sum, b.min, b.max, b.first, b.last,
               date_part('epoch', b.first_time - b.bucket),
               date_part('epoch', b.last_time - b.bucket)"""
_CATEGORICAL_OUT = f"{_HOUR}, b.value, b.share, b.n"


# Pass 1 as one row per device holding column arrays (binary format; :func:`_fetch_arrays`):
# ~400 bins per device in one row cut the client's per-row overhead ~400-fold. What
# the server spends goes mostly into sending array elements (a call and an allocation each)
# and into expressions per row, so it only gathers stored columns, and each value once:
# * buckets and reading times arrive as timestamps and become grid hours and offsets in numpy
#   (:func:`_rollup_rows`); instead of a "usable as is" flag per row only the rare rows
#   ingested after T are listed again (``late_*``);
# * a bucket with a single reading (n = 1: most signals report a few times a day) has
#   min = max = first = last = sum and last_time = first_time, so those columns only hold the
#   other buckets (``FILTER (WHERE n <> 1)``) and :func:`_numeric_from_arrays` fills them in.
# ``dv.sigs`` NULL means every signal is consented.
_LATE = "FILTER (WHERE b.max_ingested_at > %(known_by)s)"
_MULTI = "FILTER (WHERE b.n <> 1)"


def _rollup_arrays_sql(kind: str) -> str:
    if kind == "numeric":
        columns = f"""array_agg(b.n) AS n, array_agg(b.sum) AS sum,
                  array_agg(b.first_time) AS first_time, array_agg(b.min) {_MULTI} AS min,
                  array_agg(b.max) {_MULTI} AS max, array_agg(b.first) {_MULTI} AS first,
                  array_agg(b.last) {_MULTI} AS last,
                  array_agg(b.last_time) {_MULTI} AS last_time"""
    else:
        columns = """array_agg(b.value) AS value, array_agg(octet_length(b.value)) AS value_len,
                  array_agg(b.share) AS share, array_agg(b.n) AS n"""
    return f"""
    WITH {_DEVICES_CTE}
    SELECT dv.uidx, dv.didx, x.*
      FROM dv CROSS JOIN LATERAL (
           SELECT array_agg(hashtext(b.signal)) AS sig, array_agg(b.bucket) AS bucket,
                  {columns},
                  array_agg(hashtext(b.signal)) {_LATE} AS late_sig,
                  array_agg(b.bucket) {_LATE} AS late_bucket
             FROM rollup_{kind}_hourly b
            WHERE b.device_id = dv.device_id
              AND (dv.sigs IS NULL OR b.signal = ANY(dv.sigs))
              AND b.bucket >= %(start)s AND b.bucket < %(as_of)s
              AND b.user_id = dv.user_id) x
     WHERE x.bucket IS NOT NULL
    """


_ROLLUP_ARRAYS_SQL = {kind: _rollup_arrays_sql(kind) for kind in ("numeric", "categorical")}
_TIMESTAMP = ">i8"  # binary timestamptz: microseconds since 2000-01-01 UTC
_TEXT = "text"
_ARRAY_COLUMNS: dict[str, tuple[tuple[str, str], ...]] = {
    "numeric": (
        ("sig", ">i4"),
        ("bucket", _TIMESTAMP),
        ("n", ">i4"),
        ("sum", ">f8"),
        ("first_time", _TIMESTAMP),
        ("min", ">f8"),  # these five: buckets with n <> 1 only
        ("max", ">f8"),
        ("first", ">f8"),
        ("last", ">f8"),
        ("last_time", _TIMESTAMP),
        ("late_sig", ">i4"),
        ("late_bucket", _TIMESTAMP),
    ),
    "categorical": (
        ("sig", ">i4"),
        ("bucket", _TIMESTAMP),
        ("value", _TEXT),
        ("value_len", ">i4"),
        ("share", ">f8"),
        ("n", ">i4"),
        ("late_sig", ">i4"),
        ("late_bucket", _TIMESTAMP),
    ),
}
_PG_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)
_HOUR_US = 3_600_000_000


def _array_literal(items: Sequence[object]) -> str:
    """A PostgreSQL array literal of str or int items, for a ``%s::text[]``/``::int4[]``
    parameter: one string for psycopg to pass, instead of a list it would quote item by item
    (a regular expression each) for every query of a chunk."""
    if all(isinstance(x, int) for x in items):
        return "{" + ",".join(map(str, items)) + "}"
    text = [str(x) for x in items]
    if any('"' in x or "\\" in x for x in text):
        text = [x.replace("\\", "\\\\").replace('"', '\\"') for x in text]
    return '{"' + '","'.join(text) + '"}' if text else "{}"


def _pg_us(t: datetime) -> int:
    """A timestamp as binary timestamptz (microseconds since 2000-01-01 UTC)."""
    return (t - _PG_EPOCH) // timedelta(microseconds=1)


def _fetch_arrays(
    cur: psycopg.Cursor[tuple[object, ...]],
    sql: str,
    params: Mapping[str, object],
    columns: Sequence[tuple[str, str]],
) -> dict[str, np.ndarray]:
    """Run ``sql`` (rows: uidx int4, didx int4, then one 1-D array per column of ``columns``;
    an empty or NULL array has no elements) with binary results and decode the arrays into
    native numpy arrays: one ``np.frombuffer`` per column over its elements laid end to end,
    a few Python operations per value and none per element. libpq receives the result in
    one go (a COPY would cost a Python round trip per row). Returns the columns plus ``u``/
    ``d`` per element of the first column and ``late_d`` per element of ``late_sig``; a text
    column as ``np.bytes_`` values (see :func:`_text_values`)."""
    cur.execute(sql, params, binary=True)
    res = cur.pgresult
    assert res is not None and res.nfields == 2 + len(columns)
    rows = range(res.ntuples)

    def field(col: int) -> list[bytes]:
        return [res.get_value(r, col) or b"" for r in rows]

    users = np.frombuffer(b"".join(field(0)), dtype=">i4").astype(np.int64)
    devices = np.frombuffer(b"".join(field(1)), dtype=">i4").astype(np.int64)
    out: dict[str, np.ndarray] = {}
    sizes: dict[str, list[int]] = {}
    text: dict[str, bytes] = {}
    for col, (name, typ) in enumerate(columns, start=2):
        # 1-D array: ndim, has-null, element oid, [size, lower bound], then (len, value)*.
        values = field(col)
        sizes[name] = [int.from_bytes(v[12:16], "big") if len(v) > 12 else 0 for v in values]
        elements = b"".join([v[20:] for v in values if len(v) > 12])
        del values
        if typ == _TEXT:
            text[name] = elements
            continue
        rec = np.frombuffer(elements, dtype=[("len", ">i4"), ("v", typ)])
        out[name] = rec["v"].astype(typ.replace(">", "="))
    first = columns[0][0]
    out["u"] = np.repeat(users, sizes[first])
    out["d"] = np.repeat(devices, sizes[first])
    if "late_sig" in sizes:
        out["late_d"] = np.repeat(devices, sizes["late_sig"])
    for name, elements in text.items():
        out[name] = _text_values(elements, out[f"{name}_len"])
    return out


def _text_values(blob: bytes, lengths: np.ndarray) -> np.ndarray:
    """The elements of binary text arrays laid end to end in ``blob`` ((len, bytes)*) as a
    ``np.bytes_`` array, given each element's ``octet_length`` (all numpy, no Python object
    per element). Should the client encoding differ from the server's (lengths then do not
    match the prefixes), the elements are walked one by one instead."""
    lengths = lengths.astype(np.int64)
    buf = np.frombuffer(blob, dtype=np.uint8)
    starts = np.cumsum(lengths + 4) - lengths  # first byte of each element's value
    ok = starts.size == 0 or (int(starts[-1] + lengths[-1]) == buf.size)
    if ok and starts.size:
        prefix = buf[(starts - 4)[:, None] + np.arange(4)].astype(np.int64)
        ok = bool(np.all(prefix @ np.array([1 << 24, 1 << 16, 1 << 8, 1]) == lengths))
    if not ok:  # pragma: no cover - client and server encodings differ
        values, pos = [], 0
        while pos < len(blob):
            size = int.from_bytes(blob[pos : pos + 4], "big")
            values.append(blob[pos + 4 : pos + 4 + size])
            pos += 4 + size
        return np.array(values, dtype=np.bytes_)
    width = max(int(lengths.max()), 1) if lengths.size else 1
    cols = np.arange(width)
    inside = cols < lengths[:, None]
    mat = np.zeros((lengths.size, width), dtype=np.uint8)
    mat[inside] = buf[(starts[:, None] + cols)[inside]]
    return mat.view(f"S{width}").ravel()


def _new_raw_sql(kind: str) -> str:
    """Buckets holding raw rows the rollups have not seen yet (ingested after the watermark)
    but known at T. Only needed when the watermark is before T."""
    return f"""
    WITH {_DEVICES_CTE}
    SELECT DISTINCT dv.didx, sg.sidx,
           (extract(epoch FROM time_bucket(INTERVAL '1 hour', r.time) - %(start)s)
            / 3600)::int4
      FROM {kind}_readings r JOIN dv ON r.device_id = dv.device_id AND r.user_id = dv.user_id
      JOIN sg ON sg.signal = r.signal
     WHERE r.ingested_at > %(watermark)s AND r.ingested_at <= %(known_by)s
       AND r.time >= %(start)s AND r.time < %(as_of)s
       AND (dv.sigs IS NULL OR r.signal = ANY(dv.sigs))
    """


def _recompute_sql(kind: str) -> str:
    """Pass 2: the dirty buckets recomputed from raw rows with time < T and ingested_at ≤ T,
    with the rollup job's own aggregate expressions (features.rollups)."""
    where = """WHERE r.device_id = k.device_id AND r.signal = k.signal
                 AND r.user_id = k.user_id AND r.time >= k.bucket
                 AND r.time < k.bucket + INTERVAL '1 hour'
                 AND r.time < %(as_of)s AND r.ingested_at <= %(known_by)s"""
    if kind == "numeric":
        agg = f"SELECT {NUMERIC_AGGREGATE} FROM numeric_readings r {where} GROUP BY 1, 2, 3, 4"
        out = _NUMERIC_OUT
    else:
        agg = CATEGORICAL_AGGREGATE_FROM.format(source="categorical_readings r", where=where)
        out = _CATEGORICAL_OUT
    return f"""
    WITH k AS (SELECT * FROM unnest(%(k_device)s::text[], %(k_user)s::text[],
                                    %(k_signal)s::text[], %(k_bucket)s::timestamptz[],
                                    %(k_uidx)s::int4[], %(k_didx)s::int4[], %(k_sidx)s::int4[])
                    AS k(device_id, user_id, signal, bucket, uidx, didx, sidx))
    SELECT k.uidx, k.didx, k.sidx, {out}
      FROM k CROSS JOIN LATERAL ({agg}) b
    """


_SQL = {
    (step, kind): fn(kind)
    for kind in ("numeric", "categorical")
    for step, fn in (("new", _new_raw_sql), ("recompute", _recompute_sql))
}

# Earliest reading of each device before the grid (tenure), from rollups fully ingested by T.
_FIRST_SEEN_SQL = f"""
    WITH {_DEVICES_CTE}
    SELECT dv.uidx, dv.didx, min(f.first) FROM dv CROSS JOIN LATERAL (
        SELECT min(r.first_time) AS first FROM rollup_numeric_hourly r
         WHERE r.device_id = dv.device_id AND (dv.sigs IS NULL OR r.signal = ANY(dv.sigs))
           AND r.bucket < %(start)s AND r.max_ingested_at <= %(known_by)s
           AND r.user_id = dv.user_id
        UNION ALL
        SELECT min(r.bucket) FROM rollup_categorical_hourly r
         WHERE r.device_id = dv.device_id AND (dv.sigs IS NULL OR r.signal = ANY(dv.sigs))
           AND r.bucket < %(start)s AND r.max_ingested_at <= %(known_by)s
           AND r.user_id = dv.user_id
    ) f
    WHERE f.first IS NOT NULL
    GROUP BY dv.uidx, dv.didx
"""

_INT_FIELDS = ("u", "d", "s", "h")
_FLOAT_FIELDS = ("n", "sum", "min", "max", "first", "last", "first_off", "last_off")


def _rollup_rows(
    cols: dict[str, np.ndarray],
    sig_hash: dict[int, int],
    start: datetime,
    as_of: datetime,
    hours: int,
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """The per-row columns of parsed rollup arrays for known signals (unknown ones dropped)
    with ``s`` (signal index) and ``h`` (grid hour), and whether each row is usable as is:
    its bucket ended by T and it is not listed as ingested after T."""
    hashes = np.array(sorted(sig_hash), dtype=np.int64)
    index = np.array([sig_hash[h] for h in sorted(sig_hash)], dtype=np.int64)

    def lookup(sig: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        sig = sig.astype(np.int64)
        pos = np.clip(np.searchsorted(hashes, sig), 0, max(len(hashes) - 1, 0))
        known = hashes[pos] == sig if len(hashes) else np.zeros(sig.size, dtype=bool)
        return known, index[pos[known]] if len(hashes) else pos[known]

    def hour(bucket: np.ndarray) -> np.ndarray:
        return np.rint((bucket - _pg_us(start)) / _HOUR_US).astype(np.int64)

    late_known, late_s = lookup(cols.pop("late_sig"))
    late_d = cols.pop("late_d")[late_known]
    late_h = hour(cols.pop("late_bucket")[late_known])
    known, s = lookup(cols.pop("sig"))
    rows = cols if known.all() else {k: v[known] for k, v in cols.items()}
    rows["s"] = s
    rows["h"] = hour(rows["bucket"])
    usable = rows["bucket"] + _HOUR_US <= _pg_us(as_of)
    if late_d.size:
        late = _key(late_d, late_s, late_h, hours)
        usable &= ~np.isin(_key(rows["d"], rows["s"], rows["h"], hours), late)
    return rows, usable


_SINGLE_READING = (
    ("min", "sum"),
    ("max", "sum"),
    ("first", "sum"),
    ("last", "sum"),
    ("last_time", "first_time"),
)


def _fill_single_readings(cols: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Parsed numeric arrays with the columns sent for n <> 1 buckets only (see
    ``_rollup_arrays_sql``) filled in for the single-reading buckets."""
    multi = cols["n"] != 1
    count = int(multi.sum())
    for name, same_as in _SINGLE_READING:
        if cols[name].size != count:
            raise ValueError(f"{name}: {cols[name].size} values for {count} buckets")
        full = cols[same_as].copy()
        full[multi] = cols[name]
        cols[name] = full
    return cols


def _numeric_from_arrays(rows: dict[str, np.ndarray]) -> NumericBins:
    """Numeric bins from :func:`_rollup_rows`; offsets as ``date_part('epoch', t - bucket)``
    computes them (microseconds / 1e6)."""
    bucket = rows.pop("bucket")
    rows["first_off"] = (rows.pop("first_time") - bucket).astype(np.float64) / 1e6
    rows["last_off"] = (rows.pop("last_time") - bucket).astype(np.float64) / 1e6
    return _numeric_from_columns(rows)


def _numeric_from_columns(cols: Mapping[str, object]) -> NumericBins:
    ints = {k: np.asarray(cols.get(k, ()), dtype=np.int64) for k in _INT_FIELDS}
    floats = {k: np.asarray(cols.get(k, ()), dtype=np.float64) for k in _FLOAT_FIELDS}
    return NumericBins(**ints, **floats)  # type: ignore[arg-type]


def _categorical_from_rows(rows: Sequence[Sequence[object]]) -> tuple[CategoricalBins, list[str]]:
    """(u, d, s, h, value, share, n) rows → bins with value codes (the chunk's dictionary)."""
    if not rows:
        z = np.zeros(0, dtype=np.int64)
        return CategoricalBins(z, z, z, z, z, z.astype(float), z.astype(float)), []
    u, d, s, h, value, share, n = zip(*rows, strict=True)
    values, code = np.unique(np.array(value, dtype=str), return_inverse=True)
    bins = CategoricalBins(
        u=np.array(u, dtype=np.int64),
        d=np.array(d, dtype=np.int64),
        s=np.array(s, dtype=np.int64),
        h=np.array(h, dtype=np.int64),
        code=code.astype(np.int64).ravel(),
        share=np.array(share, dtype=np.float64),
        n=np.array(n, dtype=np.float64),
    )
    return bins, [str(v) for v in values]


def _categorical_from_arrays(
    rows: dict[str, np.ndarray], encoding: str
) -> tuple[CategoricalBins, list[str]]:
    """Categorical bins from :func:`_rollup_rows` and the value dictionary, sorted (codes as
    ``np.unique`` of the decoded strings gives them)."""
    raw, code = np.unique(rows["value"], return_inverse=True)
    decoded = [bytes(v).decode(encoding) for v in raw]
    order = sorted(range(len(decoded)), key=decoded.__getitem__)
    rank = np.empty(len(order), dtype=np.int64)
    rank[order] = np.arange(len(order))
    bins = CategoricalBins(
        u=rows["u"],
        d=rows["d"],
        s=rows["s"],
        h=rows["h"],
        code=rank[code.ravel()] if len(order) else code.astype(np.int64).ravel(),
        share=rows["share"].astype(np.float64),
        n=rows["n"].astype(np.float64),
    )
    return bins, [decoded[i] for i in order]


# --- what was known at T ----------------------------------------------------------------------


class Knowledge(StrEnum):
    """When a stored row counts as known, for "as of T" (DESIGN §3.8).

    ``INGESTED`` (the default, production): a row is known at T only if it was ingested by T, so
    a late reading never changes a past snapshot. ``EVENT``: a row counts as known at its event
    time — only for history *replayed* through the pipeline after the fact (the simulator, a
    migration import), where every row was ingested "now" and INGESTED would see nothing at a
    past T. Event time < T holds in both, so nothing from after T leaks in either.
    """

    INGESTED = "ingested"
    EVENT = "event"


def _known_by(as_of: datetime, knowledge: Knowledge) -> datetime | str:
    return as_of if knowledge is Knowledge.INGESTED else "infinity"


# --- loading a chunk ------------------------------------------------------------------------


@dataclass(frozen=True)
class _Pairs:
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
            signals_of[cats] = ",".join(
                n for n in NUMERIC_SIGNALS + CATEGORICAL_SIGNALS if SIGNALS[n].category in cats
            )
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


_SIGNAL_NAMES = list(SIGNAL_INDEX)


def _dirty_keys(
    conn: Conn,
    kind: str,
    params: dict[str, object],
    stale: tuple[np.ndarray, np.ndarray, np.ndarray],
    check_new_raw: bool,
) -> np.ndarray:
    """(device, signal, hour) keys [K, 3] of buckets to recompute from raw."""
    parts = [np.stack(stale, axis=1)] if stale[0].size else []
    if check_new_raw:
        rows = conn.execute(_SQL[("new", kind)], params).fetchall()
        if rows:
            parts.append(np.array(rows, dtype=np.int64))
    if not parts:
        return np.zeros((0, 3), dtype=np.int64)
    return np.unique(np.concatenate(parts).astype(np.int64), axis=0)


def _key(d: np.ndarray, s: np.ndarray, h: np.ndarray, hours: int) -> np.ndarray:
    out: np.ndarray = (d.astype(np.int64) * len(SIGNAL_INDEX) + s) * (hours + 1) + h
    return out


def _recompute(
    conn: Conn,
    kind: str,
    keys: np.ndarray,
    pairs: _Pairs,
    start: datetime,
    as_of: datetime,
    knowledge: Knowledge,
) -> list[tuple[object, ...]]:
    devices = [pairs.devices[int(d)] for d in keys[:, 0]]
    params = {
        "k_device": [d.device_id for d in devices],
        "k_user": [d.user_id for d in devices],
        "k_signal": [_SIGNAL_NAMES[int(s)] for s in keys[:, 1]],
        "k_bucket": [start + timedelta(hours=int(h)) for h in keys[:, 2]],
        "k_uidx": [int(pairs.params["d_uidx"][int(d)]) for d in keys[:, 0]],  # type: ignore[index]
        "k_didx": [int(d) for d in keys[:, 0]],
        "k_sidx": [int(s) for s in keys[:, 1]],
        "start": start,
        "as_of": as_of,
        "known_by": _known_by(as_of, knowledge),
    }
    return conn.execute(_SQL[("recompute", kind)], params).fetchall()


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
    start, _, hours = grid_bounds(as_of)
    pairs = _pairs(conn, users, as_of)
    params: dict[str, object] = {
        k: _array_literal(v) if isinstance(v, list) else v for k, v in pairs.params.items()
    }
    params.update(
        start=start,
        as_of=as_of,
        known_by=_known_by(as_of, knowledge),
        watermark=watermark or "-infinity",
    )
    # Replayed history (EVENT) may hold rows ingested after the watermark at any past T.
    check_new_raw = watermark is None or watermark < as_of or knowledge is Knowledge.EVENT
    with conn.cursor() as cur:
        sig_hash = {
            int(str(h)): int(str(i))
            for h, i in cur.execute(
                "SELECT hashtext(s), i"
                " FROM unnest(%(s_name)s::text[], %(s_idx)s::int4[]) AS x(s, i)",
                params,
            ).fetchall()
        }
        arrays = {
            kind: _fetch_arrays(cur, sql, params, _ARRAY_COLUMNS[kind])
            for kind, sql in _ROLLUP_ARRAYS_SQL.items()
        }
        first_rows = cur.execute(_FIRST_SEEN_SQL, params).fetchall()
    sql_s = time.perf_counter() - t0

    t1 = time.perf_counter()
    cols = _fill_single_readings(arrays.pop("numeric"))
    cols, usable = _rollup_rows(cols, sig_hash, start, as_of, hours)
    numeric = _numeric_from_arrays(cols)
    cols, cat_usable = _rollup_rows(arrays.pop("categorical"), sig_hash, start, as_of, hours)
    categorical, value_list = _categorical_from_arrays(cols, conn.info.encoding)
    del cols
    py_s = time.perf_counter() - t1

    # Pass 2: corrections from raw rows (usually nothing to do).
    t2 = time.perf_counter()
    fixed_numeric: list[tuple[object, ...]] = []
    fixed_cat: list[tuple[object, ...]] = []
    for kind, bins, ok in (("numeric", numeric, usable), ("categorical", categorical, cat_usable)):
        stale = (bins.d[~ok], bins.s[~ok], bins.h[~ok])
        keys = _dirty_keys(conn, kind, params, stale, check_new_raw)
        if keys.size == 0:
            if ok.all():
                continue
            if kind == "numeric":
                numeric = numeric.select(ok)
            else:
                categorical = _select_cat(categorical, ok)
            continue
        drop = np.isin(
            _key(bins.d, bins.s, bins.h, hours), _key(keys[:, 0], keys[:, 1], keys[:, 2], hours)
        )
        rows = _recompute(conn, kind, keys, pairs, start, as_of, knowledge)
        if kind == "numeric":
            numeric = numeric.select(ok & ~drop)
            fixed_numeric = rows
        else:
            categorical = _select_cat(categorical, ok & ~drop)
            fixed_cat = rows
    sql_s += time.perf_counter() - t2
    t3 = time.perf_counter()
    if fixed_numeric:
        fixed = dict(
            zip(_INT_FIELDS + _FLOAT_FIELDS, zip(*fixed_numeric, strict=True), strict=True)
        )
        numeric = _concat_numeric(numeric, _numeric_from_columns(fixed))
    if fixed_cat:
        all_rows = [
            (u, d, s, h, value_list[c], sh, n)
            for u, d, s, h, c, sh, n in zip(
                categorical.u, categorical.d, categorical.s, categorical.h,
                categorical.code, categorical.share, categorical.n, strict=True,
            )
        ] + list(fixed_cat)  # fmt: skip
        categorical, value_list = _categorical_from_rows(all_rows)

    # Tenure, per user and per device: the first bin in the grid, or earlier history from the
    # rollups.
    first_h = np.full(len(users), np.inf)
    dev_first_h = np.full(len(pairs.devices), np.inf)
    for b in (numeric, categorical):
        if b.u.size:
            np.minimum.at(first_h, b.u, b.h.astype(np.float64))
            np.minimum.at(dev_first_h, b.d, b.h.astype(np.float64))
    end_hours = (as_of - start).total_seconds() / 3600.0
    first_seen = np.where(np.isinf(first_h), np.nan, end_hours - first_h)
    dev_first_seen = np.where(np.isinf(dev_first_h), np.nan, end_hours - dev_first_h)
    for ui, di, t in first_rows:
        assert isinstance(ui, int) and isinstance(di, int) and isinstance(t, datetime)
        before = (as_of - t).total_seconds() / 3600.0
        first_seen[ui] = np.fmax(first_seen[ui], before)
        dev_first_seen[di] = before
    retired = np.array(
        [
            (as_of - d.retired_at).total_seconds() / 3600.0
            if d.retired_at is not None and d.retired_at <= as_of
            else np.nan
            for d in pairs.devices
        ],
        dtype=np.float64,
    )
    chunk = Chunk(
        n_users=len(users),
        hours=hours,
        numeric=numeric,
        categorical=categorical,
        categorical_values=value_list,
        grid=local_grid(tzs, start, hours),
        signal_index=SIGNAL_INDEX,
        first_seen_hours=first_seen,
        consented=pairs.consented,
        withdrawn=pairs.withdrawn,
        device_kinds=[d.kind for d in pairs.devices],
        device_owner=np.asarray(pairs.params["d_uidx"], dtype=np.int64),
        device_first_seen_hours=dev_first_seen,
        device_retired_hours=retired,
        as_of_hours=end_hours,
    )
    if timings is not None:
        timings.add(sql_s=sql_s, python_s=py_s + time.perf_counter() - t3)
    return chunk


def _select_cat(b: CategoricalBins, mask: np.ndarray) -> CategoricalBins:
    return CategoricalBins(
        **{k: getattr(b, k)[mask] for k in ("u", "d", "s", "h", "code", "share", "n")}
    )


def _concat_numeric(a: NumericBins, b: NumericBins) -> NumericBins:
    return NumericBins(
        **{k: np.concatenate([getattr(a, k), getattr(b, k)]) for k in _INT_FIELDS + _FLOAT_FIELDS}
    )


# --- computing ---------------------------------------------------------------------------------


class ChunkResults(dict[str, tuple[np.ndarray, np.ndarray]]):
    """Every definition's (value[U], coverage[U]) for a chunk, and ``reasons``: per
    definition, a [U] array of :data:`REASON_CODES` indices (0: the value stands)."""

    def __init__(self) -> None:
        super().__init__()
        self.reasons: dict[str, np.ndarray] = {}

    def reason(self, name: str, user: int) -> CellReason | None:
        codes = self.reasons.get(name)
        return None if codes is None else REASON_CODES[int(codes[user])]


REASON_CODES: tuple[CellReason | None, ...] = (
    None,
    CellReason.NOT_CONSENTED,
    CellReason.CONSENT_WITHDRAWN,
)
_CATEGORY_OF = {d.name: Category(d.category) for d in DEFINITIONS}


def _mask_by_consent(out: ChunkResults, chunk: Chunk) -> ChunkResults:
    """A feature whose category is not usable at T is null with coverage 0, whatever its
    function computed from the (absent) data, and says why: every vector has every feature,
    and none reads as a confident value without its data."""
    codes: dict[Category, np.ndarray] = {}
    for category, ok in chunk.consented.items():
        withdrawn = chunk.withdrawn.get(category, np.zeros_like(ok))
        codes[category] = np.where(ok, 0, np.where(withdrawn, 2, 1)).astype(np.int8)
    for name, (value, coverage) in out.items():
        of = _CATEGORY_OF.get(name)
        if of is None or of not in codes:
            continue
        ok = codes[of] == 0
        if not ok.all():
            out[name] = (np.where(ok, value, np.nan), np.where(ok, coverage, 0.0))
        out.reasons[name] = codes[of]
    return out


def compute_chunk(chunk: Chunk) -> ChunkResults:
    """Every definition's (value[U], coverage[U]) for a loaded chunk.

    One window at a time (its cached matrices are freed before the next one) keeps the peak
    memory at one window's worth.
    """
    out = ChunkResults()
    for days in sorted({d or GRID_DAYS for spec in SPECS for d in spec.windows}):
        w = Window(chunk, days)
        for spec in SPECS:
            for d in spec.windows:
                if (d or GRID_DAYS) != days:
                    continue
                name = spec.base_name if d == 0 else f"{spec.base_name}_{d}d"
                value, coverage = spec.fn(w)
                out[name] = (
                    np.asarray(value, dtype=np.float64),
                    np.clip(np.nan_to_num(np.asarray(coverage, dtype=np.float64)), 0.0, 1.0),
                )
        del w
    return _mask_by_consent(out, chunk)


def _vectors(
    users: Sequence[str],
    as_of: datetime,
    results: ChunkResults,
    computed_at: datetime,
) -> list[FeatureVector]:
    names = [d.name for d in DEFINITIONS]
    vals = {n: results[n][0].tolist() for n in names}
    covs = {n: results[n][1].tolist() for n in names}
    out = []
    for i, user in enumerate(users):
        values = {}
        for n in names:
            v = vals[n][i]
            values[n] = FeatureValue(
                None if (v is None or not math.isfinite(v)) else float(v),
                round(covs[n][i], 6),
                results.reason(n, i),
            )
        out.append(FeatureVector(user, as_of, FEATURE_SET_VERSION, computed_at, values))
    return out


def iter_chunk_results(
    conn: Conn,
    user_ids: Sequence[str],
    as_of: datetime,
    *,
    chunk_size: int = DEFAULT_CHUNK_USERS,
    timings: Timings | None = None,
    loaders: Sequence[Conn] = (),
    knowledge: Knowledge = Knowledge.INGESTED,
) -> Iterator[tuple[list[str], ChunkResults]]:
    """(known users of the chunk, feature arrays) per chunk, in order; unknown users are
    skipped.

    With ``loaders`` (connections of their own) the next chunks are read in background
    threads, one per loader, while this one is computed: the database works on up to
    ``len(loaders)`` chunks at once (a backend per loader, so on more than one core) while
    numpy computes; at most ``len(loaders) + 1`` chunks are in memory.
    """
    as_of = as_of.astimezone(UTC)
    watermark = read_watermark(conn)
    idle: queue.SimpleQueue[Conn] = queue.SimpleQueue()
    for c in loaders:
        idle.put(c)

    def load(start: int, db: Conn | None = None) -> tuple[list[str], Chunk] | None:
        if db is None:  # a background load: borrow an idle loader connection
            borrowed = idle.get()
            try:
                return load(start, borrowed)
            finally:
                idle.put(borrowed)
        part = list(dict.fromkeys(user_ids[start : start + chunk_size]))
        tz = ledger.user_timezones(db, part)
        known = [u for u in part if u in tz]
        if not known:
            return None
        tzs = [tz[u] for u in known]
        return known, load_chunk(db, known, tzs, as_of, watermark, timings, knowledge)

    def compute(loaded: tuple[list[str], Chunk]) -> ChunkResults:
        t0 = time.perf_counter()
        results = compute_chunk(loaded[1])
        if timings is not None:
            timings.add(python_s=time.perf_counter() - t0)
        return results

    starts = list(range(0, len(user_ids), chunk_size))
    if not loaders:
        for start in starts:
            loaded = load(start, conn)
            if loaded is not None:
                known = loaded[0]
                results = compute(loaded)
                del loaded
                yield known, results
        return
    with ThreadPoolExecutor(max_workers=len(loaders)) as pool:
        pending: deque[Future[tuple[list[str], Chunk] | None]] = deque()
        ahead = iter(starts)
        for start in islice(ahead, len(loaders)):
            pending.append(pool.submit(load, start))
        while pending:
            loaded = pending.popleft().result()
            for start in islice(ahead, 1):
                pending.append(pool.submit(load, start))
            if loaded is not None:
                known = loaded[0]
                results = compute(loaded)
                del loaded
                yield known, results


def compute_vectors(
    conn: Conn,
    user_ids: Sequence[str],
    as_of: datetime,
    *,
    chunk_size: int = DEFAULT_CHUNK_USERS,
    knowledge: Knowledge = Knowledge.INGESTED,
) -> list[FeatureVector]:
    """On-demand vectors of the known users among ``user_ids`` as of ``as_of``.

    Unknown users are omitted (the caller decides what that means).
    """
    computed_at = datetime.now(UTC)
    out: list[FeatureVector] = []
    chunks = iter_chunk_results(conn, user_ids, as_of, chunk_size=chunk_size, knowledge=knowledge)
    for known, results in chunks:
        out.extend(_vectors(known, as_of.astimezone(UTC), results, computed_at))
    return out


def compute_historical(
    conn: Conn,
    rows: Sequence[tuple[str, datetime]],
    *,
    knowledge: Knowledge = Knowledge.INGESTED,
) -> list[FeatureVector | None]:
    """One vector per (user, as_of) row, in order; None where the user is unknown."""
    by_time: dict[datetime, list[str]] = {}
    for user, at in rows:
        by_time.setdefault(at.astimezone(UTC), []).append(user)
    found: dict[tuple[str, datetime], FeatureVector] = {}
    for at, users in by_time.items():
        for vec in compute_vectors(conn, users, at, knowledge=knowledge):
            found[(vec.user_id, at)] = vec
    return [found.get((u, at.astimezone(UTC))) for u, at in rows]


# --- snapshots ---------------------------------------------------------------------------------


def latest_snapshot(
    conn: Conn, user_id: str, as_of: datetime, version: str = FEATURE_SET_VERSION
) -> FeatureVector | None:
    """The stored snapshot with the latest as_of ≤ ``as_of`` for the current feature set."""
    row = conn.execute(
        """SELECT as_of, computed_at, vector FROM feature_snapshots
            WHERE user_id = %s AND feature_set_version = %s AND as_of <= %s
            ORDER BY as_of DESC LIMIT 1""",
        (user_id, version, as_of),
    ).fetchone()
    if row is None:
        return None
    return _from_row(user_id, version, row)


def read_snapshots(
    conn: Conn, user_ids: Sequence[str], as_of: datetime, version: str = FEATURE_SET_VERSION
) -> dict[str, FeatureVector]:
    """Snapshots stored for exactly ``as_of`` for the given users."""
    rows = conn.execute(
        """SELECT user_id, as_of, computed_at, vector FROM feature_snapshots
            WHERE user_id = ANY(%s) AND feature_set_version = %s AND as_of = %s""",
        (list(user_ids), version, as_of),
    ).fetchall()
    return {str(r[0]): _from_row(str(r[0]), version, r[1:]) for r in rows}


def _from_row(user_id: str, version: str, row: Sequence[object]) -> FeatureVector:
    as_of, computed_at, vector = row
    assert isinstance(as_of, datetime) and isinstance(computed_at, datetime)
    data = vector if isinstance(vector, dict) else json.loads(str(vector))
    values = {
        k: FeatureValue(
            v.get("value"),
            float(v.get("coverage", 0.0)),
            CellReason(v["reason"]) if v.get("reason") else None,
        )
        for k, v in data.items()
    }
    return FeatureVector(user_id, as_of, version, computed_at, values)
