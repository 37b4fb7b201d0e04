"""scikit-learn transformer that pulls point-in-time features from the feature service.

    pipe = Pipeline([("hearth", HearthFeatures(url, token)), ("impute", SimpleImputer()),
                     ("model", LogisticRegression())])
    pipe.fit(frame[["user_id", "as_of"]], labels)

``transform`` sends the frame's (user_id, as_of) rows to ``POST /v1/features/historical`` (as
Arrow, in ``mode`` "exact" or "snapshot" with ``max_age``) and returns a float matrix, one row
per input row in order, NaN where a value is null or the row came back with a reason (unknown
user, no consent, no snapshot). ``fit`` only fixes the output columns (the service's feature
catalogue unless ``features`` is given), so a fitted pipeline always produces the same columns.
Naive ``as_of`` values are taken as UTC.

The token is a constructor parameter (sklearn needs all parameters in ``__init__``), so a
pickled pipeline contains it: prefer a read-only ``features:read`` token.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from typing import Any, Self

import numpy as np
import numpy.typing as npt
import pandas as pd
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.exceptions import NotFittedError

from features.client.base import Mode
from features.client.results import output_columns
from features.client.sync import HearthClient

INPUT_COLUMNS = ("user_id", "as_of")


class HearthFeatures(TransformerMixin, BaseEstimator):  # type: ignore[misc]
    def __init__(
        self,
        base_url: str,
        token: str,
        features: Sequence[str] | None = None,
        include_coverage: bool = False,
        timeout_s: float = 120.0,
        mode: Mode = "exact",
        max_age: timedelta = timedelta(days=1),
    ) -> None:
        self.base_url = base_url
        self.token = token
        self.features = features
        self.include_coverage = include_coverage
        self.timeout_s = timeout_s
        self.mode = mode
        self.max_age = max_age

    def _client(self) -> HearthClient:
        return HearthClient(self.base_url, self.token, timeout_s=self.timeout_s)

    def fit(self, X: pd.DataFrame, y: Any = None) -> Self:
        _check_frame(X)
        if self.features is not None:
            names = list(self.features)
        else:
            names = [str(d["name"]) for d in self._client().feature_definitions()]
        if not names:
            raise ValueError("no features to fetch: the service's catalogue is empty")
        self.features_ = names
        self.feature_names_in_ = np.asarray(INPUT_COLUMNS, dtype=object)
        self.n_features_in_ = len(INPUT_COLUMNS)
        return self

    def transform(self, X: pd.DataFrame) -> npt.NDArray[np.float64]:
        if not hasattr(self, "features_"):
            raise NotFittedError("HearthFeatures is not fitted yet; call fit first")
        _check_frame(X)
        rows = pd.DataFrame(
            {"user_id": X["user_id"].astype(str), "as_of": pd.to_datetime(X["as_of"], utc=True)}
        )
        frame = self._client().historical(
            rows,
            mode=self.mode,
            max_age=self.max_age,
            features=self.features_,
            include_coverage=self.include_coverage,
        )
        matrix: npt.NDArray[np.float64] = frame[self._columns()].to_numpy(dtype=np.float64)
        return matrix

    def _columns(self) -> list[str]:
        return output_columns(self.features_, self.include_coverage)

    def get_feature_names_out(self, input_features: Any = None) -> npt.NDArray[np.object_]:
        return np.asarray(self._columns(), dtype=object)


def _check_frame(X: Any) -> None:
    if not isinstance(X, pd.DataFrame):
        raise TypeError("HearthFeatures expects a pandas DataFrame with user_id and as_of")
    missing = [c for c in INPUT_COLUMNS if c not in X.columns]
    if missing:
        raise ValueError(f"HearthFeatures: input frame lacks column(s) {missing}")
