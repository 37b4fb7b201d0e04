"""Every SQL statement of the engine's read path, built once at import.

Parameters, named the same in every statement: ``d_*`` the chunk's devices and the signals
consented for each (``'*'``: all), ``s_*`` the signal index, ``k_*`` the buckets to recompute,
``start``/``as_of`` the grid and T, ``known_by`` the latest ingest time known at T
(:func:`features.engine.as_of.known_by`), ``watermark`` the rollups'.
"""

from __future__ import annotations

from features.engine.wire import BLOB, BYTES, TIMESTAMP
from features.rollups import CATEGORICAL_AGGREGATE_FROM, NUMERIC_AGGREGATE

_KINDS = ("numeric", "categorical")  # of bins: rollup_numeric_hourly, rollup_categorical_hourly

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


# Pass 1 as one row per device holding its packed rollup rows laid end to end (binary
# format; wire.fetch_arrays). The rollup tables store one row per (device, signal, UTC day),
# each statistic a bytea of fixed-width values in hour order (migration 0050,
# features.rollups), so the server only concatenates stored bytes (string_agg of bytea: a
# memcpy per row, nothing per bucket) and numpy reads them with np.frombuffer. Per rollup row
# come its signal's hash, its day and its bucket count; everything else per bucket:
# * buckets become grid hours in numpy (bins.rollup_buckets, bins.window_rows), which also
#   drops the buckets of the edge days outside [start, T) and those of rows with nothing known
#   at T (every reading ingested after T: replayed history), and marks a bucket usable only if
#   it ended by T and its ``ingested`` (max ingested_at) is known at T;
# * columns a single-reading bucket would repeat hold the other buckets only
#   (bins.fill_single_readings fills them in).
# ``dv.sigs`` NULL means every signal is consented.
_DAY_RANGE = "b.day >= time_bucket(INTERVAL '1 day', %(start)s::timestamptz) AND b.day < %(as_of)s"


def _blobs(names: tuple[str, ...]) -> str:
    return ", ".join(f"string_agg(b.{n}, ''::bytea) AS {n}" for n in names)


_PACKED = {
    "numeric": ("hours", "n", "sum", "first_time", "ingested", "min", "max", "first", "last",
                "last_time"),
    "categorical": ("hours", "n", "value_len", "value", "ingested", "share"),
}  # fmt: skip


def _rollup_arrays_sql(kind: str) -> str:
    return f"""
    WITH {_DEVICES_CTE}
    SELECT dv.uidx, dv.didx, x.*
      FROM dv CROSS JOIN LATERAL (
           SELECT array_agg(hashtext(b.signal)) AS sig, array_agg(b.day) AS day,
                  array_agg(octet_length(b.hours)) AS k,
                  array_agg(b.first_ingested_at) AS first_ingested, {_blobs(_PACKED[kind])}
             FROM rollup_{kind}_hourly b
            WHERE b.device_id = dv.device_id
              AND (dv.sigs IS NULL OR b.signal = ANY(dv.sigs))
              AND {_DAY_RANGE}
              AND b.user_id = dv.user_id) x
     WHERE x.sig IS NOT NULL
    """


ROLLUP_ARRAYS_SQL = {kind: _rollup_arrays_sql(kind) for kind in _KINDS}
# The columns of each kind's rollup arrays after ``uidx, didx``, in order, with their binary
# types (:func:`features.engine.wire.fetch_arrays`): arrays (one element per rollup row) and
# blobs (``blob:`` fixed-width values per bucket, or the text bytes of ``value``).
_ROW_COLUMNS = (("sig", ">i4"), ("day", TIMESTAMP), ("k", ">i4"), ("first_ingested", TIMESTAMP))
ARRAY_COLUMNS: dict[str, tuple[tuple[str, str], ...]] = {
    "numeric": (
        *_ROW_COLUMNS,
        ("hours", BLOB + "u1"),
        ("n", BLOB + ">i4"),
        ("sum", BLOB + ">f8"),
        ("first_time", BLOB + TIMESTAMP),
        ("ingested", BLOB + TIMESTAMP),
        ("min", BLOB + ">f8"),  # these five: buckets with n <> 1 only
        ("max", BLOB + ">f8"),
        ("first", BLOB + ">f8"),
        ("last", BLOB + ">f8"),
        ("last_time", BLOB + TIMESTAMP),
    ),
    "categorical": (
        *_ROW_COLUMNS,
        ("hours", BLOB + "u1"),
        ("n", BLOB + ">i4"),
        ("value_len", BLOB + ">i4"),
        ("value", BYTES),
        ("ingested", BLOB + TIMESTAMP),
        ("share", BLOB + ">f8"),  # buckets with n <> 1 only
    ),
}

