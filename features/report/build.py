"""The model-validation report: train the reference model out of time and tell a risk analyst
whether the features carry signal, stay stable, can be explained, and do not leak.

``build_report`` takes the labelled set and point-in-time feature tables (see
:mod:`features.report.data`), trains :class:`~features.report.model.ReferenceModel` on the earlier
applications and validates it on the later ones, and returns the machine-readable summary that
``report.json`` holds. ``write_report`` adds ``report.html`` (one self-contained file, plots
embedded as PNG) and the saved model.

Oracle. ``oracle_auc`` is the AUC of the simulator's latent stability score (negated: lower
stability means default) on the same test users and labels. The labels are drawn from the latent
score plus noise, so the oracle is the best any model of behaviour could do; a model well above
it has seen something it should not have.

Leakage check. The same pipeline is run on features computed *after* the application date (as of
``application date + shift``). The simulator plants post-application distress in future
defaulters, so that variant must score a much higher AUC: this proves the check can fail. The
honest pipeline passes when it stays at or below the oracle (plus a small tolerance) and no
feature has an IV above the leakage alarm (``summary.IV_SUSPECT``) that the report does not
explain.

Too small to validate. A labelled set with fewer than :data:`MIN_SCORED_USERS` users with
features, or whose training or test part lacks defaulters or non-defaulters, still gets its
features summarised (coverage per feature) in a report whose model section says plainly why
no model was trained (``model_skipped_reason``); nothing is written to ``model/``.
"""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from features.report import stats as v
from features.report.data import FeatureTable, GroundTruth
from features.report.html import render_html
from features.report.model import (
    CV_FOLDS,
    ModelKind,
    ReferenceModel,
    choose_window_set,
    time_split,
)
from features.report.summary import IV_SUSPECT, iv_strength

# A leaky variant must beat the honest one by at least this much AUC for the check to "fire".
LEAKY_MIN_GAIN = 0.05
# The honest model may beat the oracle by sampling noise only.
ORACLE_TOLERANCE = 0.02
REASON_EXAMPLES = 8
# Fewer scored users than this cannot train and validate a model out of time.
MIN_SCORED_USERS = 20
# Defaulters (and non-defaulters) the training population needs: the window set is chosen by
# CV_FOLDS-fold cross-validation whose every fit runs another CV_FOLDS-fold search inside, so each
# class must reach every inner fold.
MIN_TRAINING_CLASS = 2 * CV_FOLDS
# The family whose contribution the report measures by leaving it out (issue 18): the AUC the
# same pipeline reaches without it.
ABLATED_FAMILY = "relationships"


@dataclass(frozen=True)
class FittedVariant:
    """One trained pipeline and what it scored on the test users."""

    model: ReferenceModel
    feature_names: list[str]
    p_train: np.ndarray
    p_test: np.ndarray
    auc: float
    auc_train: float
    window_set: str
    window_set_cv_auc: dict[str, float]


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None


def fit_variant(
    table: FeatureTable,
    rows: np.ndarray,
    y: np.ndarray,
    train: np.ndarray,
    test: np.ndarray,
    kind: ModelKind,
) -> FittedVariant:
    """Train on the rows' training part, on the features somebody had in training, in the
    window set that cross-validation on the training part prefers
    (:func:`features.report.model.choose_window_set`)."""
    x = table.values[rows]
    usable = ~np.isnan(x[train]).all(axis=0)
    if not usable.any():
        raise ValueError(
            f"no feature from {table.source} has any value in the training population "
            "(point-in-time: data ingested after an application date is invisible as of it)"
        )
    had = [n for n, keep in zip(table.names, usable, strict=True) if keep]
    window_set, kept, cv_auc = choose_window_set(had, x[train][:, usable], y[train], kind=kind)
    usable &= np.isin(np.asarray(table.names), kept)
    names = [n for n, keep in zip(table.names, usable, strict=True) if keep]
    model = ReferenceModel(names, kind=kind, feature_set_version=table.feature_set_version)
    model.fit(x[train][:, usable], y[train])
    p_train = model.predict_proba(x[train][:, usable])
    p_test = model.predict_proba(x[test][:, usable])
    return FittedVariant(
        model=model,
        feature_names=names,
        p_train=p_train,
        p_test=p_test,
        auc=v.auc(y[test], p_test),
        auc_train=v.auc(y[train], p_train),
        window_set=window_set,
        window_set_cv_auc=cv_auc,
    )


def _sample(values: np.ndarray, limit: int = 200) -> list[float]:
    """At most ``limit`` evenly spaced points of a curve, for the JSON."""
    if values.size <= limit:
        return [float(x) for x in values]
    idx = np.linspace(0, values.size - 1, limit).round().astype(int)
    return [float(x) for x in values[idx]]


