"""Credit-model validation statistics: WOE/IV, KS, AUC/Gini, PSI and calibration.

Conventions used throughout (docs/features.md#validation-vocabulary):

* ``y`` is the label, ``1`` = bad (default), ``0`` = good.
* ``score`` is a risk score: *higher means more likely to default* (a probability of default is
  one). Pass ``-stability`` for a score where higher means safer.
* Bins of a numeric feature are left-closed, right-open: bin ``i`` holds
  ``splits[i-1] <= x < splits[i]``, the first bin is ``(-inf, splits[0])`` and the last
  ``[splits[-1], +inf)``. Missing values (NaN) always form their own ``Missing`` bin, because in
  Hearth missing data is a signal (a phone that never reports is information), never zero.

Formulas:

* ``WOE_i = ln(%good_i / %bad_i)`` where ``%good_i = good_i / Σ good``.
* ``IV = Σ_i (%good_i - %bad_i) · WOE_i``, read in the bands of
  :func:`features.report.summary.iv_strength`.
* ``KS = max_s |F_bad(s) - F_good(s)|`` with ``F`` the empirical CDFs of the score.
* ``AUC = P(score_bad > score_good) + ½·P(score_bad = score_good)`` (Mann-Whitney);
  ``Gini = 2·AUC - 1``.
* ``PSI = Σ_i (A_i - E_i) · ln(A_i / E_i)`` with ``E`` the expected (baseline, e.g. training)
  shares and ``A`` the actual (e.g. test, or a later date) shares per bin, read in the bands of
  :func:`features.report.summary.psi_status`.

Empty cells. ``ln(0)`` is undefined, and a pure bin (no goods or no bads) would give an infinite
WOE. For WOE/IV a bin with zero goods or zero bads gets a continuity correction of
:data:`WOE_PSEUDO_COUNT` (0.5) added to *that bin's* good and bad counts before its shares are
taken (totals unchanged); bins with both counts positive use the exact formula, so results match
the textbook and reference implementations whenever no bin is pure. For PSI an empty bin's share
is floored at :data:`PSI_EPSILON` (1e-4) on either side, the common industry choice: an empty
bin then contributes a large but finite term instead of infinity.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import ArrayLike, NDArray
from sklearn.metrics import roc_curve as sk_roc_curve

from features.report.summary import iv_strength, psi_status

PSI_EPSILON = 1e-4
WOE_PSEUDO_COUNT = 0.5
MISSING_LABEL = "Missing"

FloatArray = NDArray[np.float64]
IntArray = NDArray[np.int64]


# --------------------------------------------------------------------------- input checks


def _as_float(x: ArrayLike) -> FloatArray:
    return np.asarray(x, dtype=np.float64).ravel()


def _as_labels(y: ArrayLike) -> IntArray:
    labels = np.asarray(y).ravel()
    if labels.size and not np.isin(labels, (0, 1)).all():
        raise ValueError("labels must be 0 (good) or 1 (bad)")
    return labels.astype(np.int64)


def _check_pair(score: FloatArray, y: IntArray) -> None:
    if score.shape != y.shape:
        raise ValueError(f"score and y differ in length: {score.size} vs {y.size}")
    if np.isnan(score).any():
        raise ValueError("score contains NaN")
    n_bad = int(y.sum())
    if n_bad == 0 or n_bad == y.size:
        raise ValueError("need at least one good and one bad")


# --------------------------------------------------------------------------- binning


def quantile_splits(x: ArrayLike, max_bins: int = 10) -> FloatArray:
    """Interior cut points at the 1/k … (k-1)/k quantiles of the non-missing values.

    Ties make some quantiles equal; duplicates are dropped, so a feature with few distinct
    values gets fewer bins. A cut equal to the minimum would leave the first bin empty and
    is dropped too.
    """
    values = _as_float(x)
    values = values[~np.isnan(values)]
    if values.size == 0 or max_bins < 2:
        return np.empty(0)
    levels = np.arange(1, max_bins) / max_bins
    cuts = np.unique(np.quantile(values, levels))
    return np.asarray(cuts[cuts > values.min()], dtype=np.float64)


def assign_bins(x: ArrayLike, splits: ArrayLike) -> IntArray:
    """Bin index per value: 0 … len(splits) for numbers, ``-1`` for missing."""
    values = _as_float(x)
    idx = np.digitize(values, _as_float(splits), right=False).astype(np.int64)
    idx[np.isnan(values)] = -1
    return idx


def _counts(bins: IntArray, y: IntArray, n_bins: int) -> tuple[IntArray, IntArray]:
    present = bins >= 0
    good = np.bincount(bins[present & (y == 0)], minlength=n_bins).astype(np.int64)
    bad = np.bincount(bins[present & (y == 1)], minlength=n_bins).astype(np.int64)
    return good, bad


def _merge_small_bins(
    splits: FloatArray, good: IntArray, bad: IntArray, min_count: float
) -> FloatArray:
    """Drop cut points until every numeric bin holds at least ``min_count`` rows.

    The smallest bin is merged with its smaller neighbour, one merge at a time, so the result
    does not depend on scan order.
    """
    cuts = list(splits)
    sizes = list(good + bad)
    while len(sizes) > 1 and min(sizes) < min_count:
        i = int(np.argmin(sizes))
        if i == 0:
            j = 1
        elif i == len(sizes) - 1:
            j = i - 1
        else:
            j = i - 1 if sizes[i - 1] <= sizes[i + 1] else i + 1
        lo = min(i, j)
        sizes[lo] += sizes[lo + 1]
        del sizes[lo + 1]
        del cuts[lo]  # the cut between bins lo and lo+1
    return np.asarray(cuts, dtype=np.float64)


def _merge_to_monotone(splits: FloatArray, good: IntArray, bad: IntArray) -> FloatArray:
    """Merge adjacent bins until the bad rate is monotone in the feature.

    The direction is the sign of the bad-rate trend between the first and last bins (the
    usual scorecard choice); each pass merges the first adjacent pair that breaks it.
    """
    cuts = list(splits)
    g = [float(v) for v in good]
    b = [float(v) for v in bad]

    def rates() -> list[float]:
        return [bi / (gi + bi) if gi + bi else 0.0 for gi, bi in zip(g, b, strict=True)]

    while len(g) > 1:
        r = rates()
        increasing = r[-1] >= r[0]
        violation = next(
            (i for i in range(len(r) - 1) if (r[i + 1] < r[i] if increasing else r[i + 1] > r[i])),
            None,
        )
        if violation is None:
            break
        g[violation] += g.pop(violation + 1)
        b[violation] += b.pop(violation + 1)
        del cuts[violation]
    return np.asarray(cuts, dtype=np.float64)


@dataclass(frozen=True)
class WoeBin:
    """One row of a WOE table; ``lower``/``upper`` are NaN for the Missing bin."""

    label: str
    lower: float
    upper: float
    n: int
    n_good: int
    n_bad: int
    share: float
    bad_rate: float
    woe: float
    iv: float


@dataclass(frozen=True)
class WoeBinning:
    """WOE table of one feature; :meth:`transform` maps raw values to their bin's WOE."""

    feature: str
    splits: tuple[float, ...]
    bins: tuple[WoeBin, ...]
    iv: float
    missing_woe: float = 0.0
    strength: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "strength", iv_strength(self.iv))

    def transform(self, x: ArrayLike) -> FloatArray:
        """WOE of each value's bin (Missing → the Missing bin's WOE, 0 if none was seen)."""
        numeric = [b for b in self.bins if b.label != MISSING_LABEL]
        woes = np.array([b.woe for b in numeric], dtype=np.float64)
        idx = assign_bins(x, self.splits)
        out = np.where(idx >= 0, woes[np.clip(idx, 0, len(woes) - 1)], self.missing_woe)
        return np.asarray(out, dtype=np.float64)


