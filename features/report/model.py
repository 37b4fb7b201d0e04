"""Reference credit model on stability features, with reason codes and versions on every score.

The reference model is deliberately plain, so a risk team can read it: missing values are
imputed with the training median **and** flagged by an indicator column (missing data is a signal
in Hearth, never silently zero), features are standardised, and a ridge logistic regression, its
penalty chosen by cross-validation on the training set, gives the probability of default; which
windows of the indicators it uses (30 days, 90 days or both) is chosen by cross-validation on the
training set too (:func:`choose_window_set`). A gradient-boosting variant (``kind="hgb"``) is
there to show how much a non-linear model adds; it handles missing values natively.

Reason codes (PIPL automated-decision duties, GDPR Art. 22): for the logistic model the
contribution of feature ``j`` to an applicant's log-odds of default is ``coef_j · z_j``, with
``z_j`` the standardised value (0 = the average training applicant); a missing value contributes
through its indicator column, folded into the same feature. The reason codes of a score are the
features with the largest *positive* contributions, i.e. those that pushed the applicant towards
default most. For the boosting variant the contribution of ``j`` is the change in log-odds when
``j`` alone is replaced by its training median.

Versions: every score carries the feature-set version it was computed on and the model version,
``sha256(parameters + training-data fingerprint)``, so the same data and settings always give the
same version and any retrain on other data gives another.

Persistence: :meth:`ReferenceModel.save` writes a model directory (:mod:`features.book.model`):
the pipeline in skops' secure format, which cannot run code on load, and ``model.json`` with
the metadata and the file's sha256; :meth:`ReferenceModel.load` refuses a tampered file.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np
import sklearn
from numpy.typing import ArrayLike, NDArray
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegressionCV
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedKFold
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from features.book.files import write_atomically
from features.book.model import CARD_FILE, MODEL_FILE, load_pipeline, read_card, save_pipeline

# Folds of every cross-validation here: the window-set choice and the ridge penalty's search
# (nested in it). Each class needs members in every fold of both (features.report.build).
CV_FOLDS = 5

ModelKind = Literal["logistic", "hgb"]
METADATA_FILE = CARD_FILE
LEGACY_PICKLE = "model.pkl"  # what save wrote before skops; removed when a model is saved
INDICATOR_PREFIX = "missingindicator_"

FloatArray = NDArray[np.float64]
BoolArray = NDArray[np.bool_]


@dataclass(frozen=True)
class ReasonCode:
    """One feature that pushed a score towards default."""

    feature: str
    contribution: float  # added log-odds of default relative to the average training applicant
    value: float | None  # the applicant's raw value; None when it was missing

    def describe(self) -> str:
        shown = "missing" if self.value is None else f"{self.value:.4g}"
        return f"{self.feature}={shown} (+{self.contribution:.3f} log-odds)"


@dataclass(frozen=True)
class Score:
    """A probability of default with what explains it and what produced it."""

    probability: float
    reason_codes: tuple[ReasonCode, ...]
    feature_set_version: str
    model_version: str


def time_split(
    application_times: Sequence[datetime], test_share: float = 0.3
) -> tuple[BoolArray, BoolArray, datetime]:
    """Out-of-time split: the earliest ``1 - test_share`` applications train, later ones test.

    Returns (train mask, test mask, cutoff); train is ``t < cutoff`` and test ``t >= cutoff``,
    which is how a lender validates: the model is judged on applicants it could not have seen.
    """
    if not 0 < test_share < 1:
        raise ValueError("test_share must be between 0 and 1")
    if len(application_times) < 2:
        raise ValueError("need at least two applications to split")
    stamps = np.array([t.timestamp() for t in application_times], dtype=np.float64)
    ordered = np.sort(stamps)
    cut_index = min(max(1, round(len(ordered) * (1 - test_share))), len(ordered) - 1)
    cutoff = ordered[cut_index]
    train = stamps < cutoff
    test = ~train
    if not train.any() or not test.any():
        raise ValueError("all applications share one date: no out-of-time split possible")
    return train, test, datetime.fromtimestamp(float(cutoff), tz=UTC)


_WINDOW_SUFFIX = re.compile(r"^(?P<base>.+)_(?P<days>\d+)d$")


def window_sets(feature_names: Sequence[str]) -> dict[str, list[str]]:
    """Candidate feature sets by window: ``longest`` / ``shortest`` keep one window of every
    indicator computed over several (``x_30d``, ``x_90d``), ``all`` keeps every window.
    Features without a window suffix are in every set; order is preserved."""
    windows: dict[str, list[int]] = {}
    for name in feature_names:
        if match := _WINDOW_SUFFIX.match(name):
            windows.setdefault(match["base"], []).append(int(match["days"]))

    def keep(pick: Callable[[list[int]], int]) -> list[str]:
        return [
            name
            for name in feature_names
            if (match := _WINDOW_SUFFIX.match(name)) is None
            or pick(windows[match["base"]]) == int(match["days"])
        ]

    return {"longest": keep(max), "all": list(feature_names), "shortest": keep(min)}


def choose_window_set(
    feature_names: Sequence[str],
    x: ArrayLike,
    y: ArrayLike,
    *,
    kind: ModelKind = "logistic",
    folds: int = CV_FOLDS,
    random_state: int = 0,
) -> tuple[str, list[str], dict[str, float]]:
    """Pick a window set (:func:`window_sets`) by ``folds``-fold CV AUC on the training data
    alone, with the one-standard-error rule (Hastie, Tibshirani & Friedman, *The Elements of
    Statistical Learning*, 2nd ed., §7.10): the set with the fewest features whose mean AUC is
    within one standard error of the best; equal sizes go to the higher mean.

    The short window is a sub-window of the long one, so keeping both doubles collinear
    features that ~10 % defaulters cannot support, and CV differences between the sets are
    often within noise; which window carries the signal is a property of the data, so the
    training data decide. Returns (name, features, mean CV AUC per set)."""
    matrix = np.asarray(x, dtype=np.float64)
    labels = np.asarray(y, dtype=np.int64).ravel()
    column = {name: i for i, name in enumerate(feature_names)}
    splitter = StratifiedKFold(folds, shuffle=True, random_state=random_state)
    sets = window_sets(feature_names)
    means: dict[str, float] = {}
    errors: dict[str, float] = {}
    for set_name, names in sets.items():
        part = matrix[:, [column[n] for n in names]]
        aucs = []
        for fit_rows, held_rows in splitter.split(part, labels):
            model = ReferenceModel(names, kind=kind, random_state=random_state)
            model.fit(part[fit_rows], labels[fit_rows])
            aucs.append(roc_auc_score(labels[held_rows], model.predict_proba(part[held_rows])))
        means[set_name] = float(np.mean(aucs))
        errors[set_name] = float(np.std(aucs, ddof=1) / math.sqrt(len(aucs)))
    top = max(means, key=lambda k: means[k])
    near = [k for k in sets if means[k] >= means[top] - errors[top]]
    best = min(near, key=lambda k: (len(sets[k]), -means[k]))
    return best, sets[best], means


def data_fingerprint(feature_names: Sequence[str], x: ArrayLike, y: ArrayLike) -> str:
    """sha256 over feature names, values (NaN canonicalised) and labels."""
    matrix = np.ascontiguousarray(np.asarray(x, dtype=np.float64))
    matrix = np.where(np.isnan(matrix), np.nan, matrix)  # one NaN bit pattern
    digest = hashlib.sha256()
    digest.update(json.dumps(list(feature_names)).encode())
    digest.update(str(matrix.shape).encode())
    digest.update(matrix.tobytes())
    digest.update(np.ascontiguousarray(np.asarray(y, dtype=np.int8)).tobytes())
    return digest.hexdigest()


def _build_pipeline(kind: ModelKind, class_weight: str | None, random_state: int) -> Pipeline:
    if kind == "logistic":
        return Pipeline(
            [
                # keep_empty_features: a feature nobody had in training stays a (constant)
                # column, so column positions always match the feature names.
                (
                    "impute",
                    SimpleImputer(strategy="median", add_indicator=True, keep_empty_features=True),
                ),
                ("scale", StandardScaler()),
                (
                    "model",
                    # Ridge strength by 5-fold CV on the training set: ~10 % defaults among
                    # ~1,400 applicants and dozens of correlated features overfit badly
                    # unpenalised (2,000-household fleet: train AUC 0.82, test 0.65 at C=1).
                    LogisticRegressionCV(
                        Cs=np.logspace(-4, 0, 17),
                        cv=StratifiedKFold(CV_FOLDS, shuffle=True, random_state=random_state),
                        scoring="roc_auc",
                        class_weight=class_weight,
                        max_iter=5000,
                        l1_ratios=(0.0,),  # ridge
                        use_legacy_attributes=False,
                    ),
                ),
            ]
        )
    return Pipeline(
        [
            (
                "model",
                HistGradientBoostingClassifier(
                    max_iter=200,
                    learning_rate=0.05,
                    max_leaf_nodes=15,
                    l2_regularization=1.0,
                    class_weight=class_weight,
                    random_state=random_state,
                ),
            )
        ]
    )


class ReferenceModel:
    """The reference PD model: fit, score with reason codes, save and load with metadata."""

    def __init__(
        self,
        feature_names: Sequence[str],
        *,
        kind: ModelKind = "logistic",
        feature_set_version: str = "unknown",
        class_weight: str | None = None,
        random_state: int = 0,
    ) -> None:
        if not feature_names:
            raise ValueError("a model needs at least one feature")
        self.feature_names = list(feature_names)
        self.kind: ModelKind = kind
        self.feature_set_version = feature_set_version
        self.class_weight = class_weight
        self.random_state = random_state
        self.pipeline = _build_pipeline(kind, class_weight, random_state)
        self.model_version = ""
        self.training_fingerprint = ""
        self.trained_at = ""
        self.n_train = 0
        self._medians: FloatArray = np.zeros(len(self.feature_names))
        self._empty_columns: BoolArray = np.zeros(len(self.feature_names), dtype=np.bool_)

    # ----------------------------------------------------------------- training

    def params(self) -> dict[str, Any]:
        """What, besides the data, determines the fitted model."""
        return {
            "kind": self.kind,
            "class_weight": self.class_weight,
            "random_state": self.random_state,
            "feature_names": self.feature_names,
            "feature_set_version": self.feature_set_version,
            "pipeline": {name: step.get_params(deep=False) for name, step in self.pipeline.steps},
            "sklearn": sklearn.__version__,
        }

    def fit(self, x: ArrayLike, y: ArrayLike) -> ReferenceModel:
        matrix = self._matrix(x)
        labels = np.asarray(y, dtype=np.int64).ravel()
        if matrix.shape[0] != labels.size:
            raise ValueError("x and y differ in length")
        if np.unique(labels).size != 2:
            raise ValueError("training labels need both goods and bads")
        # A column nobody had in training carries nothing; the boosting binner cannot take an
        # all-NaN column, so such columns are fed as constant 0 (at training and scoring).
        self._empty_columns = np.asarray(np.isnan(matrix).all(axis=0), dtype=np.bool_)
        self.pipeline.fit(self._model_input(matrix), labels)
        with warnings.catch_warnings():  # an all-missing column has no median: use 0
            warnings.simplefilter("ignore", RuntimeWarning)
            medians = np.nanmedian(matrix, axis=0)
        self._medians = np.nan_to_num(np.asarray(medians, dtype=np.float64), nan=0.0)
        self.training_fingerprint = data_fingerprint(self.feature_names, matrix, labels)
        payload = json.dumps(self.params(), sort_keys=True, default=str)
        self.model_version = hashlib.sha256(
            (payload + self.training_fingerprint).encode()
        ).hexdigest()[:16]
        self.trained_at = datetime.now(UTC).isoformat()
        self.n_train = int(labels.size)
        return self

    def _matrix(self, x: ArrayLike) -> FloatArray:
        matrix = np.asarray(x, dtype=np.float64)
        if matrix.ndim != 2 or matrix.shape[1] != len(self.feature_names):
            raise ValueError(
                f"expected a matrix with {len(self.feature_names)} columns, got {matrix.shape}"
            )
        return matrix

    def _model_input(self, matrix: FloatArray) -> FloatArray:
        if self.kind == "logistic" or not self._empty_columns.any():
            return matrix
        out = matrix.copy()
        out[:, self._empty_columns] = 0.0
        return out

    def _require_fitted(self) -> None:
        if not self.model_version:
            raise RuntimeError("model is not fitted")

    # ----------------------------------------------------------------- scoring

    def predict_proba(self, x: ArrayLike) -> FloatArray:
        """Probability of default per row."""
        self._require_fitted()
        proba = self.pipeline.predict_proba(self._model_input(self._matrix(x)))[:, 1]
        return np.asarray(proba, dtype=np.float64)

    def _log_odds(self, matrix: FloatArray) -> FloatArray:
        p = np.clip(self.pipeline.predict_proba(self._model_input(matrix))[:, 1], 1e-12, 1 - 1e-12)
        return np.asarray(np.log(p / (1 - p)), dtype=np.float64)

    def contributions(self, x: ArrayLike) -> FloatArray:
        """Per row and input feature: added log-odds of default (see the module docstring)."""
        self._require_fitted()
        matrix = self._matrix(x)
        if self.kind == "logistic":
            transformed = np.asarray(self.pipeline[:-1].transform(matrix), dtype=np.float64)
            coef = np.asarray(self.pipeline[-1].coef_[0], dtype=np.float64)
            raw = transformed * coef
            out_names = list(self.pipeline[:-1].get_feature_names_out(self.feature_names))
            position = {name: i for i, name in enumerate(self.feature_names)}
            folded = np.zeros_like(matrix)
            for column, name in enumerate(out_names):
                base = name.removeprefix(INDICATOR_PREFIX)
                folded[:, position[base]] += raw[:, column]
            return folded
        base_log_odds = self._log_odds(matrix)
        folded = np.zeros_like(matrix)
        for j in range(matrix.shape[1]):
            typical = matrix.copy()
            typical[:, j] = self._medians[j]
            folded[:, j] = base_log_odds - self._log_odds(typical)
        return folded

    def score(self, x: ArrayLike, top_n: int = 3) -> list[Score]:
        """Probability, top reason codes and versions for every row."""
        matrix = self._matrix(x)
        probabilities = self.predict_proba(matrix)
        contrib = self.contributions(matrix)
        scores: list[Score] = []
        for row in range(matrix.shape[0]):
            order = np.argsort(-contrib[row], kind="mergesort")
            reasons = tuple(
                ReasonCode(
                    feature=self.feature_names[j],
                    contribution=float(contrib[row, j]),
                    value=None if math.isnan(matrix[row, j]) else float(matrix[row, j]),
                )
                for j in order[:top_n]
                if contrib[row, j] > 0
            )
            scores.append(
                Score(
                    probability=float(probabilities[row]),
                    reason_codes=reasons,
                    feature_set_version=self.feature_set_version,
                    model_version=self.model_version,
                )
            )
        return scores

    # ----------------------------------------------------------------- persistence

    def metadata(self) -> dict[str, Any]:
        self._require_fitted()
        meta: dict[str, Any] = {
            "model_version": self.model_version,
            "feature_set_version": self.feature_set_version,
            "kind": self.kind,
            "feature_names": self.feature_names,
            "class_weight": self.class_weight,
            "random_state": self.random_state,
            "training_fingerprint": self.training_fingerprint,
            "trained_at": self.trained_at,
            "n_train": self.n_train,
            "medians": [float(v) for v in self._medians],
            "empty_columns": [bool(v) for v in self._empty_columns],
            "sklearn_version": sklearn.__version__,
        }
        if self.kind == "logistic":
            names = list(self.pipeline[:-1].get_feature_names_out(self.feature_names))
            coef = self.pipeline[-1].coef_[0]
            meta["coefficients"] = {n: float(c) for n, c in zip(names, coef, strict=True)}
            meta["intercept"] = float(self.pipeline[-1].intercept_[0])
        return meta

    def save(self, directory: Path, card: dict[str, Any] | None = None) -> Path:
        """Write ``model.skops`` and ``model.json`` (the metadata, ``card`` on top, and the
        model file's sha256)."""
        sha256 = save_pipeline(self.pipeline, directory)
        (directory / LEGACY_PICKLE).unlink(missing_ok=True)
        meta = {**self.metadata(), **(card or {})}
        meta["model_file"] = MODEL_FILE
        meta["model_sha256"] = sha256
        text = json.dumps(meta, indent=2, sort_keys=True, allow_nan=False) + "\n"
        write_atomically(directory / METADATA_FILE, text.encode())
        return directory / METADATA_FILE

    @classmethod
    def load(cls, directory: Path) -> ReferenceModel:
        """Load a saved model (:func:`features.book.model.load_pipeline`: a file whose sha256
        differs from its metadata's, or that names an untrusted type, is refused)."""
        meta = read_card(directory)
        pipeline = load_pipeline(directory, str(meta["model_sha256"]))
        model = cls(
            meta["feature_names"],
            kind=meta["kind"],
            feature_set_version=meta["feature_set_version"],
            class_weight=meta["class_weight"],
            random_state=meta["random_state"],
        )
        model.pipeline = pipeline
        model.model_version = meta["model_version"]
        model.training_fingerprint = meta["training_fingerprint"]
        model.trained_at = meta["trained_at"]
        model.n_train = meta["n_train"]
        model._medians = np.asarray(meta["medians"], dtype=np.float64)
        model._empty_columns = np.asarray(meta["empty_columns"], dtype=np.bool_)
        return model
