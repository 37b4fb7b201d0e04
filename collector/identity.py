"""Registry and consent caches for the pipeline, kept fresh by LISTEN/NOTIFY.

The triggers of migration 0002 NOTIFY on every change to users, devices and consent_events. A
dedicated autocommit connection LISTENs on both channels and reloads the affected snapshot within
a fraction of a second; a periodic full reload is the safety net for notifications missed while
the connection was down. The pipeline only ever sees whole snapshots (:class:`Caches` fields are
replaced, never mutated), so a reload cannot tear a message's view of the world.

The caches are the fast, early check (refused messages become dead letters with a reason). They
may lag a change by a moment; the commit itself enforces consent (collector.writer), so a lag
never stores a withdrawn category.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time

import psycopg

from collector.pipeline import Caches
from hearth.db import AsyncConn, DatabaseUnavailable, connect_async
from hearth.ledger import (
    CONSENT_CHANNEL,
    REGISTRY_CHANNEL,
    consent_cache_async,
    load_live_devices_async,
)

log = logging.getLogger(__name__)

NOTIFY_POLL_S = 0.25  # how long one LISTEN wait lasts before reloads are applied
FULL_RELOAD_S = 60.0  # safety net: reload everything this often even without notifications


class CacheKeeper:
    """Owns the LISTEN connection and refreshes ``caches`` in place of the pipeline."""

    def __init__(self, database_url: str, caches: Caches) -> None:
        self._url = database_url
        self.caches = caches
        self._conn: AsyncConn | None = None
        self.reloads = 0
        # Monotonic time as of which the caches are known to match the database (a reload, or
        # a quiet LISTEN poll on a live connection); the collector's staleness bound reads it.
        self.synced_at = -math.inf

    async def start(self) -> None:
        """Connect, LISTEN and load both snapshots; raises DatabaseUnavailable."""
        conn = await connect_async(self._url, autocommit=True)
        try:
            await conn.execute(f"LISTEN {REGISTRY_CHANNEL}")
            await conn.execute(f"LISTEN {CONSENT_CHANNEL}")
            await self._reload(conn, registry=True, consent=True)
        except psycopg.Error as exc:
            await conn.close()
            raise DatabaseUnavailable(f"HEARTH_DATABASE_URL: loading the registry: {exc}") from exc
        self._conn = conn

    async def _reload(self, conn: AsyncConn, *, registry: bool, consent: bool) -> None:
        started = time.monotonic()
        if registry:
            self.caches.devices = await load_live_devices_async(conn)
        if consent:
            epoch, consents = await consent_cache_async(conn)
            # Both in one step of the event loop: no message sees one without the other.
            self.caches.consents, self.caches.consent_epoch = consents, epoch
        self.reloads += 1
        self.synced_at = started
        # The first load is silent so that a start-up failure right after it stays one line.
        log.log(
            logging.INFO if self.reloads > 1 else logging.DEBUG,
            "event=cache_reload registry=%s consent=%s devices=%d consents=%d ms=%.1f",
            registry,
            consent,
            len(self.caches.devices),
            len(self.caches.consents),
            (time.monotonic() - started) * 1000,
        )

    async def run(self) -> None:
        """Reload on notification, and periodically; reconnect with backoff on failure."""
        backoff = 0.5
        last_full = time.monotonic()
        while True:
            try:
                if self._conn is None or self._conn.closed:
                    await self.start()  # missed notifications while down: reload everything
                    last_full = time.monotonic()
                    backoff = 0.5
                conn = self._conn
                assert conn is not None
                polled = time.monotonic()
                channels: set[str] = set()
                async for note in conn.notifies(timeout=NOTIFY_POLL_S):
                    channels.add(note.channel)
                full = time.monotonic() - last_full >= FULL_RELOAD_S
                if full:
                    last_full = time.monotonic()
                if channels or full:
                    await self._reload(
                        conn,
                        registry=full or REGISTRY_CHANNEL in channels,
                        consent=full or CONSENT_CHANNEL in channels,
                    )
                self.synced_at = polled  # every change committed before the poll is applied
            except (psycopg.Error, DatabaseUnavailable, OSError) as exc:
                log.warning(
                    "event=cache_listener_down error=%s retry_s=%.1f", type(exc).__name__, backoff
                )
                await self._close()
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 10.0)

    async def _close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(psycopg.Error):
                await self._conn.close()
            self._conn = None

    async def close(self) -> None:
        await self._close()
