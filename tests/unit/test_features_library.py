"""Pure units of the feature library: formulas against naive implementations and closed forms."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from features.catalogue import DEFINITIONS, FEATURE_SET_VERSION, FeatureDefinition, definitions
from features.catalogue.library import SPECS
from features.catalogue.library.base import circular_variance, coefficient_of_variation
from features.catalogue.library.mobility import geohash_centre, haversine_km
from features.catalogue.library.residential import modal_code
from features.catalogue.library.routine import (
    autocorrelation,
    hour_entropy,
    interdaily_stability,
    intradaily_variability,
)
from hearth.signals import Category


def _van_someren(x: np.ndarray, p: int = 24) -> tuple[float, float]:
    """The published formulas, written as loops over a complete series."""
    n = len(x)
    mean = sum(x) / n
    total = sum((v - mean) ** 2 for v in x)
    hourly = [sum(x[h::p]) / len(x[h::p]) for h in range(p)]
    is_ = n * sum((m - mean) ** 2 for m in hourly) / (p * total)
    iv = n * sum((x[i] - x[i - 1]) ** 2 for i in range(1, n)) / ((n - 1) * total)
    return is_, iv


def test_is_iv_match_van_someren_on_complete_series() -> None:
    rng = np.random.default_rng(5)
    days = 14
    base = np.tile(np.r_[np.zeros(7), np.ones(10) * 3, np.zeros(7)], days)
    x = base + rng.poisson(1.0, size=24 * days)
    hod = np.tile(np.arange(24), days)[None, :]
    valid = np.ones((1, 24 * days), dtype=bool)
    expected_is, expected_iv = _van_someren(list(x.astype(float)))
    assert interdaily_stability(x[None, :].astype(float), hod, valid)[0] == pytest.approx(
        expected_is, abs=1e-9
    )
    assert intradaily_variability(x[None, :].astype(float), valid)[0] == pytest.approx(
        expected_iv, abs=1e-9
    )


def test_is_iv_hand_computed_square_wave() -> None:
    # Two days of "1 from 08:00 to 19:59, else 0": N = 48, x̄ = 1/2, Σ(x-x̄)² = 48/4 = 12.
    # Both days are identical, so IS = 1. The series changes at i = 8, 20, 32 and 44, so
    # ΣΔ² = 4 and IV = N·ΣΔ² / ((N-1)·Σ(x-x̄)²) = 48·4 / (47·12) = 16/47.
    day = np.r_[np.zeros(8), np.ones(12), np.zeros(4)]
    x = np.tile(day, 2)[None, :]
    hod = np.tile(np.arange(24), 2)[None, :]
    valid = np.ones_like(x, dtype=bool)
    assert interdaily_stability(x, hod, valid)[0] == pytest.approx(1.0, abs=1e-12)
    assert intradaily_variability(x, valid)[0] == pytest.approx(16 / 47, abs=1e-12)


def test_is_null_without_variance() -> None:
    x = np.ones((1, 72))
    hod = np.tile(np.arange(24), 3)[None, :]
    assert math.isnan(interdaily_stability(x, hod, np.ones_like(x, dtype=bool))[0])


def test_circular_variance_wraps_midnight() -> None:
    t = np.array([[23.0, 1.0], [23.0, 23.0], [0.0, 12.0]])
    valid = np.ones_like(t, dtype=bool)
    cv = circular_variance(t, valid)
    assert cv[0] == pytest.approx(1 - math.cos(math.pi / 12), abs=1e-12)  # ±15° around 0h
    assert cv[1] == pytest.approx(0.0, abs=1e-12)
    assert cv[2] == pytest.approx(1.0, abs=1e-12)  # opposite times cancel
    assert math.isnan(circular_variance(t, np.zeros_like(valid))[0])


def test_coefficient_of_variation() -> None:
    x = np.array([[1.0, 2.0, 3.0], [2.5, 2.5, 2.5]])
    cv = coefficient_of_variation(x, np.ones_like(x, dtype=bool))
    assert cv[0] == pytest.approx(math.sqrt(2 / 3) / 2, abs=1e-12)
    assert cv[1] == 0.0


def test_hour_entropy_bounds() -> None:
    hod = np.arange(24)[None, :]
    assert hour_entropy(np.ones((1, 24)), hod)[0] == pytest.approx(1.0, abs=1e-12)
    one = np.zeros((1, 24))
    one[0, 5] = 3
    assert hour_entropy(one, hod)[0] == 0.0
    assert math.isnan(hour_entropy(np.zeros((1, 24)), hod)[0])


def test_autocorrelation_of_daily_pattern_is_one() -> None:
    x = np.tile(np.r_[np.zeros(12), np.ones(12)], 10)[None, :]
    valid = np.ones_like(x, dtype=bool)
    assert autocorrelation(x, valid, 24)[0] == pytest.approx(1.0, abs=1e-12)
    assert autocorrelation(x, valid, 12)[0] < -0.9


def test_geohash_centre_and_distance() -> None:
    assert geohash_centre("s") == (22.5, 22.5)
    lat, lon = geohash_centre("u33dc0c")  # central Berlin
    assert 52.5 < lat < 52.53 and 13.4 < lon < 13.42
    assert all(math.isnan(v) for v in geohash_centre("a!"))
    one_degree = haversine_km(np.array([0.0]), np.array([0.0]), np.radians([1.0]), np.array([0.0]))
    assert one_degree[0] == pytest.approx(math.pi / 180 * 6371.0088, rel=1e-12)


def test_modal_code_breaks_ties_to_smallest() -> None:
    rows = np.array([0, 0, 0, 0, 2])
    codes = np.array([3, 1, 3, 1, 7])
    assert modal_code(rows, codes, 3).tolist() == [1, -1, 7]


def test_definitions_catalogue() -> None:
    families = {s.family for s in SPECS}
    assert families == {
        "coverage", "routine", "residential", "mobility", "phone_care", "infrastructure",
        "relationships",
    }  # fmt: skip
    assert len(SPECS) >= 24
    names = [d.name for d in DEFINITIONS]
    assert len(names) == len(set(names))
    assert {"active_day_ratio_30d", "active_day_ratio_90d", "days_since_first_seen"} <= set(names)
    for d in DEFINITIONS:
        assert isinstance(d, FeatureDefinition)
        assert d.formula and d.description and d.unit and d.citation, d.name
        assert Category(d.category)
        assert d.window_days in (None, 30, 90)
        assert set(d.to_json()) >= {"name", "family", "version", "unit", "window_days",
                                    "category", "null_semantics", "formula"}  # fmt: skip
    assert FEATURE_SET_VERSION.startswith("fs-") and len(FEATURE_SET_VERSION) == 15


def test_every_feature_has_a_reason_text_outside_the_version_hash(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Reason codes quote a feature's ``reason``; editing it is not a formula change."""
    assert all(d.reason and len(d.reason) <= 60 for d in DEFINITIONS)
    before = {d.name: d.version for d in definitions._definitions()}
    changed = [dataclasses.replace(s, reason=s.reason + " (edited)") for s in SPECS]
    monkeypatch.setattr(definitions, "SPECS", changed)
    after = definitions._definitions()
    assert {d.name: d.version for d in after} == before
    assert after[0].reason.endswith("(edited)")
