"""Write one :class:`~collector.pipeline.Batch` in one transaction, idempotently.

Rows are COPYed (binary) into temporary staging tables, then moved with
``INSERT … SELECT … ON CONFLICT DO NOTHING`` on the natural keys, so a redelivered message (after
a crash between commit and PUBACK) inserts nothing and is counted as a duplicate. COPY cannot skip
conflicts itself, hence the staging step; ``ON COMMIT DELETE ROWS`` empties the staging tables at
every commit without a separate TRUNCATE round trip.

A failed write is one of three kinds (:func:`classify`). *Transient* (connection lost,
serialization failure, deadlock, lock or resource shortage, admin shutdown) and *other* errors
(a missing table, a bug) are not caused by any message: the service retries the same batch until
it commits and acknowledges nothing meanwhile. A *data* error (SQLSTATE class 22 or 23, or text
Python cannot encode) is caused by a message's rows: retrying would fail forever and stall the
fleet, so the service splits the batch by message (:func:`sub_batch`, bisection) until the
refused messages are found, dead-letters them ``unstorable`` and stores the rest.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field
from typing import Literal

import psycopg

from collector.pipeline import Batch
from hearth.db import AsyncConn, DatabaseUnavailable, connect_async
from hearth.ledger import (
    CONSENT_EPOCH_SQL,
    GATE_INGEST,
    consent_rule_params,
    consented_now_sql,
    gate_sql,
    signal_categories_sql,
)

log = logging.getLogger(__name__)

_STAGING_DDL = """
CREATE TEMP TABLE IF NOT EXISTS stage_numeric (
    time timestamptz, device_id text, user_id text, signal text, value float8,
    time_received bool) ON COMMIT DELETE ROWS;
CREATE TEMP TABLE IF NOT EXISTS stage_categorical (
    time timestamptz, device_id text, user_id text, signal text, value text,
    time_received bool) ON COMMIT DELETE ROWS;
CREATE TEMP TABLE IF NOT EXISTS stage_dead (
    topic text, reason text, detail text, payload bytea, payload_bytes int4,
    digest bytea, device_id text) ON COMMIT DELETE ROWS;
"""

_READING_TYPES = ["timestamptz", "text", "text", "text", "float8", "bool"]
_CATEGORICAL_TYPES = ["timestamptz", "text", "text", "text", "text", "bool"]
_DEAD_TYPES = ["text", "text", "text", "bytea", "int4", "bytea", "text"]

# The commit enforces consent (issue 11 §2). Under the shared INGEST gate (hearth.ledger) the
# writer reads consent_epoch: when no consent was revoked since the batch's messages were
# checked (the pipeline's cache epoch), the rows move as they are (_MOVE_SQL, the hot path).
# Otherwise the move joins consent_state and keeps only rows whose category is consented now
# and was at the row's time (_MOVE_CHECKED_SQL: one indexed join per batch); it returns (rows
# consented, rows inserted), so refused = staged - consented, duplicates = consented - inserted.
_MOVE_SQL = """
INSERT INTO {table} (time, device_id, user_id, signal, value, time_received)
SELECT time, device_id, user_id, signal, value, time_received FROM {stage}
ON CONFLICT DO NOTHING
"""
_MOVE_CHECKED_SQL = f"""
WITH consented AS MATERIALIZED (
    SELECT s.time, s.device_id, s.user_id, s.signal, s.value, s.time_received
      FROM {{stage}} s
      JOIN {signal_categories_sql()} AS sc (signal, category) ON sc.signal = s.signal
      {consented_now_sql("s", "sc.category")}
), moved AS (
    INSERT INTO {{table}} (time, device_id, user_id, signal, value, time_received)
    SELECT time, device_id, user_id, signal, value, time_received FROM consented
    ON CONFLICT DO NOTHING RETURNING 1
)
SELECT (SELECT count(*) FROM consented), (SELECT count(*) FROM moved)
"""
_GATE_SQL = gate_sql(GATE_INGEST)
_CONSENT = consent_rule_params()

_MOVE_DEAD_SQL = """
INSERT INTO dead_letters (topic, reason, detail, payload, payload_bytes, digest, device_id)
SELECT topic, reason, detail, payload, payload_bytes, digest, device_id FROM stage_dead
ON CONFLICT (digest) DO NOTHING
"""

# Readings the consent gate refused, per UTC day and category (migration 0043), counted in the
# batch's own transaction. Last before COMMIT and in category order: replicas updating the same
# day's rows hold the row locks briefly and always take them in the same order (no deadlock).
_DROPPED_SQL = """
INSERT INTO dropped_readings_daily AS d (day, category, readings)
SELECT (now() AT TIME ZONE 'UTC')::date, c, n FROM unnest(%s::text[], %s::int8[]) AS u (c, n)
ON CONFLICT (day, category) DO UPDATE SET readings = d.readings + EXCLUDED.readings
"""


@dataclass(frozen=True, slots=True)
class WriteResult:
    """Rows inserted, skipped as already present, and refused at commit for consent, per table."""

    inserted: dict[str, int] = field(default_factory=dict)
    duplicates: dict[str, int] = field(default_factory=dict)
    refused: dict[str, int] = field(default_factory=dict)  # moved no more: consent changed

    def add(self, other: WriteResult) -> None:
        """Add ``other``'s counts to these (the parts of a split batch)."""
        for mine, theirs in (
            (self.inserted, other.inserted),
            (self.duplicates, other.duplicates),
            (self.refused, other.refused),
        ):
            for table, n in theirs.items():
                mine[table] = mine.get(table, 0) + n


