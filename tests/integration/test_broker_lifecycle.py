"""Issue 13's time limits on a real Mosquitto with the dynamic-security plugin, and issue 11 §8:
``broker sync --watch`` survives database and broker restarts.

- every device of a tight registration loop (CLI, HTTP admin API) connects at once;
- a retired device, or a device of an erased user, is disconnected within 1 s of the commit,
  cannot reconnect, and nothing it sent after the change is stored;
- the watcher keeps reconciling after its database sessions are killed and after the broker
  restarts.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest

from collector.broker.sync import SYNC_APPLICATION_NAME
from hearth import admin
from hearth.ledger import REGISTRY_CHANNEL
from tests.conftest import ROOT, fresh_database
from tests.integration.auth_broker import AuthBroker, Client, connect, start_auth_broker
from tests.integration.consent_fixtures import unique
from tests.integration.fleet import CollectorProcess, wait_until
from tests.support.service import serve_subprocess

ADMIN_TOKEN = "broker-lifecycle-admin-token-0123"
CONNECT_WITHIN_S = 1.0
REVOKE_WITHIN_S = 1.0


@dataclass
class Rig:
    ab: AuthBroker
    collector: CollectorProcess
    database_url: str


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    # A registry of its own: the watcher test reconciles every device of the registry into a
    # fresh broker at start, and the session's database holds the other modules' thousands
    # (2,118 in one CI run: over a minute of dynamic-security writes before it watched).
    state: Path = tmp_path_factory.mktemp("lifecycle")
    with fresh_database("hearth_lifecycle") as database_url:
        ab = start_auth_broker(state, database_url)
        collector = ab.collector(state / "collector.log")
        try:
            collector.start()
            yield Rig(ab, collector, database_url)
        finally:
            collector.stop()
            ab.stop()


@pytest.fixture
def db(rig: Rig) -> Iterator[psycopg.Connection[tuple[object, ...]]]:
    """An autocommit connection to the rig's own database (this module's ``db``)."""
    with psycopg.connect(rig.database_url, autocommit=True) as conn:
        yield conn


def _connects_at_once(rig: Rig, creds: dict[str, object], returned: float) -> None:
    """The device's first attempt after the registration returned (hence committed) succeeds,
    within the bound."""
    client = connect(rig.ab.port, str(creds["mqtt_username"]), str(creds["mqtt_password"]))
    elapsed = time.monotonic() - returned
    client.close()
    assert not client.connack.is_failure, (creds["device_id"], client.connack)
    assert elapsed < CONNECT_WITHIN_S, (creds["device_id"], elapsed)


@pytest.mark.slow
def test_fifty_cli_registrations_in_a_row_each_connect_at_once(rig: Rig) -> None:
    env = {**os.environ, **rig.ab.env()}
    user = unique("cli")
    for i in range(50):
        out = subprocess.run(
            [sys.executable, "-m", "collector", "devices", "add", "--user-id", user,
             "--user-tz", "UTC", "--kind", "plug", "--format", "tasmota",
             "--external-id", f"{user}-{i}"],
            env=env, cwd=ROOT, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        returned = time.monotonic()
        assert out.returncode == 0, out.stderr[-2000:]
        _connects_at_once(rig, json.loads(out.stdout), returned)


def test_fifty_http_registrations_in_a_row_each_connect_at_once(rig: Rig) -> None:
    user = unique("http")
    with psycopg.connect(rig.database_url, autocommit=True) as conn:
        admin.add_user(conn, user)
    tokens = {ADMIN_TOKEN: ["admin"]}
    with serve_subprocess(rig.database_url, tokens, env=rig.ab.env()) as base:
        for i in range(50):
            body = {
                "user_id": user,
                "kind": "plug",
                "format": "tasmota",
                "external_id": f"{user}-{i}",
            }
            request = urllib.request.Request(
                f"{base}/v1/admin/devices",
                data=json.dumps(body).encode(),
                headers={
                    "Authorization": f"Bearer {ADMIN_TOKEN}",
                    "Content-Type": "application/json",
                },
                method="POST",
            )
            with urllib.request.urlopen(request, timeout=30) as resp:
                assert resp.status == 201
                creds = json.loads(resp.read())
            _connects_at_once(rig, creds, time.monotonic())
        # Again: the same device, new credentials (200), the old password refused.
        request = urllib.request.Request(
            f"{base}/v1/admin/devices",
            data=json.dumps(body).encode(),
            headers={"Authorization": f"Bearer {ADMIN_TOKEN}", "Content-Type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=30) as resp:
            assert resp.status == 200
            rotated = json.loads(resp.read())
    assert rotated["rotated"] and rotated["device_id"] == creds["device_id"]
    _connects_at_once(rig, rotated, time.monotonic())
    old = connect(rig.ab.port, str(creds["mqtt_username"]), str(creds["mqtt_password"]))
    old.close()
    assert old.connack.is_failure


# --- retirement and erasure while the device publishes ---------------------------------------


@dataclass
class Publisher:
    """A device publishing a power reading every few ms; remembers when each was sent."""

    client: Client
    device_id: str
    base: datetime
    sent_at: dict[int, float] = field(default_factory=dict)  # second offset → monotonic time
    acked: set[int] = field(default_factory=set)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        i = 0
        while not self.stop.is_set() and not self.client.disconnected.is_set():
            ts = (self.base + timedelta(seconds=i)).isoformat().replace("+00:00", "Z")
            body = json.dumps({"ts": ts, "readings": {"power_w": 100.0 + i}}).encode()
            self.sent_at[i] = time.monotonic()
            info = self.client.client.publish(f"hearth/v1/{self.device_id}/plug", body, qos=1)
            end = time.monotonic() + 2
            while info.mid not in self.client.pubacks and time.monotonic() < end:
                if self.client.disconnected.is_set():
                    return
                time.sleep(0.002)
            if self.client.pubacks.get(info.mid, 255) < 128:
                self.acked.add(i)
            i += 1
            time.sleep(0.005)


def _device_with_consent(conn: psycopg.Connection, rig: Rig, user: str) -> admin.DeviceCredentials:
    # Bound and consented before the readings' event times (now - 3 h), which are then stored.
    creds = admin.register_device(
        conn, user_id=user, kind="plug", format="hearth", external_id=unique("pl"),
        user_tz="UTC", bound_at=datetime.now(UTC) - timedelta(days=30), broker=rig.ab.admin,
    )  # fmt: skip
    admin.grant_consent(
        conn, user_id=user, category="energy", at=datetime.now(UTC) - timedelta(days=30)
    )
    return creds


def _stored_offsets(conn: psycopg.Connection, device_id: str, base: datetime) -> set[int]:
    rows = conn.execute(
        "SELECT time FROM numeric_readings WHERE device_id = %s AND signal = 'power_w'",
        (device_id,),
    ).fetchall()
    return {int((t - base).total_seconds()) for (t,) in rows}


def _drained(rig: Rig, conn: psycopg.Connection) -> None:
    """Everything published before now has been through the collector: a marker published
    after it by another device (one replica, delivered in order) is stored. The marker is sent
    again until the collector knows its new device."""
    marker = _device_with_consent(conn, rig, unique("marker"))
    client = connect(rig.ab.port, marker.mqtt_username, marker.mqtt_password)
    base = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=5)
    try:
        for i in range(60):
            ts = (base + timedelta(seconds=i)).isoformat().replace("+00:00", "Z")
            body = json.dumps({"ts": ts, "readings": {"power_w": 1.0}}).encode()
            assert client.publish(f"hearth/v1/{marker.device_id}/plug", body) < 128
            try:
                wait_until(lambda: bool(_stored_offsets(conn, marker.device_id, base)), 0.5, "")
                return
            except AssertionError:
                continue
    finally:
        client.close()
    raise AssertionError("the collector never stored the marker")


def _revoked_while_publishing(
    rig: Rig, conn: psycopg.Connection, change: Callable[[admin.DeviceCredentials], object]
) -> tuple[Publisher, float, admin.DeviceCredentials]:
    """Start publishing, apply ``change`` (retire/erase) in a thread, and return the publisher,
    the moment the registry change committed (its NOTIFY) and the credentials."""
    user = unique("rv")
    creds = _device_with_consent(conn, rig, user)
    client = connect(rig.ab.port, creds.mqtt_username, creds.mqtt_password, reconnect=False)
    assert not client.connack.is_failure
    base = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=3)
    pub = Publisher(client, creds.device_id, base)
    worker = threading.Thread(target=pub.run, daemon=True)
    worker.start()
    wait_until(
        lambda: len(pub.acked) >= 20 and bool(_stored_offsets(conn, creds.device_id, base)),
        20,
        "20 acknowledged readings, some stored",
    )
    with psycopg.connect(rig.database_url, autocommit=True) as listener:
        listener.execute(f"LISTEN {REGISTRY_CHANNEL}")
        changer = threading.Thread(target=change, args=(creds,), daemon=True)
        changer.start()
        notified = next(iter(listener.notifies(timeout=30, stop_after=1)), None)
        committed = time.monotonic()
        assert notified is not None, "the registry change never committed"
    changer.join(60)
    pub.stop.set()
    worker.join(10)
    client.close()
    return pub, committed, creds


def _assert_cut_off(
    rig: Rig, pub: Publisher, committed: float, creds: admin.DeviceCredentials
) -> None:
    assert pub.client.disconnected_at is not None, "the device was never disconnected"
    assert pub.client.disconnected_at - committed < REVOKE_WITHIN_S
    again = connect(rig.ab.port, creds.mqtt_username, creds.mqtt_password, reconnect=False)
    again.close()
    assert again.connack.is_failure
    assert creds.mqtt_username not in rig.ab.usernames()
    # Nothing was even acknowledged after the commit: the account went before it.
    assert all(pub.sent_at[i] < committed for i in pub.acked)


def test_retired_device_is_cut_off_and_nothing_later_is_stored(
    rig: Rig, db: psycopg.Connection
) -> None:
    def retire(c: admin.DeviceCredentials) -> None:
        with psycopg.connect(rig.database_url, autocommit=True) as conn:
            admin.retire_device(conn, c.device_id, broker=rig.ab.admin)

    pub, committed, creds = _revoked_while_publishing(rig, db, retire)
    _assert_cut_off(rig, pub, committed, creds)
    _drained(rig, db)
    stored = _stored_offsets(db, creds.device_id, pub.base)
    assert stored, "the readings sent before the retirement were stored"
    assert stored <= {i for i, t in pub.sent_at.items() if t < committed}


def test_erased_users_device_is_cut_off_and_nothing_is_kept(
    rig: Rig, db: psycopg.Connection
) -> None:
    def erase(c: admin.DeviceCredentials) -> None:
        with psycopg.connect(rig.database_url, autocommit=True) as conn:
            admin.erase_user(conn, c.user_id, broker=rig.ab.admin)

    pub, committed, creds = _revoked_while_publishing(rig, db, erase)
    _assert_cut_off(rig, pub, committed, creds)
    _drained(rig, db)
    assert _stored_offsets(db, creds.device_id, pub.base) == set()


# --- the watcher -----------------------------------------------------------------------------


class Watcher:
    def __init__(self, rig: Rig, log_path: Path) -> None:
        self.log_path = log_path
        env = {**os.environ, **rig.ab.env()}
        with log_path.open("w") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "collector", "broker", "sync", "--watch"],
                env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=log, text=True,
            )  # fmt: skip

    def log(self) -> str:
        return self.log_path.read_text()

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> int:
        self.proc.terminate()
        return self.proc.wait(timeout=20)


def _registry_only_retire(rig: Rig, creds: admin.DeviceCredentials) -> None:
    """A retirement the broker does not hear about (no admin URL in this process's settings):
    only the watcher can take the account away."""
    with psycopg.connect(rig.database_url, autocommit=True) as conn:
        admin.retire_device(conn, creds.device_id)


def test_watch_survives_database_and_broker_restarts(rig: Rig, tmp_path: Path) -> None:
    with psycopg.connect(rig.database_url, autocommit=True) as conn:
        user = unique("w")
        devices = [
            admin.register_device(
                conn,
                user_id=user,
                kind="plug",
                format="tasmota",
                external_id=unique("w"),
                user_tz="UTC",
                broker=rig.ab.admin,
            )
            for _ in range(3)
        ]
    watcher = Watcher(rig, tmp_path / "watch.log")
    try:
        wait_until(lambda: "watching the registry" in watcher.log(), 60, "the watcher")
        # Database "restart": every session of the watcher is terminated under it.
        with psycopg.connect(rig.database_url, autocommit=True) as conn:
            killed = conn.execute(
                "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE application_name = %s AND datname = current_database()",
                (SYNC_APPLICATION_NAME,),
            ).fetchone()
        assert killed is not None and killed[0] >= 1
        _registry_only_retire(rig, devices[0])
        wait_until(lambda: devices[0].mqtt_username not in rig.ab.usernames(), 15, "removal 1")
        assert "database unavailable" in watcher.log() and watcher.alive()
        # Broker restart, and a retirement while it is down.
        rig.ab.stop()
        _registry_only_retire(rig, devices[1])
        rig.ab.restart()
        wait_until(lambda: devices[1].mqtt_username not in rig.ab.usernames(), 30, "removal 2")
        # And it still follows the registry afterwards.
        _registry_only_retire(rig, devices[2])
        wait_until(lambda: devices[2].mqtt_username not in rig.ab.usernames(), 15, "removal 3")
        assert watcher.alive()
        assert f"removed {devices[2].mqtt_username}" in watcher.log()
    finally:
        assert watcher.stop() == 0
