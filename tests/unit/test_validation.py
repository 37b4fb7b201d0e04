"""Validation statistics against hand-computed fixtures and independent implementations.

Reference for the random fixtures: optbinning (a dev dependency) for WOE/IV with the same fixed
cut points; scipy's two-sample KS for KS; scikit-learn for AUC; and for PSI a straightforward
implementation written here (pandas-free, loop over bins), since no installed library exposes
PSI with a documented epsilon rule.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from scipy.stats import ks_2samp
from sklearn.metrics import roc_auc_score

from features.report import stats as v

NAN = math.nan


def test_iv_matches_hand_computation_with_missing_bin() -> None:
    x = [1, 2, 3, 4, 5, 6, 7, 8, NAN, NAN]
    y = [0, 1, 0, 0, 1, 1, 0, 1, 0, 1]
    # bins (-inf,3): g1 b1 · [3,6): g2 b1 · [6,inf): g1 b2 · Missing: g1 b1; totals 5/5
    result = v.woe_binning(x, y, splits=[3, 6])
    assert [b.label for b in result.bins] == ["[-inf, 3)", "[3, 6)", "[6, +inf)", "Missing"]
    assert [(b.n_good, b.n_bad) for b in result.bins] == [(1, 1), (2, 1), (1, 2), (1, 1)]
    woes = [b.woe for b in result.bins]
    assert woes == pytest.approx([0.0, math.log(2), -math.log(2), 0.0], abs=1e-12)
    assert result.iv == pytest.approx(0.4 * math.log(2), abs=1e-12)
    assert result.strength == "medium"
    # transform maps each value to its bin's WOE, missing to the Missing bin's
    assert v.woe_binning(x, y, splits=[3, 6]).transform([0, 4, 9, NAN]) == pytest.approx(
        [0.0, math.log(2), -math.log(2), 0.0]
    )


def test_pure_bin_gets_continuity_correction_in_that_bin_only() -> None:
    # bin (-inf,3) has 2 goods, 0 bads; [3,inf): 1 good, 3 bads. Totals 3 / 3.
    result = v.woe_binning([1, 2, 3, 4, 5, 6], [0, 0, 0, 1, 1, 1], splits=[3])
    pure, mixed = result.bins
    expected_pure = math.log((2.5 / 3) / (0.5 / 3))
    assert pure.woe == pytest.approx(expected_pure, abs=1e-12)
    assert mixed.woe == pytest.approx(math.log((1 / 3) / (3 / 3)), abs=1e-12)
    assert math.isfinite(result.iv)


@pytest.mark.filterwarnings("ignore:Setting an item of incompatible dtype")
def test_iv_matches_optbinning_on_random_data() -> None:
    optbinning = pytest.importorskip("optbinning")
    rng = np.random.default_rng(42)
    n = 5000
    x = rng.normal(size=n)
    y = (rng.random(n) < 1 / (1 + np.exp(1.5 - x))).astype(int)
    x[rng.random(n) < 0.07] = np.nan
    ours = v.woe_binning(x, y, max_bins=10, min_bin_share=0.05)
    assert len(ours.splits) == 9  # continuous data: all deciles survive
    ref = optbinning.OptimalBinning(
        dtype="numerical",
        user_splits=list(ours.splits),
        user_splits_fixed=[True] * len(ours.splits),
        monotonic_trend=None,
        min_prebin_size=0.01,
    ).fit(x, y)
    assert np.allclose(ref.splits, ours.splits)
    table = ref.binning_table.build()
    ref_woe = table["WoE"].iloc[:-1].to_numpy(dtype=float)  # drop the Totals row
    ref_bins = [i for i, label in enumerate(table["Bin"].iloc[:-1]) if label != "Special"]
    ours_woe = [b.woe for b in ours.bins]
    # optbinning's WoE is ln(%non-event / %event), ours ln(%good / %bad): the same quantity.
    assert np.allclose(ours_woe, ref_woe[ref_bins], atol=1e-6)
    assert ours.iv == pytest.approx(ref.binning_table.iv, abs=1e-6)


def test_quantile_binning_merges_small_bins_and_can_force_monotone() -> None:
    rng = np.random.default_rng(3)
    x = np.concatenate([np.zeros(900), rng.normal(5, 1, 100)])  # 90 % ties at 0
    y = (rng.random(1000) < 0.2).astype(int)
    result = v.woe_binning(x, y, max_bins=10, min_bin_share=0.05)
    numeric = [b for b in result.bins if b.label != v.MISSING_LABEL]
    assert all(b.n >= 0.05 * 1000 for b in numeric)
    assert sum(b.n for b in result.bins) == 1000

    x2 = rng.normal(size=4000)
    y2 = (rng.random(4000) < 1 / (1 + np.exp(2 - 0.8 * x2))).astype(int)
    mono = v.woe_binning(x2, y2, monotone=True)
    rates = [b.bad_rate for b in mono.bins if b.label != v.MISSING_LABEL]
    assert rates == sorted(rates)
    assert len(rates) >= 2


def test_auc_hand_computed_with_ties() -> None:
    # bads {3, 2}, goods {1, 2}: pairs 3>1, 3>2, 2>1, 2=2 → (3 + 0.5) / 4
    assert v.auc([1, 1, 0, 0], [3, 2, 1, 2]) == pytest.approx(0.875, abs=1e-12)
    assert v.gini([1, 1, 0, 0], [3, 2, 1, 2]) == pytest.approx(0.75, abs=1e-12)


def test_auc_matches_sklearn_on_random_data_with_ties() -> None:
    rng = np.random.default_rng(0)
    y = (rng.random(3000) < 0.1).astype(int)
    score = np.round(rng.normal(size=3000) + y, 1)  # rounding makes many ties
    assert v.auc(y, score) == pytest.approx(roc_auc_score(y, score), abs=1e-9)


def test_ks_hand_computed() -> None:
    # bads {0.9, 0.8, 0.4}, goods {0.1, 0.3, 0.5, 0.6}; at s=0.6: F_bad = 1/3, F_good = 1
    y = [1, 1, 1, 0, 0, 0, 0]
    s = [0.9, 0.8, 0.4, 0.1, 0.3, 0.5, 0.6]
    curve = v.ks_curve(y, s)
    assert curve.ks == pytest.approx(2 / 3, abs=1e-12)
    assert curve.ks_threshold == pytest.approx(0.6)


def test_ks_matches_scipy_on_random_data() -> None:
    rng = np.random.default_rng(1)
    y = (rng.random(4000) < 0.15).astype(int)
    score = rng.normal(size=4000) + 0.7 * y
    expected = ks_2samp(score[y == 1], score[y == 0]).statistic
    assert v.ks_statistic(y, score) == pytest.approx(expected, abs=1e-9)


def test_psi_hand_computed() -> None:
    expected = [1, 1, 2, 2, 3, 3, 4, 4]  # 1/4 in each of (-inf,2) [2,3) [3,4) [4,inf)
    actual = [1, 2, 2, 3, 4, 4, 4, 4]  # 1/8, 2/8, 1/8, 4/8
    result = v.psi(expected, actual, splits=[2, 3, 4])
    assert result.psi == pytest.approx(0.5 * math.log(2), abs=1e-12)
    assert result.status == "shifted"
    assert [b.actual_share for b in result.bins] == [0.125, 0.25, 0.125, 0.5]


def test_psi_uses_documented_epsilon_for_empty_bins_and_missing_bin() -> None:
    result = v.psi([1, 1, 1, 1], [1, 1, 5, NAN], splits=[2])
    # bins (-inf,2) E=1 A=.5 · [2,inf) E=0→1e-4 A=.25 · Missing E=0→1e-4 A=.25
    eps = v.PSI_EPSILON
    expected = (
        (0.5 - 1) * math.log(0.5)
        + (0.25 - eps) * math.log(0.25 / eps)
        + (0.25 - eps) * math.log(0.25 / eps)
    )
    assert result.psi == pytest.approx(expected, abs=1e-12)
    assert result.bins[-1].label == v.MISSING_LABEL


def _psi_reference(expected: np.ndarray, actual: np.ndarray, bins: int) -> float:
    """Independent PSI: decile edges of the baseline, explicit loop, same epsilon rule."""
    e_vals = expected[~np.isnan(expected)]
    edges = sorted(set(np.quantile(e_vals, [i / bins for i in range(1, bins)])))
    edges = [c for c in edges if c > e_vals.min()]
    bounds = [-math.inf, *edges, math.inf]
    total = 0.0
    for lo, hi in itertools.pairwise(bounds):
        e = sum(1 for x in expected if lo <= x < hi) / len(expected)
        a = sum(1 for x in actual if lo <= x < hi) / len(actual)
        e, a = max(e, 1e-4), max(a, 1e-4)
        total += (a - e) * math.log(a / e)
    e_miss = max(float(np.isnan(expected).mean()), 1e-4)
    a_miss = max(float(np.isnan(actual).mean()), 1e-4)
    if np.isnan(expected).any() or np.isnan(actual).any():
        total += (a_miss - e_miss) * math.log(a_miss / e_miss)
    return total


def test_psi_matches_independent_implementation_on_random_data() -> None:
    rng = np.random.default_rng(5)
    baseline = rng.normal(size=3000)
    later = rng.normal(0.3, 1.2, size=2000)
    baseline[:100] = np.nan
    later[:300] = np.nan
    result = v.psi(baseline, later)
    assert result.psi == pytest.approx(_psi_reference(baseline, later, 10), abs=1e-9)
    same = v.psi(baseline, baseline.copy())
    assert same.psi == pytest.approx(0.0, abs=1e-12) and same.status == "stable"


def test_calibration_table_deciles() -> None:
    p = np.arange(1, 101) / 100.0
    y = (np.arange(100) >= 90).astype(int)  # the top decile all default
    rows = v.calibration_table(y, p)
    assert len(rows) == 10 and sum(r.n for r in rows) == 100
    assert rows[0].mean_predicted == pytest.approx(0.055)
    assert rows[-1].observed_rate == 1.0 and rows[0].observed_rate == 0.0


@pytest.mark.parametrize(
    ("iv", "reading"),
    [(0.0, "useless"), (0.05, "weak"), (0.2, "medium"), (0.4, "strong"), (0.51, "suspect")],
)
def test_iv_reading(iv: float, reading: str) -> None:
    assert v.iv_strength(iv) == reading


def test_psi_reading_and_bad_inputs() -> None:
    assert [v.psi_status(x) for x in (0.05, 0.2, 0.3)] == ["stable", "watch", "shifted"]
    with pytest.raises(ValueError, match="good and one bad"):
        v.auc([1, 1], [0.1, 0.2])
    with pytest.raises(ValueError, match="0 \\(good\\) or 1"):
        v.woe_binning([1, 2], [0, 2])
