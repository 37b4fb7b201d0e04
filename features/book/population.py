"""A population's percentiles at an as_of: where an applicant's value stands among everyone's.

An export (:mod:`features.book.export`) describes the population it wrote: per feature, its
1st…99th percentiles over the users with a value (:data:`LEVELS`), kept in the export's
``population.json`` and in the tables ``feature_populations`` and ``feature_population``
(migration 0076). A reason code's ``percentile`` is the applicant's value placed in the
population of the latest export at or before the score's as_of: the same grid for a batch score
and for an online one, so both give the same percentile. A feature with fewer than
:data:`MIN_VALUES` values has no grid (its percentiles are null): percentiles of a handful of
people would describe those people.

The grid is computed from a systematic sample of at most :data:`SAMPLE_ROWS` users (every k-th
row of the export, in user-id order), so memory stays flat however many users there are; with
100,000 sampled users a percentile is within about half a point of the full population's.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np
from numpy.typing import NDArray

from hearth.db import AsyncConn, Conn

LEVELS = np.arange(1, 100, dtype=np.float64)  # the percentiles kept: 1st … 99th
MIN_VALUES = 20
SAMPLE_ROWS = 100_000

F64 = NDArray[np.float64]


@dataclass(frozen=True)
class Population:
    as_of: datetime
    feature_set_version: str
    n_users: int
    grids: Mapping[str, tuple[float, ...] | None]  # feature → 99 percentiles, or None
    # The grids as arrays, made once: online scores look up a few values per request.
    _arrays: dict[str, F64] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        arrays = {k: np.asarray(v, dtype=np.float64) for k, v in self.grids.items() if v}
        object.__setattr__(self, "_arrays", arrays)

    def percentiles(self, name: str, values: F64) -> F64:
        """Percentile (0-100, whole numbers) of each value; NaN for a missing value or a
        feature without a grid. Below the 1st percentile is 0, above the 99th 100; a value
        equal to several grid points takes their middle level; between two, linear."""
        values = np.asarray(values, dtype=np.float64)
        q = self._arrays.get(name)
        if q is None:
            return np.full(values.shape, np.nan)
        lo = np.searchsorted(q, values, side="left")
        hi = np.searchsorted(q, values, side="right")
        tied = (lo + hi - 1) / 2.0 + 1.0
        below = np.clip(lo - 1, 0, q.size - 1)
        above = np.clip(lo, 0, q.size - 1)
        span = q[above] - q[below]
        with np.errstate(invalid="ignore", divide="ignore"):
            between = lo + np.where(span > 0, (values - q[below]) / span, 0.0)
        level = np.where(hi > lo, tied, between)
        level = np.where(values < q[0], 0.0, np.where(values > q[-1], 100.0, level))
        return np.where(np.isnan(values), np.nan, np.rint(level))

    def percentile(self, name: str, value: float) -> int | None:
        """:meth:`percentiles` of one value (None for NaN), in plain Python: online scores ask
        for a few per request, where numpy's cost per call is most of the work. The same
        operations in the same order on the same doubles, so the same result as a batch."""
        grid = self.grids.get(name)
        if not grid or math.isnan(value):
            return None
        if value < grid[0]:
            return 0
        if value > grid[-1]:
            return 100
        lo, hi = bisect.bisect_left(grid, value), bisect.bisect_right(grid, value)
        if hi > lo:
            level = (lo + hi - 1) / 2.0 + 1.0
        else:
            below, above = min(max(lo - 1, 0), len(grid) - 1), min(max(lo, 0), len(grid) - 1)
            span = grid[above] - grid[below]
            level = lo + ((value - grid[below]) / span if span > 0 else 0.0)
        return round(level)  # half to even, as np.rint

    def to_json(self) -> dict[str, Any]:
        return {
            "as_of": self.as_of.isoformat(),
            "feature_set_version": self.feature_set_version,
            "n_users": self.n_users,
            "levels": [int(v) for v in LEVELS],
            "min_values": MIN_VALUES,
            "percentiles": {k: list(v) if v is not None else None for k, v in self.grids.items()},
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Population:
        return cls(
            as_of=datetime.fromisoformat(str(data["as_of"])),
            feature_set_version=str(data["feature_set_version"]),
            n_users=int(data["n_users"]),
            grids={
                str(k): tuple(float(x) for x in v) if v is not None else None
                for k, v in dict(data["percentiles"]).items()
            },
        )


def build_population(
    as_of: datetime, version: str, n_users: int, columns: Mapping[str, F64]
) -> Population:
    """The grid of each feature from its sampled values (NaN = missing)."""
    grids: dict[str, tuple[float, ...] | None] = {}
    for name, column in columns.items():
        finite = column[np.isfinite(column)]
        grids[name] = (
            tuple(float(v) for v in np.quantile(finite, LEVELS / 100.0))
            if finite.size >= MIN_VALUES
            else None
        )
    return Population(as_of, version, n_users, grids)


def sample_step(n_rows: int) -> int:
    """Keep every k-th row so that at most :data:`SAMPLE_ROWS` are kept."""
    return max(1, math.ceil(n_rows / SAMPLE_ROWS))


# The latest export's population at or before %(as_of)s (columns: as_of, n_users, computed_at);
# online scores read it in the same statement as the vectors (features.service.handlers.scores).
LATEST_SQL = """
    SELECT as_of, n_users, computed_at FROM feature_populations
     WHERE feature_set_version = %(version)s AND as_of <= %(as_of)s
     ORDER BY as_of DESC LIMIT 1
