"""The service's reads on a streaming replica (``HEARTH_DATABASE_READ_URL``, hearth.replica).

With a read URL, snapshot lookups and on-demand computations run on the replica, and each of
them first waits until the replica has replayed the primary's WAL position taken after the
request arrived (for a coalesced lookup: after every request in it arrived). A request thus
reads what it would have read on the primary — a snapshot written, a consent withdrawn, a
reading ingested before it came in — or, past ``HEARTH_REPLICA_MAX_WAIT_S``, is refused with
503 ``replica_behind``; it never answers from incomplete data. Positions come from a small pool
of primary connections that does nothing else.
"""

from __future__ import annotations

from psycopg_pool import AsyncConnectionPool

from hearth.db import AsyncConn
from hearth.replica import (
    Position,
    ReplayState,
    primary_position_async,
    replay_state_async,
    wait_for_replay_async,
)


class ReplicaGate:
    """Holds replica reads back until the replica has caught up with the primary."""

    def __init__(self, primary_pool: AsyncConnectionPool, max_wait_s: float) -> None:
        self._primary = primary_pool
        self.max_wait_s = max_wait_s

    async def position(self) -> Position:
        """The primary's WAL position now."""
        async with self._primary.connection() as conn:
            return await primary_position_async(conn)

    async def wait(self, replica: AsyncConn) -> None:
        """Return once ``replica`` has replayed the primary's position of now; raises
        :class:`hearth.replica.ReplicaBehind` past the bound."""
        await wait_for_replay_async(replica, await self.position(), self.max_wait_s)

    async def state(self, replica: AsyncConn) -> ReplayState:
        """Where the replica stands against the primary's position of now (``/readyz``)."""
        return await replay_state_async(replica, await self.position())