def too_small(truth: GroundTruth, rows: np.ndarray, test_share: float) -> str | None:
    """Why these users cannot train and validate a model (None: they can)."""
    if rows.size < MIN_SCORED_USERS:
        return (
            f"only {rows.size} of {len(truth)} users have features; training and validating "
            f"a model out of time needs at least {MIN_SCORED_USERS}"
        )
    y = truth.defaulted[rows]
    try:
        train, test, _ = time_split([truth.application_times[i] for i in rows], test_share)
    except ValueError as exc:
        return f"no out-of-time split: {exc}"
    for part, mask in (("training", train), ("test", test)):
        defaulters = int(y[mask].sum())
        if defaulters in (0, int(mask.sum())):
            return (
                f"the {part} population ({int(mask.sum())} users, {defaulters} defaulters) needs "
                "both defaulters and non-defaulters; simulate more households"
            )
    defaulters, users = int(y[train].sum()), int(train.sum())
    if min(defaulters, users - defaulters) < MIN_TRAINING_CLASS:
        return (
            f"the training population ({users} users, {defaulters} defaulters) needs at least "
            f"{MIN_TRAINING_CLASS} defaulters and {MIN_TRAINING_CLASS} non-defaulters for "
            f"{CV_FOLDS}-fold cross-validation; simulate more households"
        )
    return None


def _coverage(table: FeatureTable, rows: np.ndarray) -> dict[str, dict[str, float | None]]:
    out: dict[str, dict[str, float | None]] = {}
    for j, name in enumerate(table.names):
        column, cov_column = table.values[rows, j], table.coverage[rows, j]
        out[name] = {
            "non_null_share": float((~np.isnan(column)).mean()) if rows.size else 0.0,
            "mean_coverage": (
                float(np.nanmean(cov_column)) if not np.isnan(cov_column).all() else None
            ),
        }
    return out


def features_only_report(
    truth: GroundTruth, honest: FeatureTable, rows: np.ndarray, reason: str
) -> dict[str, Any]:
    """The report of a labelled set too small to validate: who has features, how complete
    they are, and why there is no model."""
    y = truth.defaulted[rows]
    return {
        "generated_at": datetime.now(UTC).isoformat(),
        "model_skipped_reason": reason,
        "n_users": len(truth),
        "n_scored": int(rows.size),
        "n_unscored": int(len(truth) - rows.size),
        "n_defaulters_scored": int(y.sum()),
        "model_kind": None,
        "model_version": None,
        "feature_set_version": honest.feature_set_version,
        "features_source": honest.source,
        "n_features": len(honest.names),
        "coverage": _coverage(honest, rows),
        "families": honest.families,
        "categories": honest.categories,
    }


def build_report(
    truth: GroundTruth,
    honest: FeatureTable,
    leaky: FeatureTable | None = None,
    *,
    kind: ModelKind = "logistic",
    test_share: float = 0.3,
    leaky_shift_days: float | None = None,
) -> tuple[dict[str, Any], FittedVariant | None, dict[str, Any]]:
    """Train, validate and summarise. Returns (report JSON, honest variant, plot data); a set
    too small to validate gets :func:`features_only_report` and no variant."""
    scored = honest.scored.copy()
    if leaky is not None:
        scored &= leaky.scored  # both variants on exactly the same users
    rows = np.flatnonzero(scored)
    reason = too_small(truth, rows, test_share)
    if reason is not None:
        return features_only_report(truth, honest, rows, reason), None, {}
    y = truth.defaulted[rows]
    train, test, cutoff = time_split([truth.application_times[i] for i in rows], test_share)
    fitted = fit_variant(honest, rows, y, train, test, kind)
    y_test = y[test]
    latent = truth.latent_score[rows][test]
    oracle_auc = None if np.isnan(latent).any() else v.auc(y_test, -latent)
    ks = v.ks_curve(y_test, fitted.p_test)
    stats = _feature_stats(honest, rows, y, train, test)
    leakage = _leakage_check(fitted, oracle_auc, stats.suspect, leaky_shift_days)
    if leaky is not None:
        _add_leaky_variant(leakage, fitted, fit_variant(leaky, rows, y, train, test, kind))
    leakage["honest_passed"] = not stats.suspect and not leakage["honest_above_oracle"]

    report: dict[str, Any] = {
        "generated_at": datetime.now(UTC).isoformat(),
        **_ranking_power(fitted, oracle_auc, ks),
        **stats.strongest(),
        **population_summary(truth, rows, y, train, test),
        "split_cutoff": cutoff.isoformat(),
        "test_share": test_share,
        **_model_identity(fitted, honest, kind),
        **stats.to_json(),
        **_score_stability(fitted),
        "coverage": stats.coverage,
        "families": honest.families,
        "categories": honest.categories,
        "calibration": [asdict(r) for r in v.calibration_table(y_test, fitted.p_test)],
        "leakage": leakage,
        "family_iv": stats.by_family(honest.families),
        "family_auc": _family_auc(honest, rows, y, train, test, kind, fitted),
        "auc_honest": fitted.auc,
        "auc_leaky": leakage["auc_leaky"],
        "reason_code_examples": _reason_examples(truth, honest, fitted, rows[test], y_test),
    }
    roc = v.roc_curve(y_test, fitted.p_test)
    plots: dict[str, Any] = {
        "roc": roc,
        "oracle_roc": v.roc_curve(y_test, -latent) if oracle_auc is not None else None,
        "ks": ks,
        "y_test": y_test,
        "p_test": fitted.p_test,
    }
    report["roc_curve"] = {
        "fpr": _sample(roc.false_positive_rate),
        "tpr": _sample(roc.true_positive_rate),
    }
    return report, fitted, plots