# The hash PostgreSQL gives each signal name (the rollup arrays carry hashes, not names).
SIGNAL_HASHES_SQL = (
    "SELECT hashtext(s), i FROM unnest(%(s_name)s::text[], %(s_idx)s::int4[]) AS x(s, i)"
)


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


# The buckets to recompute: device, user, signal, grid hour (``k_hour``, from ``start``) and
# the chunk's indexes, as arrays of text and integers (array literals: cheap to send).
_KEYS = """SELECT device_id, user_id, signal,
                  %(start)s::timestamptz + hour * INTERVAL '1 hour' AS bucket, uidx, didx, sidx,
                  hour
             FROM unnest(%(k_device)s::text[], %(k_user)s::text[], %(k_signal)s::text[],
                         %(k_hour)s::int4[], %(k_uidx)s::int4[], %(k_didx)s::int4[],
                         %(k_sidx)s::int4[])
                  AS k(device_id, user_id, signal, hour, uidx, didx, sidx)"""


def _raw_aggregate(kind: str, where: str) -> tuple[str, str]:
    """The rollup job's aggregate of one kind over raw rows ``r`` filtered by ``where``, and
    the output columns pass 2 selects from it (``b``)."""
    if kind == "numeric":
        agg = f"SELECT {NUMERIC_AGGREGATE} FROM numeric_readings r {where} GROUP BY 1, 2, 3, 4"
        return agg, _NUMERIC_OUT
    agg = CATEGORICAL_AGGREGATE_FROM.format(source="categorical_readings r", where=where)
    return agg, _CATEGORICAL_OUT


def _recompute_sql(kind: str) -> str:
    """Pass 2: the dirty buckets recomputed from raw rows with time < T and ingested_at ≤ T,
    with the rollup job's own aggregate expressions (features.rollups)."""
    where = """WHERE r.device_id = k.device_id AND r.signal = k.signal
                 AND r.user_id = k.user_id AND r.time >= k.bucket
                 AND r.time < k.bucket + INTERVAL '1 hour'
                 AND r.time < %(as_of)s AND r.ingested_at <= %(known_by)s"""
    agg, out = _raw_aggregate(kind, where)
    return f"""
    WITH k AS ({_KEYS})
    SELECT k.uidx, k.didx, k.sidx, {out}
      FROM k CROSS JOIN LATERAL ({agg}) b
    """


def _recompute_scan_sql(kind: str) -> str:
    """Pass 2 as one scan: the raw rows of the keys' devices between the first key's bucket
    and the end of the last (``lo``, ``hi``) hash-joined to the keys, then aggregated. The
    lateral form probes every hypertable chunk's index once per key (a parameterised time
    range excludes no chunk), about 45 µs a key; this one reads every row of the range, about
    0.5 µs a row. :func:`features.engine.load._recompute` picks the cheaper one."""
    where = """WHERE r.device_id = ANY(%(k_devices)s::text[])
                 AND r.time >= %(lo)s AND r.time < %(hi)s
                 AND r.time < %(as_of)s AND r.ingested_at <= %(known_by)s
                 AND (r.device_id, r.signal, time_bucket(INTERVAL '1 hour', r.time))
                     IN (SELECT device_id, signal, bucket FROM k)"""
    agg, out = _raw_aggregate(kind, where)
    return f"""
    WITH k AS MATERIALIZED ({_KEYS})
    SELECT k.uidx, k.didx, k.sidx, {out}
      FROM ({agg}) b
      JOIN k ON k.device_id = b.device_id AND k.signal = b.signal AND k.bucket = b.bucket
            AND k.user_id = b.user_id
    """


def _ingest_times_sql(kind: str) -> str:
    """Per key, the ``ingested_at`` of every raw row of its bucket, ascending, as binary
    timestamptz end to end: which rows a recompute from raw reads at any T after the bucket
    (those ingested by T), so a backfill can tell when two as_ofs read the same ones
    (:class:`features.engine.load.RecomputeMemo`). One scan of the keys' devices' rows from
    ``lo`` to ``hi`` hash-joined to the keys (probing each key, as RECOMPUTE_SQL does, visits
    every hypertable chunk's index: ~200 µs a key here). Rows in key order; a key without raw
    rows has none."""
    return f"""
    WITH k AS MATERIALIZED ({_KEYS})
    SELECT k.didx, k.sidx, k.hour, b.ingested
      FROM (SELECT r.device_id, r.user_id, r.signal,
                   time_bucket(INTERVAL '1 hour', r.time) AS bucket,
                   string_agg(timestamptz_send(r.ingested_at), ''::bytea
                              ORDER BY r.ingested_at) AS ingested
              FROM {kind}_readings r
             WHERE r.device_id = ANY(%(k_devices)s::text[])
               AND r.time >= %(lo)s AND r.time < %(hi)s
               AND (r.device_id, r.signal, time_bucket(INTERVAL '1 hour', r.time))
                   IN (SELECT device_id, signal, bucket FROM k)
             GROUP BY 1, 2, 3, 4) b
      JOIN k ON k.device_id = b.device_id AND k.signal = b.signal AND k.bucket = b.bucket
            AND k.user_id = b.user_id
     ORDER BY 1, 2, 3
    """


