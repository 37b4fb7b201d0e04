"""The feature engine as the service sees it: current feature-set version, definitions, and
on-demand computation for (user, as_of) pairs that have no snapshot.

The engine is synchronous psycopg code; it runs in a worker thread on a connection from a sync
pool so it never blocks the event loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from psycopg_pool import ConnectionPool, PoolTimeout

from features.catalogue import DEFINITIONS, FEATURE_SET_VERSION
from features.engine import (
    DEFAULT_CHUNK_USERS,
    FeatureVector,
    compute_historical,
    users_by_as_of,
)
from features.service.resolve.replica import ReplicaGate
from features.snapshots.codec import PackedVector, pack_vector
from hearth.db import Conn
from hearth.replica import Position, wait_for_replay

# How long a batch may wait for a loader connection from the engine's pool (seconds): long
# enough for the pool to open one below its max size, short enough to never hold up a batch.
_LOADER_WAIT_S = 0.2


@dataclass(frozen=True, slots=True)
class ComputedVector:
    computed_at: datetime
    vector: PackedVector  # the current feature set's layout (features.snapshots.codec)


def feature_set_version() -> str:
    return FEATURE_SET_VERSION


def definitions_json() -> list[dict[str, Any]]:
    return [d.to_json() for d in DEFINITIONS]


def feature_names() -> list[str]:
    return [str(d["name"]) for d in definitions_json()]


def _convert(vector: FeatureVector | None) -> ComputedVector | None:
    if vector is None:
        return None
    return ComputedVector(computed_at=vector.computed_at, vector=pack_vector(vector))


class EngineGateway:
    """Runs the engine's point-in-time computation on a sync pool connection in a thread.

    With ``gate`` the pool reads a replica, and each computation first waits until it has
    replayed the primary's position taken when the computation was asked for."""

    def __init__(self, pool: ConnectionPool, gate: ReplicaGate | None = None) -> None:
        self._pool = pool
        self._gate = gate

    @contextmanager
    def _loader(self, rows: Sequence[tuple[str, datetime]]) -> Iterator[tuple[Conn, ...]]:
        """A second pool connection to read an as_of's next chunk while one is computed,
        when some as_of has more than one chunk of users and the pool has one to spare at
        once; otherwise none (the batch is computed one chunk after the other). Never waits:
        two batches each holding a connection must not wait for each other's second."""
        if (
            len(rows) <= DEFAULT_CHUNK_USERS
            or max(map(len, users_by_as_of(rows).values())) <= DEFAULT_CHUNK_USERS
        ):
            yield ()
            return
        try:
            conn = self._pool.getconn(timeout=_LOADER_WAIT_S)
        except PoolTimeout:
            yield ()
            return
        try:
            yield (conn,)
        finally:
            self._pool.putconn(conn)

    def _historical(
        self, rows: Sequence[tuple[str, datetime]], position: Position | None = None
    ) -> list[ComputedVector | None]:
        with self._pool.connection() as conn, self._loader(rows) as loaders:
            if position is not None and self._gate is not None:
                wait_for_replay(conn, position, self._gate.max_wait_s)
            vectors = compute_historical(conn, rows, loaders=loaders)
        if len(vectors) != len(rows):  # the contract is one per row; never misalign rows
            raise RuntimeError("engine returned a different number of vectors than rows")
        return [_convert(v) for v in vectors]

    async def historical(self, rows: Sequence[tuple[str, datetime]]) -> list[ComputedVector | None]:
        if not rows:
            return []
        position = await self._gate.position() if self._gate is not None else None
        return await asyncio.to_thread(self._historical, rows, position)
