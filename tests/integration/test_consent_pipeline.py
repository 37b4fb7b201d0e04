"""Consent end to end: devices with their own credentials → authenticated broker → a real
``python -m collector run`` (logged in as the read-only collector account) → database.

Issue 5 acceptance: energy-but-not-location stores zero location rows; withdrawing location
while a device keeps publishing leaves none of that user's location data anywhere, with an
audit record; and after the run no table holds raw coordinates, BSSIDs, SSIDs or phone numbers.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest

from hearth import admin
from hearth.broker import OPERATOR_USERNAME, BrokerAccounts
from hearth.signals import Category
from tests.integration.auth_broker import AuthBroker, Client, connect, start_auth_broker
from tests.integration.consent_fixtures import count_signal_rows, unique
from tests.integration.fleet import CollectorProcess, wait_until
from tests.integration.privacy_scan import scan_for_raw_identifiers

SSID = "HearthPrivacyTestNet"
BSSID = "A4:2B:B0:11:22:33"


@dataclass
class Household:
    user_id: str
    phone: admin.DeviceCredentials
    plug: admin.DeviceCredentials


@dataclass
class Rig:
    ab: AuthBroker
    collector: CollectorProcess
    database_url: str
    energy_only: Household
    everything: Household


def _household(
    conn: psycopg.Connection, categories: tuple[Category, ...], broker: BrokerAccounts
) -> Household:
    user = unique("e2e")
    at = datetime.now(UTC) - timedelta(days=30)  # bound and consented before any reading
    phone = admin.register_device(
        conn,
        user_id=user,
        kind="phone",
        format="hearth",
        external_id=unique("ph"),
        user_tz="UTC",
        bound_at=at,
        broker=broker,
    )
    plug = admin.register_device(
        conn,
        user_id=user,
        kind="plug",
        format="hearth",
        external_id=unique("pl"),
        bound_at=at,
        broker=broker,
    )
    for c in categories:
        admin.grant_consent(conn, user_id=user, category=c, at=at)
    return Household(user, phone, plug)


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory, database_url: str) -> Iterator[Rig]:
    state: Path = tmp_path_factory.mktemp("e2e")
    ab = start_auth_broker(state, database_url)  # first: registration makes the accounts
    with psycopg.connect(database_url, autocommit=True) as conn:
        energy_only = _household(conn, (Category.ENERGY,), ab.admin)
        everything = _household(conn, tuple(Category), ab.admin)
    collector = ab.collector(state / "collector.log")
    try:
        collector.start()
        yield Rig(ab, collector, database_url, energy_only, everything)
    finally:
        collector.stop()
        ab.stop()


def _device(rig: Rig, creds: admin.DeviceCredentials) -> Client:
    client = connect(rig.ab.broker.port, creds.mqtt_username, creds.mqtt_password)
    assert not client.connack.is_failure, client.connack
    return client


def _phone_fix(creds: admin.DeviceCredentials, t: datetime) -> tuple[str, bytes]:
    body = {
        "ts": t.isoformat().replace("+00:00", "Z"),
        "readings": {
            "position": {"lat": 31.230416, "lon": 121.473701},
            "battery_pct": 60.0,
            "wifi_ssid": SSID,
            "wifi_bssid": BSSID,
        },
    }
    return f"hearth/v1/{creds.device_id}/phone", json.dumps(body).encode()


def _plug_reading(creds: admin.DeviceCredentials, t: datetime, watts: float) -> tuple[str, bytes]:
    body = {"ts": t.isoformat().replace("+00:00", "Z"), "readings": {"power_w": watts}}
    return f"hearth/v1/{creds.device_id}/plug", json.dumps(body).encode()


def _power_rows(conn: psycopg.Connection, device_id: str) -> int:
    row = conn.execute(
        "SELECT count(*) FROM numeric_readings WHERE device_id = %s AND signal = 'power_w'",
        (device_id,),
    ).fetchone()
    assert row is not None
    return int(row[0])


def test_energy_consent_without_location_stores_zero_location_rows(
    rig: Rig, db: psycopg.Connection
) -> None:
    h = rig.energy_only
    phone, plug = _device(rig, h.phone), _device(rig, h.plug)
    base = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)
    try:
        for i in range(20):  # phone first: it reaches the collector before the plug's readings
            assert phone.publish(*_phone_fix(h.phone, base + timedelta(seconds=i))) < 128
        for i in range(20):
            assert plug.publish(*_plug_reading(h.plug, base + timedelta(seconds=i), 100 + i)) < 128
    finally:
        phone.close()
        plug.close()
    wait_until(lambda: _power_rows(db, h.plug.device_id) == 20, 30, "20 energy rows")
    for category in (Category.LOCATION, Category.CONNECTIVITY, Category.DEVICE_HEALTH):
        assert sum(count_signal_rows(db, h.user_id, category).values()) == 0, category


def _location_rows(conn: psycopg.Connection, user_id: str) -> int:
    return sum(count_signal_rows(conn, user_id, Category.LOCATION).values())


def test_withdraw_location_while_device_publishes(rig: Rig, db: psycopg.Connection) -> None:
    h = rig.everything
    phone, plug = _device(rig, h.phone), _device(rig, h.plug)
    stop = threading.Event()
    base = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=2)
    sent = 0

    def keep_publishing() -> None:
        nonlocal sent
        while not stop.is_set():
            phone.publish(*_phone_fix(h.phone, base + timedelta(seconds=sent)))
            sent += 1
            time.sleep(0.01)

    worker = threading.Thread(target=keep_publishing, daemon=True)
    worker.start()
    try:
        wait_until(lambda: _location_rows(db, h.user_id) >= 20, 30, "location rows flowing")
        started = time.monotonic()
        report = admin.withdraw_consent(db, user_id=h.user_id, category="location")
        elapsed = time.monotonic() - started
        assert _location_rows(db, h.user_id) == 0
        # Keep publishing a while, then a marker through the same collector: still nothing.
        sent_at_withdrawal = sent
        wait_until(lambda: sent >= sent_at_withdrawal + 50, 30, "more fixes after withdrawal")
        marker_time = base + timedelta(minutes=30)
        assert plug.publish(*_plug_reading(h.plug, marker_time, 42.0)) < 128
        wait_until(lambda: _power_rows(db, h.plug.device_id) >= 1, 30, "marker reading")
        assert _location_rows(db, h.user_id) == 0
    finally:
        stop.set()
        worker.join(timeout=10)
        phone.close()
        plug.close()
    assert elapsed < 60, elapsed
    assert report.counts["categorical_readings"] >= 20  # geohash rows purged
    audit = db.execute(
        "SELECT details FROM audit_log WHERE id = %s AND subject_ref = %s",
        (report.audit_id, admin.audit_subject(h.user_id)),
    ).fetchone()
    assert audit is not None and audit[0]["category"] == "location"
    assert audit[0]["counts"]["categorical_readings"] == report.counts["categorical_readings"]
    # Other categories of the same messages keep flowing (battery is device_health).
    assert sum(count_signal_rows(db, h.user_id, Category.DEVICE_HEALTH).values()) > 0


def test_no_raw_identifiers_anywhere_after_the_run(rig: Rig, db: psycopg.Connection) -> None:
    row = db.execute(
        "SELECT count(*) FROM categorical_readings WHERE user_id = %s AND signal LIKE 'wifi%%'",
        (rig.everything.user_id,),
    ).fetchone()
    assert row is not None and row[0] > 0  # Wi-Fi was stored — hashed
    findings = scan_for_raw_identifiers(db, known_ssids=[SSID])
    assert findings == [], "\n".join(map(str, findings))


def test_scanner_catches_planted_raw_identifiers(db: psycopg.Connection) -> None:
    """The scan is only worth something if it fails on the things it looks for."""
    planted = {
        "coordinates": '{"lat": 31.230416, "lon": 121.473701}',
        "mac_address": "seen a4:2b:b0:11:22:33 nearby",
        "phone_number": "call +8613812345678",
        "raw_ssid": f"joined {SSID}",
    }
    ids = []
    for text in planted.values():
        row = db.execute(
            "INSERT INTO audit_log (action, details) VALUES ('scanner-test', %s) RETURNING id",
            (json.dumps({"note": text}),),
        ).fetchone()
        assert row is not None
        ids.append(row[0])
    try:
        kinds = {f.kind for f in scan_for_raw_identifiers(db, known_ssids=[SSID])}
        assert set(planted) <= kinds
    finally:
        db.execute("DELETE FROM audit_log WHERE id = ANY(%s)", (ids,))


def test_spoofed_payload_reaching_the_collector_is_dead_lettered(
    rig: Rig, db: psycopg.Connection
) -> None:
    """The broker lets the operator publish anywhere; a payload claiming another device is
    still caught by the collector (reason ``spoofed``) and none of its readings are stored."""
    h = rig.energy_only
    operator = connect(rig.ab.broker.port, OPERATOR_USERNAME, rig.ab.accounts[OPERATOR_USERNAME])
    t = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=5)
    body = {
        "ts": t.isoformat().replace("+00:00", "Z"),
        "device_id": rig.everything.plug.device_id,  # not the topic's device
        "readings": {"power_w": 777.0},
    }
    topic = f"hearth/v1/{h.plug.device_id}/plug"
    try:
        assert operator.publish(topic, json.dumps(body).encode()) < 128
    finally:
        operator.close()

    def dead_lettered() -> bool:
        row = db.execute(
            "SELECT count(*) FROM dead_letters WHERE topic = %s AND reason = 'spoofed'", (topic,)
        ).fetchone()
        return row is not None and row[0] == 1

    wait_until(dead_lettered, 30, "spoofed dead letter")
    row = db.execute(
        "SELECT count(*) FROM numeric_readings WHERE value = 777 AND time = %s", (t,)
    ).fetchone()
    assert row == (0,)
