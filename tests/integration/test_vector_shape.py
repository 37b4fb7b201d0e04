"""Issue 12 §3: served vectors keep their shape and meaning.

* After a withdrawal, a feature that lost its data is null with coverage 0 and a reason, for
  an as_of before the withdrawal too (it used to read as a confident 0.0 with coverage 1.0).
* Every vector — computed, stored, served — has the whole feature set: withdrawn or never
  consented features are present as null cells with a reason.
* A future as_of is refused by ``features materialize`` as by the service.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest

from features.catalogue import DEFINITIONS, FEATURE_SET_VERSION, sync_definitions
from features.client import HearthClient
from features.engine import compute_vectors
from features.rollups import refresh_rollups
from features.snapshots.materialize import materialize
from hearth import admin
from hearth.db import Conn
from hearth.settings import load_settings
from hearth.signals import Category
from hearth.vectors import CellReason, withdrawn_cell
from tests.conftest import BASE_DATABASE_URL, ROOT, _with_dbname, drop_database
from tests.support.builders import add_device, add_user, insert_numeric
from tests.support.service import VECTOR_SQL, serve_in_thread

TOKEN = "shape-read-token-0123456789"
NAMES = {d.name for d in DEFINITIONS}
DEVICE_HEALTH = {d.name for d in DEFINITIONS if d.category == Category.DEVICE_HEALTH}
USAGE = {d.name for d in DEFINITIONS if d.category == Category.USAGE}
ENERGY = {d.name for d in DEFINITIONS if d.category == Category.ENERGY}
NOW = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
T = NOW - timedelta(days=10)  # an as_of before the withdrawal


def _seed(conn: Conn, user: str) -> None:
    """Hourly phone heartbeats and plug power for 40 days; every category but usage."""
    start = NOW - timedelta(days=40)
    categories = [c for c in Category if c is not Category.USAGE]
    add_user(conn, user, categories=categories, granted_at=start - timedelta(days=1))
    add_device(conn, f"{user}-phone", user, "phone")
    add_device(conn, f"{user}-plug", user, "plug")
    rows = []
    for h in range(0, 40 * 24, 3):
        t = start + timedelta(hours=h)
        ingested = t + timedelta(minutes=1)
        rows.append((t, f"{user}-phone", user, "battery_pct", float(40 + h % 50), ingested))
        rows.append((t, f"{user}-plug", user, "power_w", float(30 + h % 7), ingested))
    insert_numeric(conn, rows)


@pytest.fixture(scope="module")
def withdrawn(database_url: str) -> Iterator[dict[str, Any]]:
    """A user with a snapshot at T, then device_health withdrawn (the real purge)."""
    user = "shape-1"
    with psycopg.connect(database_url, autocommit=True) as conn:
        _seed(conn, user)
        refresh_rollups(conn, full=True)  # back-dated ingest stamps: rebuild
        before = compute_vectors(conn, [user], T)[0]
        materialize(conn, T, users=[user], progress=False)
        report = admin.withdraw_consent(conn, user_id=user, category="device_health", settle_s=0)
        yield {"user": user, "before": before, "report": report, "conn_url": database_url}


def test_before_the_withdrawal_the_feature_was_measured(withdrawn: dict[str, Any]) -> None:
    assert DEVICE_HEALTH and USAGE and ENERGY  # the catalogue has each kind this file checks
    cell = withdrawn["before"].values["active_day_ratio_30d"]
    assert cell.value is not None and cell.value > 0.5 and cell.coverage == 1.0
    assert cell.reason is None
    assert withdrawn["report"].counts["numeric_readings"] > 0  # heartbeats purged


def test_computed_vector_after_withdrawal_is_null_with_reason(
    withdrawn: dict[str, Any], db: Conn
) -> None:
    vec = compute_vectors(db, [withdrawn["user"]], T)[0]
    assert set(vec.values) == NAMES
    for name in DEVICE_HEALTH:
        cell = vec.values[name]
        assert (cell.value, cell.coverage, cell.reason) == (
            None,
            0.0,
            CellReason.CONSENT_WITHDRAWN,
        ), name
    for name in USAGE:  # never consented
        assert vec.values[name].reason is CellReason.NOT_CONSENTED, name
        assert vec.values[name].value is None and vec.values[name].coverage == 0.0
    assert any(vec.values[n].value is not None for n in ENERGY)  # other categories count
    assert all(vec.values[n].reason is None for n in ENERGY)


def test_stored_snapshot_keeps_every_key(withdrawn: dict[str, Any], db: Conn) -> None:
    row = db.execute(
        f"SELECT {VECTOR_SQL} FROM feature_snapshots WHERE user_id = %s AND as_of = %s",
        (withdrawn["user"], T),
    ).fetchone()
    assert row is not None
    vector: dict[str, dict[str, object]] = row[0]  # type: ignore[assignment]
    assert set(vector) == NAMES
    for name in DEVICE_HEALTH:
        assert vector[name] == withdrawn_cell(), name
    for name in USAGE:
        assert vector[name] == {"value": None, "coverage": 0.0, "reason": "not_consented"}
    assert withdrawn["report"].counts["feature_snapshots.features"] == 1


def test_rematerialised_snapshot_has_the_computed_shape(
    withdrawn: dict[str, Any], db: Conn
) -> None:
    materialize(db, T, users=[withdrawn["user"]], force=True, progress=False)
    row = db.execute(
        f"SELECT {VECTOR_SQL}::text FROM feature_snapshots WHERE user_id = %s AND as_of = %s",
        (withdrawn["user"], T),
    ).fetchone()
    assert row is not None
    stored = json.loads(str(row[0]))
    computed = compute_vectors(db, [withdrawn["user"]], T)[0].vector_json()
    assert set(stored) == NAMES
    for name in NAMES:
        assert stored[name].get("reason") == computed[name].get("reason"), name
    assert stored["active_day_ratio_30d"] == withdrawn_cell()


def test_served_vectors_have_every_feature(withdrawn: dict[str, Any]) -> None:
    settings = load_settings(
        database_url=withdrawn["conn_url"], api_tokens=json.dumps({TOKEN: ["features:read"]})
    )
    with serve_in_thread(settings, cache_entries=0) as url:
        client = HearthClient(url, TOKEN)
        snapshot = client.get_features(withdrawn["user"], T)
        computed = client.get_features(withdrawn["user"], T - timedelta(days=1))
        rows = client.historical_rows([(withdrawn["user"], T), (withdrawn["user"], NOW)]).rows
    assert snapshot.source == "snapshot" and computed.source == "computed"
    for features in (snapshot.features, computed.features, rows[0].features, rows[1].features):
        assert features is not None and set(features) == NAMES
        cell = features["active_day_ratio_30d"]
        assert cell.value is None and cell.coverage == 0.0
        assert cell.reason in ("consent_withdrawn", "not_consented")
    assert snapshot.features["active_day_ratio_30d"].reason == "consent_withdrawn"
    assert all(snapshot.features[n].reason == "not_consented" for n in USAGE)


# --- future as_of ---------------------------------------------------------------------------


def test_materialize_refuses_a_future_as_of(database_url: str, db: Conn) -> None:
    future = (NOW + timedelta(days=1)).isoformat()
    proc = subprocess.run(
        [sys.executable, "-m", "features", "materialize", "--as-of", future, "--no-progress"],
        cwd=ROOT,
        env={**os.environ, "HEARTH_DATABASE_URL": database_url},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and "must not be in the future" in proc.stderr
    with pytest.raises(ValueError, match="must not be in the future"):
        # NOW is floored to the hour: an hour past the real clock, beyond the skew allowance.
        materialize(db, datetime.now(UTC) + timedelta(hours=1), users=["shape-1"], progress=False)
    with pytest.raises(ValueError, match="2000-01-01"):
        materialize(db, datetime(1999, 1, 1, tzinfo=UTC), users=["shape-1"], progress=False)
    row = db.execute(
        "SELECT count(*) FROM feature_snapshots WHERE user_id = 'shape-1' AND as_of > now()"
    ).fetchone()
    assert row == (0,)


# --- migrations 0044 and 0055 ----------------------------------------------------------------


def test_migrations_restore_dropped_keys_and_pack_vectors(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A database holding JSONB snapshots from before 0044 (an old purge dropped a category's
    keys): 0044 puts the keys back as withdrawn cells, 0055 moves every cell into the packed
    columns exactly (values, nulls, coverage, reasons); a version without definitions gets its
    names from its vectors."""
    import hearth.migrate as migrations

    every = migrations.available_migrations()
    name = f"hearth_test_mig_{secrets.token_hex(4)}"
    with psycopg.connect(BASE_DATABASE_URL, autocommit=True) as server:
        server.execute(f'CREATE DATABASE "{name}" TEMPLATE hearth_template')
    try:
        _migrate_legacy(name, every, monkeypatch)
    finally:
        drop_database(name)


