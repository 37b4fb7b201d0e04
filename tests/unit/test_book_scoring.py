"""The book's scoring rules on a fitted reference model (no services): the points scale,
additivity, reason codes, consent, percentiles, the secure model format and the model card."""

from __future__ import annotations

import csv
import hashlib
import json
import math
import zipfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from features.book.model import MODEL_FILE, ModelRefused, load_model, load_pipeline, read_card
from features.book.population import LEVELS, Population, build_population
from features.book.scale import PointsScale
from features.book.scoring import MAX_REASONS, reason_codes, score_matrix, top_reasons
from features.catalogue import DEFINITIONS, FEATURE_SET_VERSION
from features.cli import main
from features.report.data import FeatureTable, GroundTruth
from features.report.model import ReferenceModel
from features.report.train import train_model, write_model
from hearth.errors import Conflict, Invalid
from tests.support.book import CATEGORY, MODEL_FEATURES, draw_features, fit_model

REASONS = {d.name: d.reason for d in DEFINITIONS}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return fit_model(tmp_path_factory.mktemp("model"))


@pytest.fixture(scope="module")
def applicants() -> np.ndarray:
    return draw_features(np.random.default_rng(11), 2000)


def everything_consented(n: int) -> np.ndarray:
    return np.ones((n, len(MODEL_FEATURES)), dtype=np.bool_)


def test_points_scale_600_at_50_to_1_and_20_points_double_the_odds() -> None:
    scale = PointsScale()
    odds_good = np.array([50.0, 100.0, 25.0])
    points = scale.points_of(-np.log(odds_good))  # log-odds of default = -ln(odds of good)
    assert np.allclose(points, [600.0, 620.0, 580.0])
    custom = PointsScale(points=500, odds=20, pdo=40)
    assert np.allclose(custom.points_of(-np.log(np.array([20.0, 40.0]))), [500.0, 540.0])
    assert PointsScale.from_json(custom.to_json()) == custom
    with pytest.raises(ValueError):
        PointsScale(pdo=0)


def test_contributions_plus_baseline_are_the_log_odds_for_every_row(
    model_dir: Path, applicants: np.ndarray
) -> None:
    model = load_model(model_dir)
    pipeline = ReferenceModel.load(model_dir).pipeline
    scored = score_matrix(model, applicants, everything_consented(len(applicants)))
    expected = pipeline.decision_function(applicants)
    assert np.allclose(
        model.scorecard.intercept + scored.contributions.sum(axis=1), expected, rtol=0, atol=1e-9
    )
    assert np.allclose(scored.probability, pipeline.predict_proba(applicants)[:, 1], atol=1e-12)
    # In points: the baseline (the average applicant) plus the points contributions.
    assert np.allclose(
        model.baseline_points + scored.point_contributions.sum(axis=1), scored.points, atol=1e-9
    )


def test_reason_codes_are_exactly_the_largest_negative_contributions(
    model_dir: Path, applicants: np.ndarray
) -> None:
    model = load_model(model_dir)
    scored = score_matrix(model, applicants, everything_consented(len(applicants)))
    seen_four = False
    for i in range(len(applicants)):
        contributions = scored.point_contributions[i]
        negative = [j for j in np.argsort(contributions, kind="stable") if contributions[j] < 0]
        expected = negative[:MAX_REASONS]
        got = [j for j in scored.reasons[i] if j >= 0]
        assert got == expected
        seen_four |= len(got) == MAX_REASONS
    assert seen_four  # the cap is reached, not just respected
    codes = reason_codes(model, scored, 0, None)
    assert len(codes) <= MAX_REASONS
    for code in codes:
        assert code["points"] < 0 and code["percentile"] is None
        assert code["text"].startswith(REASONS[code["feature"]] + ": ")


def test_a_withdrawn_category_is_scored_as_missing_and_never_a_reason(
    model_dir: Path, applicants: np.ndarray
) -> None:
    model = load_model(model_dir)
    eligible = everything_consented(len(applicants))
    location = [j for j, f in enumerate(MODEL_FEATURES) if CATEGORY[f] == "location"]
    eligible[:, location] = False
    withheld = score_matrix(model, applicants, eligible)
    as_missing = applicants.copy()
    as_missing[:, location] = np.nan
    reference = score_matrix(model, as_missing, everything_consented(len(applicants)))
    assert np.array_equal(withheld.log_odds, reference.log_odds)  # treated as missing
    assert not np.isin(withheld.reasons, location).any()  # never a reason
    # ... although missing location data is among the largest negative contributions.
    assert np.isin(reference.reasons[:, 0], location).mean() > 0.2


