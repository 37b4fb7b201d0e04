"""Registry and data-subject operations (hearth.admin) against the real database."""

from __future__ import annotations

import threading
import time

import psycopg
import pytest

from hearth import admin, ledger
from hearth.errors import Invalid
from hearth.signals import Category
from hearth.vectors import withdrawn_cell
from tests.integration.consent_fixtures import (
    FEATURES,
    add_dead_letter,
    count_signal_rows,
    seed_user,
    snapshot_features,
    unique,
)
from tests.integration.privacy_scan import find_references
from tests.support.service import VECTOR_SQL


def test_add_user_is_idempotent_and_validates_zone(db: psycopg.Connection) -> None:
    user = unique("u")
    admin.add_user(db, user, "Asia/Shanghai")
    admin.add_user(db, user, "Asia/Shanghai")  # same again: no-op
    with pytest.raises(Invalid, match="already exists with time zone Asia/Shanghai"):
        admin.add_user(db, user, "Europe/Berlin")
    with pytest.raises(Invalid, match="unknown IANA time zone"):
        admin.add_user(db, unique("u"), "Mars/Olympus")
    with pytest.raises(Invalid, match="user id"):
        admin.add_user(db, "no spaces allowed", "UTC")


def test_register_device_mints_credentials_it_keeps_nowhere(db: psycopg.Connection) -> None:
    """The password goes to the broker's plugin (hashed there) and to the caller, nowhere
    else: no registry column holds it or a hash of it (issue 13)."""
    user = unique("u")
    creds = admin.register_device(
        db, user_id=user, kind="phone", format="owntracks", external_id=f"{user}/p", user_tz="UTC"
    )
    assert creds.topics == (f"owntracks/{user}/p/#",)
    assert creds.mqtt_username == creds.device_id and len(creds.mqtt_password) >= 32
    columns = {
        str(r[0])
        for r in db.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_name = 'devices'"
        ).fetchall()
    }
    assert not any("password" in c for c in columns), columns
    row = db.execute("SELECT * FROM devices WHERE device_id = %s", (creds.device_id,)).fetchone()
    assert row is not None and creds.mqtt_password not in repr(row)
    assert set(creds.to_json()) == {
        "device_id", "user_id", "kind", "format", "external_id", "mqtt_username",
        "mqtt_password", "topics", "bound_at", "rotated",
    }  # fmt: skip
    assert creds.rotated is False

    canonical = admin.register_device(
        db, user_id=user, kind="router", format="hearth", external_id=unique("r")
    )
    assert canonical.device_id == canonical.external_id
    assert canonical.topics == (f"hearth/v1/{canonical.device_id}/#",)


def test_register_device_errors_are_clear(db: psycopg.Connection) -> None:
    with pytest.raises(Invalid, match="unknown user"):
        admin.register_device(
            db, user_id=unique("nobody"), kind="plug", format="tasmota", external_id="x1"
        )
    user = unique("u")
    admin.add_user(db, user)
    ext = unique("plug")
    admin.register_device(db, user_id=user, kind="plug", format="tasmota", external_id=ext)
    other = unique("u")
    admin.add_user(db, other)
    with pytest.raises(Invalid, match=r"already registered .* of another user"):
        admin.register_device(db, user_id=other, kind="plug", format="tasmota", external_id=ext)
    with pytest.raises(Invalid, match="already registered as a plug"):
        admin.register_device(db, user_id=user, kind="sensor", format="tasmota", external_id=ext)
    with pytest.raises(Invalid, match="unknown device format"):
        admin.register_device(db, user_id=user, kind="plug", format="x10", external_id="a")
    with pytest.raises(Invalid, match="one topic level"):
        admin.register_device(db, user_id=user, kind="plug", format="tasmota", external_id="a/b")
    with pytest.raises(Invalid, match="reserved"):
        admin.register_device(db, user_id=user, kind="plug", format="shelly", external_id="tele")
    with pytest.raises(Invalid, match="reserved"):
        admin.register_device(
            db, user_id=user, kind="x", format="hearth", external_id="hearth-collector"
        )


