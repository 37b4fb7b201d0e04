"""``python -m collector users|devices|consent ...`` as a user runs them (subprocesses)."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import pytest

from hearth.errors import Invalid
from tests.integration.consent_fixtures import unique

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def cli(database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys):  # type: ignore[no-untyped-def]
    """Run ``python -m collector ARGS`` in-process (interpreter start-up is seconds on a busy
    2-core machine); ``ok=False`` runs a real subprocess to check exit code and stderr."""
    from collector.cli import main
    from hearth.settings import get_settings

    monkeypatch.setenv("HEARTH_DATABASE_URL", database_url)
    monkeypatch.setenv("HEARTH_STATE_DIR", str(tmp_path))
    get_settings.cache_clear()
    env = {**os.environ}

    def run(
        *args: str, stdin: str | None = None, ok: bool = True
    ) -> subprocess.CompletedProcess[str]:
        if not ok:
            return subprocess.run(
                [sys.executable, "-m", "collector", *args],
                input=stdin, capture_output=True, text=True, env=env, cwd=ROOT, timeout=120,
            )  # fmt: skip
        capsys.readouterr()
        monkeypatch.setattr(sys, "stdin", io.StringIO(stdin or ""))
        code = main(list(args))
        out = capsys.readouterr()
        assert code == 0, out.err
        return subprocess.CompletedProcess(list(args), code, out.out, out.err)

    yield run
    get_settings.cache_clear()


def lines(out: str) -> list[dict]:  # type: ignore[type-arg]
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def test_user_device_consent_round_trip(cli, db: psycopg.Connection) -> None:  # type: ignore[no-untyped-def]
    user = unique("cli")
    cli("users", "add", "--user-id", user, "--tz", "America/New_York")
    creds = json.loads(
        cli(
            "devices", "add", "--user-id", user, "--kind", "plug", "--format", "tasmota",
            "--external-id", f"plug-{user}",
        ).stdout
    )  # fmt: skip
    assert creds["topics"] == [f"tele/plug-{user}/#"] and creds["mqtt_password"]
    listed = lines(cli("devices", "list", "--user-id", user).stdout)
    assert [d["device_id"] for d in listed] == [creds["device_id"]]
    assert "mqtt_password" not in listed[0]

    cli("consent", "grant", "--user-id", user, "--category", "energy",
        "--at", "2026-09-01T00:00:00Z")  # fmt: skip
    withdrawn = json.loads(
        cli("consent", "withdraw", "--user-id", user, "--category", "energy").stdout
    )
    assert withdrawn["action"] == "purge_category" and withdrawn["audit_id"]
    shown = lines(cli("consent", "show", "--user-id", user).stdout)
    assert [(e["category"], e["action"]) for e in shown] == [
        ("energy", "grant"),
        ("energy", "withdraw"),
    ]
    assert shown[0]["at"].startswith("2026-09-01")

    retired = json.loads(cli("devices", "retire", "--device-id", creds["device_id"]).stdout)
    assert retired["retired_at"]
    export = json.loads(cli("users", "export", "--user-id", user).stdout)
    assert export["user"]["tz"] == "America/New_York" and len(export["consent_history"]) == 2
    erased = json.loads(cli("users", "erase", "--user-id", user).stdout)
    assert erased["counts"]["users"] == 1
    assert db.execute("SELECT 1 FROM users WHERE user_id = %s", (user,)).fetchone() is None


def test_errors_are_one_line_with_usage_exit_code(cli) -> None:  # type: ignore[no-untyped-def]
    for args, message in (
        (("consent", "grant", "--user-id", "ghost-2", "--category", "energy"), "unknown user"),
        (("devices", "retire", "--device-id", "ghost-dev"), "unknown device"),
        (("consent", "grant", "--user-id", "x", "--category", "energy", "--at", "yesterday"),
         "RFC 3339"),
    ):  # fmt: skip
        proc = cli(*args, ok=False)
        assert proc.returncode == 2, (args, proc.stderr)
        assert message in proc.stderr and "Traceback" not in proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1


def test_batch_registers_thousands_fast_in_one_transaction(cli, db: psycopg.Connection) -> None:  # type: ignore[no-untyped-def]
    prefix = unique("b")
    n = 2000
    batch = "\n".join(
        json.dumps(
            {
                "user_id": f"{prefix}-u{i // 4}",
                "kind": "plug",
                "format": "tasmota",
                "external_id": f"{prefix}-p{i}",
                "user_tz": "Asia/Shanghai",
            }
        )
        for i in range(n)
    )
    started = time.monotonic()
    out = lines(cli("devices", "add", "--batch", "-", stdin=batch).stdout)
    elapsed = time.monotonic() - started
    assert len(out) == n and len({c["mqtt_password"] for c in out}) == n
    assert [c["external_id"] for c in out] == [f"{prefix}-p{i}" for i in range(n)]
    assert elapsed < 30  # ~2-4 s on a busy 2-core machine; seconds per device would be hours

    grants = "\n".join(
        json.dumps(
            {"user_id": f"{prefix}-u{u}", "category": "energy", "at": "2026-09-01T00:00:00Z"}
        )
        for u in range(n // 4)
    )
    assert len(lines(cli("consent", "grant", "--batch", "-", stdin=grants).stdout)) == n // 4
    row = db.execute(
        "SELECT count(*) FROM consent_events WHERE user_id LIKE %s", (prefix + "-%",)
    ).fetchone()
    assert row == (n // 4,)
    withdrawals = "\n".join(
        json.dumps({"user_id": f"{prefix}-u{u}", "category": "energy"}) for u in range(3)
    )
    reports = lines(cli("consent", "withdraw", "--batch", "-", stdin=withdrawals).stdout)
    assert [r["action"] for r in reports] == ["purge_category"] * 3


def test_batch_is_all_or_nothing(cli, db: psycopg.Connection) -> None:  # type: ignore[no-untyped-def]
    prefix = unique("bad")
    good = {"user_id": f"{prefix}-u", "kind": "plug", "format": "tasmota", "user_tz": "UTC"}
    batch = "\n".join(
        [
            json.dumps(good | {"external_id": f"{prefix}-1"}),
            # another user's: a clash (the same user again would rotate the password)
            json.dumps(good | {"external_id": f"{prefix}-1", "user_id": f"{prefix}-v"}),
        ]
    )
    with pytest.raises(Invalid, match=r"line 2: .*already registered"):
        cli("devices", "add", "--batch", "-", stdin=batch)
    row = db.execute("SELECT count(*) FROM users WHERE user_id = %s", (f"{prefix}-u",)).fetchone()
    assert row == (0,)
