"""A model directory: the model in a format that cannot run code on load, and its card.

``DIR/model.skops`` is the fitted scikit-learn pipeline in skops' secure format
(https://skops.readthedocs.io, "Secure persistence"): loading it builds only types on a trusted
list — scikit-learn's estimators and numpy arrays, plus :data:`TRUSTED_TYPES` — and refuses a
file that names any other type instead of importing it, where a pickle would run whatever code
it names. ``DIR/model.json`` is the model card (written by ``python -m features train``,
:mod:`features.report.train`): versions, training window and population, CV and test AUC, KS
and PSI, per feature its coefficient, direction of risk and reason text, the points scale and
the sha256 of ``model.skops``. A model file whose sha256 differs from its card's is refused
before it is parsed; so is a card or model that cannot be read.

:func:`load_model` also compiles the pipeline into a :class:`~features.book.scoring.Scorecard`
and checks, on probe applicants, that the scorecard gives the pipeline's own log-odds: batch and
online scores then run on plain numpy arithmetic, identical by construction.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import skops.io as sio
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from features.book.files import sha256_of, write_atomically
from features.book.scale import PointsScale
from features.book.scoring import F64, Scorecard, ScoringModel
from features.catalogue import DEFINITIONS
from hearth.errors import Invalid

MODEL_FILE = "model.skops"
CARD_FILE = "model.json"
# Types a reference model's file holds beyond what skops trusts by default (scikit-learn
# estimators, numpy arrays, builtins): the dtype of its arrays, the CV splitter of
# LogisticRegressionCV and the trees of the report's gradient-boosting variant. Anything else
# in a file is refused.
TRUSTED_TYPES = (
    "numpy.dtype",
    "sklearn.model_selection._split.StratifiedKFold",
    "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",
)
# The scorecard must give the pipeline's own log-odds to this precision.
PROBE_TOLERANCE = 1e-8


class ModelRefused(Invalid):
    """A model directory that may not be loaded: missing, tampered, or not a model we made."""

    default_code = "model_refused"


def save_pipeline(pipeline: Pipeline, directory: Path) -> str:
    """Write ``DIR/model.skops``; its sha256 (for the card)."""
    directory.mkdir(parents=True, exist_ok=True)
    write_atomically(directory / MODEL_FILE, sio.dumps(pipeline))
    return sha256_of(directory / MODEL_FILE)


def load_pipeline(directory: Path, expected_sha256: str) -> Any:
    """The pipeline in ``DIR/model.skops``, or :class:`ModelRefused`: a file whose sha256 is
    not ``expected_sha256`` (the card's), or that names a type outside the trusted list."""
    path = directory / MODEL_FILE
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ModelRefused(f"{path}: {exc.strerror or exc}") from None
    if hashlib.sha256(data).hexdigest() != expected_sha256:
        raise ModelRefused(f"{path} does not match the sha256 in its {CARD_FILE}: refused")
    try:
        untrusted = sorted(set(sio.get_untrusted_types(data=data)) - set(TRUSTED_TYPES))
        if untrusted:
            raise ModelRefused(
                f"{path} names types that are not trusted ({', '.join(untrusted[:5])}): refused"
            )
        return sio.loads(data, trusted=list(TRUSTED_TYPES))
    except ModelRefused:
        raise
    except Exception as exc:  # a file we did not write: any failure to read it is a refusal
        raise ModelRefused(f"{path} is not a readable skops model ({type(exc).__name__})") from None


def read_card(directory: Path) -> dict[str, Any]:
    path = directory / CARD_FILE
    try:
        card = json.loads(path.read_text())
    except OSError as exc:
        raise ModelRefused(f"{path}: {exc.strerror or exc} (train one with python -m features "
                           "train)") from None  # fmt: skip
    except ValueError:
        raise ModelRefused(f"{path} is not JSON") from None
    if not isinstance(card, dict) or not isinstance(card.get("model_sha256"), str):
        raise ModelRefused(f"{path} is not a model card (no model_sha256)")
    return card


def compile_scorecard(pipeline: Any, n_features: int) -> Scorecard:
    """The linear scorecard of an impute (median + indicators) → standardise → logistic
    pipeline with ``n_features`` inputs (the reference model's shape)."""
    steps = getattr(pipeline, "named_steps", {})
    impute, scale, model = steps.get("impute"), steps.get("scale"), steps.get("model")
    if not (
        isinstance(pipeline, Pipeline)
        and isinstance(impute, SimpleImputer)
        and isinstance(scale, StandardScaler)
        and isinstance(model, LogisticRegression)
        and len(pipeline.steps) == 3
    ):
        raise ModelRefused(
            "only the logistic reference model (impute → scale → logistic) has points and "
            "reason codes"
        )
    statistics = np.asarray(impute.statistics_, dtype=np.float64)
    indicated = (
        np.asarray(impute.indicator_.features_, dtype=np.int64)
        if impute.indicator_ is not None
        else np.empty(0, dtype=np.int64)
    )
    mean = np.asarray(scale.mean_, dtype=np.float64)
    std = np.asarray(scale.scale_, dtype=np.float64)
    coef = np.asarray(model.coef_, dtype=np.float64).ravel()
    if statistics.size != n_features or coef.size != n_features + indicated.size:
        raise ModelRefused(f"the model's inputs do not match its {n_features} features")
    k = n_features
    slope = coef[:k] / std[:k]
    shift = -coef[:k] * mean[:k] / std[:k]
    missing = coef[:k] * (statistics - mean[:k]) / std[:k]
    for column, j in enumerate(indicated, start=k):
        shift[j] += coef[column] * (0.0 - mean[column]) / std[column]
        missing[j] += coef[column] * (1.0 - mean[column]) / std[column]
    card = Scorecard(
        intercept=float(np.asarray(model.intercept_).ravel()[0]),
        slope=slope,
        shift=shift,
        missing=missing,
        mean=mean[:k].copy(),
    )
    _check_against_pipeline(card, pipeline, statistics, std[:k])
    return card


def _check_against_pipeline(card: Scorecard, pipeline: Any, centre: F64, spread: F64) -> None:
    """Refuse a scorecard that does not give the pipeline's own log-odds on probe rows: a
    typical applicant, one missing everything, and values spread around each feature."""
    k = centre.size
    rng = np.random.default_rng(0)
    probe = centre + spread * rng.normal(scale=2.0, size=(16, k))
    probe[rng.random((16, k)) < 0.3] = np.nan
    probe = np.vstack([centre, np.full(k, np.nan), probe])
    expected = np.asarray(pipeline.decision_function(probe), dtype=np.float64)
    worst = float(np.max(np.abs(card.log_odds(probe) - expected)))
    if not worst <= PROBE_TOLERANCE * max(1.0, float(np.max(np.abs(expected)))):
        raise ModelRefused(f"the compiled scorecard differs from the model by {worst:.3g}")


def _catalogue_meta(name: str) -> tuple[str, str]:
    """(category, reason text) of a feature from the current catalogue; a feature it does
    not know keeps its name as its text and no category (never eligible as a reason)."""
    for d in DEFINITIONS:
        if d.name == name:
            return d.category, d.reason or d.description
    return "", name


def load_model(directory: Path) -> ScoringModel:
    """Load a model directory for scoring (card, verified model file, compiled scorecard).

    The card's per-feature category and reason text are used when present (a model scores
    with the texts it was trained with); otherwise the current catalogue's."""
    card = read_card(directory)
    if card.get("kind", "logistic") != "logistic":
        raise ModelRefused(f"{directory}: a {card.get('kind')} model has no points or reasons")
    names = [str(n) for n in card.get("feature_names") or []]
    if not names:
        raise ModelRefused(f"{directory / CARD_FILE} lists no features")
    pipeline = load_pipeline(directory, str(card["model_sha256"]))
    scorecard = compile_scorecard(pipeline, len(names))
    listed = {str(f["name"]): f for f in card.get("features") or [] if isinstance(f, dict)}
    categories, reasons = [], []
    for name in names:
        category, reason = _catalogue_meta(name)
        entry = listed.get(name, {})
        categories.append(str(entry.get("category") or category))
        reasons.append(str(entry.get("reason") or reason))
    return ScoringModel(
        model_version=str(card["model_version"]),
        feature_set_version=str(card["feature_set_version"]),
        features=tuple(names),
        categories=tuple(categories),
        reasons=tuple(reasons),
        scale=PointsScale.from_json(card.get("points_scale")),
        scorecard=scorecard,
    )
