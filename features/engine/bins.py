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
# A recomputed numeric row (features.engine.sql.RECOMPUTE_SQL): index fields, then statistics.
_NUMERIC_ROW_FIELDS = _INDEX_FIELDS + NUMERIC_FIELDS


def bin_key(d: np.ndarray, s: np.ndarray, h: np.ndarray, hours: int) -> np.ndarray:
    """One int64 per (device, signal, grid hour), to match bins and buckets with ``np.isin``."""
    out: np.ndarray = (d.astype(np.int64) * len(SIGNAL_INDEX) + s) * (hours + 1) + h
    return out


def rollup_rows(
    cols: dict[str, np.ndarray],
    sig_hash: dict[int, int],
    start: datetime,
    as_of: datetime,
    hours: int,
    known_by_us: int,
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """The buckets of fetched packed rollup rows (:data:`features.engine.sql.ARRAY_COLUMNS`,
    single-reading columns filled in) inside the grid [start, T), for known signals, as
    per-bucket columns with ``bucket``, ``s`` (signal index) and ``h`` (grid hour); and whether
    each is usable as is: it ended by T and its newest reading was ingested by ``known_by_us``
    (binary timestamptz). Buckets of rows whose every reading was ingested after that are left
    out: nothing of them is known at T, so there is nothing to recompute either. Per-row
    columns (``sig``, ``day``, ``k``, ``first_ingested``) and ``ingested`` are consumed."""
    hashes = np.array(sorted(sig_hash), dtype=np.int64)
    index = np.array([sig_hash[h] for h in sorted(sig_hash)], dtype=np.int64)
    k = cols.pop("k")
    sig = np.repeat(cols.pop("sig").astype(np.int64), k)
    bucket = np.repeat(cols.pop("day"), k) + cols.pop("hours").astype(np.int64) * HOUR_US
    ingested = cols.pop("ingested")
    seen = np.repeat(cols.pop("first_ingested"), k) <= known_by_us
    s = np.full(sig.size, -1, dtype=np.int64)
    if hashes.size:
        pos = np.clip(np.searchsorted(hashes, sig), 0, hashes.size - 1)
        found = hashes[pos] == sig
        s[found] = index[pos[found]]
    start_us, as_of_us = pg_us(start), pg_us(as_of)
    inside = (s >= 0) & (bucket >= start_us) & (bucket < as_of_us) & seen
    rows = {name: v[inside] for name, v in cols.items()}
    rows["bucket"] = bucket[inside]
    rows["s"] = s[inside]
    rows["h"] = (rows["bucket"] - start_us) // HOUR_US
    usable = (rows["bucket"] + HOUR_US <= as_of_us) & (ingested[inside] <= known_by_us)
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
    cols: dict[str, np.ndarray], start: datetime, known_by_us: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(user, device, binary timestamptz) of each device's earliest bucket before ``start``
    known by ``known_by_us``, from :data:`features.engine.sql.FIRST_SEEN_SQL` rows: the first
    reading for numeric buckets, the bucket's start for categorical ones (their only time)."""
    bucket = np.repeat(cols["day"], cols["k"]) + cols["hours"].astype(np.int64) * HOUR_US
    t = cols.get("first_time", bucket)
    ok = (bucket < pg_us(start)) & (cols["ingested"] <= known_by_us)
    u, d, t = cols["u"][ok], cols["d"][ok], t[ok]
    order = np.lexsort((t, d))
    first = np.ones(order.size, dtype=bool)
    first[1:] = d[order][1:] != d[order][:-1]
    pick = order[first]
    return u[pick], d[pick], t[pick]


def numeric_from_arrays(rows: dict[str, np.ndarray]) -> NumericBins:
    """Numeric bins from :func:`rollup_rows`; offsets as ``date_part('epoch', t - bucket)``
    computes them (microseconds / 1e6)."""
    bucket = rows.pop("bucket")
    rows["first_off"] = (rows.pop("first_time") - bucket).astype(np.float64) / 1e6
    rows["last_off"] = (rows.pop("last_time") - bucket).astype(np.float64) / 1e6
    return _numeric_from_columns(rows)


def _numeric_from_columns(cols: Mapping[str, object]) -> NumericBins:
    ints = {k: np.asarray(cols.get(k, ()), dtype=np.int64) for k in _INDEX_FIELDS}
    floats = {k: np.asarray(cols.get(k, ()), dtype=np.float64) for k in NUMERIC_FIELDS}
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


def categorical_from_arrays(
    rows: dict[str, np.ndarray], dictionary: Sequence[bytes]
) -> tuple[CategoricalBins, list[str]]:
    """Categorical bins from :func:`rollup_rows` (``value``: codes into ``dictionary``, UTF-8)
    and the value dictionary, sorted (codes as ``np.unique`` of the decoded strings gives
    them)."""
    used, code = np.unique(rows["value"], return_inverse=True)  # only the values still in use
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


def select_categorical(b: CategoricalBins, mask: np.ndarray) -> CategoricalBins:
    return CategoricalBins(
        **{k: getattr(b, k)[mask] for k in ("u", "d", "s", "h", "code", "share", "n")}
    )


def _concat_numeric(a: NumericBins, b: NumericBins) -> NumericBins:
    return NumericBins(
        **{k: np.concatenate([getattr(a, k), getattr(b, k)]) for k in _NUMERIC_ROW_FIELDS}
    )


def add_numeric_rows(bins: NumericBins, rows: Sequence[Sequence[object]]) -> NumericBins:
    """``bins`` followed by recomputed rows (:data:`_NUMERIC_ROW_FIELDS` each)."""
    columns = dict(zip(_NUMERIC_ROW_FIELDS, zip(*rows, strict=True), strict=True))
    return _concat_numeric(bins, _numeric_from_columns(columns))


def add_categorical_rows(
    bins: CategoricalBins, values: Sequence[str], rows: Sequence[Sequence[object]]
) -> tuple[CategoricalBins, list[str]]:
    """``bins`` (codes into ``values``) followed by recomputed (u, d, s, h, value, share, n)
    rows, coded again over one dictionary."""
    all_rows = [
        (u, d, s, h, values[c], sh, n)
        for u, d, s, h, c, sh, n in zip(
            bins.u, bins.d, bins.s, bins.h, bins.code, bins.share, bins.n, strict=True,
        )
    ] + list(rows)  # fmt: skip
    return _categorical_from_rows(all_rows)
