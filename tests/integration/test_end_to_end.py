"""End-to-end signal recovery: simulator → MQTT → collector → TimescaleDB → features → model.

The simulator plants a latent stability score that drives defaults through label noise (plus a
small part carried by household membership changes, device_sim/README.md); the whole chain
must recover it (issues 8 and 18):

* test AUC of the reference model ≥ 0.70 and ≥ 90 % of the oracle's AUC (the latent score seen
  through the same labels);
* no feature has IV > 0.5 (leakage alarm);
* the deliberately leaky variant (features as of application + 14 days) scores sharply higher,
  and the honest pipeline does not beat the oracle;
* the report shows the relationships family's IV and whether the family adds AUC.

It runs on 2,000 households with a fixed seed **and** a fixed end of history, so its result is
the same on every run and no change can silently lose the signal. It is not in CI: with
households of 1-5 members the fleet is 8.2 M messages, which one collector stores at ~8,000
msg/s on the 2-core CI machine (the streaming replica of the tests replays beside it), so the
test alone takes over 20 minutes and CI would pass its 30-minute budget. ``HEARTH_E2E=1`` runs
it (the issue-18 note quotes a run). Lean on purpose: the fleet is generated once with no network,
registered with one admin CLI call for the devices and one for the consent grants, and
published on two anonymous connections (one per publisher process; the test broker accepts
anonymous clients) while one collector replica stores it. Each phase's duration is printed;
HEARTH_E2E_HOUSEHOLDS, HEARTH_E2E_DAYS, HEARTH_E2E_SEED and HEARTH_E2E_END change the fleet for
a manual run (the assertions are calibrated on the defaults).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from tests.conftest import ROOT, Broker, free_port
from tests.integration.fleet import replay_env

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(3600),
    pytest.mark.skipif(
        os.environ.get("HEARTH_E2E") != "1",
        reason="set HEARTH_E2E=1 to run (over 20 min: 2,000 households, 8.2 M messages)",
    ),
]

HOUSEHOLDS = int(os.environ.get("HEARTH_E2E_HOUSEHOLDS", "2000"))
DAYS = int(os.environ.get("HEARTH_E2E_DAYS", "90"))
SEED = int(os.environ.get("HEARTH_E2E_SEED", "42"))
END = os.environ.get("HEARTH_E2E_END", "2026-11-01T00:00:00Z")
# Messages/s: below what the collector stores here, so the broker's queue never drops (as
# scripts/demo's DEMO_RATE).
PUBLISH_RATE = int(os.environ.get("HEARTH_E2E_RATE", "8000"))
PYTHON = sys.executable


class Phases:
    """Wall time of each phase, printed as the test goes (CI keeps the log)."""

    def __init__(self) -> None:
        self.started = self.last = time.monotonic()
        self.seconds: dict[str, float] = {}

    def done(self, name: str) -> None:
        now = time.monotonic()
        self.seconds[name] = now - self.last
        self.last = now
        print(f"e2e phase {name}: {self.seconds[name]:.1f} s", flush=True)

    def summary(self) -> str:
        parts = " ".join(f"{k}={v:.0f}s" for k, v in self.seconds.items())
        return f"{parts} total={time.monotonic() - self.started:.0f}s"


def _env(database_url: str, broker: Broker) -> dict[str, str]:
    start = datetime.fromisoformat(END.replace("Z", "+00:00")) - timedelta(days=DAYS)
    env = dict(os.environ)
    env.update(
        HEARTH_DATABASE_URL=database_url,
        HEARTH_MQTT_URL=broker.url,
        HEARTH_MQTT_CLIENT_ID=f"hearth-e2e-{os.getpid()}",
        HEARTH_COLLECTOR_HTTP_PORT=str(free_port()),
        **replay_env(start),
    )
    return env


def _run(args: list[str], env: dict[str, str]) -> str:
    proc = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, f"{' '.join(args[:4])}: {proc.stderr[-3000:]}"
    return proc.stdout


def _field(line: str, name: str) -> int:
    fields = dict(kv.split("=", 1) for kv in line.split() if "=" in kv)
    return int(fields[name])


def _acked(port: int) -> float:
    """The collector's count of messages acknowledged (each after the commit storing it)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        for line in r.read().decode().splitlines():
            if line.startswith("hearth_collector_messages_acked_total"):
                return float(line.split()[-1])
    return 0.0