ErrorKind = Literal["data", "transient", "other"]

# SQLSTATE classes and codes that say "try again later" (PostgreSQL Appendix A): connection
# exception, insufficient resources, operator intervention (admin shutdown, crash recovery);
# serialization failure, deadlock, lock not available.
_TRANSIENT_CLASSES = frozenset({"08", "53", "57"})
_TRANSIENT_STATES = frozenset({"40001", "40P01", "55P03"})
# Data exception, integrity constraint violation: the rows themselves are refused.
_DATA_CLASSES = frozenset({"22", "23"})


def classify(exc: BaseException) -> ErrorKind:
    """Whether a failed write was caused by the rows (``data``), by the database or network being
    unavailable for now (``transient``), or by something else no message caused (``other``)."""
    if isinstance(exc, UnicodeError):  # text psycopg cannot encode, raised while COPYing
        return "data"
    if isinstance(exc, DatabaseUnavailable | OSError):
        return "transient"
    if isinstance(exc, psycopg.Error):
        state = exc.sqlstate
        if state is None:  # raised by psycopg itself, e.g. the connection is already closed
            if isinstance(exc, psycopg.DataError):
                return "data"
            return (
                "transient"
                if isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError)
                else "other"
            )
        if state[:2] in _DATA_CLASSES:
            return "data"
        if state[:2] in _TRANSIENT_CLASSES or state in _TRANSIENT_STATES:
            return "transient"
    return "other"


def describe_write_error(exc: BaseException) -> str:
    """Error class and SQLSTATE only: the message text may quote the refused value."""
    state = getattr(exc, "sqlstate", None)
    return f"{type(exc).__name__} (SQLSTATE {state})" if state else type(exc).__name__


def sub_batch(batch: Batch, lo: int, hi: int) -> Batch:
    """Messages ``lo``..``hi - 1`` of ``batch``: their rows and dead letters, with boundaries.

    Counters (reasons, consent drops, latest event) stay with the whole batch, which is what the
    service records once all its parts are written.
    """
    n0, c0, d0 = batch.ends[lo - 1] if lo else (0, 0, 0)
    n1, c1, d1 = batch.ends[hi - 1]
    return Batch(
        numeric=batch.numeric[n0:n1],
        categorical=batch.categorical[c0:c1],
        dead_letters=batch.dead_letters[d0:d1],
        messages=hi - lo,
        ends=[(n - n0, c - c0, d - d0) for n, c, d in batch.ends[lo:hi]],
        consent_epoch=batch.consent_epoch,  # keeps the parts on the unchecked fast path
    )