def test_top_reasons_pad_and_break_ties_in_feature_order() -> None:
    contributions = np.array([[-1.0, -3.0, 2.0, -1.0, 0.0, -0.5], [1.0, 1.0, 0, 0, 0, 0]])
    eligible = np.ones_like(contributions, dtype=np.bool_)
    eligible[0, 5] = False
    reasons = top_reasons(contributions, eligible)
    assert reasons.tolist() == [[1, 0, 3, -1], [-1, -1, -1, -1]]


def test_percentiles_place_a_value_in_the_population() -> None:
    values = np.arange(1000, dtype=np.float64)
    values[::10] = np.nan
    population = build_population(
        datetime(2026, 5, 1, tzinfo=UTC), "fs-x", 1000, {"a": values, "few": np.ones(5)}
    )
    assert population.grids["few"] is None  # fewer than 20 values: no percentiles
    assert population.percentile("few", 1.0) is None
    assert population.percentile("a", -5.0) == 0 and population.percentile("a", 5000.0) == 100
    assert population.percentile("a", 500.0) == 50
    assert population.percentile("a", math.nan) is None
    finite = values[np.isfinite(values)]
    probes = np.array([37.0, 250.0, 777.0, 990.0])
    share_below = np.array([(finite < p).mean() * 100 for p in probes])
    assert np.all(np.abs(population.percentiles("a", probes) - share_below) <= 1.5)
    assert Population.from_json(json.loads(json.dumps(population.to_json()))) == population
    ties = build_population(population.as_of, "fs-x", 100, {"t": np.r_[np.zeros(50), np.ones(50)]})
    assert ties.percentile("t", 0.0) == 25 and ties.percentile("t", 1.0) == 75
    assert len(LEVELS) == 99


def test_one_value_percentile_is_the_batch_percentile() -> None:
    """Online reasons use the scalar path, batches the vectorised one: they must agree on
    every value — grid points, ties, between points, both ends, missing."""
    rng = np.random.default_rng(11)
    data = {
        "smooth": rng.normal(size=5_000),
        "ties": rng.integers(0, 6, size=5_000).astype(np.float64),
        "skewed": rng.exponential(size=5_000) ** 3,
    }
    population = build_population(datetime(2026, 5, 1, tzinfo=UTC), "fs-x", 5_000, data)
    for name, values in data.items():
        grid = np.asarray(population.grids[name])
        probes = np.r_[
            grid, (grid[:-1] + grid[1:]) / 2, rng.choice(values, 2_000), -1e9, 1e9, np.nan
        ]
        batch = population.percentiles(name, probes)
        one = [population.percentile(name, float(v)) for v in probes]
        assert [None if np.isnan(b) else int(b) for b in batch] == one


def test_a_tampered_model_file_is_refused(model_dir: Path, tmp_path: Path) -> None:
    card = read_card(model_dir)
    data = (model_dir / MODEL_FILE).read_bytes()
    changed = tmp_path / "changed"
    changed.mkdir()
    (changed / MODEL_FILE).write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    (changed / "model.json").write_text(json.dumps(card))
    with pytest.raises(ModelRefused, match="sha256"):
        load_model(changed)


def test_a_model_naming_an_untrusted_type_is_refused_even_with_a_matching_hash(
    model_dir: Path, tmp_path: Path
) -> None:
    """A file rewritten to build os.system, its card updated to match: skops refuses to
    construct a type outside the trusted list instead of importing it."""
    evil = tmp_path / "evil"
    evil.mkdir()
    with (
        zipfile.ZipFile(model_dir / MODEL_FILE) as source,
        zipfile.ZipFile(evil / MODEL_FILE, "w") as target,
    ):
        for item in source.infolist():
            body = source.read(item.filename)
            if item.filename == "schema.json":
                text = body.decode()
                assert '"sklearn.preprocessing._data"' in text
                text = text.replace('"sklearn.preprocessing._data"', '"os"', 1)
                text = text.replace('"StandardScaler"', '"system"', 1)
                body = text.encode()
            target.writestr(item, body)
    card = read_card(model_dir)
    card["model_sha256"] = hashlib.sha256((evil / MODEL_FILE).read_bytes()).hexdigest()
    (evil / "model.json").write_text(json.dumps(card))
    with pytest.raises(ModelRefused, match="not trusted"):
        load_pipeline(evil, card["model_sha256"])
    with pytest.raises(ModelRefused):
        load_model(evil)