"""
_GRIDS_SQL = """
    SELECT feature, level, value FROM feature_population
     WHERE feature_set_version = %(version)s AND as_of = %(as_of)s
     ORDER BY feature, level
"""


def save_population(conn: Conn, population: Population) -> None:
    """Store ``population`` (replacing an earlier one of the same as_of), in one transaction."""
    key = {"as_of": population.as_of, "version": population.feature_set_version}
    rows = [
        (name, level, value)
        for name, grid in population.grids.items()
        if grid is not None
        for level, value in zip(LEVELS.astype(int).tolist(), grid, strict=True)
    ]
    with conn.transaction(), conn.cursor() as cur:
        cur.execute(
            """DELETE FROM feature_populations
                WHERE feature_set_version = %(version)s AND as_of = %(as_of)s""",
            key,
        )
        cur.execute(
            """INSERT INTO feature_populations (as_of, feature_set_version, n_users)
               VALUES (%(as_of)s, %(version)s, %(n_users)s)""",
            {**key, "n_users": population.n_users},
        )
        with cur.copy(
            "COPY feature_population (as_of, feature_set_version, feature, level, value) FROM STDIN"
        ) as copy:
            for name, level, value in rows:
                copy.write_row(
                    (population.as_of, population.feature_set_version, name, level, value)
                )


class PopulationCache:
    """The population of the latest export at or before an as_of, for online scores. Which
    export that is (a row of :data:`LATEST_SQL`, read by the caller with its own query) is
    looked up per request, so a new export counts at once; the export's grids are read once
    and kept (the last :data:`CACHED` populations)."""

    CACHED = 8

    def __init__(self) -> None:
        self._grids: dict[tuple[str, datetime, datetime], Population] = {}

    async def get(self, conn: AsyncConn, head: Sequence[object], version: str) -> Population | None:
        """The population :data:`LATEST_SQL`'s row ``head`` names (all None: no export)."""
        found_as_of, n_users, computed_at = head
        if found_as_of is None:
            return None
        assert isinstance(found_as_of, datetime) and isinstance(computed_at, datetime)
        key = (version, found_as_of, computed_at)
        if key not in self._grids:
            cur = await conn.execute(_GRIDS_SQL, {"as_of": found_as_of, "version": version})
            grids: dict[str, list[float]] = {}
            for feature, _level, value in await cur.fetchall():
                grids.setdefault(str(feature), []).append(float(str(value)))
            if len(self._grids) >= self.CACHED:
                self._grids.pop(next(iter(self._grids)))
            self._grids[key] = Population(
                found_as_of, version, int(str(n_users)), {k: tuple(v) for k, v in grids.items()}
            )
        return self._grids[key]
