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
from features.snapshots.codec import PackedVector, pack_vector


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
    """Runs the engine's point-in-time computation on a sync pool connection in a thread."""

    def __init__(self, pool: ConnectionPool) -> None:
        self._pool = pool

    def _historical(self, rows: Sequence[tuple[str, datetime]]) -> list[ComputedVector | None]:
        with self._pool.connection() as conn:
            vectors = compute_historical(conn, rows)
        if len(vectors) != len(rows):  # the contract is one per row; never misalign rows
            raise RuntimeError("engine returned a different number of vectors than rows")
        return [_convert(v) for v in vectors]

    async def historical(self, rows: Sequence[tuple[str, datetime]]) -> list[ComputedVector | None]:
        if not rows:
            return []
        return await asyncio.to_thread(self._historical, rows)