def _ranking_power(
    fitted: FittedVariant, oracle_auc: float | None, ks: v.KsCurve
) -> dict[str, Any]:
    """How well the honest model ranks the test users, beside the oracle."""
    return {
        "auc": fitted.auc,
        "auc_train": fitted.auc_train,
        "oracle_auc": oracle_auc,
        "auc_vs_oracle": None if not oracle_auc else fitted.auc / oracle_auc,
        "ks": ks.ks,
        "ks_threshold": ks.ks_threshold,
        "gini": 2 * fitted.auc - 1,
    }


def _model_identity(fitted: FittedVariant, table: FeatureTable, kind: ModelKind) -> dict[str, Any]:
    """Which model this is, on which features and feature set."""
    return {
        "model_kind": kind,
        "model_version": fitted.model.model_version,
        "feature_set_version": table.feature_set_version,
        "features_source": table.source,
        "n_features": len(table.names),
        "model_features": fitted.feature_names,
        "window_set": fitted.window_set,
        "window_set_cv_auc": fitted.window_set_cv_auc,
    }


def population_summary(
    truth: GroundTruth, rows: np.ndarray, y: np.ndarray, train: np.ndarray, test: np.ndarray
) -> dict[str, Any]:
    """Who was scored, and how the out-of-time split divided them."""
    return {
        "n_users": len(truth),
        "n_scored": int(rows.size),
        "n_unscored": int(len(truth) - rows.size),
        "n_train": int(train.sum()),
        "n_test": int(test.sum()),
        "default_rate_train": float(y[train].mean()),
        "default_rate_test": float(y[test].mean()),
    }


@dataclass(frozen=True)
class FeatureStats:
    """Per-feature statistics on the honest features of every scored user."""

    iv: dict[str, float]
    iv_bins: dict[str, list[dict[str, Any]]]
    psi: dict[str, float]  # training vs test population; features with training values only
    coverage: dict[str, dict[str, float | None]]

    def strongest(self) -> dict[str, Any]:
        """The highest IV and its feature (None without features)."""
        name = max(self.iv, key=lambda n: self.iv[n]) if self.iv else None
        return {"max_iv": self.iv[name] if name else None, "max_iv_feature": name}

    def by_family(self, families: dict[str, str]) -> dict[str, dict[str, Any]]:
        """Per family: its strongest feature's IV, that feature, and how many features."""
        out: dict[str, dict[str, Any]] = {}
        for name, value in sorted(self.iv.items()):
            family = families.get(name, "other")
            entry = out.setdefault(family, {"max_iv": value, "feature": name, "features": 0})
            entry["features"] += 1
            if value > entry["max_iv"]:
                entry["max_iv"], entry["feature"] = value, name
        return out

    @property
    def suspect(self) -> list[str]:
        """Features whose IV is above the leakage alarm."""
        return sorted(n for n, val in self.iv.items() if val > IV_SUSPECT)

    def to_json(self) -> dict[str, Any]:
        return {
            "iv": self.iv,
            "iv_strength": {n: iv_strength(val) for n, val in self.iv.items()},
            "iv_bins": self.iv_bins,
            "psi": self.psi,
        }


def _feature_stats(
    table: FeatureTable, rows: np.ndarray, y: np.ndarray, train: np.ndarray, test: np.ndarray
) -> FeatureStats:
    x_all = table.values[rows]
    iv: dict[str, float] = {}
    iv_bins: dict[str, list[dict[str, Any]]] = {}
    psi: dict[str, float] = {}
    for j, name in enumerate(table.names):
        column = x_all[:, j]
        binning = v.woe_binning(column, y, feature=name)
        iv[name] = binning.iv
        iv_bins[name] = [
            {k: _finite(val) if isinstance(val, float) else val for k, val in asdict(b).items()}
            for b in binning.bins
        ]
        if not np.isnan(column[train]).all():
            psi[name] = v.psi(column[train], column[test]).psi
    return FeatureStats(iv, iv_bins, psi, _coverage(table, rows))


