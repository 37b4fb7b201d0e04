"""The registry of collector replicas: heartbeat, stale-session warning, ``sessions list``.

Why it exists (issue 12 §1): a replica's MQTT session outlives the replica. Mosquitto shares a
shared subscription round-robin across *every* session of the group, offline ones included, and
queues the offline ones' share until their session expires (``HEARTH_MQTT_SESSION_EXPIRY_S``).
A replica that stopped for good therefore keeps taking its share of the traffic, and nothing in
the broker says so: Mosquitto 2.0 exposes no per-client queue length (``$SYS`` has broker-wide
totals only; the dynamic-security ``$CONTROL`` API manages accounts, not sessions).

So each replica keeps its own row in ``collector_sessions`` (migration 0042): client id,
group, host, pid, started, last seen (database clock), stopped or drained. Every live replica
also looks at its group's other rows on each heartbeat and raises
``hearth_collector_stale_sessions`` (and logs ``event=stale_session``) for a replica id that has
not been seen for ``HEARTH_COLLECTOR_STALE_AFTER_S`` while its session may still be queuing
(not drained, not yet expired). ``python -m collector sessions drain`` (:mod:`collector.drain`)
empties and ends such a session.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Literal, Protocol

import psycopg
from prometheus_client import Gauge
from psycopg.rows import class_row

from hearth.db import AsyncConn, Conn, DatabaseUnavailable, connect_async
from hearth.errors import Invalid
from hearth.settings import Settings

if TYPE_CHECKING:
    from collector.metrics import CollectorMetrics

log = logging.getLogger(__name__)

State = Literal["running", "stale", "stopped", "drained", "expired"]

STALE_LOG_EVERY_S = 600.0  # repeat the warning for one stale id at most this often

_COLUMNS = (
    "client_id, share_group, host, pid, session_expiry_s, started_at, last_seen, stopped_at, "
    "drained_at, now()"
)

_BEAT_SQL = """
INSERT INTO collector_sessions AS s
       (client_id, share_group, host, pid, session_expiry_s, started_at, last_seen)
VALUES (%(client_id)s, %(group)s, %(host)s, %(pid)s, %(expiry)s, now(), now())
ON CONFLICT (client_id) DO UPDATE
   SET share_group = EXCLUDED.share_group, host = EXCLUDED.host, pid = EXCLUDED.pid,
       session_expiry_s = EXCLUDED.session_expiry_s, last_seen = now(),
       -- the first beat of a (re)started replica opens a new life: not stopped, not drained
       started_at = CASE WHEN %(first)s THEN now() ELSE s.started_at END,
       stopped_at = CASE WHEN %(first)s THEN NULL ELSE s.stopped_at END,
       drained_at = CASE WHEN %(first)s THEN NULL ELSE s.drained_at END
"""

# Peers whose session may still be queuing: not seen for the threshold, not drained, and not
# yet past the expiry the broker was asked for (after that the broker has dropped it).
_STALE_SQL = """
SELECT client_id, extract(epoch FROM now() - last_seen)::float8
  FROM collector_sessions
 WHERE share_group = %(group)s AND client_id <> %(client_id)s AND drained_at IS NULL
   AND last_seen < now() - make_interval(secs => %(stale_s)s)
   AND last_seen + make_interval(secs => session_expiry_s) > now()
 ORDER BY client_id