def _bin_label(lower: float, upper: float) -> str:
    lo = "-inf" if math.isinf(lower) else f"{lower:.4g}"
    hi = "+inf" if math.isinf(upper) else f"{upper:.4g}"
    return f"[{lo}, {hi})"


def woe_table(
    good: Sequence[int] | IntArray,
    bad: Sequence[int] | IntArray,
) -> tuple[FloatArray, FloatArray]:
    """WOE and IV contribution per bin from counts (see the module docstring for pure bins).

    Bins with no rows at all contribute nothing and get WOE 0.
    """
    g = np.asarray(good, dtype=np.float64)
    b = np.asarray(bad, dtype=np.float64)
    total_good, total_bad = g.sum(), b.sum()
    if total_good <= 0 or total_bad <= 0:
        raise ValueError("need at least one good and one bad")
    pure = ((g == 0) | (b == 0)) & ((g + b) > 0)
    g_adj = np.where(pure, g + WOE_PSEUDO_COUNT, g)
    b_adj = np.where(pure, b + WOE_PSEUDO_COUNT, b)
    pct_good = g_adj / total_good
    pct_bad = b_adj / total_bad
    empty = (g + b) == 0
    with np.errstate(divide="ignore", invalid="ignore"):
        woe = np.where(empty, 0.0, np.log(pct_good / pct_bad))
    iv = np.where(empty, 0.0, (pct_good - pct_bad) * woe)
    return np.asarray(woe, dtype=np.float64), np.asarray(iv, dtype=np.float64)