def _family_auc(
    table: FeatureTable,
    rows: np.ndarray,
    y: np.ndarray,
    train: np.ndarray,
    test: np.ndarray,
    kind: ModelKind,
    fitted: FittedVariant,
) -> dict[str, Any] | None:
    """Whether :data:`ABLATED_FAMILY` adds AUC: the honest model's features (its window set,
    as chosen) without the family's, trained and tested the same way (None when the model has
    none of them, or nothing else)."""
    in_model = [n for n in fitted.feature_names if table.families.get(n) == ABLATED_FAMILY]
    rest = [n for n in fitted.feature_names if table.families.get(n) != ABLATED_FAMILY]
    if not in_model or not rest:
        return None
    columns = [table.names.index(n) for n in rest]
    x = table.values[rows][:, columns]
    model = ReferenceModel(rest, kind=kind, feature_set_version=table.feature_set_version)
    model.fit(x[train], y[train])
    auc_without = v.auc(y[test], model.predict_proba(x[test]))
    return {
        "family": ABLATED_FAMILY,
        "auc_with": fitted.auc,
        "auc_without": auc_without,
        "auc_gain": fitted.auc - auc_without,
        "features_in_model": in_model,
    }


def _score_stability(fitted: FittedVariant) -> dict[str, Any]:
    """PSI of the model's score, training vs test population."""
    score_psi = v.psi(fitted.p_train, fitted.p_test)
    return {
        "psi_score": score_psi.psi,
        "psi_score_status": score_psi.status,
        "psi_score_bins": [asdict(b) for b in score_psi.bins],
    }


def _leakage_check(
    fitted: FittedVariant,
    oracle_auc: float | None,
    suspect: list[str],
    leaky_shift_days: float | None,
) -> dict[str, Any]:
    """The leakage section before the leaky variant ran (see the module docstring)."""
    return {
        "shift_days": leaky_shift_days,
        "auc_honest": fitted.auc,
        "auc_leaky": None,
        "auc_gain": None,
        "min_gain": LEAKY_MIN_GAIN,
        "leaky_variant_detected": None,
        "honest_above_oracle": (
            None if oracle_auc is None else fitted.auc > oracle_auc + ORACLE_TOLERANCE
        ),
        "oracle_tolerance": ORACLE_TOLERANCE,
        "suspect_iv_features": suspect,
    }


def _add_leaky_variant(
    leakage: dict[str, Any], honest: FittedVariant, leaky: FittedVariant
) -> None:
    """The same pipeline on features computed after the application date: it must score
    well above the honest one, or the check has no power."""
    leakage["auc_leaky"] = leaky.auc
    leakage["leaky_window_set"] = leaky.window_set
    leakage["auc_gain"] = leaky.auc - honest.auc
    leakage["leaky_variant_detected"] = leaky.auc - honest.auc >= LEAKY_MIN_GAIN


def _reason_examples(
    truth: GroundTruth,
    table: FeatureTable,
    fitted: FittedVariant,
    test_rows: np.ndarray,
    y_test: np.ndarray,
) -> list[dict[str, Any]]:
    """The riskiest test applicants' scores with their reason codes and versions."""
    columns = [table.names.index(n) for n in fitted.feature_names]
    scores = fitted.model.score(table.values[test_rows][:, columns])
    riskiest = np.argsort(-fitted.p_test, kind="mergesort")[:REASON_EXAMPLES]
    return [
        {
            "user_id": truth.user_ids[test_rows[i]],
            "probability": scores[i].probability,
            "defaulted": int(y_test[i]),
            "reason_codes": [
                {"feature": r.feature, "contribution": r.contribution, "value": r.value}
                for r in scores[i].reason_codes
            ],
            "feature_set_version": scores[i].feature_set_version,
            "model_version": scores[i].model_version,
        }
        for i in riskiest
    ]


def write_report(
    out_dir: Path,
    report: dict[str, Any],
    fitted: FittedVariant | None,
    plots: dict[str, Any],
) -> tuple[Path, Path]:
    """Write ``report.json``, ``report.html`` and ``model/`` (when a model was trained; an
    earlier run's model is removed otherwise, so it is never taken for this one's)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    if fitted is not None:
        fitted.model.save(out_dir / "model")
    else:
        shutil.rmtree(out_dir / "model", ignore_errors=True)
    json_path = out_dir / "report.json"
    json_path.write_text(json.dumps(_json_safe(report), indent=2, sort_keys=True) + "\n")
    html_path = out_dir / "report.html"
    html_path.write_text(render_html(report, plots), encoding="utf-8")
    return json_path, html_path


def _json_safe(value: Any) -> Any:
    """NaN/inf → null (JSON has neither), numpy scalars → Python numbers."""
    if isinstance(value, dict):
        return {str(k): _json_safe(val) for k, val in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(val) for val in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
