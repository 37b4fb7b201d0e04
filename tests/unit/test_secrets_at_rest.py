"""No usable secret ships with the project, and the simulator's credential files are private
(issue 11 §8)."""

from __future__ import annotations

import json
import re
import stat
from pathlib import Path
from typing import Any

import pytest
import yaml

import device_sim.register as register

ROOT = Path(__file__).resolve().parents[2]
SECRET_VARIABLES = ("HEARTH_PSEUDONYM_KEY", "HEARTH_API_TOKENS")
# ${NAME:?message} or ${NAME?message}: compose refuses to start when NAME is unset.
REQUIRED = re.compile(r"^\$\{(?P<name>[A-Z_]+):?\?[^}]+\}$")


def _environments() -> list[tuple[str, dict[str, Any]]]:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return [(name, svc.get("environment") or {}) for name, svc in compose["services"].items()]


def test_compose_requires_the_pseudonym_key_and_tokens_without_defaults() -> None:
    seen = 0
    for service, env in _environments():
        for name in SECRET_VARIABLES:
            if name not in env:
                continue
            seen += 1
            match = REQUIRED.match(str(env[name]))
            assert match is not None, f"{service}: {name} has a default: {env[name]!r}"
            assert match["name"] == name
    assert seen >= 2 * 3  # migrate, collector, features (and the demo) all get both


def _fake_devices_add(records: list[dict[str, str]]) -> str:
    return "".join(json.dumps(r) + "\n" for r in records)


@pytest.mark.parametrize("pre_existing", [False, True])
def test_simulator_writes_device_credentials_with_mode_0600(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, pre_existing: bool
) -> None:
    devices = [
        {
            "key": "k1",
            "user_id": "u1",
            "kind": "phone",
            "format": "hearth",
            "external_id": "d1",
            "tz": "UTC",
            "user_tz": "UTC",
        }
    ]
    answer = [
        {
            "format": "hearth",
            "external_id": "d1",
            "mqtt_username": "d1",
            "mqtt_password": "pw-visible-to-owner-only",
        }
    ]
    monkeypatch.setattr(register, "_run", lambda args, timeout_s=600.0: _fake_devices_add(answer))
    target = tmp_path / "registered_devices.jsonl"
    if pre_existing:  # a file left by an older version, world-readable
        target.write_text("")
        target.chmod(0o644)
    creds = register.register_devices(tmp_path, devices)
    assert creds == {"k1": ("d1", "pw-visible-to-owner-only")}
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert "pw-visible-to-owner-only" in target.read_text()
    register.register_devices(tmp_path, devices, ".batch1")  # appending keeps the mode
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert target.read_text().count("pw-visible-to-owner-only") == 2