def _wait_stored(port: int, messages: int, deadline_s: float) -> None:
    """Poll the collector until it has acknowledged every published message."""
    end = time.monotonic() + deadline_s
    while (acked := _acked(port)) < messages:
        assert time.monotonic() < end, f"collector acknowledged {acked} of {messages}"
        time.sleep(1)  # poll interval of a condition with a deadline


@pytest.fixture
def collector(database_url: str, broker: Broker, tmp_path: Path) -> Iterator[dict[str, str]]:
    env = _env(database_url, broker)
    log = (tmp_path / "collector.log").open("wb")
    proc = subprocess.Popen([PYTHON, "-m", "collector", "run"], cwd=ROOT, env=env, stdout=log,
                            stderr=log)  # fmt: skip
    port = int(env["HEARTH_COLLECTOR_HTTP_PORT"])
    end = time.monotonic() + 60
    while True:
        assert proc.poll() is None, "collector died at start: see collector.log"
        try:
            _acked(port)
            break
        except OSError:
            assert time.monotonic() < end, "collector not serving /metrics after 60 s"
            time.sleep(0.2)
    try:
        yield env
    finally:
        proc.terminate()
        assert proc.wait(timeout=120) == 0, "collector must drain and exit 0 on SIGTERM"
        log.close()


def test_chain_recovers_the_planted_signal(collector: dict[str, str], tmp_path: Path) -> None:
    env, phases, sim = collector, Phases(), tmp_path / "sim"
    fleet = ["--households", str(HOUSEHOLDS), "--days", str(DAYS), "--seed", str(SEED)]
    line = _run([PYTHON, "-m", "device_sim", "generate", *fleet, "--end", END, "--out",
                 str(sim), "--processes", "2"], env).strip().splitlines()[-1]  # fmt: skip
    phases.done("generate")
    _run([PYTHON, "-m", "device_sim", "register", "--out", str(sim)], env)
    phases.done("register")
    time.sleep(2)  # device_sim.run.REGISTRY_SETTLE_S: the collector's caches reload on NOTIFY
    # Paced below what the collector stores: past the broker's queue limit it would drop.
    published = _run([PYTHON, "-m", "device_sim", "publish", "--out", str(sim), "--anonymous",
                      "--processes", "2", "--rate", str(PUBLISH_RATE)],
                     env).strip().splitlines()[-1]  # fmt: skip
    phases.done("publish")
    assert _field(published, "published") == _field(line, "messages")
    _wait_stored(int(env["HEARTH_COLLECTOR_HTTP_PORT"]), _field(published, "acked"), 1800)
    phases.done("drain")
    _run([PYTHON, "-m", "device_sim", "withdraw", "--out", str(sim)], env)
    _run([PYTHON, "-m", "features", "rollup"], env)
    phases.done("rollup")
    out = tmp_path / "report"
    # The fleet's history was replayed just now: rows count as known at their event time.
    _run([PYTHON, "-m", "features", "report", "--ground-truth", str(sim / "ground_truth.csv"),
          "--out", str(out), "--knowledge", "event"], env)  # fmt: skip
    phases.done("report")

    report = json.loads((out / "report.json").read_text())
    summary = {k: report[k] for k in ("auc", "oracle_auc", "max_iv", "auc_leaky", "n_scored")}
    family = report["family_iv"]["relationships"]
    gain = report["family_auc"]
    print(
        f"e2e households={HOUSEHOLDS} days={DAYS} seed={SEED} end={END} {summary} "
        f"relationships max_iv={family['max_iv']:.4f} ({family['feature']}) "
        f"auc_without_relationships={gain['auc_without']:.4f} gain={gain['auc_gain']:+.4f} "
        f"{phases.summary()}"
    )
    assert report["n_scored"] >= 0.9 * report["n_users"]
    assert report["auc"] >= 0.70, summary
    assert report["auc"] >= 0.90 * report["oracle_auc"], summary
    assert report["max_iv"] <= 0.5, f"leakage alarm: {report['leakage']['suspect_iv_features']}"
    assert report["leakage"]["leaky_variant_detected"] is True, summary
    assert report["auc_leaky"] >= report["auc_honest"] + 0.05, summary
    assert report["leakage"]["honest_above_oracle"] is False, summary
    # The household family is in the report: its IV, and whether it adds AUC.
    assert family["features"] == 12 and family["max_iv"] > 0.0
    assert gain["family"] == "relationships" and gain["auc_with"] == report["auc"]
    html = (out / "report.html").read_text()
    assert html.count("relationships") >= 2 and "family" in html
    assert (out / "report.html").stat().st_size > 50_000