def woe_binning(
    x: ArrayLike,
    y: ArrayLike,
    *,
    feature: str = "",
    max_bins: int = 10,
    min_bin_share: float = 0.05,
    monotone: bool = False,
    splits: ArrayLike | None = None,
) -> WoeBinning:
    """Bin one feature and compute its WOE table and Information Value.

    Cut points are the ``max_bins`` quantiles of the non-missing values (or ``splits`` when
    given, used as is); bins under ``min_bin_share`` of all non-missing rows are merged into a
    neighbour, and with ``monotone=True`` adjacent bins are merged until the bad rate is
    monotone. The Missing bin is never merged: its size is itself informative.
    """
    values = _as_float(x)
    labels = _as_labels(y)
    if values.shape != labels.shape:
        raise ValueError(f"x and y differ in length: {values.size} vs {labels.size}")
    if splits is not None:
        cuts = np.unique(_as_float(splits))
    else:
        cuts = _cut_points(values, labels, max_bins, min_bin_share, monotone)

    idx = assign_bins(values, cuts)
    good, bad = _counts(idx, labels, cuts.size + 1)
    missing = idx < 0
    miss_good = int((missing & (labels == 0)).sum())
    miss_bad = int((missing & (labels == 1)).sum())
    all_good = np.append(good, miss_good)
    all_bad = np.append(bad, miss_bad)
    woe, iv = woe_table(all_good, all_bad)
    return WoeBinning(
        feature=feature,
        splits=tuple(float(c) for c in cuts),
        bins=tuple(_woe_bins(cuts, all_good, all_bad, woe, iv, values.size)),
        iv=float(iv.sum()),
        missing_woe=float(woe[-1]) if miss_good + miss_bad else 0.0,
    )


def _cut_points(
    values: FloatArray, labels: IntArray, max_bins: int, min_bin_share: float, monotone: bool
) -> FloatArray:
    """Quantile cut points, small bins merged away, then (``monotone``) non-monotone ones."""
    cuts = quantile_splits(values, max_bins)
    n_present = int((~np.isnan(values)).sum())
    good, bad = _counts(assign_bins(values, cuts), labels, cuts.size + 1)
    cuts = _merge_small_bins(cuts, good, bad, min_bin_share * n_present)
    if monotone:
        good, bad = _counts(assign_bins(values, cuts), labels, cuts.size + 1)
        cuts = _merge_to_monotone(cuts, good, bad)
    return cuts


