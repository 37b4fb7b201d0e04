"""A chunk's hourly bins as numpy columns: decoded rollup arrays and rows recomputed from raw
readings become :class:`NumericBins` and :class:`CategoricalBins`, indexed by user, device,
signal (:data:`SIGNAL_INDEX`) and grid hour."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime

import numpy as np

from features.catalogue.library.base import NUMERIC_FIELDS, CategoricalBins, NumericBins
from features.engine.wire import HOUR_US, pg_us
from hearth.signals import SIGNALS

_NUMERIC_SIGNALS = tuple(s.name for s in SIGNALS.values() if s.kind == "numeric")
_CATEGORICAL_SIGNALS = tuple(s.name for s in SIGNALS.values() if s.kind == "categorical")
SIGNAL_INDEX = {name: i for i, name in enumerate(_NUMERIC_SIGNALS + _CATEGORICAL_SIGNALS)}
SIGNAL_NAMES = list(SIGNAL_INDEX)
_INDEX_FIELDS = ("u", "d", "s", "h")
# A recomputed row (features.engine.sql.RECOMPUTE_SQL): index fields, then statistics.
ROW_FIELDS = {
    "numeric": _INDEX_FIELDS + NUMERIC_FIELDS,
    "categorical": (*_INDEX_FIELDS, "value", "share", "n"),
}
Columns = dict[str, np.ndarray]  # recomputed rows as columns, ROW_FIELDS[kind] each


def bin_key(d: np.ndarray, s: np.ndarray, h: np.ndarray, hours: int) -> np.ndarray:
    """One int64 per (device, signal, grid hour), to match bins and buckets with ``np.isin``."""
    out: np.ndarray = (d.astype(np.int64) * len(SIGNAL_INDEX) + s) * (hours + 1) + h
    return out


# Per-row columns of fetched rollup arrays (features.engine.sql): repeated per bucket by
# :func:`rollup_buckets` (``k`` counts a row's buckets, ``day`` and ``hours`` become ``bucket``).
_PER_ROW = ("sig", "first_ingested")
# Per-bucket columns that decide which buckets a read takes, not bin statistics.
_BOOKKEEPING = ("ingested", "first_ingested")


def bucket_times(cols: dict[str, np.ndarray]) -> np.ndarray:
    """Each bucket's start (binary timestamptz) of fetched packed rows: their ``day`` plus
    each bucket's ``hours`` byte."""
    out: np.ndarray = np.repeat(cols["day"], cols["k"]) + cols["hours"].astype(np.int64) * HOUR_US
    return out


def signal_indexes(sig: np.ndarray, sig_hash: dict[int, int]) -> np.ndarray:
    """:data:`SIGNAL_INDEX` positions of signal hashes (``sig_hash``: hash → index); -1 for
    signals outside the catalogue."""
    hashes = np.array(sorted(sig_hash), dtype=np.int64)
    index = np.array([sig_hash[h] for h in sorted(sig_hash)], dtype=np.int64)
    sig = sig.astype(np.int64)
    s = np.full(sig.size, -1, dtype=np.int64)
    if hashes.size:
        pos = np.clip(np.searchsorted(hashes, sig), 0, hashes.size - 1)
        found = hashes[pos] == sig
        s[found] = index[pos[found]]
    return s


def rollup_buckets(cols: dict[str, np.ndarray], sig_hash: dict[int, int]) -> dict[str, np.ndarray]:
    """Fetched packed rollup rows (:data:`features.engine.sql.ARRAY_COLUMNS`, single-reading
    columns filled in; consumed) as one entry per bucket: the per-bucket columns, ``bucket``
    (its start, binary timestamptz), ``s`` (signal index, -1 outside the catalogue) and the
    row's ``first_ingested``."""
    bucket = bucket_times(cols)
    k = cols.pop("k")
    per_row = {name: np.repeat(cols.pop(name), k) for name in _PER_ROW if name in cols}
    del cols["day"], cols["hours"]
    out = dict(cols, bucket=bucket, **per_row)
    if "sig" in out:
        out["s"] = signal_indexes(out.pop("sig"), sig_hash)
    return out


