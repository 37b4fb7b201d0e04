"""The score log (migration 0075): every score given, batch or online, appended once.

A row says who was scored, as of when, by which model and feature set, the points and
probability, the reason codes (feature, text and points — never the applicant's values or
their percentiles), who asked and when (docs/invariants.md#10). The table is append-only like
the consent ledger; only an erasure deletes (``hearth.admin.privacy.erase_user``), and a
withdrawal keeps the rows: the decision happened. ``GET /v1/users/{id}/scores`` reads it back,
the trail for an explanation request or a dispute.

Appends take the DERIVED gate shared (``hearth.ledger``) and keep only users that still exist:
an erasure holds that gate exclusively while it deletes and verifies, so a score either commits
before it (and is erased with the rest) or finds the user gone and is not written — a batch
scored from an export made before an erasure never brings the user back.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from hearth.db import AsyncConn, Conn
from hearth.ledger import GATE_DERIVED, gate_sql

BATCH = "batch"
ONLINE = "online"
MAX_READ = 1_000


@dataclass(frozen=True)
class LogRow:
    user_id: str
    as_of: datetime
    model_version: str
    feature_set_version: str
    points: int
    probability: float
    reasons: list[dict[str, Any]]  # scoring.log_reasons: feature, text, points
    requested_by: str
    channel: str
    batch_id: uuid.UUID | None = None

    def record(self) -> tuple[object, ...]:
        return (
            self.user_id,
            self.as_of,
            self.model_version,
            self.feature_set_version,
            self.points,
            self.probability,
            json.dumps(self.reasons, allow_nan=False),
            self.requested_by,
            self.channel,
            self.batch_id,
        )

    def document(self) -> dict[str, object]:
        """The row as migration 0077's append function reads it, one JSON object."""
        return {
            "user_id": self.user_id,
            "as_of": self.as_of.isoformat(),
            "model_version": self.model_version,
            "feature_set_version": self.feature_set_version,
            "points": self.points,
            "probability": self.probability,
            "reasons": self.reasons,
            "requested_by": self.requested_by,
            "channel": self.channel,
            "batch_id": None if self.batch_id is None else str(self.batch_id),
        }


COLUMNS = (
    "user_id, as_of, model_version, feature_set_version, points, probability, reasons, "
    "requested_by, channel, batch_id"
)
# Migration 0077: the gate, then the rows of users that still exist, in one statement.
_APPEND_SQL = "SELECT hearth_score_log_append(%s, %s::jsonb)"
_STAGE_SQL = """CREATE TEMP TABLE IF NOT EXISTS score_log_stage
                    (LIKE score_log INCLUDING DEFAULTS) ON COMMIT DELETE ROWS"""
_MOVE_SQL = f"""
    INSERT INTO score_log ({COLUMNS})
    SELECT {", ".join("s." + c for c in COLUMNS.split(", "))}
      FROM score_log_stage s JOIN users u ON u.user_id = s.user_id
"""


def _append_params(rows: Sequence[LogRow]) -> tuple[int, str]:
    return GATE_DERIVED, json.dumps([r.document() for r in rows], allow_nan=False)


def append(conn: Conn, rows: Sequence[LogRow]) -> None:
    """Append ``rows`` in one statement (its own transaction, or the caller's)."""
    if rows:
        conn.execute(_APPEND_SQL, _append_params(rows))


async def append_async(conn: AsyncConn, rows: Sequence[LogRow]) -> None:
    if rows:
        await conn.execute(_APPEND_SQL, _append_params(rows))


