"""The point-in-time feature engine: features for (user, T) from data with event time < T,
ingest time ≤ T, of categories consented at T (docs/invariants.md#8).

Modules, in the order a chunk of users passes through them: :mod:`.as_of` (which T, what is
known at T), :mod:`.grid` (the hourly grid, local clocks), :mod:`.sql` (every read-path
statement), :mod:`.wire` (libpq binary decoding), :mod:`.bins` (decoded arrays as bins),
:mod:`.load` (one chunk's read), :mod:`.compute` (feature functions, consent nulls, vectors),
:mod:`.runner` (chunks in order, loader threads); :mod:`.backfill` reads a chunk once for
many as-of times and builds each one's chunk. :mod:`.types` holds what comes out.
This module is the public API.
"""

from features.engine.as_of import Knowledge, as_of_problem, latest_as_of
from features.engine.backfill import DEFAULT_SPAN_USERS, Span, compute_span, load_span
from features.engine.compute import REASON_CODES, ChunkResults
from features.engine.runner import (
    DEFAULT_CHUNK_USERS,
    compute_historical,
    compute_vectors,
    iter_chunk_results,
    users_by_as_of,
)
from features.engine.types import FeatureCell, FeatureVector, Timings

__all__ = [
    "DEFAULT_CHUNK_USERS",
    "DEFAULT_SPAN_USERS",
    "REASON_CODES",
    "ChunkResults",
    "FeatureCell",
    "FeatureVector",
    "Knowledge",
    "Span",
    "Timings",
    "as_of_problem",
    "compute_historical",
    "compute_span",
    "compute_vectors",
    "iter_chunk_results",
    "latest_as_of",
    "load_span",
    "users_by_as_of",
]
