"""``python -m features materialize`` and ``rollup``: idempotent, resumable, one-line errors."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest

from features.catalogue import DEFINITIONS, FEATURE_SET_VERSION
from features.cli.engine import parse_as_of
from features.rollups import refresh_rollups
from features.snapshots.materialize import materialize
from features.snapshots.store import latest_snapshot, read_snapshots
from hearth.errors import Invalid
from tests.support.builders import add_device, add_user, insert_numeric
from tests.support.service import VECTOR_SQL

AS_OF = datetime(2026, 5, 1, tzinfo=UTC)
ROOT = Path(__file__).resolve().parents[2]


def _cli(database_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, HEARTH_DATABASE_URL=database_url)
    return subprocess.run(
        [sys.executable, "-m", "features", *args],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


@pytest.fixture
def users(db: psycopg.Connection) -> list[str]:
    ids = [f"mat-{i}" for i in range(3)]
    for u in ids:
        add_user(db, u, tz="Asia/Shanghai", granted_at=AS_OF - timedelta(days=120))
        add_device(db, f"{u}-phone", u, "phone")
        rows = []
        for d in range(20):
            t = AS_OF - timedelta(days=d, hours=3)
            rows.append((t, f"{u}-phone", u, "battery_pct", 40.0 + d, t + timedelta(minutes=1)))
        insert_numeric(db, rows)
    refresh_rollups(db, full=True)  # back-dated ingest stamps: below any watermark
    return ids


def test_materialize_command_is_idempotent_and_resumable(
    database_url: str, db: psycopg.Connection, users: list[str]
) -> None:
    first = materialize(db, AS_OF, users=users[:1], progress=False)
    assert first.written == 1
    proc = _cli(database_url, "materialize", "--as-of", "2026-05-01",
                "--users", ",".join([*users, "not-a-user"]), "--no-progress")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "skipped=1" in proc.stdout and "written=2" in proc.stdout
    rows = db.execute(
        f"SELECT user_id, {VECTOR_SQL} FROM feature_snapshots"
        " WHERE as_of = %s AND user_id LIKE 'mat-%%' AND feature_set_version = %s",
        (AS_OF, FEATURE_SET_VERSION),
    ).fetchall()
    assert sorted(r[0] for r in rows) == users
    vec = rows[0][1]
    assert set(vec) == {d.name for d in DEFINITIONS}
    assert vec["mean_daily_min_battery_pct_90d"]["value"] is not None
    assert all(set(cell) == {"value", "coverage"} for cell in vec.values())
    n_defs = db.execute(
        "SELECT count(*) FROM feature_definitions WHERE feature_set_version = %s",
        (FEATURE_SET_VERSION,),
    ).fetchone()
    assert n_defs == (len(DEFINITIONS),)

    again = materialize(db, AS_OF, users=users, progress=False)
    assert (again.skipped, again.written) == (3, 0)
    forced = materialize(db, AS_OF, users=users, force=True, progress=False, chunk_size=2)
    assert forced.written == 3
    assert (
        read_snapshots(db, users, AS_OF)[users[0]].values
        == latest_snapshot(db, users[0], AS_OF + timedelta(days=1)).values
    )  # type: ignore[union-attr]


def test_cli_errors_are_one_line(database_url: str) -> None:
    proc = _cli(database_url, "materialize", "--as-of", "yesterday")
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("error: --as-of") and "Traceback" not in proc.stderr
    proc = _cli("postgresql://hearth:hearth@127.0.0.1:1/nope", "rollup")
    assert proc.returncode == 69 and "Traceback" not in proc.stderr


def test_rollup_command_runs_once(database_url: str) -> None:
    proc = _cli(database_url, "rollup")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("numeric_buckets=")


def test_parse_as_of() -> None:
    assert parse_as_of("2026-05-01") == AS_OF
    assert parse_as_of("2026-05-01T08:00:00+08:00") == AS_OF
    assert parse_as_of("2026-05-01T00:00:00Z") == AS_OF
    with pytest.raises(Invalid):
        parse_as_of("2026-05-01T00:00:00")


def test_rollup_loop_runs_until_sigterm(database_url: str) -> None:
    env = dict(os.environ, HEARTH_DATABASE_URL=database_url)
    proc = subprocess.Popen(
        [sys.executable, "-m", "features", "rollup", "--loop", "0.2"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        lines = [proc.stdout.readline() for _ in range(2)]  # two runs: it loops
        assert all(line.startswith("numeric_buckets=") for line in lines), lines
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
