"""A population's percentiles at an as_of: where an applicant's value stands among everyone's.

An export (:mod:`features.book.export`) describes the population it wrote: per feature, its
1st…99th percentiles over the users with a value (:data:`LEVELS`), kept in the export's
``population.json`` and in ``feature_population`` (migration 0076). A reason code's
``percentile`` is the applicant's value placed in the population of the latest export at or
before the score's as_of — the same grid for a batch score and for an online one, so both give
the same percentile. A feature with fewer than :data:`MIN_VALUES` values has no grid (its
percentiles are null): percentiles of a handful of people would describe those people.

The grid is computed from a systematic sample of at most :data:`SAMPLE_ROWS` users (every k-th
row of the export, in user-id order), so memory stays flat however many users there are; with
100,000 sampled users a percentile is within about half a point of the full population's.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
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

    def percentiles(self, name: str, values: F64) -> F64:
        """Percentile (0-100, whole numbers) of each value; NaN for a missing value or a
        feature without a grid. Below the 1st percentile is 0, above the 99th 100; a value
        equal to several grid points takes their middle level; between two, linear."""
        values = np.asarray(values, dtype=np.float64)
        grid = self.grids.get(name)
        if grid is None:
            return np.full(values.shape, np.nan)
        q = np.asarray(grid, dtype=np.float64)
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
        out = float(self.percentiles(name, np.asarray([value]))[0])
        return None if math.isnan(out) else int(out)

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


_SAVE_SQL = """
    INSERT INTO feature_population
           (as_of, feature_set_version, feature, n_users, percentiles)
    SELECT %(as_of)s, %(version)s, f.feature, %(n_users)s, f.grid
      FROM jsonb_to_recordset(%(rows)s::jsonb) AS f(feature text, grid float8[])
    ON CONFLICT (as_of, feature_set_version, feature) DO UPDATE
       SET n_users = excluded.n_users, percentiles = excluded.percentiles,
           computed_at = now()
"""

# The population of the latest export at or before the as_of, for this feature set.
_LOAD_SQL = """
    SELECT as_of, n_users, feature, percentiles FROM feature_population
     WHERE feature_set_version = %(version)s
       AND as_of = (SELECT max(as_of) FROM feature_population
                     WHERE feature_set_version = %(version)s AND as_of <= %(as_of)s)
"""


def save_population(conn: Conn, population: Population) -> None:
    rows = [{"feature": k, "grid": list(v) if v else None} for k, v in population.grids.items()]
    with conn.transaction():
        conn.execute(
            _SAVE_SQL,
            {
                "as_of": population.as_of,
                "version": population.feature_set_version,
                "n_users": population.n_users,
                "rows": json.dumps(rows),
            },
        )


def _population(rows: Sequence[Sequence[Any]], version: str) -> Population | None:
    if not rows:
        return None
    as_of, n_users = rows[0][0], rows[0][1]
    assert isinstance(as_of, datetime)
    grids = {str(r[2]): tuple(float(x) for x in r[3]) if r[3] else None for r in rows}
    return Population(as_of, version, int(n_users), grids)


def load_population(conn: Conn, as_of: datetime, version: str) -> Population | None:
    """The population of the latest export at or before ``as_of`` (None: no export yet)."""
    rows = conn.execute(_LOAD_SQL, {"as_of": as_of, "version": version}).fetchall()
    return _population(rows, version)


async def load_population_async(
    conn: AsyncConn, as_of: datetime, version: str
) -> Population | None:
    cur = await conn.execute(_LOAD_SQL, {"as_of": as_of, "version": version})
    return _population(await cur.fetchall(), version)
