"""``python -m features report`` on synthetic CSV inputs (no services), and a browser render.

The synthetic world mimics the simulator: a latent stability score drives defaults through
noise; honest features are noisy views of the score; the leaky features additionally move with
the label (post-application distress), so the leakage check must fire on them.
"""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from features.cli import main
from features.report.data import load_ground_truth
from hearth.errors import Invalid

NAMES = ["night_home_share", "router_uptime", "charge_regularity", "screen_entropy", "noise"]
REQUIRED_KEYS = {
    "auc",
    "oracle_auc",
    "ks",
    "gini",
    "max_iv",
    "n_users",
    "n_train",
    "n_test",
    "iv",
    "psi",
    "psi_score",
    "coverage",
    "calibration",
    "leakage",
    "auc_honest",
    "auc_leaky",
    "model_version",
    "feature_set_version",
    "reason_code_examples",
}


def write_world(directory: Path, n: int = 1200, seed: int = 7) -> dict[str, Path]:
    rng = np.random.default_rng(seed)
    latent = rng.normal(size=n)
    logit = -2.4 - 1.2 * latent + 0.5 * rng.normal(size=n)
    y = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(int)
    start = datetime(2025, 3, 1, tzinfo=UTC)
    hours = rng.integers(0, 14 * 24, n)
    paths = {k: directory / f"{k}.csv" for k in ("truth", "honest", "leaky")}
    with paths["truth"].open("w", newline="") as handle:
        w = csv.writer(handle)
        w.writerow(["user_id", "latent_score", "default", "application_date", "application_time"])
        for i in range(n):
            t = start + timedelta(hours=int(hours[i]))
            w.writerow([f"u{i}", f"{latent[i]:.6f}", y[i], t.date().isoformat(), t.isoformat()])

    def features(leak: bool) -> np.ndarray:
        x = np.column_stack(
            [
                latent + rng.normal(0, 1.2, n),
                latent + rng.normal(0, 1.5, n),
                0.5 * latent + rng.normal(0, 1.0, n),
                rng.normal(size=n),
                rng.normal(size=n),
            ]
        )
        if leak:
            x[:, 0] -= 2.5 * y
            x[:, 1] -= 2.0 * y
        x[rng.random(x.shape) < 0.1] = np.nan
        return x

    for key, leak in (("honest", False), ("leaky", True)):
        x = features(leak)
        with paths[key].open("w", newline="") as handle:
            w = csv.writer(handle)
            w.writerow(["user_id", *NAMES, *[f"coverage__{n}" for n in NAMES]])
            for i in range(n - 20):  # the last 20 users have no vector: unscored
                cells = ["" if np.isnan(val) else f"{val:.6f}" for val in x[i]]
                w.writerow([f"u{i}", *cells, *["0.9"] * len(NAMES)])
    return paths


@pytest.fixture(scope="module")
def report_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("report")
    paths = write_world(root)
    out = root / "out"
    code = main(
        [
            "report",
            "--ground-truth",
            str(paths["truth"]),
            "--out",
            str(out),
            "--features-source",
            "csv",
            "--features-file",
            str(paths["honest"]),
            "--leaky-features-file",
            str(paths["leaky"]),
        ]
    )
    assert code == 0
    return out


def test_report_writes_json_with_every_key(report_dir: Path) -> None:
    report = json.loads((report_dir / "report.json").read_text())
    assert set(report) >= REQUIRED_KEYS
    assert set(report["iv"]) == set(NAMES) and set(report["psi"]) == set(NAMES)
    assert report["n_users"] == 1200 and report["n_scored"] == 1180
    assert report["n_train"] + report["n_test"] == 1180
    assert report["gini"] == pytest.approx(2 * report["auc"] - 1)
    assert report["max_iv"] == max(report["iv"].values())
    # the signal is recovered: well above chance, below the oracle that sees the latent score
    assert 0.6 < report["auc"] < report["oracle_auc"] + 0.02
    assert report["iv"]["night_home_share"] > report["iv"]["noise"]
    example = report["reason_code_examples"][0]
    assert example["model_version"] == report["model_version"]
    assert example["reason_codes"], "the riskiest applicant has reasons"


def test_leakage_check_fires_on_leaky_features_only(report_dir: Path) -> None:
    report = json.loads((report_dir / "report.json").read_text())
    leak = report["leakage"]
    assert report["auc_leaky"] > report["auc_honest"] + 0.1
    assert leak["leaky_variant_detected"] is True
    assert leak["honest_above_oracle"] is False
    assert leak["honest_passed"] is True


def test_model_is_saved_with_metadata(report_dir: Path) -> None:
    meta = json.loads((report_dir / "model" / "model.json").read_text())
    report = json.loads((report_dir / "report.json").read_text())
    assert meta["model_version"] == report["model_version"]
    assert meta["feature_names"] == report["model_features"]


def test_html_is_self_contained_with_plots(report_dir: Path) -> None:
    page = (report_dir / "report.html").read_text()
    assert page.count("data:image/png;base64,") >= 6  # ROC, KS, dist, calibration, IV, coverage
    assert "http://" not in page and "https://" not in page  # no external assets
    for heading in ("Information Value", "Leakage check", "Reason codes", "Calibration"):
        assert heading in page


