"""Reference model: out-of-time split, reason codes, versions and persistence (synthetic data)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from features.book.model import ModelRefused
from features.report.model import (
    ReferenceModel,
    choose_window_set,
    data_fingerprint,
    time_split,
    window_sets,
)

NAMES = ["risk_driver", "protective", "noise", "never_seen"]


def synthetic(n: int = 3000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """risk_driver raises default risk, protective lowers it; a missing protective is risky."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 4))
    x[:, 3] = np.nan  # a feature nobody has
    missing = rng.random(n) < 0.2
    x[missing, 1] = np.nan
    logit = -2.0 + 1.5 * x[:, 0] - 1.0 * np.nan_to_num(x[:, 1], nan=-1.5)
    y = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(int)
    return x, y


def test_time_split_trains_on_earlier_applications() -> None:
    start = datetime(2025, 1, 1, tzinfo=UTC)
    times = [start + timedelta(days=d) for d in (5, 1, 9, 3, 7, 2, 8, 4, 6, 0)]
    train, test, cutoff = time_split(times, test_share=0.3)
    assert train.sum() == 7 and test.sum() == 3
    assert cutoff == start + timedelta(days=7)
    assert max(t for t, m in zip(times, train, strict=True) if m) < cutoff
    assert min(t for t, m in zip(times, test, strict=True) if m) >= cutoff
    with pytest.raises(ValueError, match="one date"):
        time_split([start] * 5)


def test_logistic_reason_codes_explain_the_log_odds() -> None:
    x, y = synthetic()
    model = ReferenceModel(NAMES, feature_set_version="fs-test").fit(x, y)
    applicant = np.array([[3.0, 0.5, 0.0, np.nan]])  # very high risk_driver
    (score,) = model.score(applicant)
    assert score.reason_codes[0].feature == "risk_driver"
    assert score.reason_codes[0].value == 3.0
    assert all(r.contribution > 0 for r in score.reason_codes)
    assert score.feature_set_version == "fs-test"
    assert score.model_version == model.model_version and len(model.model_version) == 16
    # coefficient x standardised value contributions + intercept = the model's log-odds
    contributions = model.contributions(x[:50])
    p = model.predict_proba(x[:50])
    intercept = model.pipeline[-1].intercept_[0]
    assert np.allclose(contributions.sum(axis=1) + intercept, np.log(p / (1 - p)), atol=1e-9)


def test_missing_value_is_a_reason_through_its_indicator() -> None:
    x, y = synthetic()
    model = ReferenceModel(NAMES).fit(x, y)
    (score,) = model.score(np.array([[0.0, np.nan, 0.0, np.nan]]))
    reasons = {r.feature: r for r in score.reason_codes}
    assert "protective" in reasons
    assert reasons["protective"].value is None
    assert "missing" in reasons["protective"].describe()


def test_model_version_is_deterministic_and_tracks_the_data() -> None:
    x, y = synthetic()
    a = ReferenceModel(NAMES).fit(x, y)
    b = ReferenceModel(NAMES).fit(x.copy(), y.copy())
    assert a.model_version == b.model_version
    y2 = y.copy()
    y2[0] = 1 - y2[0]
    assert ReferenceModel(NAMES).fit(x, y2).model_version != a.model_version
    assert ReferenceModel(NAMES, class_weight="balanced").fit(x, y).model_version != (
        a.model_version
    )
    assert data_fingerprint(NAMES, x, y) != data_fingerprint(NAMES, x, y2)


def test_save_load_round_trip_and_tamper_check(tmp_path: Path) -> None:
    x, y = synthetic()
    model = ReferenceModel(NAMES, feature_set_version="fs-1").fit(x, y)
    meta_path = model.save(tmp_path)
    assert meta_path.name == "model.json"
    loaded = ReferenceModel.load(tmp_path)
    assert loaded.model_version == model.model_version
    assert loaded.feature_set_version == "fs-1"
    assert np.allclose(loaded.predict_proba(x[:100]), model.predict_proba(x[:100]))
    assert loaded.score(x[:1])[0].reason_codes == model.score(x[:1])[0].reason_codes
    model_path = tmp_path / "model.skops"
    model_path.write_bytes(model_path.read_bytes() + b"\0")
    with pytest.raises(ModelRefused, match="sha256"):
        ReferenceModel.load(tmp_path)


def test_gradient_boosting_variant_scores_with_reason_codes(tmp_path: Path) -> None:
    x, y = synthetic(n=2000)
    model = ReferenceModel(NAMES, kind="hgb").fit(x, y)
    (score,) = model.score(np.array([[3.0, 0.5, 0.0, np.nan]]))
    assert 0 < score.probability < 1
    assert score.reason_codes and score.reason_codes[0].feature == "risk_driver"
    model.save(tmp_path)
    assert ReferenceModel.load(tmp_path).model_version == model.model_version


def test_unfitted_or_misshaped_input_is_refused() -> None:
    model = ReferenceModel(NAMES)
    with pytest.raises(RuntimeError, match="not fitted"):
        model.predict_proba(np.zeros((1, 4)))
    x, y = synthetic(n=500)
    model.fit(x, y)
    with pytest.raises(ValueError, match="4 columns"):
        model.predict_proba(np.zeros((1, 3)))


def test_window_sets_keep_one_window_of_each_indicator_and_windowless_features() -> None:
    names = ["a_30d", "tenure", "a_90d", "b_30d", "c_7d", "c_14d", "per_30d_90d", "per_30d_30d"]
    sets = window_sets(names)
    assert sets["longest"] == ["tenure", "a_90d", "b_30d", "c_14d", "per_30d_90d"]
    assert sets["shortest"] == ["a_30d", "tenure", "b_30d", "c_7d", "per_30d_30d"]
    assert sets["all"] == names


def test_window_set_choice_follows_the_window_that_carries_the_signal() -> None:
    rng = np.random.default_rng(3)
    n = 600
    signal = rng.normal(size=n)
    y = (signal + rng.normal(scale=0.8, size=n) > 1.2).astype(int)
    # The 30-day window sees the signal, the 90-day one mostly noise, the windowless one nothing.
    x = np.column_stack(
        [signal + rng.normal(scale=0.3, size=n), rng.normal(size=n), rng.normal(size=n)]
    )
    names = ["s_30d", "s_90d", "noise"]
    best, kept, scores = choose_window_set(names, x, y)
    # "all" scores a hair higher (noise); the smaller set within one standard error wins.
    assert best == "shortest" and kept == ["s_30d", "noise"]
    assert scores["all"] >= scores["shortest"] > scores["longest"] + 0.1
