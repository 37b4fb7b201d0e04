"""Schema migrations and the one-line errors of the CLI, against the real database."""

from __future__ import annotations

import os
import subprocess
import sys

import psycopg

from hearth.migrate import available_migrations, migrate


def test_migrate_is_idempotent_and_creates_hypertables(
    db: psycopg.Connection[tuple[object, ...]],
) -> None:
    again = migrate(db)  # the session fixture already migrated once
    assert again.applied == []
    assert again.current_version == available_migrations()[-1].version
    assert again.edition in {"apache", "timescale"}
    names = {
        r[0] for r in db.execute("SELECT hypertable_name FROM timescaledb_information.hypertables")
    }
    assert {"numeric_readings", "categorical_readings"} <= names


def run_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "collector", *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_migrate_cli_second_run_says_nothing_to_do(database_url: str) -> None:
    out = run_cli("migrate", env={"HEARTH_DATABASE_URL": database_url})
    assert out.returncode == 0, out.stderr
    assert "nothing to do" in out.stdout
    assert "edition" in out.stdout


def test_wrong_database_url_is_one_line_not_a_traceback() -> None:
    out = run_cli(
        "migrate", env={"HEARTH_DATABASE_URL": "postgresql://hearth:secret@127.0.0.1:1/hearth"}
    )
    assert out.returncode != 0
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert "HEARTH_DATABASE_URL" in lines[0] and "127.0.0.1:1" in lines[0]
    assert "secret" not in lines[0] and "Traceback" not in out.stderr
