"""Optional in-process LRU cache of resolved vectors, emptied when consent or the registry change.

Correctness over hit rate: a consent withdrawal must stop serving the user's withdrawn
categories within seconds (docs/invariants.md#6), so the service LISTENs on the consent and
registry channels and drops *everything* on any notification (the triggers carry no payload).
While the listener is not connected the cache is bypassed. A generation counter stops a lookup
that started before an invalidation from writing its (possibly outdated) result back afterwards.
Entries also expire after ``ttl_s`` so newly materialised snapshots show up.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from collections.abc import Hashable
from typing import Any, Generic, TypeVar

import psycopg

from hearth.ledger import CONSENT_CHANNEL, REGISTRY_CHANNEL

log = logging.getLogger("features.service.cache")

V = TypeVar("V")


class VectorCache(Generic[V]):
    def __init__(self, max_entries: int, ttl_s: float) -> None:
        self.max_entries = max_entries
        self.ttl_s = ttl_s
        self.generation = 0
        self.listening = False  # set by ConsentListener; no listener → no caching
        self.hits = 0
        self.misses = 0
        self._data: OrderedDict[Hashable, tuple[float, V]] = OrderedDict()

    @property
    def enabled(self) -> bool:
        return self.max_entries > 0 and self.listening

    def get(self, key: Hashable) -> V | None:
        if not self.enabled:
            return None
        entry = self._data.get(key)
        if entry is None or entry[0] < time.monotonic():
            self.misses += 1
            return None
        self._data.move_to_end(key)
        self.hits += 1
        return entry[1]

    def put(self, key: Hashable, value: V, generation: int) -> None:
        if not self.enabled or generation != self.generation:
            return
        now = time.monotonic()
        self._data[key] = (now + self.ttl_s, value)
        self._data.move_to_end(key)
        while len(self._data) > self.max_entries:
            self._data.popitem(last=False)
        # Expired entries at the least recently used end go too, so the cache holds about what
        # was asked for within the last TTL or two rather than max_entries stale vectors.
        while self._data and next(iter(self._data.values()))[0] < now:
            self._data.popitem(last=False)

    def invalidate(self) -> None:
        self.generation += 1
        self._data.clear()

    def __len__(self) -> int:
        return len(self._data)


class ConsentListener:
    """LISTEN on the consent and registry channels; every notification empties the cache."""

    def __init__(self, database_url: str, cache: VectorCache[Any]) -> None:
        self._url = database_url
        self._cache = cache
        self._task: asyncio.Task[None] | None = None
        self.connected = asyncio.Event()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="consent-listener")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        backoff = 0.5
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(
                    self._url, autocommit=True, connect_timeout=5
                ) as conn:
                    await conn.execute(f"LISTEN {CONSENT_CHANNEL}")
                    await conn.execute(f"LISTEN {REGISTRY_CHANNEL}")
                    # Anything may have changed while we were not listening.
                    self._cache.invalidate()
                    self._cache.listening = True
                    self.connected.set()
                    backoff = 0.5
                    async for _ in conn.notifies():
                        self._cache.invalidate()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("consent listener disconnected (%s); cache off", type(exc).__name__)
            finally:
                self._cache.listening = False
                self._cache.invalidate()
                self.connected.clear()
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 10.0)