AsyncCursor = psycopg.AsyncCursor[tuple[object, ...]]


async def _write_readings(cur: AsyncCursor, batch: Batch, result: WriteResult) -> None:
    """COPY the batch's readings into staging and move them into their tables: as checked
    (the consent join) when a revocation happened since the batch's consent epoch, else as is."""
    if not (batch.numeric or batch.categorical):
        return
    await cur.execute(_GATE_SQL)  # before the statements below take snapshots
    await cur.execute(CONSENT_EPOCH_SQL)
    epoch = await cur.fetchone()
    checked = epoch is None or epoch[0] != batch.consent_epoch
    for table, stage, rows, types in (
        ("numeric_readings", "stage_numeric", batch.numeric, _READING_TYPES),
        ("categorical_readings", "stage_categorical", batch.categorical, _CATEGORICAL_TYPES),
    ):
        if not rows:
            continue
        async with cur.copy(f"COPY {stage} FROM STDIN (FORMAT BINARY)") as copy:
            copy.set_types(types)
            for row in rows:
                await copy.write_row(row)
        if checked:
            await cur.execute(_MOVE_CHECKED_SQL.format(table=table, stage=stage), _CONSENT)
            counts = await cur.fetchone()
            assert counts is not None
            consented, moved = int(str(counts[0])), int(str(counts[1]))
            result.refused[table] = len(rows) - consented
        else:
            await cur.execute(_MOVE_SQL.format(table=table, stage=stage))
            consented, moved = len(rows), cur.rowcount
        result.inserted[table] = moved
        result.duplicates[table] = consented - moved


async def _write_dead_letters(cur: AsyncCursor, batch: Batch, result: WriteResult) -> None:
    if not batch.dead_letters:
        return
    async with cur.copy("COPY stage_dead FROM STDIN (FORMAT BINARY)") as copy:
        copy.set_types(_DEAD_TYPES)
        for dead in batch.dead_letters:
            await copy.write_row(dead)
    await cur.execute(_MOVE_DEAD_SQL)
    result.inserted["dead_letters"] = cur.rowcount
    result.duplicates["dead_letters"] = len(batch.dead_letters) - cur.rowcount


class BatchWriter:
    """One database connection that commits batches; reconnects lazily after a failure."""

    def __init__(self, database_url: str, *, connect_timeout_s: float = 5.0) -> None:
        self._url = database_url
        self._timeout = connect_timeout_s
        self._conn: AsyncConn | None = None

    async def connect(self) -> None:
        """(Re)connect and create the staging tables; raises DatabaseUnavailable."""
        await self.close()
        conn = await connect_async(self._url, timeout_s=self._timeout)
        try:
            await conn.execute(_STAGING_DDL)
            await conn.commit()
        except psycopg.Error:
            await conn.close()
            raise
        self._conn = conn

    async def write(self, batch: Batch) -> WriteResult:
        """Commit the batch; on any error the transaction is rolled back and the error raised."""
        if self._conn is None or self._conn.closed:
            await self.connect()
        conn = self._conn
        assert conn is not None
        result = WriteResult({}, {}, {})
        try:
            async with conn.cursor() as cur:
                await _write_readings(cur, batch, result)
                await _write_dead_letters(cur, batch, result)
                if batch.dropped_by_category:
                    dropped = sorted(batch.dropped_by_category.items())
                    await cur.execute(
                        _DROPPED_SQL, ([c for c, _ in dropped], [n for _, n in dropped])
                    )
            await conn.commit()
        except Exception as exc:
            if classify(exc) == "data" and not conn.closed:
                await self._rollback()  # the session is fine: the next part reuses it
            else:
                await self.close()  # a broken transaction: start over on a new session
            raise
        except BaseException:
            await self.close()  # cancelled mid-transaction
            raise
        return result

    async def _rollback(self) -> None:
        conn = self._conn
        try:
            if conn is not None:
                await conn.rollback()
        except psycopg.Error:
            await self.close()

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None and not conn.closed:
            with contextlib.suppress(psycopg.Error):
                await conn.close()