def test_retire_destroys_credential_and_frees_external_id(db: psycopg.Connection) -> None:
    user = unique("u")
    admin.add_user(db, user)
    ext = unique("plug")
    first = admin.register_device(db, user_id=user, kind="plug", format="tasmota", external_id=ext)
    info = admin.retire_device(db, first.device_id)
    assert info.retired_at is not None
    assert admin.retire_device(db, first.device_id).retired_at == info.retired_at  # idempotent
    second = admin.register_device(db, user_id=user, kind="plug", format="tasmota", external_id=ext)
    assert second.device_id != first.device_id
    listed = {d.device_id: d for d in admin.list_devices(db, user)}
    assert listed[first.device_id].retired_at is not None
    assert listed[second.device_id].retired_at is None
    with pytest.raises(Invalid, match="unknown device"):
        admin.retire_device(db, "d-does-not-exist")


def test_withdraw_purges_category_everywhere_and_audits(db: psycopg.Connection) -> None:
    seeded = seed_user(db)
    user = seeded.user_id
    before = count_signal_rows(db, user, Category.LOCATION)
    assert all(n > 0 for n in before.values()), before
    energy_before = count_signal_rows(db, user, Category.ENERGY)

    report = admin.withdraw_consent(db, user_id=user, category="location", settle_s=0)

    assert count_signal_rows(db, user, Category.LOCATION) == dict.fromkeys(before, 0)
    assert count_signal_rows(db, user, Category.ENERGY) == energy_before  # untouched
    features = snapshot_features(db, user)
    assert "test_home_nights_share" not in features
    assert {"test_plug_energy_cv", "test_battery_low_share"} <= features
    # The withdrawn feature keeps its key (one schema), as null with a reason.
    (vector,) = db.execute(
        f"SELECT {VECTOR_SQL} FROM feature_snapshots WHERE user_id = %s",
        (user,),
    )
    assert set(vector[0]) == set(FEATURES)
    assert vector[0]["test_home_nights_share"] == withdrawn_cell()
    assert report.counts["numeric_readings"] == seeded.rows_per_signal  # region_event
    assert report.counts["categorical_readings"] == seeded.rows_per_signal  # geohash
    assert report.counts["feature_snapshots.features"] == 1
    # The audit record: keyed-hash subject, counts per table, no personal data.
    row = db.execute(
        "SELECT action, subject_ref, details FROM audit_log WHERE id = %s", (report.audit_id,)
    ).fetchone()
    assert row is not None
    action, subject, details = row
    assert action == "purge_category" and subject == admin.audit_subject(user)
    assert details["category"] == "location"
    assert details["counts"]["categorical_readings"] == seeded.rows_per_signal
    leaked = [
        f for f in find_references(db, [user, *seeded.device_ids]) if f.table == "public.audit_log"
    ]
    assert leaked == []
    # The ledger now says "withdrawn".
    assert [e.action for e in admin.consent_history(db, user) if e.category == "location"] == [
        "grant",
        "withdraw",
    ]


def test_withdraw_waits_for_a_collector_batch_holding_the_ingest_gate(
    database_url: str, db: psycopg.Connection
) -> None:
    """A collector batch that checked consent before the withdrawal and has not committed yet
    holds the INGEST gate: the withdrawal waits for it, so its rows are committed before the
    purge and deleted by it (no settle pass, no sleep)."""
    seeded = seed_user(db)
    user, phone = seeded.user_id, seeded.device_ids[0]
    late = psycopg.connect(database_url)  # a "collector" batch, still open
    late.execute(ledger.gate_sql(ledger.GATE_INGEST))
    late.execute(
        "INSERT INTO categorical_readings (time, device_id, user_id, signal, value) "
        "VALUES (now(), %s, %s, 'geohash', 'u33dc0d')",
        (phone, user),
    )
    result: dict[str, admin.PurgeReport] = {}

    def withdraw() -> None:
        with psycopg.connect(database_url, autocommit=True) as conn:
            result["r"] = admin.withdraw_consent(conn, user_id=user, category="location")

    worker = threading.Thread(target=withdraw)
    worker.start()
    deadline = time.monotonic() + 10
    while not _waiting_for_advisory_lock(db):
        assert time.monotonic() < deadline, "the withdrawal never waited for the gate"
        time.sleep(0.02)
    assert not any(e.action == "withdraw" for e in admin.consent_history(db, user))
    late.commit()  # the late batch lands; the withdrawal proceeds
    late.close()
    worker.join(timeout=30)
    assert count_signal_rows(db, user, Category.LOCATION)["categorical_readings"] == 0
    assert result["r"].counts["categorical_readings"] == seeded.rows_per_signal + 1
    assert result["r"].status == "complete"


