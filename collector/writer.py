"""Write one :class:`~collector.pipeline.Batch` in one transaction, idempotently.

Rows are COPYed (binary) into temporary staging tables, then moved with
``INSERT … SELECT … ON CONFLICT DO NOTHING`` on the natural keys, so a redelivered message (after
a crash between commit and PUBACK) inserts nothing and is counted as a duplicate. COPY cannot skip
conflicts itself, hence the staging step; ``ON COMMIT DELETE ROWS`` empties the staging tables at
every commit without a separate TRUNCATE round trip.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field

import psycopg

from collector.pipeline import Batch
from hearth.db import connect_async
from hearth.ledger import (
    CONSENT_EPOCH_SQL,
    GATE_INGEST,
    AsyncConn,
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
    digest bytea) ON COMMIT DELETE ROWS;
"""

_READING_TYPES = ["timestamptz", "text", "text", "text", "float8", "bool"]
_CATEGORICAL_TYPES = ["timestamptz", "text", "text", "text", "text", "bool"]
_DEAD_TYPES = ["text", "text", "text", "bytea", "int4", "bytea"]

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
INSERT INTO dead_letters (topic, reason, detail, payload, payload_bytes, digest)
SELECT topic, reason, detail, payload, payload_bytes, digest FROM stage_dead
ON CONFLICT (digest) DO NOTHING
"""


@dataclass(frozen=True, slots=True)
class WriteResult:
    """Rows inserted, skipped as already present, and refused at commit for consent, per table."""

    inserted: dict[str, int]
    duplicates: dict[str, int]
    refused: dict[str, int] = field(default_factory=dict)


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
        inserted: dict[str, int] = {}
        duplicates: dict[str, int] = {}
        refused: dict[str, int] = {}
        try:
            async with conn.cursor() as cur:
                checked = False
                if batch.numeric or batch.categorical:
                    await cur.execute(_GATE_SQL)  # before the statements below take snapshots
                    await cur.execute(CONSENT_EPOCH_SQL)
                    epoch = await cur.fetchone()
                    checked = epoch is None or epoch[0] != batch.consent_epoch
                for table, stage, rows, types in (
                    ("numeric_readings", "stage_numeric", batch.numeric, _READING_TYPES),
                    (
                        "categorical_readings",
                        "stage_categorical",
                        batch.categorical,
                        _CATEGORICAL_TYPES,
                    ),
                ):
                    if not rows:
                        continue
                    async with cur.copy(f"COPY {stage} FROM STDIN (FORMAT BINARY)") as copy:
                        copy.set_types(types)
                        for row in rows:
                            await copy.write_row(row)
                    if checked:
                        await cur.execute(
                            _MOVE_CHECKED_SQL.format(table=table, stage=stage), _CONSENT
                        )
                        counts = await cur.fetchone()
                        assert counts is not None
                        consented, moved = int(str(counts[0])), int(str(counts[1]))
                        refused[table] = len(rows) - consented
                    else:
                        await cur.execute(_MOVE_SQL.format(table=table, stage=stage))
                        consented, moved = len(rows), cur.rowcount
                    inserted[table] = moved
                    duplicates[table] = consented - moved
                if batch.dead_letters:
                    async with cur.copy("COPY stage_dead FROM STDIN (FORMAT BINARY)") as copy:
                        copy.set_types(_DEAD_TYPES)
                        for dead in batch.dead_letters:
                            await copy.write_row(dead)
                    await cur.execute(_MOVE_DEAD_SQL)
                    inserted["dead_letters"] = cur.rowcount
                    duplicates["dead_letters"] = len(batch.dead_letters) - cur.rowcount
            await conn.commit()
        except BaseException:
            await self.close()  # a broken or cancelled transaction: start over on a new session
            raise
        return WriteResult(inserted, duplicates, refused)

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None and not conn.closed:
            with contextlib.suppress(psycopg.Error):
                await conn.close()
