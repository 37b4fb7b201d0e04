"""libpq's binary wire format, both ways: parameters as PostgreSQL literals and timestamps, and
result arrays and packed bytea columns decoded straight into numpy (no Python object per
element)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta

import numpy as np
import psycopg

TIMESTAMP = ">i8"  # binary timestamptz: microseconds since 2000-01-01 UTC
BLOB = "blob:"  # prefix of a column type: a bytea of fixed-width values (fetch_arrays)
BYTES = "bytes"  # a bytea column kept as raw bytes
_PG_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)
HOUR_US = 3_600_000_000


def array_literal(items: Sequence[object]) -> str:
    """A PostgreSQL array literal of str or int items, for a ``%s::text[]``/``::int4[]``
    parameter: one string for psycopg to pass, instead of a list it would quote item by item
    (a regular expression each) for every query of a chunk."""
    if all(isinstance(x, int) for x in items):
        return "{" + ",".join(map(str, items)) + "}"
    text = [str(x) for x in items]
    if any('"' in x or "\\" in x for x in text):
        text = [x.replace("\\", "\\\\").replace('"', '\\"') for x in text]
    return '{"' + '","'.join(text) + '"}' if text else "{}"


def pg_us(t: datetime) -> int:
    """A timestamp as binary timestamptz (microseconds since 2000-01-01 UTC)."""
    return (t - _PG_EPOCH) // timedelta(microseconds=1)


def fetch_arrays(
    cur: psycopg.Cursor[tuple[object, ...]],
    sql: str,
    params: Mapping[str, object],
    columns: Sequence[tuple[str, str]],
    per: str,
) -> dict[str, np.ndarray]:
    """Run ``sql`` (rows: uidx int4, didx int4, then one value per column of ``columns``)
    with binary results and decode every column across rows into one native numpy array: a
    1-D array column (type a numpy dtype such as ``>i4`` or :data:`TIMESTAMP`; an empty or
    NULL array has no elements), a :data:`BLOB` column (a bytea of fixed-width values end to
    end, e.g. ``blob:>f8``) or a :data:`BYTES` column (a bytea kept as raw ``uint8``). One
    ``np.frombuffer`` per column, a few Python operations per row and none per element; libpq
    receives the result in one go (a COPY would cost a Python round trip per row). Returns the
    columns plus ``u``/``d`` (user and device index) per element of column ``per``."""
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
    for col, (name, typ) in enumerate(columns, start=2):
        values = field(col)
        if typ == BYTES:
            sizes[name] = [len(v) for v in values]
            out[name] = np.frombuffer(b"".join(values), dtype=np.uint8)
            continue
        if typ.startswith(BLOB):
            dtype = np.dtype(typ[len(BLOB) :])
            sizes[name] = [len(v) // dtype.itemsize for v in values]
            out[name] = np.frombuffer(b"".join(values), dtype=dtype).astype(dtype.newbyteorder("="))
            continue
        # 1-D array: ndim, has-null, element oid, [size, lower bound], then (len, value)*.
        sizes[name] = [int.from_bytes(v[12:16], "big") if len(v) > 12 else 0 for v in values]
        elements = b"".join([v[20:] for v in values if len(v) > 12])
        del values
        rec = np.frombuffer(elements, dtype=[("len", ">i4"), ("v", typ)])
        out[name] = rec["v"].astype(typ.replace(">", "="))
    out["u"] = np.repeat(users, sizes[per])
    out["d"] = np.repeat(devices, sizes[per])
    return out


def text_codes(blob: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, list[bytes]]:
    """Values laid end to end in ``blob`` (``uint8``), given each one's octet length, as codes
    into a dictionary of their distinct values. All numpy: values of one length at a time
    (categorical signals have a few: cells, hashes, network types) are gathered into a
    fixed-width ``S<n>`` array and ``np.unique``'d; no Python object per value. (Text never
    holds a NUL byte, so the fixed-width strings lose nothing.)"""
    lengths = lengths.astype(np.int64)
    ends = np.cumsum(lengths)
    if (int(ends[-1]) if ends.size else 0) != blob.size:
        raise ValueError(f"{blob.size} bytes of text for lengths adding up to {ends[-1:]}")
    starts = ends - lengths
    codes = np.empty(lengths.size, dtype=np.int64)
    dictionary: list[bytes] = []
    for width in np.unique(lengths).tolist():
        pick = np.flatnonzero(lengths == width)
        if width == 0:
            codes[pick] = len(dictionary)
            dictionary.append(b"")
            continue
        # Each value's bytes as a row: a strided view of the blob gathered by start offset
        # (an index per byte would be an int64 for every byte of text).
        windows = np.lib.stride_tricks.sliding_window_view(blob, width)
        rows = windows[starts[pick]]
        first, inverse = _distinct_rows(rows)
        codes[pick] = inverse + len(dictionary)
        dictionary.extend(bytes(r) for r in rows[first])
    return codes, dictionary


def _distinct_rows(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For byte strings as the rows of a [n, width] ``uint8`` array: a row index of each
    distinct one, in byte order, and each row's position among them (what ``np.unique`` of
    the ``S<width>`` strings gives). Sorted by their first 8 bytes as big-endian integers,
    which order them as the strings do; only when two strings share those bytes does it sort
    the strings themselves (string comparison is several times slower, and hashes and cells
    rarely share 8 leading bytes)."""
    n, width = rows.shape
    head = np.zeros((n, 8), dtype=np.uint8)
    head[:, : min(width, 8)] = rows[:, :8]
    _, first, inverse = np.unique(head.view(">u8").ravel(), return_index=True,
                                  return_inverse=True)  # fmt: skip
    inverse = inverse.ravel()
    if width > 8 and not (rows == rows[first][inverse]).all():
        strings = np.ascontiguousarray(rows).view(f"S{width}").ravel()
        _, first, inverse = np.unique(strings, return_index=True, return_inverse=True)
        inverse = inverse.ravel()
    return first, inverse
