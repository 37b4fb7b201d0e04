"""Reading from a streaming replica without breaking point in time (docs/invariants.md#8).

A PostgreSQL streaming replica replays the primary's write-ahead log some time behind it. A
feature "as of T" counts rows ingested by T, consent at T and every withdrawal since, so a
computation on a replica that has not yet replayed a commit the primary already had would
silently miss rows (or a withdrawal) and write a snapshot nobody can reproduce.

The rule: before a computation reads from the replica, take the primary's WAL position now
(``pg_current_wal_flush_lsn()``: every transaction that committed before this moment lies
before it, since Hearth commits synchronously) and wait until the replica has replayed up to
it. The replica then holds at least what the primary held when the computation began, which is
all a computation at any T ≤ now reads, and what the same computation on the primary would have
read. ``pg_last_xact_replay_timestamp()`` alone cannot say that: when the primary has been idle
it is the time of the last commit, arbitrarily old, though nothing is missing.

The wait is bounded by ``HEARTH_REPLICA_MAX_WAIT_S``; past it the computation is refused with
:class:`ReplicaBehind` (503 / exit 69), never run on incomplete data. A read URL whose server is
not in recovery is accepted only if it is the primary itself (the same cluster), and a replica
must belong to the primary's cluster (same ``system_identifier``): a logical copy or another
server cannot be checked this way and is refused as misconfigured.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from hearth.db import AsyncConn, Conn
from hearth.errors import ConfigError, Unavailable

PRIMARY_SQL = """
SELECT pg_current_wal_flush_lsn()::text, (SELECT system_identifier FROM pg_control_system())
"""
# One round trip: is it a replica, of which cluster, has it replayed up to the position, and
# how far behind is it (bytes to the position, seconds since the last replayed commit). A
# primary is never behind: after a crash recovery its pg_last_wal_replay_lsn() stays frozen
# where that recovery ended, so it must not be compared with the position.
REPLAY_SQL = """
SELECT pg_is_in_recovery(),
       (SELECT system_identifier FROM pg_control_system()),
       pg_last_wal_replay_lsn()::text,
       NOT pg_is_in_recovery() OR pg_last_wal_replay_lsn() >= %(lsn)s::pg_lsn,
       CASE WHEN pg_is_in_recovery()
            THEN pg_wal_lsn_diff(%(lsn)s::pg_lsn, pg_last_wal_replay_lsn()) END,
       extract(epoch FROM now() - pg_last_xact_replay_timestamp()),
       CASE WHEN pg_is_in_recovery() THEN pg_get_wal_replay_pause_state() END
"""
POLL_FIRST_S = 0.005
POLL_MAX_S = 0.1


class ReplicaBehind(Unavailable):
    """The replica had not replayed up to the primary's position within the bound."""

    default_code = "replica_behind"


@dataclass(frozen=True, slots=True)
class Position:
    """The primary's WAL flush position at one moment, and which cluster it belongs to."""

    lsn: str
    system_identifier: int


@dataclass(frozen=True, slots=True)
class ReplayState:
    """Where a read server stands relative to a primary position."""

    in_recovery: bool
    system_identifier: int
    replay_lsn: str | None
    caught_up: bool
    lag_bytes: int  # WAL bytes between the position and the replay position; 0 when caught up
    last_replay_age_s: float | None  # seconds since the last replayed commit's timestamp
    pause_state: str | None  # "not paused", "pause requested", "paused"; None on a primary

    def to_json(self) -> dict[str, object]:
        """The replica's lag as ``/readyz`` reports it."""
        return {
            "in_recovery": self.in_recovery,
            "replay_lsn": self.replay_lsn,
            "lag_bytes": self.lag_bytes,
            "caught_up": self.caught_up,
            # Time behind only means something while behind: an idle primary's last commit
            # can be hours old while the replica misses nothing.
            "lag_s": 0.0 if self.caught_up else self.last_replay_age_s,
            "replay_paused": self.pause_state not in (None, "not paused"),
        }