def window_rows(
    buckets: dict[str, np.ndarray],
    start: datetime,
    as_of: datetime,
    known_by_us: int,
    readable: np.ndarray | None = None,
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """The buckets (:func:`rollup_buckets`; not modified) a read as of T takes: inside the grid
    [start, T), of known signals (and ``readable`` ones, when given), as per-bucket columns with
    ``h`` (grid hour); and whether each is usable as is: it ended by T and its newest reading
    was ingested by ``known_by_us`` (binary timestamptz). Buckets of rows whose every reading
    was ingested after that are left out: nothing of them is known at T, so there is nothing
    to recompute either."""
    bucket = buckets["bucket"]
    start_us, as_of_us = pg_us(start), pg_us(as_of)
    inside = (buckets["s"] >= 0) & (bucket >= start_us) & (bucket < as_of_us)
    inside &= buckets["first_ingested"] <= known_by_us
    if readable is not None:
        inside &= readable
    take = np.flatnonzero(inside)
    rows = {name: v[take] for name, v in buckets.items() if name not in _BOOKKEEPING}
    rows["h"] = (rows["bucket"] - start_us) // HOUR_US
    usable = (rows["bucket"] + HOUR_US <= as_of_us) & (buckets["ingested"][take] <= known_by_us)
    return rows, usable


# Columns holding the buckets with n <> 1 only, and what a single reading makes them.
_SINGLE_READING: dict[str, tuple[tuple[str, str | None], ...]] = {
    "numeric": (
        ("min", "sum"),
        ("max", "sum"),
        ("first", "sum"),
        ("last", "sum"),
        ("last_time", "first_time"),
    ),
    "categorical": (("share", None),),  # one reading: its value has all of them
}


def fill_single_readings(cols: dict[str, np.ndarray], kind: str) -> dict[str, np.ndarray]:
    """Fetched packed columns with those holding n <> 1 buckets only (see
    :mod:`features.engine.sql`) filled in for the single-reading buckets."""
    multi = cols["n"] != 1
    count = int(multi.sum())
    for name, same_as in _SINGLE_READING[kind]:
        if cols[name].size != count:
            raise ValueError(f"{name}: {cols[name].size} values for {count} buckets")
        full = cols[same_as].copy() if same_as else np.ones(multi.size, dtype=cols[name].dtype)
        full[multi] = cols[name]
        cols[name] = full
    return cols


def earliest_known(
    buckets: dict[str, np.ndarray],
    start: datetime,
    known_by_us: int,
    readable: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(user, device, binary timestamptz) of each device's earliest bucket before ``start``
    known by ``known_by_us`` (of the ``readable`` ones, when given), from per-bucket columns
    ``u``, ``d``, ``bucket``, ``ingested`` and, for numeric buckets, ``first_time``
    (:data:`features.engine.sql.FIRST_SEEN_SQL` rows through :func:`rollup_buckets`): the first
    reading for numeric buckets, the bucket's start for categorical ones (their only time)."""
    bucket = buckets["bucket"]
    t = buckets.get("first_time", bucket)
    ok = (bucket < pg_us(start)) & (buckets["ingested"] <= known_by_us)
    if readable is not None:
        ok &= readable
    u, d, t = buckets["u"][ok], buckets["d"][ok], t[ok]
    order = np.lexsort((t, d))
    first = np.ones(order.size, dtype=bool)
    first[1:] = d[order][1:] != d[order][:-1]
    pick = order[first]
    return u[pick], d[pick], t[pick]


def numeric_from_arrays(rows: dict[str, np.ndarray]) -> NumericBins:
    """Numeric bins from :func:`window_rows`; offsets as ``date_part('epoch', t - bucket)``
    computes them (microseconds / 1e6)."""
    bucket = rows.pop("bucket")
    rows["first_off"] = (rows.pop("first_time") - bucket).astype(np.float64) / 1e6
    rows["last_off"] = (rows.pop("last_time") - bucket).astype(np.float64) / 1e6
    return _numeric_from_columns(rows)


def _numeric_from_columns(cols: Mapping[str, object]) -> NumericBins:
    ints = {k: np.asarray(cols.get(k, ()), dtype=np.int64) for k in _INDEX_FIELDS}
    floats = {k: np.asarray(cols.get(k, ()), dtype=np.float64) for k in NUMERIC_FIELDS}
    return NumericBins(**ints, **floats)  # type: ignore[arg-type]


def columns_of(kind: str, rows: Sequence[Sequence[object]] = ()) -> Columns:
    """Recomputed rows (:data:`ROW_FIELDS` of ``kind`` each) as columns: indexes int64,
    statistics float64 (NULL: NaN), values as Python strings."""
    fields = ROW_FIELDS[kind]
    values = list(zip(*rows, strict=True)) if rows else [()] * len(fields)
    return {
        f: np.asarray(
            v, dtype=np.int64 if f in _INDEX_FIELDS else object if f == "value" else np.float64
        )
        for f, v in zip(fields, values, strict=True)
    }


def take_columns(cols: Columns, rows: np.ndarray) -> Columns:
    """The rows at ``rows`` (indexes or a mask) of every column."""
    return {k: v[rows] for k, v in cols.items()}


def concat_columns(parts: Sequence[Columns]) -> Columns:
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def _categorical_from_columns(cols: Columns) -> tuple[CategoricalBins, list[str]]:
    """Recomputed categorical columns → bins with value codes (the chunk's dictionary)."""
    if not cols["d"].size:
        z = np.zeros(0, dtype=np.int64)
        return CategoricalBins(z, z, z, z, z, z.astype(float), z.astype(float)), []
    values, code = np.unique(np.array(cols["value"], dtype=str), return_inverse=True)
    bins = CategoricalBins(
        u=cols["u"],
        d=cols["d"],
        s=cols["s"],
        h=cols["h"],
        code=code.astype(np.int64).ravel(),
        share=cols["share"],
        n=cols["n"],
    )
    return bins, [str(v) for v in values]


def categorical_from_arrays(
    rows: dict[str, np.ndarray], dictionary: Sequence[bytes]
) -> tuple[CategoricalBins, list[str]]:
    """Categorical bins from :func:`window_rows` (``value``: codes into ``dictionary``, UTF-8)
    and the value dictionary, sorted (codes as ``np.unique`` of the decoded strings gives
    them)."""
    used, code = _used_codes(rows["value"], len(dictionary))  # only the values still in use
    decoded = [dictionary[i].decode("utf-8") for i in used.tolist()]
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


def _used_codes(codes: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """What ``np.unique(codes, return_inverse=True)`` gives for codes in [0, ``size``): the
    distinct codes ascending and each code's rank among them, by a table of ``size`` entries
    (a dictionary is small; sorting a chunk's codes was 8 % of its load)."""
    present = np.zeros(size, dtype=bool)
    present[codes] = True
    rank = np.cumsum(present, dtype=np.int64) - 1
    return np.flatnonzero(present), rank[codes]


def select_categorical(b: CategoricalBins, mask: np.ndarray) -> CategoricalBins:
    return CategoricalBins(
        **{k: getattr(b, k)[mask] for k in ("u", "d", "s", "h", "code", "share", "n")}
    )


def _kept_then(a: np.ndarray, kept: np.ndarray | None, b: np.ndarray) -> np.ndarray:
    """``a[kept]`` (indexes; all of ``a`` when None) followed by ``b``, written once into one
    new array (a chunk's columns are large: a gather and a concatenation would copy twice)."""
    if kept is None:
        return np.concatenate([a, b])
    out = np.empty(kept.size + b.size, dtype=np.result_type(a, b))
    np.take(a, kept, out=out[: kept.size])
    out[kept.size :] = b
    return out


def add_numeric_rows(
    bins: NumericBins, added: Columns, keep: np.ndarray | None = None
) -> NumericBins:
    """``bins`` (those where ``keep``, when given) followed by recomputed rows (columns of
    :data:`ROW_FIELDS` ``["numeric"]``)."""
    if not added["d"].size:
        return bins if keep is None else bins.select(keep)
    # The kept rows' indexes once for every column (a mask is searched again per column).
    kept = None if keep is None else np.flatnonzero(keep)
    fields = ROW_FIELDS["numeric"]
    return NumericBins(**{k: _kept_then(getattr(bins, k), kept, added[k]) for k in fields})


def add_categorical_rows(
    bins: CategoricalBins, values: Sequence[str], rows: Columns
) -> tuple[CategoricalBins, list[str]]:
    """``bins`` (codes into ``values``) followed by recomputed (u, d, s, h, value, share, n)
    rows, coded again over one sorted dictionary of the values in use (what
    :func:`_categorical_from_columns` of all of them gives; the bins are recoded, never
    turned into rows)."""
    added, new_values = _categorical_from_columns(rows)
    used = np.unique(bins.code)
    kept = [values[i] for i in used.tolist()]
    merged = sorted(set(kept) | set(new_values))
    index = {v: i for i, v in enumerate(merged)}
    old_code = np.zeros(len(values), dtype=np.int64)
    old_code[used] = [index[v] for v in kept]
    new_code = np.array([index[v] for v in new_values], dtype=np.int64)
    combined = CategoricalBins(
        **{
            k: np.concatenate([getattr(bins, k), getattr(added, k)])
            for k in ("u", "d", "s", "h", "share", "n")
        },
        code=np.concatenate([old_code[bins.code], new_code[added.code]]),
    )
    return combined, merged