def _woe_bins(
    cuts: FloatArray,
    all_good: IntArray,
    all_bad: IntArray,
    woe: FloatArray,
    iv: FloatArray,
    total: int,
) -> list[WoeBin]:
    """The WOE table's rows: one per numeric bin, then the Missing bin when it has rows."""
    n_numeric = cuts.size + 1
    edges = np.concatenate(([-np.inf], cuts, [np.inf]))
    rows: list[WoeBin] = []
    for i in range(n_numeric + 1):
        n = int(all_good[i] + all_bad[i])
        if i == n_numeric:
            if n == 0:
                continue
            label, lower, upper = MISSING_LABEL, math.nan, math.nan
        else:
            lower, upper = float(edges[i]), float(edges[i + 1])
            label = _bin_label(lower, upper)
        rows.append(
            WoeBin(
                label=label,
                lower=lower,
                upper=upper,
                n=n,
                n_good=int(all_good[i]),
                n_bad=int(all_bad[i]),
                share=n / total if total else 0.0,
                bad_rate=float(all_bad[i]) / n if n else 0.0,
                woe=float(woe[i]),
                iv=float(iv[i]),
            )
        )
    return rows


# --------------------------------------------------------------------------- ranking power


def auc(y: ArrayLike, score: ArrayLike) -> float:
    """Area under the ROC curve by the Mann-Whitney rank sum (ties count one half)."""
    s = _as_float(score)
    labels = _as_labels(y)
    _check_pair(s, labels)
    order = np.argsort(s, kind="mergesort")
    sorted_s = s[order]
    ranks = np.empty(s.size, dtype=np.float64)
    # Average rank for ties: every run of equal scores gets the mean of its positions.
    boundaries = np.flatnonzero(np.diff(sorted_s)) + 1
    starts = np.concatenate(([0], boundaries))
    ends = np.concatenate((boundaries, [s.size]))
    avg = (starts + ends + 1) / 2.0  # 1-based mean position of each run
    ranks[order] = np.repeat(avg, ends - starts)
    n_bad = float(labels.sum())
    n_good = float(labels.size) - n_bad
    rank_sum_bad = float(ranks[labels == 1].sum())
    return (rank_sum_bad - n_bad * (n_bad + 1) / 2.0) / (n_bad * n_good)


def gini(y: ArrayLike, score: ArrayLike) -> float:
    """Gini (accuracy ratio) = 2·AUC - 1."""
    return 2.0 * auc(y, score) - 1.0


@dataclass(frozen=True)
class KsCurve:
    """Empirical CDFs of the score for bads and goods, evaluated at every distinct score."""

    thresholds: FloatArray
    cdf_bad: FloatArray
    cdf_good: FloatArray
    ks: float
    ks_threshold: float


def ks_curve(y: ArrayLike, score: ArrayLike) -> KsCurve:
    """``F_bad(s)`` and ``F_good(s)`` = share with score ≤ s; KS is their largest gap."""
    s = _as_float(score)
    labels = _as_labels(y)
    _check_pair(s, labels)
    thresholds = np.unique(s)
    bad_sorted = np.sort(s[labels == 1])
    good_sorted = np.sort(s[labels == 0])
    cdf_bad = np.searchsorted(bad_sorted, thresholds, side="right") / bad_sorted.size
    cdf_good = np.searchsorted(good_sorted, thresholds, side="right") / good_sorted.size
    gap = np.abs(cdf_bad - cdf_good)
    best = int(np.argmax(gap))
    return KsCurve(
        thresholds=thresholds,
        cdf_bad=np.asarray(cdf_bad, dtype=np.float64),
        cdf_good=np.asarray(cdf_good, dtype=np.float64),
        ks=float(gap[best]),
        ks_threshold=float(thresholds[best]),
    )


def ks_statistic(y: ArrayLike, score: ArrayLike) -> float:
    """KS = max |F_bad - F_good| (same value as the two-sample Kolmogorov-Smirnov statistic)."""
    return ks_curve(y, score).ks


@dataclass(frozen=True)
class RocCurve:
    false_positive_rate: FloatArray
    true_positive_rate: FloatArray
    auc: float


def roc_curve(y: ArrayLike, score: ArrayLike) -> RocCurve:
    """ROC points (bad = positive) at every distinct threshold, from (0,0) to (1,1)."""
    labels = _as_labels(y)
    s = _as_float(score)
    fpr, tpr, _ = sk_roc_curve(labels, s)
    return RocCurve(np.asarray(fpr, np.float64), np.asarray(tpr, np.float64), auc(labels, s))