def test_a_missing_or_foreign_card_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ModelRefused, match="train"):
        load_model(tmp_path)
    (tmp_path / "model.json").write_text("{}")
    with pytest.raises(ModelRefused, match="model_sha256"):
        load_model(tmp_path)


def _world(n: int = 500, seed: int = 5) -> tuple[GroundTruth, FeatureTable]:
    rng = np.random.default_rng(seed)
    x = draw_features(rng, n)
    z = x.copy()
    z[:, 5] /= 30.0
    logit = -2.0 + np.nansum(z * np.array([-2.0, -2.5, -1.0, 1.5, 2.0, 0.8]), axis=1)
    y = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(np.int64)
    start = datetime(2026, 1, 1, tzinfo=UTC)
    times = [start + timedelta(hours=int(h)) for h in rng.integers(0, 60 * 24, n)]
    truth = GroundTruth([f"u{i}" for i in range(n)], y, times, np.full(n, np.nan))
    table = FeatureTable(
        names=list(MODEL_FEATURES),
        values=x,
        coverage=np.ones_like(x),
        scored=np.ones(n, dtype=np.bool_),
        feature_set_version=FEATURE_SET_VERSION,
        families={f: "f" for f in MODEL_FEATURES},
        categories={f: CATEGORY[f] for f in MODEL_FEATURES},
        source="csv:test",
    )
    return truth, table


def test_train_writes_a_model_card_a_risk_team_can_read(tmp_path: Path) -> None:
    truth, table = _world()
    scale = PointsScale(points=650, odds=30, pdo=25)
    fitted, card = train_model(truth, table, scale=scale, sources={"ground_truth": "gt.csv"})
    model = write_model(tmp_path / "m", fitted, card, force=False)
    written = json.loads((tmp_path / "m" / "model.json").read_text())
    assert written["feature_set_version"] == FEATURE_SET_VERSION == model.feature_set_version
    assert written["model_version"] == model.model_version
    window = written["training"]["window"]
    assert window["first_application"] < window["split_cutoff"] <= window["test_first_application"]
    population = written["training"]["population"]
    assert population["n_train"] + population["n_test"] == population["n_scored"] == 500
    metrics = written["metrics"]
    assert 0.6 < metrics["test_auc"] <= 1 and 0.5 < metrics["cv_auc"] <= 1
    assert 0 < metrics["ks"] <= 1 and metrics["psi_score"] >= 0
    assert written["points_scale"]["points"] == 650 and model.scale == scale
    by_name = {f["name"]: f for f in written["features"]}
    assert set(by_name) == set(fitted.feature_names)
    charge = by_name.get("overnight_charge_share_30d")
    if charge is not None:  # the window set kept it (a 30-day feature)
        assert charge["coefficient"] < 0
        assert charge["direction"] == "lower values raise the risk of default"
        assert charge["reason"] == REASONS["overnight_charge_share_30d"]
        assert charge["category"] == "device_health"
    assert all(f["reason"] and f["direction"] for f in written["features"])
    with pytest.raises(Conflict):
        write_model(tmp_path / "m", fitted, card, force=False)


def test_train_refuses_a_labelled_set_too_small_to_validate() -> None:
    truth, table = _world(n=30)
    with pytest.raises(Invalid, match="cannot train"):
        train_model(truth, table)


def test_train_command_writes_a_scorable_model_directory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    truth, table = _world(n=300)
    truth_csv, features_csv = tmp_path / "truth.csv", tmp_path / "features.csv"
    with truth_csv.open("w", newline="") as handle:
        w = csv.writer(handle)
        w.writerow(["user_id", "default", "application_time"])
        for user, label, at in zip(
            truth.user_ids, truth.defaulted, truth.application_times, strict=True
        ):
            w.writerow([user, int(label), at.isoformat()])
    with features_csv.open("w", newline="") as handle:
        w = csv.writer(handle)
        w.writerow(["user_id", *MODEL_FEATURES])
        for user, row in zip(truth.user_ids, table.values, strict=True):
            w.writerow([user, *("" if math.isnan(v) else repr(float(v)) for v in row)])
    out = tmp_path / "models" / "ref"
    args = [
        "train",
        "--ground-truth",
        str(truth_csv),
        "--out",
        str(out),
        "--features-source",
        "csv",
        "--features-file",
        str(features_csv),
        "--pdo",
        "40",
    ]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "model_version=" in printed and "test_auc=" in printed and str(out) in printed
    model = load_model(out)
    assert model.scale.pdo == 40 and set(model.features) <= set(MODEL_FEATURES)
    with pytest.raises(Conflict, match="--force"):
        main(args)
