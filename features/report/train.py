"""``python -m features train``: fit the reference model and write a versioned model directory.

The model is the report's (:func:`features.report.build.fit_variant`: the logistic reference
model, its window set and ridge penalty chosen by cross-validation on the training part of an
out-of-time split), so a trained model and a validation report of the same data agree. The
directory (:mod:`features.book.model`) holds the model in skops' secure format and its card,
``model.json``:

* ``model_version``, ``feature_set_version``;
* ``training``: the labelled set, the feature source, the training window (first and last
  application trained on, the split cutoff, the test window) and population (users, scored,
  train/test sizes and default rates), the window set;
* ``metrics``: cross-validated AUC on the training part, test AUC and Gini, KS and the score's
  PSI (training vs test population);
* ``points_scale`` and ``baseline_points`` (:mod:`features.book.scale`);
* ``features``: per feature its category, coefficient (per standard deviation), the
  coefficient of its missing-value indicator, its direction of risk, PSI, and the reason text
  from the feature catalogue that its reason codes quote.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from features.book.model import load_model
from features.book.scale import PointsScale
from features.book.scoring import ScoringModel
from features.catalogue import DEFINITIONS
from features.report import stats as v
from features.report.build import FittedVariant, fit_variant, population_summary, too_small
from features.report.data import FeatureTable, GroundTruth
from features.report.model import INDICATOR_PREFIX, time_split
from hearth.errors import Conflict, Invalid

CARD_FORMAT = "hearth-model/1"


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None


def _direction(coefficient: float) -> str:
    if coefficient > 0:
        return "higher values raise the risk of default"
    if coefficient < 0:
        return "lower values raise the risk of default"
    return "no effect"


def _feature_cards(
    fitted: FittedVariant,
    table: FeatureTable,
    rows: np.ndarray,
    train: np.ndarray,
    test: np.ndarray,
) -> list[dict[str, Any]]:
    meta = fitted.model.metadata()
    coefficients: dict[str, float] = meta.get("coefficients", {})
    catalogue = {d.name: d for d in DEFINITIONS}
    out = []
    for name in fitted.feature_names:
        d = catalogue.get(name)
        coef = float(coefficients.get(name, 0.0))
        indicator = coefficients.get(INDICATOR_PREFIX + name)
        column = table.values[rows, table.names.index(name)]
        psi = v.psi(column[train], column[test]).psi if not np.isnan(column[train]).all() else None
        out.append(
            {
                "name": name,
                "category": d.category if d else table.categories.get(name, ""),
                "reason": (d.reason or d.description) if d else name,
                "coefficient": coef,
                "missing_coefficient": None if indicator is None else float(indicator),
                "direction": _direction(coef),
                "psi": None if psi is None else _finite(psi),
            }
        )
    return out


def train_model(
    truth: GroundTruth,
    table: FeatureTable,
    *,
    test_share: float = 0.3,
    scale: PointsScale | None = None,
    sources: dict[str, Any] | None = None,
) -> tuple[FittedVariant, dict[str, Any]]:
    """Fit the logistic reference model; (the fitted variant, its card). A labelled set too
    small to train and validate out of time is :class:`~hearth.errors.Invalid`."""
    scale = scale or PointsScale()
    rows = np.flatnonzero(table.scored)
    reason = too_small(truth, rows, test_share)
    if reason is not None:
        raise Invalid(f"cannot train: {reason}")
    times = [truth.application_times[i] for i in rows]
    y = truth.defaulted[rows]
    train, test, cutoff = time_split(times, test_share)
    fitted = fit_variant(table, rows, y, train, test, "logistic")
    ks = v.ks_curve(y[test], fitted.p_test)
    score_psi = v.psi(fitted.p_train, fitted.p_test)
    trained = [t for t, m in zip(times, train, strict=True) if m]
    tested = [t for t, m in zip(times, test, strict=True) if m]
    intercept = float(fitted.model.metadata()["intercept"])
    card: dict[str, Any] = {
        "format": CARD_FORMAT,
        "training": {
            **(sources or {}),
            "features_source": table.source,
            "window": {
                "first_application": min(trained).isoformat(),
                "last_application": max(trained).isoformat(),
                "split_cutoff": cutoff.isoformat(),
                "test_first_application": min(tested).isoformat(),
                "test_last_application": max(tested).isoformat(),
            },
            "population": population_summary(truth, rows, y, train, test),
            "test_share": test_share,
            "window_set": fitted.window_set,
        },
        "metrics": {
            "cv_auc": fitted.window_set_cv_auc[fitted.window_set],
            "cv_auc_by_window_set": fitted.window_set_cv_auc,
            "train_auc": fitted.auc_train,
            "test_auc": fitted.auc,
            "gini": 2 * fitted.auc - 1,
            "ks": ks.ks,
            "ks_threshold": ks.ks_threshold,
            "psi_score": score_psi.psi,
            "psi_score_status": score_psi.status,
        },
        "points_scale": scale.to_json(),
        "baseline_points": scale.offset - scale.factor * intercept,
        "features": _feature_cards(fitted, table, rows, train, test),
        "card_written_at": datetime.now(UTC).isoformat(),
    }
    return fitted, card


def write_model(
    out: Path, fitted: FittedVariant, card: dict[str, Any], *, force: bool
) -> ScoringModel:
    """Write the model directory and load it back as the scorer will (which checks the
    scorecard against the model); refuses to overwrite another model unless ``force``."""
    existing = out / "model.json"
    if existing.exists() and not force:
        raise Conflict(f"{out} already holds a model: use another directory or --force")
    fitted.model.save(out, card)
    return load_model(out)
