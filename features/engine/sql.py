"""Every SQL statement of the engine's read path, built once at import.

Parameters, named the same in every statement: ``d_*`` the chunk's devices and the signals
consented for each (``'*'``: all), ``s_*`` the signal index, ``k_*`` the buckets to recompute,
``start``/``as_of`` the grid and T, ``known_by`` the latest ingest time known at T
(:func:`features.engine.as_of.known_by`), ``watermark`` the rollups'.
"""

from __future__ import annotations

from features.engine.wire import TEXT, TIMESTAMP
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


# Pass 1 as one row per device holding column arrays (binary format; wire.fetch_arrays):
# ~400 bins per device in one row cut the client's per-row overhead ~400-fold. What
# the server spends goes mostly into sending array elements (a call and an allocation each)
# and into expressions per row, so it only gathers stored columns, and each value once:
# * buckets and reading times arrive as timestamps and become grid hours and offsets in numpy
#   (bins.rollup_rows); instead of a "usable as is" flag per row only the rare rows
#   ingested after T are listed again (``late_*``);
# * a bucket with a single reading (n = 1: most signals report a few times a day) has
#   min = max = first = last = sum and last_time = first_time, so those columns only hold the
#   other buckets (``FILTER (WHERE n <> 1)``) and bins.fill_single_readings fills them in.
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


ROLLUP_ARRAYS_SQL = {kind: _rollup_arrays_sql(kind) for kind in _KINDS}
# The columns of each kind's rollup arrays after ``uidx, didx``, in order, with their binary
# element types (:func:`features.engine.wire.fetch_arrays`).
ARRAY_COLUMNS: dict[str, tuple[tuple[str, str], ...]] = {
    "numeric": (
        ("sig", ">i4"),
        ("bucket", TIMESTAMP),
        ("n", ">i4"),
        ("sum", ">f8"),
        ("first_time", TIMESTAMP),
        ("min", ">f8"),  # these five: buckets with n <> 1 only
        ("max", ">f8"),
        ("first", ">f8"),
        ("last", ">f8"),
        ("last_time", TIMESTAMP),
        ("late_sig", ">i4"),
        ("late_bucket", TIMESTAMP),
    ),
    "categorical": (
        ("sig", ">i4"),
        ("bucket", TIMESTAMP),
        ("value", TEXT),
        ("value_len", ">i4"),
        ("share", ">f8"),
        ("n", ">i4"),
        ("late_sig", ">i4"),
        ("late_bucket", TIMESTAMP),
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


NEW_RAW_SQL = {kind: _new_raw_sql(kind) for kind in _KINDS}
RECOMPUTE_SQL = {kind: _recompute_sql(kind) for kind in _KINDS}

# Earliest reading of each device before the grid (tenure), from rollups fully ingested by T.
FIRST_SEEN_SQL = f"""
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
