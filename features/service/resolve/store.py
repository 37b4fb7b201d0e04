"""Snapshot reads: one prepared statement answers a whole batch of (user, as_of) requests.

For every requested row the statement returns, in request order, whether the user exists,
whether they have active credit-scoring consent now and at ``as_of``, and the matching snapshot
(the exact ``as_of`` when given, else the latest) with its packed vector
(:mod:`features.snapshots.codec`), rendered without a dict per cell. A snapshot dated after
now plus the clock-skew allowance (``features.engine.as_of``) is never served, not even as the
latest.

"Active consent at T" follows ``hearth.ledger``: the latest event per category at or before T
decides, and only a grant under the current notice version counts.

Cost notes (issue #7):

* Connections use ``plan_cache_mode = force_generic_plan`` (see :func:`configure_connection`).
  The planner estimates ``unnest`` of a parameter array at 10 rows, so the generic plan always
  looked dearer than a custom one and PostgreSQL re-planned the statement on *every* execution
  (~2 ms of planning for a 0.2 ms query). The generic plan is the same index nested loop the
  custom plans chose, for 1 row or 5,000. JIT is off too: on a 5,000-row historical chunk it
  spent ~90 ms compiling expressions for a query that runs in index lookups.
* Small lookups (single-user GETs, online requests) are coalesced: a lookup issued while
  ``max_inflight`` queries are already running waits for one of them to finish and then goes
  out together with every other lookup that queued meanwhile, as one statement. At low load
  each lookup is sent at once (next event-loop turn); under load one round trip serves many
  requests, which is what PostgreSQL and the event loop can afford on a small machine. Each
  caller still gets exactly its own rows, in order; a failing statement fails every caller
  whose rows were in it, as it would have failed each alone.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Final

from psycopg_pool import AsyncConnectionPool

from features.engine import latest_as_of
from features.service.resolve.replica import ReplicaGate
from features.snapshots.codec import PackedVector
from hearth.db import AsyncConn
from hearth.ledger import any_active_consent_sql, consent_rule_params
from hearth.replica import ReplayState

_CONSENTED_NOW = any_active_consent_sql("r.user_id", "'infinity'::timestamptz")
_CONSENTED_AT_AS_OF = any_active_consent_sql("r.user_id", "r.as_of")
LOOKUP_SQL: Final = f"""
SELECT u.user_id IS NOT NULL,
       u.user_id IS NOT NULL AND {_CONSENTED_NOW},
       u.user_id IS NOT NULL AND (r.as_of IS NULL OR {_CONSENTED_AT_AS_OF}),
       s.as_of, s.computed_at, s.vals, s.covs, s.withheld::text
  FROM unnest(%(users)s::text[], %(as_ofs)s::timestamptz[]) WITH ORDINALITY
       AS r(user_id, as_of, ord)
  LEFT JOIN users u ON u.user_id = r.user_id
  LEFT JOIN LATERAL (
        SELECT f.as_of, f.computed_at, f.vals, f.covs, f.withheld
          FROM feature_snapshots f
         WHERE u.user_id IS NOT NULL
           AND f.user_id = r.user_id
           AND f.feature_set_version = %(version)s
           AND (r.as_of IS NULL OR f.as_of = r.as_of)
           AND f.as_of <= %(latest)s
         ORDER BY f.as_of DESC
         LIMIT 1
  ) s ON true
 ORDER BY r.ord