def test_headline_is_printed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    paths = write_world(tmp_path, n=400, seed=3)
    args = ["report", "--ground-truth", str(paths["truth"]), "--out", str(tmp_path / "o")]
    main([*args, "--features-source", "csv", "--features-file", str(paths["honest"])])
    printed = capsys.readouterr().out
    assert "test AUC" in printed and "oracle AUC" in printed and "report.html" in printed
    report = json.loads((tmp_path / "o" / "report.json").read_text())
    assert report["auc_leaky"] is None  # no leaky variant without features after the date


@pytest.mark.parametrize(
    ("n", "why"),
    [
        (30, "only 10 of 30 users have features"),
        (220, "needs both defaulters and non"),
        (120, "for 5-fold cross-validation"),
    ],
)
def test_a_fleet_too_small_to_validate_still_gets_a_report(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], n: int, why: str
) -> None:
    """Issue 12 §4: exit 0, features summarised, and the report says plainly why the model
    section is empty; an earlier run's model/ does not stay behind to be mistaken for one."""
    paths = write_world(tmp_path, n=n, seed=5)
    if n == 220:  # every user repaid: no defaulters anywhere
        rows = paths["truth"].read_text().splitlines()
        header, body = rows[0], [r.split(",") for r in rows[1:]]
        body = [[*r[:2], "0", *r[3:]] for r in body]
        paths["truth"].write_text("\n".join([header, *(",".join(r) for r in body)]) + "\n")
    if n == 120:  # defaulters in both periods, but too few to cross-validate on
        rows = paths["truth"].read_text().splitlines()
        header, body = rows[0], [r.split(",") for r in rows[1:]]
        by_time = sorted(range(len(body)), key=lambda i: (body[i][3], body[i][4]))
        keep = {*by_time[:4], *by_time[-2:]}
        body = [[*r[:2], "1" if i in keep else "0", *r[3:]] for i, r in enumerate(body)]
        paths["truth"].write_text("\n".join([header, *(",".join(r) for r in body)]) + "\n")
    out = tmp_path / "o"
    (out / "model").mkdir(parents=True)
    (out / "model" / "stale.txt").write_text("from an earlier, bigger run")
    args = ["report", "--ground-truth", str(paths["truth"]), "--out", str(out)]
    assert main([*args, "--features-source", "csv", "--features-file", str(paths["honest"])]) == 0
    assert "not trained" in capsys.readouterr().out
    report = json.loads((out / "report.json").read_text())
    assert why in report["model_skipped_reason"]
    assert report["n_users"] == n and report["n_scored"] == n - 20
    assert set(report["coverage"]) == set(NAMES)
    assert 0.5 < report["coverage"]["noise"]["non_null_share"] <= 1.0
    page = (out / "report.html").read_text()
    assert "Model: not trained" in page and why in page and "Features: coverage" in page
    assert not (out / "model").exists()


def test_bad_inputs_are_one_line_errors(tmp_path: Path) -> None:
    bad = tmp_path / "gt.csv"
    bad.write_text("user_id,default\nu1,0\n")
    with pytest.raises(Invalid, match="application_date"):
        load_ground_truth(bad)
    with pytest.raises(Invalid, match="no such file"):
        load_ground_truth(tmp_path / "missing.csv")
    with pytest.raises(Invalid, match="--features-file"):
        main(["report", "--ground-truth", str(bad), "--features-source", "csv"])


def test_ground_truth_prefers_the_precise_application_time(tmp_path: Path) -> None:
    path = tmp_path / "gt.csv"
    path.write_text(
        "user_id,default,application_date,application_time,latent_score\n"
        "u1,1,2025-03-02,2025-03-01T22:00:00+00:00,-0.5\nu2,false,2025-03-05,,\n"
    )
    with pytest.raises(Invalid, match=":3"):  # u2 has no application_time
        load_ground_truth(path)
    path.write_text("user_id,default,application_date\nu1,1,2025-03-02\n")
    truth = load_ground_truth(path)
    assert truth.application_times == [datetime(2025, 3, 2, tzinfo=UTC)]


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def test_report_renders_in_headless_chromium(report_dir: Path, tmp_path: Path) -> None:
    browser = _chromium()
    if browser is None:
        pytest.skip("chromium not installed (scripts/setup installs it)")
    png = tmp_path / "report.png"
    subprocess.run(
        [
            browser,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
            f"--user-data-dir={tmp_path / 'profile'}",
            f"--screenshot={png}",
            "--window-size=1280,2400",
            (report_dir / "report.html").as_uri(),
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    from matplotlib.image import imread

    pixels = imread(str(png))
    assert pixels.shape[0] == 2400 and pixels.shape[1] == 1280
    rgb = (pixels[..., :3] * 255).astype(np.uint8).reshape(-1, 3)
    distinct = np.unique(rgb, axis=0).shape[0]
    assert distinct > 500, f"only {distinct} colours: the page looks blank"
    # The plots' line colours are on the page: model blue and defaulter red.
    assert (np.abs(rgb.astype(int) - [31, 119, 180]).sum(axis=1) < 30).sum() > 500
    assert (np.abs(rgb.astype(int) - [214, 39, 40]).sum(axis=1) < 30).sum() > 200