def _migrate_legacy(name: str, every: list[Any], monkeypatch: pytest.MonkeyPatch) -> None:
    import hearth.migrate as migrations

    with psycopg.connect(_with_dbname(BASE_DATABASE_URL, name), autocommit=True) as conn:
        monkeypatch.setattr(
            migrations, "available_migrations", lambda: [m for m in every if m.version < 44]
        )
        if migrations.migrate(conn).current_version >= 44:
            pytest.skip("the template database is already past 0043")
        monkeypatch.undo()
        sync_definitions(conn)  # as materialise did
        conn.execute("INSERT INTO users (user_id) VALUES ('shape-old')")
        kept = {
            n: {"value": None if i % 4 == 0 else i / 7, "coverage": round(i / 71, 6)}
            for i, n in enumerate(sorted(NAMES - DEVICE_HEALTH))
        }
        for n in sorted(USAGE):
            kept[n] = {"value": None, "coverage": 0.0, "reason": "not_consented"}
        old = {"zeta": {"value": 1e-310, "coverage": 1.0}, "alpha": {"value": -2.5, "coverage": 0}}
        conn.execute(
            "INSERT INTO feature_snapshots (user_id, as_of, feature_set_version, vector) "
            "VALUES ('shape-old', %s, %s, %s::jsonb), ('shape-old', %s, 'fs-old', %s::jsonb)",
            (T, FEATURE_SET_VERSION, json.dumps(kept), T, json.dumps(old)),
        )
        migrations.migrate(conn)  # 0044, then 0055 and later
        rows = dict(
            conn.execute(
                f"SELECT feature_set_version, {VECTOR_SQL} FROM feature_snapshots"
            ).fetchall()
        )
    vector: dict[str, Any] = rows[FEATURE_SET_VERSION]  # type: ignore[assignment]
    assert set(vector) == NAMES
    assert all(vector[n] == withdrawn_cell() for n in DEVICE_HEALTH)
    assert all(vector[n] == kept[n] for n in kept)
    assert rows["fs-old"] == old
