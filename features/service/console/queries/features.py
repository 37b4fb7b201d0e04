"""Features: coverage per family at the latest snapshot date, and each feature's PSI between
that date and a reference date.

Snapshots of the feature-set version this service serves (``features.catalogue``); a family is
the catalogue's (``feature_definitions``, written at materialisation). PSI is
:func:`features.report.stats.psi` (reference = expected, latest = actual; missing values their
own bin, so a collapse of coverage shows as a shift) read in the bands of
:func:`features.report.summary.psi_status` — the report owns both, the console reuses them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from features.report.summary import PSI_SHIFTED, PSI_WATCH
from features.service.console.queries.common import Row, rows
from hearth.db import Conn

MAX_DATES = 120
BANDS = (("stable", "good"), ("watch", "warn"), ("shifted", "bad"))  # psi_status, its colour
PSI_BOUNDS = (PSI_WATCH, PSI_SHIFTED)

DATES_SQL = f"""
SELECT as_of, count(*) AS users, max(computed_at) AS computed_at
  FROM feature_snapshots
 WHERE feature_set_version = %(version)s
 GROUP BY as_of ORDER BY as_of DESC
 LIMIT {MAX_DATES}
"""

OTHER_VERSIONS_SQL = """
SELECT feature_set_version, count(*) AS snapshots, max(as_of) AS latest_as_of
  FROM feature_snapshots
 WHERE feature_set_version <> %(version)s
 GROUP BY 1 ORDER BY 3 DESC
"""

_CELLS = """
  FROM feature_snapshots s
 CROSS JOIN LATERAL jsonb_each(s.vector) c
"""

# Per feature, per family and overall (``level`` 0, 1, 3): cells, non-null cells, mean coverage.
COVERAGE_SQL = f"""
SELECT grouping(fd.family, c.key) AS level, coalesce(fd.family, '(unknown)') AS family,
       c.key AS feature, count(DISTINCT c.key) AS features, count(*) AS cells,
       count(*) FILTER (WHERE jsonb_typeof(c.value -> 'value') = 'number') AS non_null,
       count(*) FILTER (WHERE jsonb_typeof(c.value -> 'value') = 'number')::float8 / count(*)
           AS non_null_share,
       avg((c.value ->> 'coverage')::float8) AS mean_coverage
  {_CELLS}
  LEFT JOIN feature_definitions fd
    ON fd.feature_set_version = s.feature_set_version AND fd.name = c.key
 WHERE s.feature_set_version = %(version)s AND s.as_of = %(as_of)s
 GROUP BY GROUPING SETS ((fd.family, c.key), (fd.family), ())
 ORDER BY grouping(fd.family, c.key) DESC, 2, 3
"""

VALUES_SQL = f"""
SELECT c.key AS feature, s.as_of, array_agg((c.value ->> 'value')::float8) AS "values"
  {_CELLS}
 WHERE s.feature_set_version = %(version)s AND s.as_of = ANY(%(dates)s)
 GROUP BY 1, 2
"""


def dates(conn: Conn, version: str) -> list[Row]:
    """Snapshot dates of ``version``, newest first, with their user counts."""
    return rows(conn, DATES_SQL, {"version": version})


def other_versions(conn: Conn, version: str) -> list[Row]:
    return rows(conn, OTHER_VERSIONS_SQL, {"version": version})


def coverage(conn: Conn, version: str, as_of: datetime) -> list[Row]:
    return rows(conn, COVERAGE_SQL, {"version": version, "as_of": as_of})


@dataclass(frozen=True)
class FeaturePsi:
    feature: str
    psi: float
    status: str  # the band: stable, watch, shifted
    reference_users: int
    latest_users: int
    reference_non_null: int
    latest_non_null: int


def _floats(values: list[Any]) -> list[float]:
    return [math.nan if v is None else float(v) for v in values]


def psi(conn: Conn, version: str, latest: datetime, reference: datetime) -> list[FeaturePsi]:
    """Each feature's PSI of ``latest`` against ``reference``, most shifted first."""
    # Late: scikit-learn (under features.report.stats) costs seconds of start-up that only
    # this page needs (a documented start-up-cost lazy import, docs/architecture.md).
    from features.report.stats import psi as population_stability

    found = rows(conn, VALUES_SQL, {"version": version, "dates": [latest, reference]})
    by_feature: dict[str, dict[datetime, list[float]]] = {}
    for r in found:
        by_feature.setdefault(str(r["feature"]), {})[r["as_of"]] = _floats(r["values"])
    out = []
    for feature, samples in by_feature.items():
        ref, now = samples.get(reference), samples.get(latest)
        if not ref or not now:
            continue
        result = population_stability(ref, now)
        out.append(
            FeaturePsi(
                feature=feature,
                psi=result.psi,
                status=result.status,
                reference_users=len(ref),
                latest_users=len(now),
                reference_non_null=sum(not math.isnan(v) for v in ref),
                latest_non_null=sum(not math.isnan(v) for v in now),
            )
        )
    return sorted(out, key=lambda p: (-p.psi, p.feature))
