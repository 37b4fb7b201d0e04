"""libpq's binary wire format, both ways: parameters as PostgreSQL literals and timestamps, and
result arrays decoded straight into numpy (no Python object per element)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta

import numpy as np
import psycopg

TIMESTAMP = ">i8"  # binary timestamptz: microseconds since 2000-01-01 UTC
TEXT = "text"
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
        if typ == TEXT:
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