"""


@dataclass(frozen=True, slots=True)
class SessionRecord:
    """One replica id as the registry knows it; ``now`` is the database clock of the read."""

    client_id: str
    share_group: str
    host: str
    pid: int
    session_expiry_s: int
    started_at: datetime
    last_seen: datetime
    stopped_at: datetime | None
    drained_at: datetime | None
    now: datetime

    @property
    def seen_ago_s(self) -> float:
        return (self.now - self.last_seen).total_seconds()

    @property
    def expires_at(self) -> datetime:
        """When the broker drops the session if nobody reconnects (its queue with it)."""
        return self.last_seen + timedelta(seconds=self.session_expiry_s)

    def state(self, stale_after_s: float) -> State:
        if self.drained_at is not None:
            return "drained"
        if self.expires_at <= self.now:
            return "expired"
        if self.stopped_at is not None:
            return "stopped"
        return "stale" if self.seen_ago_s > stale_after_s else "running"

    def may_queue(self, stale_after_s: float) -> bool:
        """Its broker session may be holding (and still taking) a share of the traffic."""
        return self.state(stale_after_s) in ("stale", "stopped")

    def to_json(self, stale_after_s: float) -> dict[str, object]:
        def iso(t: datetime | None) -> str | None:
            return t.isoformat() if t is not None else None

        state = self.state(stale_after_s)
        return {
            "client_id": self.client_id,
            "share_group": self.share_group,
            "state": state,
            "host": self.host,
            "pid": self.pid,
            "started_at": iso(self.started_at),
            "last_seen": iso(self.last_seen),
            "seen_ago_s": round(self.seen_ago_s, 1),
            "stopped_at": iso(self.stopped_at),
            "drained_at": iso(self.drained_at),
            "session_expires_at": iso(self.expires_at) if state in ("stale", "stopped") else None,
            # Mosquitto 2.0 does not report a session's queue length (see the module docstring).
            "queued": None,
        }


def list_sessions(conn: Conn, group: str | None = None) -> list[SessionRecord]:
    with conn.cursor(row_factory=class_row(SessionRecord)) as cur:
        return cur.execute(
            f"SELECT {_COLUMNS} FROM collector_sessions "
            "WHERE %(group)s::text IS NULL OR share_group = %(group)s "
            "ORDER BY share_group, client_id",
            {"group": group},
        ).fetchall()


def get_session(conn: Conn, client_id: str) -> SessionRecord | None:
    with conn.cursor(row_factory=class_row(SessionRecord)) as cur:
        return cur.execute(
            f"SELECT {_COLUMNS} FROM collector_sessions WHERE client_id = %s", (client_id,)
        ).fetchone()


def mark_drained(conn: Conn, client_id: str, share_group: str) -> None:
    """Record that ``client_id``'s broker session was emptied and ended (the row may be new:
    a session the registry never saw, e.g. from a version before the heartbeat)."""
    conn.execute(
        "INSERT INTO collector_sessions AS s (client_id, share_group, host, pid, "
        "session_expiry_s, started_at, last_seen, stopped_at, drained_at) "
        "VALUES (%s, %s, '', 0, 0, now(), now(), now(), now()) "
        "ON CONFLICT (client_id) DO UPDATE SET drained_at = now(), "
        "stopped_at = coalesce(s.stopped_at, now())",
        (client_id, share_group),
    )


class Heartbeat:
    """Keeps this replica's registry row fresh and reports stale peers of its group.

    Never fatal: with the database down the beat is skipped (the batch writer reports the
    outage) and retried on the next interval.
    """

    def __init__(self, settings: Settings, metrics: CollectorMetrics) -> None:
        self.settings = settings
        self.interval_s = float(settings.collector_heartbeat_s)
        self.stale_after_s = float(settings.collector_stale_after_s)
        self._params: dict[str, object] = {
            "client_id": settings.mqtt_client_id,
            "group": settings.mqtt_share_group,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "expiry": settings.mqtt_session_expiry_s,
            "stale_s": self.stale_after_s,
        }
        self._conn: AsyncConn | None = None
        self._first = True
        self._logged: dict[str, float] = {}  # stale client id → monotonic time of its last log
        r = metrics.registry
        self.stale_count = Gauge(
            "hearth_collector_stale_sessions",
            "Other replica ids of this share group not seen for HEARTH_COLLECTOR_STALE_AFTER_S "
            "whose broker session may still be queuing messages (drain them)",
            registry=r,
        )
        self.stale_seconds = Gauge(
            "hearth_collector_stale_session_seconds",
            "Seconds since a stale replica id of this group was last seen",
            ["client_id"],
            registry=r,
        )
        self.beats = Gauge(
            "hearth_collector_heartbeat_timestamp_seconds",
            "Unix time of this replica's last successful registry heartbeat",
            registry=r,
        )

    async def run(self, connected: Callable[[], bool]) -> None:
        while True:
            # The broker session exists once the link is up: register from then on, so a
            # replica that failed to start does not show up as one whose session may queue.
            if self._first and not connected():
                await asyncio.sleep(0.2)
                continue
            try:
                await self.beat()
            except (psycopg.Error, DatabaseUnavailable, OSError) as exc:
                await self._close()
                log.warning("event=heartbeat_failed error=%s", type(exc).__name__)
            await asyncio.sleep(self.interval_s)

    async def beat(self) -> list[tuple[str, float]]:
        """Refresh our row; return (client id, seconds unseen) of the group's stale peers."""
        conn = await self._connection()
        await conn.execute(_BEAT_SQL, self._params | {"first": self._first})
        self._first = False
        cur = await conn.execute(_STALE_SQL, self._params)
        stale = [(str(cid), float(str(age))) for cid, age in await cur.fetchall()]
        self.beats.set(time.time())
        self._report(stale)
        return stale

    def _report(self, stale: list[tuple[str, float]]) -> None:
        self.stale_count.set(len(stale))
        now = time.monotonic()
        current = {cid for cid, _ in stale}
        for cid in list(self._logged):
            if cid not in current:
                del self._logged[cid]
                with contextlib.suppress(KeyError):
                    self.stale_seconds.remove(cid)
        for cid, age in stale:
            self.stale_seconds.labels(cid).set(age)
            if now - self._logged.get(cid, -STALE_LOG_EVERY_S) >= STALE_LOG_EVERY_S:
                self._logged[cid] = now
                log.warning(
                    "event=stale_session client_id=%s group=%s unseen_s=%.0f "
                    "note=its_broker_session_may_still_queue_a_share_of_the_traffic "
                    "action='python -m collector sessions drain --client-id %s'",
                    cid,
                    self.settings.mqtt_share_group,
                    age,
                    cid,
                )

    async def stopped(self) -> None:
        """Clean stop: say so in the registry (best effort, bounded)."""
        if self._first:
            return  # never registered (start-up failed): nothing to update
        try:
            conn = await asyncio.wait_for(self._connection(), 5.0)
            await asyncio.wait_for(
                conn.execute(
                    "UPDATE collector_sessions SET stopped_at = now(), last_seen = now() "
                    "WHERE client_id = %(client_id)s",
                    self._params,
                ),
                5.0,
            )
        except (psycopg.Error, DatabaseUnavailable, OSError, TimeoutError) as exc:
            log.warning("event=heartbeat_stop_not_recorded error=%s", type(exc).__name__)
        finally:
            await self._close()

    async def _connection(self) -> AsyncConn:
        if self._conn is None or self._conn.closed:
            self._conn = await connect_async(self.settings.database_url, autocommit=True)
        return self._conn

    async def _close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None and not conn.closed:
            with contextlib.suppress(psycopg.Error):
                await conn.close()


class Replica(Protocol):
    """What :func:`run_replica` needs of a collector (structural: no import cycle)."""

    settings: Settings
    metrics: CollectorMetrics

    def health(self) -> dict[str, object]: ...

    async def run(self) -> int: ...


async def run_replica(collector: Replica) -> int:
    """Run a collector replica with its registry heartbeat beside it."""
    heartbeat = Heartbeat(collector.settings, collector.metrics)
    task = asyncio.create_task(
        heartbeat.run(lambda: bool(collector.health().get("mqtt_connected"))), name="heartbeat"
    )
    try:
        return await collector.run()
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await heartbeat.stopped()


def check_not_live(record: SessionRecord | None, stale_after_s: float, force: bool) -> None:
    """Refuse to drain a replica that is still heartbeating: connecting with its client id would
    take its session over while it runs (the broker disconnects the older connection)."""
    if record is None or force:
        return
    if record.state(stale_after_s) == "running":
        raise Invalid(
            f"replica {record.client_id!r} is running (last seen {record.seen_ago_s:.0f} s ago "
            f"on {record.host}, pid {record.pid}); stop it first, or pass --force if it is gone"
        )
