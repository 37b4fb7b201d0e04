"""Computing a loaded chunk: every feature function over it, nulls where consent says so, and
the vectors of its users."""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import datetime

import numpy as np

from features.catalogue import DEFINITIONS, FEATURE_SET_VERSION, feature_name
from features.catalogue.library import SPECS, Window
from features.catalogue.library.base import Chunk
from features.engine.grid import GRID_DAYS
from features.engine.types import FeatureCell, FeatureVector
from hearth.signals import Category
from hearth.vectors import CellReason


class ChunkResults(dict[str, tuple[np.ndarray, np.ndarray]]):
    """Every definition's (value[U], coverage[U]) for a chunk, and ``reasons``: per
    definition, a [U] array of :data:`REASON_CODES` indices (0: the value stands)."""

    def __init__(self) -> None:
        super().__init__()
        self.reasons: dict[str, np.ndarray] = {}
        # Per user: the (other person, category) its relationship features depend on
        # (features.catalogue.library.sightings.Sightings.link_ends); stored with a snapshot.
        self.links: list[list[tuple[str, str]]] = []

    def reason(self, name: str, user: int) -> CellReason | None:
        codes = self.reasons.get(name)
        return None if codes is None else REASON_CODES[int(codes[user])]


REASON_CODES: tuple[CellReason | None, ...] = (
    None,
    CellReason.NOT_CONSENTED,
    CellReason.CONSENT_WITHDRAWN,
)
_CATEGORY_OF = {d.name: Category(d.category) for d in DEFINITIONS}


def _mask_by_consent(out: ChunkResults, chunk: Chunk) -> ChunkResults:
    """A feature whose category is not usable at T is null with coverage 0, whatever its
    function computed from the (absent) data, and says why: every vector has every feature,
    and none reads as a confident value without its data."""
    codes: dict[Category, np.ndarray] = {}
    for category, ok in chunk.consented.items():
        withdrawn = chunk.withdrawn.get(category, np.zeros_like(ok))
        codes[category] = np.where(ok, 0, np.where(withdrawn, 2, 1)).astype(np.int8)
    for name, (value, coverage) in out.items():
        of = _CATEGORY_OF.get(name)
        if of is None or of not in codes:
            continue
        ok = codes[of] == 0
        if not ok.all():
            out[name] = (np.where(ok, value, np.nan), np.where(ok, coverage, 0.0))
        out.reasons[name] = codes[of]
    return out


def compute_chunk(chunk: Chunk) -> ChunkResults:
    """Every definition's (value[U], coverage[U]) for a loaded chunk.

    One window at a time (its cached matrices are freed before the next one) keeps the peak
    memory at one window's worth.
    """
    out = ChunkResults()
    for days in sorted({d or GRID_DAYS for spec in SPECS for d in spec.windows}):
        w = Window(chunk, days)
        for spec in SPECS:
            for d in spec.windows:
                if (d or GRID_DAYS) != days:
                    continue
                name = feature_name(spec.base_name, d)
                value, coverage = spec.fn(w)
                out[name] = (
                    np.asarray(value, dtype=np.float64),
                    np.clip(np.nan_to_num(np.asarray(coverage, dtype=np.float64)), 0.0, 1.0),
                )
        del w
    if chunk.sightings is not None:
        out.links = chunk.sightings.link_ends()
    return _mask_by_consent(out, chunk)


def chunk_vectors(
    users: Sequence[str],
    as_of: datetime,
    results: ChunkResults,
    computed_at: datetime,
) -> list[FeatureVector]:
    names = [d.name for d in DEFINITIONS]
    vals = {n: results[n][0].tolist() for n in names}
    covs = {n: results[n][1].tolist() for n in names}
    out = []
    for i, user in enumerate(users):
        values = {}
        for n in names:
            v = vals[n][i]
            values[n] = FeatureCell(
                None if (v is None or not math.isfinite(v)) else float(v),
                round(covs[n][i], 6),
                results.reason(n, i),
            )
        out.append(FeatureVector(user, as_of, FEATURE_SET_VERSION, computed_at, values))
    return out