# --------------------------------------------------------------------------- stability


@dataclass(frozen=True)
class PsiBin:
    label: str
    expected_share: float
    actual_share: float
    contribution: float


@dataclass(frozen=True)
class PsiResult:
    psi: float
    bins: tuple[PsiBin, ...]
    status: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "status", psi_status(self.psi))


def psi_from_shares(expected: ArrayLike, actual: ArrayLike) -> FloatArray:
    """Per-bin PSI terms ``(A - E)·ln(A/E)`` with shares floored at :data:`PSI_EPSILON`."""
    e = np.maximum(_as_float(expected), PSI_EPSILON)
    a = np.maximum(_as_float(actual), PSI_EPSILON)
    return np.asarray((a - e) * np.log(a / e), dtype=np.float64)


def psi(
    expected: ArrayLike,
    actual: ArrayLike,
    *,
    max_bins: int = 10,
    splits: ArrayLike | None = None,
) -> PsiResult:
    """Population Stability Index of ``actual`` against the ``expected`` (baseline) sample.

    Bins are the ``max_bins`` quantiles of the baseline (so each holds ~1/k of it) unless
    ``splits`` are given; missing values form their own bin on both sides, so a feature whose
    coverage collapses shows up as a shift.
    """
    e = _as_float(expected)
    a = _as_float(actual)
    if e.size == 0 or a.size == 0:
        raise ValueError("both populations must be non-empty")
    cuts = quantile_splits(e, max_bins) if splits is None else np.unique(_as_float(splits))
    n_numeric = cuts.size + 1

    def shares(values: FloatArray) -> FloatArray:
        idx = assign_bins(values, cuts)
        counts = np.bincount(idx[idx >= 0], minlength=n_numeric).astype(np.float64)
        counts = np.append(counts, float((idx < 0).sum()))
        return np.asarray(counts / values.size, dtype=np.float64)

    e_share, a_share = shares(e), shares(a)
    has_missing = e_share[-1] > 0 or a_share[-1] > 0
    if not has_missing:
        e_share, a_share = e_share[:-1], a_share[:-1]
    terms = psi_from_shares(e_share, a_share)
    edges = np.concatenate(([-np.inf], cuts, [np.inf]))
    labels = [_bin_label(float(edges[i]), float(edges[i + 1])) for i in range(n_numeric)]
    if has_missing:
        labels.append(MISSING_LABEL)
    rows = tuple(
        PsiBin(lbl, float(es), float(ac), float(t))
        for lbl, es, ac, t in zip(labels, e_share, a_share, terms, strict=True)
    )
    return PsiResult(psi=float(terms.sum()), bins=rows)


# --------------------------------------------------------------------------- calibration


@dataclass(frozen=True)
class CalibrationRow:
    bucket: int
    n: int
    score_min: float
    score_max: float
    mean_predicted: float
    observed_rate: float


def calibration_table(
    y: ArrayLike, predicted: ArrayLike, n_buckets: int = 10
) -> list[CalibrationRow]:
    """Mean predicted probability vs observed default rate per score bucket (deciles by default).

    Buckets are equal-count slices of the rows sorted by prediction (ties kept together only as
    far as equal counts allow), which is what a calibration plot of a PD model shows.
    """
    p = _as_float(predicted)
    labels = _as_labels(y)
    if p.shape != labels.shape:
        raise ValueError("predicted and y differ in length")
    order = np.argsort(p, kind="mergesort")
    rows: list[CalibrationRow] = []
    for bucket, chunk in enumerate(np.array_split(order, min(n_buckets, max(p.size, 1)))):
        if chunk.size == 0:
            continue
        rows.append(
            CalibrationRow(
                bucket=bucket + 1,
                n=int(chunk.size),
                score_min=float(p[chunk].min()),
                score_max=float(p[chunk].max()),
                mean_predicted=float(p[chunk].mean()),
                observed_rate=float(labels[chunk].mean()),
            )
        )
    return rows
