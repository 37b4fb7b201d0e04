"""Minimisation leaves nothing identifying anywhere, and late data is refused (issue 11 §4, §6).

A real collector on the real broker and database: a free-text ``net_type``, identifiers in
rejected payloads and a message without consent leave no trace of their content; dead letters
carry their device id and a keyed digest; events older than the raw retention are ``too_old``.
Withdrawal, erasure and retention remove dead letters by device id and age.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from collector.retention import run_retention
from hearth import admin
from hearth.db import Conn
from hearth.errors import Invalid
from tests.conftest import Broker, drop_database
from tests.integration.consent_fixtures import add_dead_letter, seed_user, unique
from tests.integration.fleet import (
    CollectorFactory,
    add_device,
    add_user,
    grant,
    publish_all,
    wait_until,
)
from tests.integration.privacy_scan import find_references


def _ts(age: timedelta) -> str:
    return (datetime.now(UTC) - age).isoformat().replace("+00:00", "Z")


def _dead_letters(db: Conn, device_ids: list[str]) -> list[tuple[object, ...]]:
    return db.execute(
        "SELECT topic, reason, detail, payload, digest, device_id FROM dead_letters "
        "WHERE device_id = ANY(%s) ORDER BY id",
        (device_ids,),
    ).fetchall()


def test_collector_stores_no_identifier_and_refuses_late_data(
    db: Conn, broker: Broker, tag: str, make_collector: CollectorFactory
) -> None:
    consenting, silent = f"{tag}-d0", f"{tag}-d1"
    for device in (consenting, silent):
        add_user(db, f"{device}-u")
        add_device(db, device, f"{device}-u")
    grant(db, f"{consenting}-u")  # the other user consented to nothing
    # Unique per run, so finding them anywhere in the database is this test's leak.
    net_name = f"Alices-{tag}-iPhone"
    ssid = f"SecretNet-{tag}"
    phone = f"+49151{secrets.randbelow(10**7):07d}"
    imei = f"35{secrets.randbelow(10**13):013d}"
    mac = ":".join(secrets.token_hex(1) for _ in range(6))
    topic = f"hearth/v1/{consenting}/phone"
    messages = [
        # free-text net_type: refused, the value kept nowhere
        (topic, json.dumps({"ts": _ts(timedelta(hours=1)), "readings": {"net_type": net_name}})),
        # not JSON (cut off): scrubbed as text
        (topic, f'{{"ssid":"{ssid}","tel":"{phone}","imei":{imei},"bssid":"{mac}"'),
        # valid JSON of the wrong shape, identifiers as values of harmless keys
        (topic, json.dumps({"ts": _ts(timedelta(hours=1)), "readings": [phone, imei, mac]})),
        # no consent: nothing of it but a counter, a keyed digest and the device id
        (
            f"hearth/v1/{silent}/phone",
            json.dumps({"ts": _ts(timedelta(hours=1)), "readings": {"wifi_ssid": ssid}}),
        ),
        # older than the raw retention: too_old; a month old is fine
        (topic, json.dumps({"ts": _ts(timedelta(days=91)), "readings": {"battery_pct": 11}})),
        (topic, json.dumps({"ts": _ts(timedelta(days=30)), "readings": {"battery_pct": 12}})),
        (topic, json.dumps({"ts": _ts(timedelta(hours=2)), "readings": {"net_type": "ethernet"}})),
    ]
    published = [(t, p.encode()) for t, p in messages]
    collector = make_collector(HEARTH_DEAD_LETTER_PAYLOAD_BYTES="120")
    collector.start()
    publish_all(broker.host, broker.port, published)

    def settled() -> bool:
        row = db.execute(
            "SELECT (SELECT count(*) FROM dead_letters WHERE device_id = ANY(%s)) "
            "+ (SELECT count(*) FROM numeric_readings WHERE device_id = %s) "
            "+ (SELECT count(*) FROM categorical_readings WHERE device_id = %s)",
            ([consenting, silent], consenting, consenting),
        ).fetchone()
        return row is not None and row[0] == len(published)

    wait_until(settled, 30, "every message stored or dead-lettered")

    stored = db.execute(
        "SELECT signal, value::text FROM numeric_readings WHERE device_id = %s "
        "UNION ALL SELECT signal, value FROM categorical_readings WHERE device_id = %s",
        (consenting, consenting),
    ).fetchall()
    assert sorted(stored) == [("battery_pct", "12"), ("net_type", "ethernet")]
    dead = _dead_letters(db, [consenting, silent])
    assert sorted(str(d[1]) for d in dead) == [
        "bad_json",
        "no_consent",
        "schema",
        "schema",
        "too_old",
    ]
    for topic_, reason, detail, payload, digest, device_id in dead:
        if reason == "no_consent":
            assert (topic_, detail, payload, device_id) == ("", "", None, silent)
        else:
            assert device_id == consenting and topic_ == topic
            assert payload is not None and len(bytes(payload)) <= 120  # type: ignore[arg-type]
        # Keyed: the digest of the delivery is not a hash anyone can recompute.
        assert all(
            bytes(digest) != hashlib.sha256(t.encode() + b"\0" + p).digest()  # type: ignore[arg-type]
            for t, p in published
        )
    leaks = find_references(db, [net_name, "Alices", ssid, phone, phone[1:], imei, mac])
    assert leaks == [], [str(f) for f in leaks]
    m = collector.metrics()
    assert m['hearth_collector_dead_lettered_total{reason="too_old"}'] == 1


def test_withdrawal_and_erasure_delete_dead_letters_by_device_id(db: Conn) -> None:
    seeded = seed_user(db)  # one dead letter of the phone
    other = seed_user(db)
    phone = seeded.device_ids[0]
    # The topic text of the phone, but another device's id (e.g. a re-registered external id):
    # matching is by device id, so this one is not the user's.
    db.execute(
        "INSERT INTO dead_letters (topic, reason, payload_bytes, digest, device_id) "
        "VALUES (%s, 'bad_json', 1, %s, %s)",
        (f"owntracks/{seeded.user_id}/phone", secrets.token_bytes(32), other.device_ids[0]),
    )

    report = admin.withdraw_consent(db, user_id=seeded.user_id, category="location", settle_s=0)

    assert report.counts["dead_letters"] == 1
    assert _dead_letters(db, [phone]) == []
    add_dead_letter(db, seeded.user_id, phone)  # one arriving after the withdrawal
    erased = admin.erase_user(db, seeded.user_id, settle_s=0)
    assert erased.counts["dead_letters"] == 1
    assert _dead_letters(db, seeded.device_ids) == []
    assert len(_dead_letters(db, [other.device_ids[0]])) == 2  # the other user's stay


def test_retention_deletes_old_dead_letters(
    db: Conn, database_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from collector.cli import main
    from hearth.settings import get_settings

    device = unique("dl")
    for age_days in (20, 15, 13, 1):
        db.execute(
            "INSERT INTO dead_letters (received_at, topic, reason, payload_bytes, digest, "
            "device_id) VALUES (now() - make_interval(days => %s), 't', 'schema', 1, %s, %s)",
            (age_days, secrets.token_bytes(32), device),
        )
    monkeypatch.setenv("HEARTH_DATABASE_URL", database_url)
    monkeypatch.setenv("HEARTH_RETENTION_DAYS", "36500")  # the raw tables are not this test's
    monkeypatch.setenv("HEARTH_DEAD_LETTER_RETENTION_DAYS", "14")
    get_settings.cache_clear()
    try:
        assert main(["retention", "run"]) == 0
    finally:
        get_settings.cache_clear()
    out = json.loads(capsys.readouterr().out)
    assert out["dead_letters_deleted"] >= 2
    ages = db.execute(
        "SELECT extract(day FROM now() - received_at)::int FROM dead_letters "
        "WHERE device_id = %s ORDER BY 1",
        (device,),
    ).fetchall()
    assert ages == [(1,), (13,)]


def test_retention_refuses_to_drop_what_ingest_still_accepts(db: Conn) -> None:
    with pytest.raises(Invalid, match="HEARTH_MAX_EVENT_AGE_DAYS"):
        run_retention(db, 30)  # default max event age: 90 days


def test_migrations_bring_rows_written_before_them_in_line(monkeypatch: pytest.MonkeyPatch) -> None:
    """0032/0033 on a database holding rows from before: device ids backfilled, unkeyed digests
    replaced, no_consent rows emptied, free-text net_type deleted, horizons from the audit log."""
    import hearth.migrate as migrations
    from tests.conftest import BASE_DATABASE_URL, _with_dbname

    name = f"hearth_test_mig_{secrets.token_hex(4)}"
    with psycopg.connect(BASE_DATABASE_URL, autocommit=True) as server:
        server.execute(f'CREATE DATABASE "{name}" TEMPLATE hearth_template')
    try:
        with psycopg.connect(_with_dbname(BASE_DATABASE_URL, name), autocommit=True) as conn:
            every = migrations.available_migrations()
            monkeypatch.setattr(
                migrations, "available_migrations", lambda: [m for m in every if m.version < 32]
            )
            if migrations.migrate(conn).current_version >= 32:
                pytest.skip("the template database is already past 0031")
            monkeypatch.undo()
            _legacy_rows(conn)
            migrations.migrate(conn)

            dead = dict(conn.execute("SELECT detail, device_id FROM dead_letters").fetchall())
            assert dead == {
                "ot": "mig-phone",
                "hearth": "mig-hearth",
                "nobody": None,
                "": "mig-plug",  # the no_consent row, its detail and topic emptied
            }
            digests = [bytes(r[0]) for r in conn.execute("SELECT digest FROM dead_letters")]  # type: ignore[arg-type]
            assert hashlib.sha256(b"legacy").digest() not in digests and len(set(digests)) == 4
            redacted = conn.execute(
                "SELECT topic, payload FROM dead_letters WHERE reason = 'no_consent'"
            ).fetchall()
            assert redacted == [("", None)]
            assert conn.execute(
                "SELECT value FROM categorical_readings WHERE signal = 'net_type'"
            ).fetchall() == [("wifi",)]
            assert conn.execute(
                "SELECT count(*) FROM rollup_categorical_hourly WHERE signal = 'net_type'"
            ).fetchone() == (0,)
            assert conn.execute(
                "SELECT hypertable, horizon FROM raw_retention_horizons"
            ).fetchall() == [("numeric_readings", datetime(2020, 3, 1, tzinfo=UTC))]
    finally:
        drop_database(name)


def _legacy_rows(conn: Conn) -> None:
    """Rows as the code before migration 0032 wrote them."""
    conn.execute("INSERT INTO users (user_id) VALUES ('mig-u')")
    for device, fmt, external in (
        ("mig-phone", "owntracks", "alice/phone"),
        ("mig-hearth", "hearth", "mig-hearth"),
        ("mig-plug", "tasmota", "plug7"),
    ):
        conn.execute(
            "INSERT INTO devices (device_id, user_id, kind, format, external_id, registered_at) "
            "VALUES (%s, 'mig-u', 'sensor', %s, %s, now() - interval '1 day')",
            (device, fmt, external),
        )
    for topic, reason, detail in (
        ("owntracks/alice/phone", "schema", "ot"),
        ("hearth/v1/mig-hearth/phone", "bad_json", "hearth"),
        ("tele/nobody/SENSOR", "unknown_device", "nobody"),
        ("tele/plug7/SENSOR", "no_consent", ""),
    ):
        conn.execute(
            "INSERT INTO dead_letters (topic, reason, detail, payload, payload_bytes, digest) "
            "VALUES (%s, %s, %s, %s, 6, %s)",
            (
                topic,
                reason,
                detail,
                None if reason == "no_consent" else b"legacy",
                hashlib.sha256(b"legacy" if detail == "ot" else topic.encode()).digest(),
            ),
        )
    at = datetime(2026, 1, 1, tzinfo=UTC)
    for value in ("wifi", "MyHomeNet-5G"):
        conn.execute(
            "INSERT INTO categorical_readings (time, device_id, user_id, signal, value) "
            "VALUES (%s, 'mig-phone', 'mig-u', 'net_type', %s)",
            (at, value),
        )
        at += timedelta(minutes=1)
    conn.execute(
        "INSERT INTO rollup_categorical_hourly (bucket, device_id, user_id, signal, value, "
        "share, n, max_ingested_at) VALUES (%s, 'mig-phone', 'mig-u', 'net_type', "
        "'MyHomeNet-5G', 0.5, 2, now())",
        (datetime(2026, 1, 1, tzinfo=UTC),),
    )
    for cutoff, dropped in (
        ("2020-01-01T00:00:00+00:00", {"numeric_readings": 1, "categorical_readings": 0}),
        ("2020-03-01T00:00:00+00:00", {"numeric_readings": 2, "categorical_readings": 0}),
        ("2020-05-01T00:00:00+00:00", {"numeric_readings": 0}),
    ):
        conn.execute(
            "INSERT INTO audit_log (action, details) VALUES ('retention', %s)",
            (json.dumps({"cutoff": cutoff, "chunks_dropped": dropped}),),
        )