def primary_position(primary: Conn) -> Position:
    """The primary's WAL flush position now (call it after the work the read must see)."""
    row = primary.execute(PRIMARY_SQL).fetchone()
    assert row is not None
    return Position(str(row[0]), int(str(row[1])))


async def primary_position_async(primary: AsyncConn) -> Position:
    cur = await primary.execute(PRIMARY_SQL)
    row = await cur.fetchone()
    assert row is not None
    return Position(str(row[0]), int(str(row[1])))


def _state(row: tuple[object, ...] | None) -> ReplayState:
    assert row is not None
    in_recovery, sysid, replay, caught, diff, age, pause = row
    return ReplayState(
        in_recovery=bool(in_recovery),
        system_identifier=int(str(sysid)),
        replay_lsn=None if replay is None else str(replay),
        caught_up=bool(caught),
        lag_bytes=max(0, int(str(diff))) if diff is not None else 0,
        last_replay_age_s=None if age is None else float(str(age)),
        pause_state=None if pause is None else str(pause),
    )


def replay_state(replica: Conn, position: Position) -> ReplayState:
    return _state(replica.execute(REPLAY_SQL, {"lsn": position.lsn}).fetchone())


async def replay_state_async(replica: AsyncConn, position: Position) -> ReplayState:
    cur = await replica.execute(REPLAY_SQL, {"lsn": position.lsn})
    return _state(await cur.fetchone())


def _settled(state: ReplayState, position: Position) -> bool:
    """True when reads may go ahead; raises when the read server is not a copy of the primary."""
    if state.system_identifier != position.system_identifier:
        raise ConfigError(
            "HEARTH_DATABASE_READ_URL: not a streaming replica of HEARTH_DATABASE_URL "
            f"(cluster {state.system_identifier}, primary's {position.system_identifier})"
        )
    return state.caught_up or not state.in_recovery  # not in recovery: the primary itself


def _refusal(state: ReplayState, position: Position, waited_s: float) -> ReplicaBehind:
    paused = " (replay is paused)" if state.pause_state not in (None, "not paused") else ""
    return ReplicaBehind(
        f"HEARTH_DATABASE_READ_URL: the replica had replayed up to {state.replay_lsn}, "
        f"{state.lag_bytes} bytes short of the primary's {position.lsn}, after waiting "
        f"{waited_s:.1f}s (HEARTH_REPLICA_MAX_WAIT_S){paused}: refusing to compute on "
        "incomplete data",
        hint="check the replica's replication (pg_stat_wal_receiver) or raise "
        "HEARTH_REPLICA_MAX_WAIT_S",
    )


def wait_for_replay(replica: Conn, position: Position, max_wait_s: float) -> ReplayState:
    """Wait until ``replica`` has replayed up to ``position``; :class:`ReplicaBehind` after
    ``max_wait_s``. Each check is its own statement (autocommit connections), so reads issued
    after this returns see everything up to the position."""
    started = time.monotonic()
    pause = POLL_FIRST_S
    while True:
        state = replay_state(replica, position)
        if _settled(state, position):
            return state
        waited = time.monotonic() - started
        if waited >= max_wait_s:
            raise _refusal(state, position, waited)
        time.sleep(min(pause, max(0.0, max_wait_s - waited)))
        pause = min(pause * 2, POLL_MAX_S)


async def wait_for_replay_async(
    replica: AsyncConn, position: Position, max_wait_s: float
) -> ReplayState:
    """:func:`wait_for_replay` on an asyncio connection."""
    started = time.monotonic()
    pause = POLL_FIRST_S
    while True:
        state = await replay_state_async(replica, position)
        if _settled(state, position):
            return state
        waited = time.monotonic() - started
        if waited >= max_wait_s:
            raise _refusal(state, position, waited)
        await asyncio.sleep(min(pause, max(0.0, max_wait_s - waited)))
        pause = min(pause * 2, POLL_MAX_S)


def catch_up(primary: Conn, replica: Conn, max_wait_s: float) -> Position:
    """The primary's position now, once ``replica`` has replayed up to it (see the module)."""
    position = primary_position(primary)
    wait_for_replay(replica, position, max_wait_s)
    return position
