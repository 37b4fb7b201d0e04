"""Retention drops raw chunks past the cutoff (drop_chunks, Apache edition) and keeps features."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from collector.retention import raw_hypertables, run_retention
from tests.integration.consent_fixtures import unique

# Far in the past, so the cutoff can be placed between these rows and every other test's data.
OLD = datetime(2001, 1, 10, tzinfo=UTC)
RECENT = OLD + timedelta(days=150)
NOW = OLD + timedelta(days=200)  # cutoff at 90 days: OLD's chunk goes, RECENT's stays


def _count(conn: psycopg.Connection, table: str, user: str) -> int:
    row = conn.execute(f"SELECT count(*) FROM {table} WHERE user_id = %s", (user,)).fetchone()
    assert row is not None
    return int(row[0])


def test_retention_drops_old_raw_chunks_only(db: psycopg.Connection) -> None:
    user = unique("ret")
    db.execute("INSERT INTO users (user_id) VALUES (%s)", (user,))
    for t in (OLD, OLD + timedelta(hours=1), RECENT):
        db.execute(
            "INSERT INTO numeric_readings (time, device_id, user_id, signal, value) "
            "VALUES (%s, %s, %s, 'power_w', 1)",
            (t, f"dev-{user}", user),
        )
        db.execute(
            "INSERT INTO categorical_readings (time, device_id, user_id, signal, value) "
            "VALUES (%s, %s, %s, 'geohash', 'u33dc0c')",
            (t, f"dev-{user}", user),
        )
    db.execute(
        "INSERT INTO feature_snapshots (user_id, as_of, feature_set_version, vals, covs) "
        "VALUES (%s, %s, 'ret-fs', hearth_pack_float8('{1}'), hearth_pack_float8('{1}'))",
        (user, OLD + timedelta(days=1)),
    )
    assert {"numeric_readings", "categorical_readings"} <= set(raw_hypertables(db))

    report = run_retention(db, 90, now=NOW)

    assert report.cutoff == NOW - timedelta(days=90)
    assert report.chunks_dropped["numeric_readings"] >= 1
    assert report.chunks_dropped["categorical_readings"] >= 1
    assert _count(db, "numeric_readings", user) == 1  # only RECENT is left
    assert _count(db, "categorical_readings", user) == 1
    assert _count(db, "feature_snapshots", user) == 1  # features are kept
    audit = db.execute(
        "SELECT action, subject_ref, details FROM audit_log WHERE id = %s", (report.audit_id,)
    ).fetchone()
    assert audit is not None and audit[0] == "retention" and audit[1] is None
    assert audit[2]["chunks_dropped"] == report.chunks_dropped

    again = run_retention(db, 90, now=NOW)  # idempotent: nothing left to drop
    assert sum(again.chunks_dropped.values()) == 0


def test_retention_command(
    database_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from collector.cli import main
    from hearth.settings import get_settings

    monkeypatch.setenv("HEARTH_DATABASE_URL", database_url)
    get_settings.cache_clear()
    try:
        assert main(["retention", "run", "--older-than-days", "36500"]) == 0
    finally:
        get_settings.cache_clear()
    out = json.loads(capsys.readouterr().out)
    assert out["total_chunks"] == 0 and out["audit_id"]