def _waiting_for_advisory_lock(conn: psycopg.Connection) -> bool:
    row = conn.execute(
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted "
        "AND objid::bigint = %s",
        (ledger.GATE_INGEST,),
    ).fetchone()
    return row is not None and row[0] > 0


def test_export_then_erase_leaves_no_reference(db: psycopg.Connection) -> None:
    seeded = seed_user(db)
    user = seeded.user_id
    other = seed_user(db)  # must survive
    admin.withdraw_consent(db, user_id=user, category="energy", settle_s=0)  # an audit record
    # The withdrawal deleted the user's dead letters (by device id); one arrives afterwards.
    assert db.execute(
        "SELECT count(*) FROM dead_letters WHERE device_id = ANY(%s)", (seeded.device_ids,)
    ).fetchone() == (0,)
    add_dead_letter(db, user, seeded.device_ids[0])

    export = admin.export_user(db, user)
    assert export["user"]["user_id"] == user
    assert {d["device_id"] for d in export["devices"]} == set(seeded.device_ids)
    assert all("mqtt_password_hash" not in d for d in export["devices"])
    tables = export["tables"]
    n = seeded.rows_per_signal
    assert len(tables["numeric_readings"]) == 2 * n  # region_event + battery (energy withdrawn)
    assert len(tables["categorical_readings"]) == n
    assert len(tables["rollup_numeric_hourly"]) == 2
    assert len(tables["rollup_categorical_hourly"]) == 1
    assert len(tables["feature_snapshots"]) == 1
    assert len(export["consent_history"]) == 4  # 3 grants + 1 withdrawal
    assert len(export["dead_letters"]) == 1
    assert [a["action"] for a in export["audit"]] == ["purge_category"]

    report = admin.erase_user(db, user, settle_s=0)

    assert report.counts["users"] == 1 and report.counts["devices"] == 2
    assert report.counts["consent_events"] == 4 and report.counts["dead_letters"] == 1
    assert report.counts["numeric_readings"] == 2 * n
    needles = [user, *seeded.device_ids, f"plug-{user}"]
    assert find_references(db, needles) == []
    # The other user is intact, and the erasure is audited by keyed hash only.
    assert admin.export_user(db, other.user_id)["tables"]["numeric_readings"]
    audit = db.execute(
        "SELECT details FROM audit_log WHERE action = 'erase_user' AND subject_ref = %s",
        (admin.audit_subject(user),),
    ).fetchone()
    assert audit is not None and audit[0]["counts"]["users"] == 1
    with pytest.raises(Invalid, match="unknown user"):
        admin.export_user(db, user)


def test_unknown_user_errors(db: psycopg.Connection) -> None:
    for call in (
        lambda: admin.grant_consent(db, user_id="ghost-1", category="energy"),
        lambda: admin.withdraw_consent(db, user_id="ghost-1", category="energy", settle_s=0),
        lambda: admin.consent_history(db, "ghost-1"),
        lambda: admin.erase_user(db, "ghost-1", settle_s=0),
        lambda: admin.list_devices(db, "ghost-1"),
    ):
        with pytest.raises(Invalid, match="unknown user 'ghost-1'"):
            call()
    user = unique("u")
    admin.add_user(db, user)
    with pytest.raises(Invalid, match="unknown data category"):
        admin.grant_consent(db, user_id=user, category="dreams")
    assert FEATURES  # fixture catalogue is in use