NEW_RAW_SQL = {kind: _new_raw_sql(kind) for kind in _KINDS}
INGEST_TIMES_SQL = {kind: _ingest_times_sql(kind) for kind in _KINDS}
RECOMPUTE_SQL = {kind: _recompute_sql(kind) for kind in _KINDS}
RECOMPUTE_SCAN_SQL = {kind: _recompute_scan_sql(kind) for kind in _KINDS}


# Tenure: each device's earliest reading before the grid, from buckets fully ingested by T.
# Per device and kind, the rows of the earliest day before the grid's start with a bucket
# known at T (``known_at``: its earliest ``ingested``); numpy takes the earliest of their
# buckets before the start that are known at T (bins.first_seen).
def _first_seen_sql(kind: str) -> str:
    times = ("first_time", "ingested") if kind == "numeric" else ("ingested",)
    blobs = ", ".join(f"string_agg(c.{n}, ''::bytea) AS {n}" for n in ("hours", *times))
    same = """c.device_id = dv.device_id AND (dv.sigs IS NULL OR c.signal = ANY(dv.sigs))
               AND c.user_id = dv.user_id"""
    return f"""
    WITH {_DEVICES_CTE}
    SELECT dv.uidx, dv.didx, x.*
      FROM dv CROSS JOIN LATERAL (
           SELECT array_agg(c.day) AS day, array_agg(octet_length(c.hours)) AS k,
                  {blobs}
             FROM rollup_{kind}_hourly c
            WHERE {same}
              AND c.day = (SELECT min(c.day) FROM rollup_{kind}_hourly c
                            WHERE {same} AND c.day < %(start)s
                              AND c.known_at <= %(known_by)s)) x
     WHERE x.day IS NOT NULL
    """


FIRST_SEEN_SQL = {kind: _first_seen_sql(kind) for kind in _KINDS}
FIRST_SEEN_COLUMNS: dict[str, tuple[tuple[str, str], ...]] = {
    "numeric": (
        ("day", TIMESTAMP),
        ("k", ">i4"),
        ("hours", BLOB + "u1"),
        ("first_time", BLOB + TIMESTAMP),
        ("ingested", BLOB + TIMESTAMP),
    ),
    "categorical": (
        ("day", TIMESTAMP),
        ("k", ">i4"),
        ("hours", BLOB + "u1"),
        ("ingested", BLOB + TIMESTAMP),
    ),
}


# Tenure for a backfill (features.engine.backfill): per device and signal, consent aside, the
# rows before the span (``start``: the first T's grid start) that can hold the earliest bucket
# known at some T of the range, whose cut-offs run from ``known_by`` (the first T's) to
# ``known_by_last``. A row is left out when an earlier day's row of the same signal is wholly
# known (its ``max_ingested_at``) whenever any bucket of it is: by the first T's cut-off or by
# its own ``known_at``. Streamed history leaves the first row known at the first T and the
# rows before it that arrive later; numpy takes, per T, the earliest bucket known at T of each
# device's signals readable at T, as FIRST_SEEN_SQL does for one T.
def _first_seen_span_sql(kind: str) -> str:
    times = ("first_time", "ingested") if kind == "numeric" else ("ingested",)
    blobs = ", ".join(f"string_agg(c.{n}, ''::bytea) AS {n}" for n in ("hours", *times))
    kept = ", ".join(f"c.{n}" for n in ("signal", "day", "known_at", "hours", *times))
    return f"""
    WITH {_DEVICES_CTE}
    SELECT dv.uidx, dv.didx, x.*
      FROM dv CROSS JOIN LATERAL (
           SELECT array_agg(hashtext(c.signal)) AS sig, array_agg(c.day) AS day,
                  array_agg(octet_length(c.hours)) AS k, {blobs}
             FROM (SELECT {kept},
                          min(c.max_ingested_at) OVER (PARTITION BY c.signal ORDER BY c.day
                              ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) AS settled
                     FROM rollup_{kind}_hourly c
                    WHERE c.device_id = dv.device_id AND c.user_id = dv.user_id
                      AND c.day < %(start)s AND c.known_at <= %(known_by_last)s::timestamptz) c
            WHERE c.settled IS NULL
               OR greatest(c.known_at, %(known_by)s::timestamptz) < c.settled) x
     WHERE x.day IS NOT NULL
    """


FIRST_SEEN_SPAN_SQL = {kind: _first_seen_span_sql(kind) for kind in _KINDS}
FIRST_SEEN_SPAN_COLUMNS = {
    kind: (("sig", ">i4"), *columns) for kind, columns in FIRST_SEEN_COLUMNS.items()
}
