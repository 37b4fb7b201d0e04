"""Features: coverage per family at the latest snapshot date, and each feature's PSI between
that date and a reference date.

Read from ``console_feature_stats`` (migration 0066) when the date has them — a few rows per
feature — and otherwise from the snapshots themselves (every cell of the date expanded: correct,
slower). A write to a date's snapshots deletes its stats in the same transaction, so both ways
give the same numbers; ``features rollup`` computes the stats again.

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

import numpy as np

from features.report.summary import PSI_SHIFTED, PSI_WATCH
from features.service.console.queries.common import Row, rows
from features.service.console.summary import DateCells, snapshot_cells, unpack_values
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

COVERAGE_FROM_STATS_SQL = """
SELECT grouping(fd.family, c.feature) AS level, coalesce(fd.family, '(unknown)') AS family,
       c.feature, count(DISTINCT c.feature) AS features, sum(c.cells)::bigint AS cells,
       sum(c.non_null)::bigint AS non_null,
       sum(c.non_null)::float8 / sum(c.cells) AS non_null_share,
       sum(c.coverage_sum) / sum(c.cells) AS mean_coverage
  FROM console_feature_stats c
  LEFT JOIN feature_definitions fd
    ON fd.feature_set_version = c.feature_set_version AND fd.name = c.feature
 WHERE c.feature_set_version = %(version)s AND c.as_of = %(as_of)s
 GROUP BY GROUPING SETS ((fd.family, c.feature), (fd.family), ())
 ORDER BY grouping(fd.family, c.feature) DESC, 2, 3
"""

HAS_STATS_SQL = """
SELECT as_of, min(computed_at) AS computed_at FROM console_feature_stats
 WHERE feature_set_version = %(version)s AND as_of = ANY(%(dates)s)
 GROUP BY as_of
"""

STATS_VALUES_SQL = """
SELECT feature, cells, sorted_values FROM console_feature_stats
 WHERE feature_set_version = %(version)s AND as_of = %(as_of)s
"""

FAMILIES_SQL = """
SELECT name, family FROM feature_definitions WHERE feature_set_version = %(version)s
"""


def dates(conn: Conn, version: str) -> list[Row]:
    """Snapshot dates of ``version``, newest first, with their user counts."""
    return rows(conn, DATES_SQL, {"version": version})


def other_versions(conn: Conn, version: str) -> list[Row]:
    return rows(conn, OTHER_VERSIONS_SQL, {"version": version})


def with_stats(conn: Conn, version: str, dates: list[datetime]) -> dict[datetime, datetime]:
    """Of ``dates``, those with stats in ``console_feature_stats``: as_of → computed at."""
    found = rows(conn, HAS_STATS_SQL, {"version": version, "dates": dates})
    return {r["as_of"]: r["computed_at"] for r in found}


def coverage(conn: Conn, version: str, as_of: datetime, from_stats: bool) -> list[Row]:
    """Per feature, per family and overall (``level`` 0, 1, 3): features, cells, non-null
    cells and share, mean coverage — from the date's stats (one statement), or from its
    snapshots (the cells in one statement, summed here the same way)."""
    params = {"version": version, "as_of": as_of}
    if from_stats:
        return rows(conn, COVERAGE_FROM_STATS_SQL, params)
    family = {str(r["name"]): str(r["family"]) for r in rows(conn, FAMILIES_SQL, params)}
    groups: dict[tuple[int, str, str | None], list[DateCells]] = {}
    for name, cells in snapshot_cells(conn, version, as_of).items():
        fam = family.get(name, "(unknown)")
        for key in ((0, fam, name), (1, fam, None), (3, "(unknown)", None)):
            groups.setdefault(key, []).append(cells)
    out = []
    for (level, group, feature), members in groups.items():
        n = sum(int(c.values.size) for c in members)
        non_null = sum(c.non_null for c in members)
        out.append(
            {
                "level": level,
                "family": group,
                "feature": feature,
                "features": len(members),
                "cells": n,
                "non_null": non_null,
                "non_null_share": non_null / n if n else None,
                "mean_coverage": sum(float(c.coverages.sum()) for c in members) / n if n else None,
            }
        )
    return sorted(out, key=lambda r: (-r["level"], r["family"], r["feature"] or ""))


@dataclass(frozen=True)
class FeaturePsi:
    feature: str
    psi: float
    status: str  # the band: stable, watch, shifted
    reference_users: int
    latest_users: int
    reference_non_null: int
    latest_non_null: int


def _values(conn: Conn, version: str, as_of: datetime, from_stats: bool) -> dict[str, Any]:
    """Feature → its values at ``as_of`` (NaN for a null cell), in one statement."""
    if not from_stats:
        return {f: c.values for f, c in snapshot_cells(conn, version, as_of).items()}
    out = {}
    for r in rows(conn, STATS_VALUES_SQL, {"version": version, "as_of": as_of}):
        values = unpack_values(bytes(r["sorted_values"]))
        missing = int(r["cells"]) - values.size
        out[str(r["feature"])] = np.concatenate((values, np.full(missing, math.nan)))
    return out


def psi(
    conn: Conn, version: str, latest: datetime, reference: datetime, stats: dict[datetime, Any]
) -> list[FeaturePsi]:
    """Each feature's PSI of ``latest`` against ``reference``, most shifted first. ``stats``:
    the dates with stats (:func:`with_stats`); the others are read from the snapshots."""
    # Late: scikit-learn (under features.report.stats) costs seconds of start-up that only
    # this page needs (a documented start-up-cost lazy import, docs/architecture.md).
    from features.report.stats import psi as population_stability

    ref = _values(conn, version, reference, reference in stats)
    now = _values(conn, version, latest, latest in stats)
    out = []
    for feature in sorted(set(ref) & set(now)):
        e, a = ref[feature], now[feature]
        if not e.size or not a.size:
            continue
        result = population_stability(e, a)
        out.append(
            FeaturePsi(
                feature=feature,
                psi=result.psi,
                status=result.status,
                reference_users=int(e.size),
                latest_users=int(a.size),
                reference_non_null=int(np.count_nonzero(~np.isnan(e))),
                latest_non_null=int(np.count_nonzero(~np.isnan(a))),
            )
        )
    return sorted(out, key=lambda p: (-p.psi, p.feature))