class GroupAppender:
    """Online appends, group-committed: the rows of requests that arrive while a writer is busy,
    or that it waits for, go to the log together, in one statement and one commit. Once woken,
    the writer waits up to ``linger_s`` for requests still scoring (inside :meth:`coming`), not
    a fixed time: alone, a request's rows are written at once. :meth:`submit` / :meth:`append`
    complete once the rows are committed, so an answer is still sent only after its score is
    logged; when a write fails, every request in it gets the error. ``writers`` tasks (one
    connection each), started by :meth:`start`; :meth:`close` writes what is pending and stops
    them."""

    def __init__(
        self,
        connection: Callable[[], AbstractAsyncContextManager[AsyncConn]],
        writers: int = 1,
        linger_s: float = 0.0,
    ) -> None:
        self._connection = connection  # e.g. a pool's ``connection``: a writable database
        self._writers = writers
        self._linger_s = linger_s
        self._pending: list[tuple[Sequence[LogRow], asyncio.Future[None]]] = []
        self._wake = asyncio.Event()  # rows are pending (or closing)
        self._coming = 0  # requests inside coming(): rows may follow
        self._all_in: asyncio.Future[None] | None = None  # a lingering writer's: coming is 0
        self._closing = False
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._run(), name=f"score-log-{i}") for i in range(self._writers)
        ]

    async def close(self) -> None:
        self._closing = True
        self._wake.set()
        await asyncio.gather(*self._tasks)

    @contextlib.contextmanager
    def coming(self) -> Iterator[None]:
        """Around a request's scoring, up to its :meth:`submit`: a woken writer waits (at most
        ``linger_s``) for its rows to join the same write."""
        self._coming += 1
        try:
            yield
        finally:
            self._coming -= 1
            if not self._coming and self._all_in is not None:
                _settle(self._all_in)

    def submit(self, rows: Sequence[LogRow]) -> Awaitable[None]:
        """Queue ``rows``; the awaitable completes when they are committed."""
        if self._closing or not any(not t.done() for t in self._tasks):
            raise RuntimeError("the score log's writer is not running")
        done = asyncio.get_running_loop().create_future()
        if not rows:
            done.set_result(None)
            return done
        done.add_done_callback(_retrieved)
        self._pending.append((rows, done))
        self._wake.set()
        # Shielded: a request cancelled while it waits (its client went away) leaves its
        # rows to be logged, since the score was given.
        return asyncio.shield(done)

    async def append(self, rows: Sequence[LogRow]) -> None:
        await self.submit(rows)

    async def _linger(self) -> None:
        """Until no request is inside :meth:`coming`, or ``linger_s`` has passed."""
        if not self._coming or self._closing:
            return
        loop = asyncio.get_running_loop()
        self._all_in = loop.create_future()
        timer = loop.call_later(self._linger_s, _settle, self._all_in)
        try:
            await self._all_in
        finally:
            timer.cancel()
            self._all_in = None

    async def _run(self) -> None:
        while self._pending or not self._closing:
            await self._wake.wait()
            await self._linger()
            batch, self._pending = self._pending, []
            self._wake.clear()
            if not batch:
                continue
            try:
                async with self._connection() as conn:
                    await append_async(conn, [row for rows, _ in batch for row in rows])
            except Exception as exc:  # every waiting request answers with it
                for _, done in batch:
                    if not done.done():
                        done.set_exception(exc)
            else:
                for _, done in batch:
                    if not done.done():
                        done.set_result(None)


def _settle(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def _retrieved(done: asyncio.Future[None]) -> None:
    """Mark an outcome read: a request that went away leaves nobody to read its error."""
    if not done.cancelled():
        done.exception()


def copy_batch_part(conn: Conn, text: str, batch_id: uuid.UUID, part: int, count: int) -> bool:
    """Log one part of a batch run (``text``: its rows as COPY text, columns :data:`COLUMNS`)
    with its marker, in one transaction; False (and nothing logged) when the part was logged
    before (a resumed run)."""
    with conn.transaction():
        inserted = conn.execute(
            """INSERT INTO score_batch_parts (batch_id, part, rows) VALUES (%s, %s, %s)
               ON CONFLICT DO NOTHING""",
            (batch_id, part, count),
        ).rowcount
        if not inserted:
            return False
        conn.execute(_STAGE_SQL)
        with conn.cursor() as cur:
            with cur.copy(f"COPY score_log_stage ({COLUMNS}) FROM STDIN") as copy:
                copy.write(text)
            cur.execute(gate_sql(GATE_DERIVED))  # before the move reads users
            cur.execute(_MOVE_SQL)
    return True


def part_logged(conn: Conn, batch_id: uuid.UUID, part: int) -> bool:
    row = conn.execute(
        "SELECT 1 FROM score_batch_parts WHERE batch_id = %s AND part = %s", (batch_id, part)
    ).fetchone()
    return row is not None


_READ_SQL = """
    SELECT scored_at, as_of, model_version, feature_set_version, points, probability, reasons,
           requested_by, channel, batch_id
      FROM score_log WHERE user_id = %(user)s
     ORDER BY scored_at DESC LIMIT %(limit)s
"""


def _entry(r: Sequence[Any]) -> dict[str, Any]:
    scored_at, as_of, model, version, points, probability, reasons, who, channel, batch = r
    return {
        "scored_at": scored_at.isoformat(),
        "as_of": as_of.isoformat(),
        "model_version": model,
        "feature_set_version": version,
        "points": points,
        "probability": probability,
        "reasons": reasons if isinstance(reasons, list) else json.loads(str(reasons)),
        "requested_by": who,
        "channel": channel,
        "batch_id": None if batch is None else str(batch),
    }


def read_scores(conn: Conn, user_id: str, limit: int = 100) -> list[dict[str, Any]]:
    """A user's scores, newest first."""
    rows = conn.execute(_READ_SQL, {"user": user_id, "limit": limit}).fetchall()
    return [_entry(r) for r in rows]


async def read_scores_async(
    conn: AsyncConn, user_id: str, limit: int = 100
) -> list[dict[str, Any]]:
    cur = await conn.execute(_READ_SQL, {"user": user_id, "limit": limit})
    return [_entry(r) for r in await cur.fetchall()]
