"""Resolve (user, as_of) requests into outcomes — a vector or a reason — and render them.

Order of decisions for each row (first match wins):
1. ``unknown_user``: no such user.
2. ``no_active_consent``: the user has no active credit-scoring consent now (withdrawn or never
   given) — nothing of theirs is served, not even old snapshots.
3. ``no_consent_at_as_of``: a requested ``as_of`` at which no category was consented.
4. the snapshot for exactly that ``as_of`` (or the latest one when ``as_of`` is omitted);
5. otherwise computed on demand by the engine (point-in-time), at ``as_of`` or now;
6. ``not_computed`` when the engine produced nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Literal

import numpy as np
import numpy.typing as npt

from features.service.cache import VectorCache
from features.service.errors import ApiError
from features.service.resolve.engine_gateway import ComputedVector, EngineGateway
from features.service.resolve.store import Lookup, SnapshotStore
from features.snapshots.codec import (
    CATALOGUE_COLUMNS,
    PackedVector,
    cells_json_rows,
    document_json,
    unpack,
)

Source = Literal["snapshot", "computed"]


@dataclass(frozen=True, slots=True)
class Outcome:
    user_id: str
    as_of: datetime  # the vector's as_of (requested, latest snapshot's, or computation time)
    latest: bool  # as_of was not requested
    reason: str | None = None
    source: Source | None = None
    computed_at: datetime | None = None
    vector: PackedVector | None = None
    # The vector's cells (every feature, catalogue order) as JSON text once rendered: an
    # outcome the cache keeps is rendered when it is stored, not on every request reading it.
    cells: str | None = None


class VectorResolver:
    def __init__(
        self,
        store: SnapshotStore,
        engine: EngineGateway,
        cache: VectorCache[Outcome],
        stale_after: timedelta,
    ) -> None:
        self.store = store
        self.engine = engine
        self.cache = cache
        self.stale_after = stale_after

    async def resolve(
        self,
        rows: Sequence[tuple[str, datetime | None]],
        version: str,
        *,
        use_cache: bool = True,
    ) -> list[Outcome]:
        """One outcome per row, in order."""
        out: list[Outcome | None] = [None] * len(rows)
        todo: list[int] = []
        for i, (user_id, as_of) in enumerate(rows):
            cached = self.cache.get((user_id, as_of, version)) if use_cache else None
            if cached is not None:
                out[i] = cached
            else:
                todo.append(i)
        if todo:
            generation = self.cache.generation
            lookups = await self.store.lookup([rows[i] for i in todo], version)
            now = datetime.now(UTC)
            pending: list[tuple[int, str, datetime]] = []
            for i, lookup in zip(todo, lookups, strict=True):
                user_id, as_of = rows[i]
                outcome = _decide(user_id, as_of, lookup, now)
                if outcome is None:
                    pending.append((i, user_id, as_of or now))
                else:
                    out[i] = outcome
            if pending:
                computed = await self._compute([(u, t) for _, u, t in pending])
                for (i, user_id, at), vector in zip(pending, computed, strict=True):
                    out[i] = _from_engine(user_id, at, rows[i][1] is None, vector)
            if use_cache and self.cache.enabled:
                # Rendered once here (one pass for the whole batch): formatting every float
                # of a vector is most of a cached GET's work.
                fresh: list[Outcome] = []
                for i in todo:
                    outcome = out[i]
                    assert outcome is not None
                    fresh.append(outcome)
                texts = features_json(fresh)
                for i, outcome, text in zip(todo, fresh, texts, strict=True):
                    if text is not None:
                        outcome = out[i] = replace(outcome, cells=text)
                    user_id, as_of = rows[i]
                    self.cache.put((user_id, as_of, version), outcome, generation)
        return [o for o in out if o is not None]

    async def _compute(self, rows: list[tuple[str, datetime]]) -> list[ComputedVector | None]:
        try:
            return await self.engine.historical(rows)
        except ApiError:  # engine not installed: say so per row instead of failing the batch
            return [None] * len(rows)

    def is_stale(self, outcome: Outcome, now: datetime) -> bool:
        return (
            outcome.latest
            and outcome.source == "snapshot"
            and now - outcome.as_of > self.stale_after
        )


def _decide(user_id: str, as_of: datetime | None, lookup: Lookup, now: datetime) -> Outcome | None:
    latest = as_of is None
    at = as_of or now
    if not lookup.known:
        return Outcome(user_id, at, latest, reason="unknown_user")
    if not lookup.consented_now:
        return Outcome(user_id, at, latest, reason="no_active_consent")
    if not lookup.consented_at_as_of:
        return Outcome(user_id, at, latest, reason="no_consent_at_as_of")
    if lookup.vector is not None:
        assert lookup.snapshot_as_of is not None
        return Outcome(
            user_id,
            as_of or lookup.snapshot_as_of,
            latest,
            source="snapshot",
            computed_at=lookup.computed_at,
            vector=lookup.vector,
        )
    return None


def _from_engine(
    user_id: str, at: datetime, latest: bool, vector: ComputedVector | None
) -> Outcome:
    if vector is None:
        return Outcome(user_id, at, latest, reason="not_computed")
    return Outcome(
        user_id,
        at,
        latest,
        source="computed",
        computed_at=vector.computed_at,
        vector=vector.vector,
    )


# --- rendering ------------------------------------------------------------------------------


def _iso(t: datetime | None) -> str | None:
    return None if t is None else t.isoformat()


def features_json(
    outcomes: Sequence[Outcome], columns: npt.NDArray[np.intp] = CATALOGUE_COLUMNS
) -> list[str | None]:
    """The cells of each outcome's vector (the features at ``columns``) as JSON text, rendered
    together (:func:`features.snapshots.codec.cells_json_rows`); None without a vector. All of
    the features are an outcome's own :attr:`Outcome.cells` when it has them."""
    every = columns is CATALOGUE_COLUMNS or np.array_equal(columns, CATALOGUE_COLUMNS)
    packed = [
        o.vector for o in outcomes if o.vector is not None and not (every and o.cells is not None)
    ]
    rendered: list[str] = []
    if packed:
        values, coverage = unpack(packed)
        rendered = cells_json_rows(values, coverage, [p.withheld for p in packed], columns)
    texts = iter(rendered)
    out: list[str | None] = []
    for o in outcomes:
        if o.vector is None:
            out.append(None)
        elif every and o.cells is not None:
            out.append(o.cells)
        else:
            out.append(next(texts))
    return out


def vector_json(
    outcome: Outcome,
    version: str,
    stale: bool,
    cells: str | None = None,
) -> str:
    """A ``FeatureVectorOut`` document (the outcome must carry a vector); ``cells``: its
    features already rendered (:func:`features_json`), else all of them."""
    head = {
        "user_id": outcome.user_id,
        "as_of": _iso(outcome.as_of),
        "feature_set_version": version,
        "computed_at": _iso(outcome.computed_at),
        "stale": stale,
        "source": outcome.source,
    }
    return document_json(head, cells if cells is not None else features_json([outcome])[0])
