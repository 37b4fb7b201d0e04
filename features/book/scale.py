"""The points scale: a score in points is a linear function of the log-odds.

``points = offset + factor · ln(odds of good)`` with ``factor = pdo / ln 2`` and
``offset = points_at_odds - factor · ln(odds)``, the usual credit scorecard scaling (Siddiqi,
*Credit Risk Scorecards*, 2006, ch. 6): by default 600 points at odds of 50 good to 1 bad,
and 20 more points for every doubling of the odds. A model's scale is chosen when it is
trained (``python -m features train --points --odds --pdo``) and kept in its card, so the same
model always gives the same points. The odds of good are the inverse of the odds of default,
so ``points = offset - factor · log-odds of default``, and a feature's contribution to the
log-odds of default times ``-factor`` is its contribution in points.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

DEFAULT_POINTS = 600.0
DEFAULT_ODDS = 50.0
DEFAULT_PDO = 20.0


@dataclass(frozen=True)
class PointsScale:
    """``points`` at odds ``odds``:1 (good:bad); ``pdo`` points to double the odds."""

    points: float = DEFAULT_POINTS
    odds: float = DEFAULT_ODDS
    pdo: float = DEFAULT_PDO

    def __post_init__(self) -> None:
        if not (math.isfinite(self.points) and self.odds > 0 and self.pdo > 0):
            raise ValueError("the points scale needs finite points, odds > 0 and pdo > 0")

    @property
    def factor(self) -> float:
        """Points per unit of log-odds."""
        return self.pdo / math.log(2.0)

    @property
    def offset(self) -> float:
        """Points at even odds (log-odds 0)."""
        return self.points - self.factor * math.log(self.odds)

    def points_of(self, log_odds_default: NDArray[np.float64]) -> NDArray[np.float64]:
        """Points of each log-odds of default."""
        return np.asarray(self.offset - self.factor * log_odds_default, dtype=np.float64)

    def to_json(self) -> dict[str, float]:
        return {
            "points": self.points,
            "odds": self.odds,
            "pdo": self.pdo,
            "factor": self.factor,
            "offset": self.offset,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any] | None) -> PointsScale:
        if not data:
            return cls()
        return cls(float(data["points"]), float(data["odds"]), float(data["pdo"]))
