"""End-to-end signal recovery: simulator → MQTT → collector → TimescaleDB → features → model.

The simulator plants a latent stability score that drives defaults through label noise; the
whole chain must recover it (issue 8 acceptance):

* test AUC of the reference model ≥ 0.70 and ≥ 90 % of the oracle's AUC (the latent score seen
  through the same labels);
* no feature has IV > 0.5 (leakage alarm);
* the deliberately leaky variant (features as of application + 14 days) scores sharply higher,
  and the honest pipeline does not beat the oracle.

Runs only with HEARTH_E2E=1. Size from the environment: HEARTH_E2E_HOUSEHOLDS (default 2000),
HEARTH_E2E_DAYS (default 90), HEARTH_E2E_SEED (default 42). About 40 min at the default size.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import pytest

from tests.conftest import ROOT, Broker, free_port

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(5400),
    # At the acceptance size the chain alone takes ~40 min on a 2-core machine — over CI's
    # budget. CI runs the smaller fleet test (test_features_fleet.py) instead; this one runs
    # on demand and its figures are in the issue notes (same path as `scripts/demo`).
    pytest.mark.skipif(
        os.environ.get("HEARTH_E2E") != "1",
        reason="set HEARTH_E2E=1 to run (≈40 min at 2,000 households x 90 days)",
    ),
]

HOUSEHOLDS = int(os.environ.get("HEARTH_E2E_HOUSEHOLDS", "2000"))
DAYS = int(os.environ.get("HEARTH_E2E_DAYS", "90"))
SEED = int(os.environ.get("HEARTH_E2E_SEED", "42"))

if importlib.util.find_spec("device_sim.generate") is None or (
    importlib.util.find_spec("collector.service") is None
):
    pytest.skip("simulator or collector not built yet", allow_module_level=True)


def _stored_rows(database_url: str) -> int:
    with psycopg.connect(database_url, autocommit=True) as conn:
        total = 0
        for table in ("numeric_readings", "categorical_readings", "dead_letters"):
            row = conn.execute(f"SELECT count(*) FROM {table}").fetchone()
            total += int(row[0]) if row else 0
        return total


def _wait_drained(database_url: str, deadline_s: float) -> int:
    """Poll the stored row count until it stops moving for three polls in a row."""
    end = time.monotonic() + deadline_s
    previous, stable = -1, 0
    while time.monotonic() < end:
        current = _stored_rows(database_url)
        stable = stable + 1 if current == previous else 0
        if stable >= 3 and current > 0:
            return current
        previous = current
        time.sleep(2)
    raise TimeoutError(f"collector still ingesting after {deadline_s}s ({previous} rows)")


@pytest.fixture
def e2e_env(database_url: str, broker: Broker) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
            "HEARTH_DATABASE_URL": database_url,
            "HEARTH_MQTT_URL": broker.url,
            "HEARTH_MQTT_CLIENT_ID": f"hearth-e2e-{os.getpid()}",
            "HEARTH_COLLECTOR_HTTP_PORT": str(free_port()),
            # The fleet replays DAYS of history: the collector must accept events that old.
            "HEARTH_MAX_EVENT_AGE_DAYS": str(DAYS + 2),
            "HEARTH_RETENTION_DAYS": str(DAYS + 2),
        }
    )
    return env


def test_chain_recovers_the_planted_signal(
    e2e_env: dict[str, str], database_url: str, broker: Broker, tmp_path: Path
) -> None:
    python = sys.executable
    log = (tmp_path / "collector.log").open("wb")
    collector = subprocess.Popen(
        [python, "-m", "collector", "run"], cwd=ROOT, env=e2e_env, stdout=log, stderr=log
    )
    try:
        truth = tmp_path / "ground_truth.csv"
        subprocess.run(
            [
                python,
                "-m",
                "device_sim",
                "run",
                "--households",
                str(HOUSEHOLDS),
                "--days",
                str(DAYS),
                "--seed",
                str(SEED),
                "--out",
                str(tmp_path / "sim"),
                "--ground-truth",
                str(truth),
                "--mqtt-url",
                broker.url,
            ],
            cwd=ROOT,
            env=e2e_env,
            check=True,
        )
        assert collector.poll() is None, "collector died: see collector.log"
        rows = _wait_drained(database_url, deadline_s=1800)
        assert rows > HOUSEHOLDS * DAYS  # something like every household every day landed
    finally:
        collector.terminate()
        assert collector.wait(timeout=120) == 0, "collector must drain and exit 0 on SIGTERM"
        log.close()

    subprocess.run([python, "-m", "features", "rollup"], cwd=ROOT, env=e2e_env, check=True)
    out = tmp_path / "report"
    subprocess.run(
        # The fleet's history was replayed just now: rows count as known at their event time.
        [
            python,
            "-m",
            "features",
            "report",
            "--ground-truth",
            str(truth),
            "--out",
            str(out),
            "--knowledge",
            "event",
        ],
        cwd=ROOT,
        env=e2e_env,
        check=True,
    )
    report = json.loads((out / "report.json").read_text())
    summary = {k: report[k] for k in ("auc", "oracle_auc", "max_iv", "auc_leaky", "n_scored")}
    print(f"e2e households={HOUSEHOLDS} days={DAYS} {summary}")

    assert report["n_scored"] >= 0.9 * report["n_users"]
    assert report["auc"] >= 0.70, summary
    assert report["auc"] >= 0.90 * report["oracle_auc"], summary
    assert report["max_iv"] <= 0.5, f"leakage alarm: {report['leakage']['suspect_iv_features']}"
    assert report["leakage"]["leaky_variant_detected"] is True, summary
    assert report["auc_leaky"] >= report["auc_honest"] + 0.05, summary
    assert report["leakage"]["honest_above_oracle"] is False, summary
    assert (out / "report.html").stat().st_size > 50_000
