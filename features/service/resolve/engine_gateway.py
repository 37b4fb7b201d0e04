"""The feature engine as the service sees it: current feature-set version, definitions, and
on-demand computation for (user, as_of) pairs that have no snapshot.

The engine is synchronous psycopg code; it runs in a worker thread on a connection from a sync
pool so it never blocks the event loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from psycopg_pool import ConnectionPool

from features.catalogue import DEFINITIONS, FEATURE_SET_VERSION
from features.engine import FeatureVector, compute_historical
from features.service.resolve.replica import ReplicaGate
from features.snapshots.codec import PackedVector, pack_vector
from hearth.replica import Position, wait_for_replay


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

    def _historical(
        self, rows: Sequence[tuple[str, datetime]], position: Position | None = None
    ) -> list[ComputedVector | None]:
        with self._pool.connection() as conn:
            if position is not None and self._gate is not None:
                wait_for_replay(conn, position, self._gate.max_wait_s)
            vectors = compute_historical(conn, rows)
        if len(vectors) != len(rows):  # the contract is one per row; never misalign rows
            raise RuntimeError("engine returned a different number of vectors than rows")
        return [_convert(v) for v in vectors]

    async def historical(self, rows: Sequence[tuple[str, datetime]]) -> list[ComputedVector | None]:
        if not rows:
            return []
        position = await self._gate.position() if self._gate is not None else None
        return await asyncio.to_thread(self._historical, rows, position)
