"""Issue 12 §4: the README's main command runs twice on the same machine and succeeds.

``scripts/demo`` with a small fleet, twice in a row with the same seed, against a private
broker (dynamic-security plugin) and the session's database: the second run registers the same
households again, which rotates their devices' passwords, and every device publishes with its
new credentials; a fleet this small cannot validate a model, and the report says so (exit 0).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest

from tests.conftest import ROOT, free_port
from tests.integration.auth_broker import start_auth_broker
from tests.integration.consent_fixtures import unique


def _kv(text: str) -> dict[str, str]:
    """The last ``key=value`` line device_sim prints."""
    lines = [line for line in text.splitlines() if "published=" in line]
    assert lines, text[-2000:]
    return dict(re.findall(r"(\w+)=(\S+)", lines[-1]))


@pytest.mark.slow
def test_small_demo_runs_twice_with_the_same_seed(database_url: str, tmp_path: Path) -> None:
    ab = start_auth_broker(tmp_path / "state", database_url)
    env = {
        **os.environ,
        **ab.env(),
        "HEARTH_MQTT_URL": ab.collector_url,
        "HEARTH_MQTT_CLIENT_ID": unique("demo"),
        "HEARTH_MQTT_SHARE_GROUP": unique("g"),
        "HEARTH_COLLECTOR_HTTP_PORT": str(free_port()),
        "DEMO_SETUP": "0",
        "DEMO_HOUSEHOLDS": "20",
        "DEMO_DAYS": "7",
        "DEMO_SEED": "99",
    }
    try:
        runs = []
        for i in range(2):
            out = tmp_path / f"out{i}"
            proc = subprocess.run(
                ["bash", "scripts/demo"],
                cwd=ROOT,
                env={**env, "DEMO_OUT": str(out)},
                capture_output=True,
                text=True,
                timeout=900,
            )
            assert proc.returncode == 0, proc.stderr[-3000:]
            runs.append((out, proc))
        for out, proc in runs:
            kv = _kv(proc.stdout)
            assert kv["connect_failures"] == "0" and kv["published"] == kv["acked"]
            assert int(kv["published"]) > 0
            report = json.loads((out / "report" / "report.json").read_text())
            # One user per household member (households of 1-5): the ground truth's rows.
            with (out / "ground_truth.csv").open() as truth:
                members = sum(1 for _ in truth) - 1
            assert members >= 20 and report["n_users"] == members
            # 20 households cannot train and validate a model; the report says why.
            assert (
                "defaulters" in report["model_skipped_reason"]
                or "users" in (report["model_skipped_reason"])
            )
            assert "Model: not trained" in (out / "report" / "report.html").read_text()
        # Each run ends with the operator console's URL and an admin token of its own.
        tokens = [re.search(r"HEARTH_API_TOKENS='([^=']+)=admin'", p.stdout) for _, p in runs]
        assert all(t is not None and len(t.group(1)) >= 16 for t in tokens)
        assert tokens[0].group(1) != tokens[1].group(1)  # type: ignore[union-attr]
        assert all(re.search(r"open http://[^ ]+:\d+/console/", p.stdout) for _, p in runs)
        first, second = (
            [json.loads(line) for line in (out / "sim" / "registered_devices.jsonl").open()]
            for out, _ in runs
        )
        assert not any(d["rotated"] for d in first)
        assert all(d["rotated"] for d in second)  # the same devices, new passwords
        assert {d["device_id"] for d in first} == {d["device_id"] for d in second}
        assert {d["mqtt_password"] for d in first}.isdisjoint(d["mqtt_password"] for d in second)
    finally:
        ab.stop()