"""


@dataclass(frozen=True, slots=True)
class Lookup:
    known: bool
    consented_now: bool
    consented_at_as_of: bool
    snapshot_as_of: datetime | None
    computed_at: datetime | None
    vector: PackedVector | None


Row = tuple[str, datetime | None]


def _lookup(rec: tuple[object, ...]) -> Lookup:
    known, now, at_as_of, as_of, computed_at, vals, covs, withheld = rec
    assert as_of is None or isinstance(as_of, datetime)
    assert computed_at is None or isinstance(computed_at, datetime)
    vector = None
    if isinstance(vals, bytes) and isinstance(covs, bytes):
        vector = PackedVector(vals, covs, str(withheld))
    return Lookup(bool(known), bool(now), bool(at_as_of), as_of, computed_at, vector)


COALESCE_MAX_ROWS = 64  # lookups this small may share a statement with others
DEFAULT_MAX_INFLIGHT = 4  # coalesced statements running at once


async def configure_connection(conn: AsyncConn) -> None:
    """Session settings for snapshot reads (pool ``configure`` callback; autocommit)."""
    await conn.execute("SET plan_cache_mode = force_generic_plan")
    await conn.execute("SET jit = off")


def statement_timeout_sql(timeout_ms: int) -> str:
    """The bound on each statement a request runs (``HEARTH_SERVICE_STATEMENT_TIMEOUT_MS``;
    0 = none): a request cannot keep a backend busy for longer, lock waits included."""
    return f"SET statement_timeout = {int(timeout_ms)}"


@dataclass(slots=True)
class _Waiter:
    rows: Sequence[Row]
    version: str
    future: asyncio.Future[list[Lookup]]


class SnapshotStore:
    def __init__(
        self,
        pool: AsyncConnectionPool,
        *,
        max_inflight: int = DEFAULT_MAX_INFLIGHT,
        max_clock_skew_s: float = 600.0,
        gate: ReplicaGate | None = None,
    ) -> None:
        self._pool = pool
        self._gate = gate  # the pool reads a replica: wait for it (resolve.replica)
        self._max_clock_skew_s = max_clock_skew_s
        self._max_inflight = max(1, max_inflight)
        self._inflight = 0
        self._queue: list[_Waiter] = []
        self._flush_scheduled = False
        self._tasks: set[asyncio.Task[None]] = set()

    async def lookup(self, rows: Sequence[Row], version: str) -> list[Lookup]:
        """One ``Lookup`` per row, in order (as_of None = latest snapshot)."""
        if len(rows) > COALESCE_MAX_ROWS:
            return await self._query(rows, version)
        loop = asyncio.get_running_loop()
        waiter = _Waiter(rows, version, loop.create_future())
        self._queue.append(waiter)
        self._schedule_flush(loop)
        return await waiter.future

    async def _query(self, rows: Sequence[Row], version: str) -> list[Lookup]:
        params = {
            "users": [u for u, _ in rows],
            "as_ofs": [a for _, a in rows],
            "version": version,
            "latest": latest_as_of(self._max_clock_skew_s),
            **consent_rule_params(),
        }
        async with self._pool.connection() as conn:
            if self._gate is not None:
                await self._gate.wait(conn)
            cur = await conn.execute(LOOKUP_SQL, params, prepare=True)
            records = await cur.fetchall()
        if len(records) != len(rows):  # never misalign rows
            raise RuntimeError("snapshot lookup returned a different number of rows")
        return [_lookup(rec) for rec in records]

    def _schedule_flush(self, loop: asyncio.AbstractEventLoop) -> None:
        if not self._flush_scheduled and self._inflight < self._max_inflight:
            self._flush_scheduled = True
            loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        waiters = [w for w in self._queue if not w.future.done()]  # drop cancelled callers
        self._queue = []
        if not waiters:
            return
        self._inflight += 1
        task = asyncio.get_running_loop().create_task(self._run(waiters))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, waiters: list[_Waiter]) -> None:
        try:
            by_version: dict[str, list[_Waiter]] = {}
            for w in waiters:
                by_version.setdefault(w.version, []).append(w)
            for version, group in by_version.items():
                try:
                    lookups = await self._query([r for w in group for r in w.rows], version)
                except Exception as exc:
                    for w in group:
                        if not w.future.done():
                            w.future.set_exception(exc)
                    continue
                start = 0
                for w in group:
                    end = start + len(w.rows)
                    if not w.future.done():
                        w.future.set_result(lookups[start:end])
                    start = end
        finally:
            for w in waiters:  # cancelled while running (shutdown): release every caller
                if not w.future.done():
                    w.future.cancel()
            self._inflight -= 1
            if self._queue:
                self._schedule_flush(asyncio.get_running_loop())

    async def replica_state(self) -> ReplayState | None:
        """The replica's replay position and lag (None: no replica, or it cannot be reached)."""
        if self._gate is None:
            return None
        try:
            async with self._pool.connection(timeout=2.0) as conn:
                return await self._gate.state(conn)
        except Exception:
            return None

    async def ping(self) -> bool:
        try:
            async with self._pool.connection(timeout=2.0) as conn:
                await conn.execute("SELECT 1")
        except Exception:
            return False
        return True
