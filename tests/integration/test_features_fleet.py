"""On a simulated fleet, each feature family moves with the latent stability as expected.

The whole chain: ``python -m device_sim run`` publishes a seeded fleet to a private broker,
``python -m collector run`` stores it, the rollups and the engine compute features, and the
sign of Spearman's rank correlation with the simulator's latent score is checked per family.

The fleet has a fixed seed **and** a fixed end of history, and its features are computed as of
that end, so the stream, the stored rows and every correlation are the same on every run: a
change that loses a family's signal fails here every time, not now and then. This is CI's
guard of the planted signal; the full signal-recovery test (a model's AUC against the oracle's,
2,000 households) is ``test_end_to_end.py``, which does not fit CI's 30 minutes.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd
import psycopg
import pytest

from features.engine import Knowledge, compute_vectors
from features.rollups import refresh_rollups
from tests.conftest import free_port
from tests.integration.fleet import replay_env

if TYPE_CHECKING:
    from tests.conftest import Broker

ROOT = Path(__file__).resolve().parents[2]
HOUSEHOLDS, DAYS, SEED = 150, 45, 7
END = datetime.fromisoformat("2026-11-01T00:00:00+00:00")

# (family, feature, expected sign of the rank correlation with latent stability), from the
# simulator's traits (device_sim/README.md, persona.traits_from): stable people have fewer and
# shorter phone gaps, a more concentrated daily activity, more nights at home, a steadier set of
# places week to week, more overnight charging, steadier plug energy and fewer household outages
# (routers and plugs go silent during one; the simulator sends no offline reports). (The radius
# of gyration is not used: stable personas commute more, which offsets their smaller radius.)
EXPECTED = [
    ("coverage", "longest_gap_days_90d", -1),
    ("routine", "hour_entropy_presence_90d", -1),
    # The phone's own routine, which every household member has (not only the first one, who
    # has the home sensors): a regular wake-up, commute and weekend.
    ("routine", "wake_time_circvar_90d", -1),
    ("routine", "weekend_wake_shift_h_90d", -1),
    ("routine", "weekday_departure_circvar_90d", -1),
    ("routine", "weekday_return_circvar_90d", -1),
    ("residential", "home_night_share_90d", +1),
    ("mobility", "week_churn_30d", -1),
    ("phone_care", "overnight_charge_share_90d", +1),
    ("infrastructure", "daily_kwh_cv_90d", -1),
    ("infrastructure", "always_on_uptime_ratio_90d", +1),
    ("infrastructure", "always_on_outages_per_30d_90d", -1),
]


def _rows(conn: psycopg.Connection) -> int:
    row = conn.execute(
        "SELECT (SELECT count(*) FROM numeric_readings) + (SELECT count(*) FROM "
        "categorical_readings)"
    ).fetchone()
    return int(row[0]) if row else 0


@pytest.mark.slow
def test_feature_families_follow_latent_stability(
    database_url: str, broker: Broker, tmp_path: Path
) -> None:
    env = dict(
        os.environ,
        HEARTH_DATABASE_URL=database_url,
        HEARTH_MQTT_URL=broker.url,
        HEARTH_COLLECTOR_HTTP_PORT=str(free_port()),
        **replay_env(END - timedelta(days=DAYS)),
    )
    log = (tmp_path / "collector.log").open("w")
    collector = subprocess.Popen(
        [sys.executable, "-m", "collector", "run"],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=log,
    )  # fmt: skip
    try:
        sim = subprocess.run(
            [sys.executable, "-m", "device_sim", "run", "--households", str(HOUSEHOLDS),
             "--days", str(DAYS), "--seed", str(SEED), "--end", END.isoformat(),
             "--id-prefix", "fleet", "--mqtt-url", broker.url,
             "--out", str(tmp_path / "sim")],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=900,
        )  # fmt: skip
        assert sim.returncode == 0, sim.stderr[-2000:]
        with psycopg.connect(database_url, autocommit=True) as conn:
            # Drained when the row count stops growing for a few seconds.
            deadline, last, stable_since = time.monotonic() + 300, -1, time.monotonic()
            while time.monotonic() < deadline:
                n = _rows(conn)
                if n != last:
                    last, stable_since = n, time.monotonic()
                elif time.monotonic() - stable_since > 5:
                    break
                time.sleep(0.5)
            assert last > 10_000, (tmp_path / "collector.log").read_text()[-3000:]
    finally:
        collector.send_signal(signal.SIGTERM)
        collector.wait(timeout=60)
        log.close()

    truth = pd.read_csv(tmp_path / "sim" / "ground_truth.csv")
    with psycopg.connect(database_url, autocommit=True) as conn:
        refresh_rollups(conn, full=True)
        # As of the history's end; its rows were ingested just now, so known at their event time.
        vectors = compute_vectors(conn, list(truth["user_id"]), END, knowledge=Knowledge.EVENT)
    assert len(vectors) == len(truth)
    frame = pd.DataFrame(
        [{name: cell.value for name, cell in v.values.items()} | {"user_id": v.user_id}
         for v in vectors]
    ).merge(truth[["user_id", "latent_score"]], on="user_id")  # fmt: skip
    rhos = {
        c: frame[c].corr(frame["latent_score"], method="spearman")
        for c in frame.columns
        if c not in ("user_id", "latent_score") and frame[c].notna().sum() >= 30
    }
    table = "\n".join(f"{rho:+.2f} {name}" for name, rho in sorted(rhos.items()))
    print(table)
    for family, feature, sign in EXPECTED:
        pair = frame[[feature, "latent_score"]].dropna()
        assert len(pair) >= 30, f"{feature}: only {len(pair)} users with a value"
        assert pair[feature].nunique() > 1, f"{feature} is constant on the fleet"
        rho = pair[feature].corr(pair["latent_score"], method="spearman")
        assert rho * sign > 0, (
            f"{family}: {feature} rank correlation {rho:+.2f}, expected {sign:+d}"
        )
