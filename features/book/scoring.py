"""Points, probabilities and reason codes of a matrix of applicants (docs/book.md).

The reference model is linear in its inputs once imputation, missing-value indicators and
standardisation are folded in (:func:`features.book.model.compile_scorecard`), so each feature
``j`` contributes ``slope_j · x + shift_j`` to the log-odds of default when the applicant has a
value and ``missing_j`` when not, and

    log-odds of default = intercept + Σ_j contribution_j

exactly (the *baseline*, ``intercept``, is the average training applicant: every standardised
input at 0). In points (:mod:`features.book.scale`) a contribution is ``-factor ·
contribution_j``: negative when the feature lowered the applicant's points against the average
applicant's.

Reason codes (Regulation B's commentary, 12 CFR 1002.9(b)(2): no more than four, the factors
actually scored; PIPL Art. 24: an explanation of an automated decision) are the at most
:data:`MAX_REASONS` features with the most negative points contributions, ties in feature order.
Only features of categories the applicant consents to at as_of may be a reason: a feature of a
category not consented (never granted, or withdrawn) enters the model as missing — the model
saw missing values in training and scores them — but its contribution is never given as a
reason, because the reason would disclose and rest on a choice the applicant was free to make.

Batch (:mod:`features.book.batch`) and online (``POST /v1/scores``) scores both go through
:func:`score_matrix` and :func:`reason_codes`, so the same (user, as_of, model) gives the same
score either way.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from features.book.population import Population
from features.book.scale import PointsScale

MAX_REASONS = 4

F64 = NDArray[np.float64]
I64 = NDArray[np.int64]
Bool = NDArray[np.bool_]

LOWER = "lower than average"
HIGHER = "higher than average"
NOT_REPORTED = "not reported"


@dataclass(frozen=True)
class Scorecard:
    """A fitted linear model, one term per input feature (see the module docstring)."""

    intercept: float
    slope: F64  # per feature: added log-odds per unit of the raw value
    shift: F64  # per feature: the constant of the present-value term
    missing: F64  # per feature: the contribution of a missing value
    mean: F64  # per feature: the average training applicant's value (imputed), for the text

    def contributions(self, x: F64) -> F64:
        """Added log-odds of default of every feature of every row (NaN = missing)."""
        present = ~np.isnan(x)
        out = np.where(present, np.nan_to_num(x) * self.slope + self.shift, self.missing)
        return np.asarray(out, dtype=np.float64)

    def log_odds(self, x: F64) -> F64:
        return np.asarray(self.intercept + self.contributions(x).sum(axis=1), dtype=np.float64)


@dataclass(frozen=True)
class ScoringModel:
    """What scoring needs of a model: its scorecard, features, their categories and reason
    texts, the points scale and the versions every score carries."""

    model_version: str
    feature_set_version: str
    features: tuple[str, ...]
    categories: tuple[str, ...]
    reasons: tuple[str, ...]
    scale: PointsScale
    scorecard: Scorecard

    @property
    def baseline_points(self) -> float:
        """The average training applicant's points (every contribution 0)."""
        return float(self.scale.offset - self.scale.factor * self.scorecard.intercept)

    def eligible(self, consented: dict[str, Bool], n: int) -> Bool:
        """[n, features]: the feature's category is consented (``consented[category]``)."""
        out = np.zeros((n, len(self.features)), dtype=np.bool_)
        for j, category in enumerate(self.categories):
            mask = consented.get(category)
            if mask is not None:
                out[:, j] = mask
        return out


@dataclass(frozen=True)
class Scored:
    """Scores of ``n`` applicants; ``reasons[i]`` holds feature indexes, ``-1`` pads."""

    values: F64  # [n, features] the inputs as scored (not consented → NaN)
    contributions: F64  # [n, features] added log-odds of default
    log_odds: F64
    probability: F64
    points: F64  # unrounded
    point_contributions: F64  # [n, features]
    reasons: I64  # [n, MAX_REASONS]

    def __len__(self) -> int:
        return int(self.log_odds.size)

    def rounded_points(self) -> I64:
        return np.asarray(np.rint(self.points), dtype=np.int64)


def score_matrix(model: ScoringModel, x: F64, eligible: Bool) -> Scored:
    """Score ``x`` ([n, features], NaN = missing); features not ``eligible`` (category not
    consented) are scored as missing and never a reason."""
    values = np.where(eligible, np.asarray(x, dtype=np.float64), np.nan)
    contributions = model.scorecard.contributions(values)
    log_odds = model.scorecard.intercept + contributions.sum(axis=1)
    factor = model.scale.factor
    point_contributions = -factor * contributions
    return Scored(
        values=values,
        contributions=contributions,
        log_odds=log_odds,
        probability=1.0 / (1.0 + np.exp(-log_odds)),
        points=model.scale.points_of(log_odds),
        point_contributions=point_contributions,
        reasons=top_reasons(point_contributions, eligible),
    )


def top_reasons(point_contributions: F64, eligible: Bool, limit: int = MAX_REASONS) -> I64:
    """Per row, the indexes of the at most ``limit`` eligible features with negative points
    contributions, most negative first (ties: the earlier feature); ``-1`` pads."""
    candidate = eligible & (point_contributions < 0)
    keyed = np.where(candidate, point_contributions, np.inf)
    order = np.argsort(keyed, axis=1, kind="stable")[:, :limit]
    picked = np.take_along_axis(keyed, order, axis=1)
    out = np.where(np.isfinite(picked), order, -1)
    if out.shape[1] < limit:
        out = np.pad(out, ((0, 0), (0, limit - out.shape[1])), constant_values=-1)
    return np.asarray(out, dtype=np.int64)


def reason_text(reason: str, value: float, mean: float) -> str:
    """The text of one reason code: what the feature measures and where the applicant is."""
    if math.isnan(value):
        return f"{reason}: {NOT_REPORTED}"
    return f"{reason}: {LOWER if value < mean else HIGHER}"


def reason_codes(
    model: ScoringModel, scored: Scored, row: int, population: Population | None
) -> list[dict[str, Any]]:
    """The reason codes of one scored row: feature, the applicant's value (null when missing),
    its population percentile at as_of (null without a population), points and text."""
    out: list[dict[str, Any]] = []
    for j in scored.reasons[row]:
        if j < 0:
            break
        name = model.features[j]
        value = float(scored.values[row, j])
        percentile = population.percentile(name, value) if population is not None else None
        out.append(
            {
                "feature": name,
                "value": None if math.isnan(value) else value,
                "percentile": percentile,
                "points": float(np.round(scored.point_contributions[row, j], 1)),  # as batch
                "text": reason_text(model.reasons[j], value, float(model.scorecard.mean[j])),
            }
        )
    return out


def log_reasons(reasons: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """What the score log keeps of reason codes: feature, text and points, never the value
    or its percentile (docs/book.md, the score log)."""
    return [{k: r[k] for k in ("feature", "text", "points")} for r in reasons]
