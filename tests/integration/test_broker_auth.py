"""Broker identity with a private Mosquitto running Hearth's generated password file and ACL."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest

from collector import broker_auth
from collector.broker_auth import COLLECTOR_USERNAME, OPERATOR_USERNAME, AuthPaths
from hearth import admin
from hearth.admin import mosquitto_password_hash
from tests.integration.auth_broker import AuthBroker, Client, connect, start_auth_broker, wait_for
from tests.integration.consent_fixtures import unique


def test_hash_format_matches_real_mosquitto_passwd(tmp_path: Path) -> None:
    """Recompute mosquitto_passwd's own output from its salt: same algorithm, same encoding."""
    path = tmp_path / "pw"
    subprocess.run(["mosquitto_passwd", "-c", "-b", str(path), "alice", "s3cret!"], check=True)
    username, stored = path.read_text().strip().split(":", 1)
    _, seven, iterations, salt_b64, _hash = stored.split("$")
    assert (username, seven) == ("alice", "7")
    ours = mosquitto_password_hash(
        "s3cret!", salt=base64.b64decode(salt_b64), iterations=int(iterations)
    )
    assert ours == stored


# --- a private authenticated broker ----------------------------------------------------------


@dataclass
class Setup:
    ab: AuthBroker
    devices: dict[str, admin.DeviceCredentials]
    database_url: str

    @property
    def port(self) -> int:
        return self.ab.broker.port


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory, database_url: str) -> Iterator[Setup]:
    devices = {}
    with psycopg.connect(database_url, autocommit=True) as conn:
        user_a, user_b = unique("ua"), unique("ub")
        for name, user, fmt, ext in (
            ("a", user_a, "owntracks", f"{user_a}/phone"),
            ("b", user_b, "owntracks", f"{user_b}/phone"),
            ("c", user_b, "hearth", unique("router")),
            ("retiree", user_b, "tasmota", unique("plug")),
        ):
            devices[name] = admin.register_device(
                conn, user_id=user, kind="phone", format=fmt, external_id=ext, user_tz="UTC"
            )
    ab = start_auth_broker(tmp_path_factory.mktemp("authbroker"), database_url)
    try:
        yield Setup(ab, devices, database_url)
    finally:
        ab.stop()


def refused(client: Client) -> bool:
    client.close()
    return bool(client.connack.is_failure)


def test_anonymous_and_wrong_password_are_refused(setup: Setup) -> None:
    port = setup.port
    assert refused(connect(port, None, None))
    assert refused(connect(port, setup.devices["a"].mqtt_username, "wrong-password"))
    assert refused(connect(port, "nobody", "nothing"))


def test_device_may_publish_only_its_own_topics(setup: Setup) -> None:
    port = setup.port
    watcher = connect(port, OPERATOR_USERNAME, setup.ab.accounts[OPERATOR_USERNAME])
    a, b, c = (setup.devices[k] for k in ("a", "b", "c"))
    device_a = connect(port, a.mqtt_username, a.mqtt_password)
    try:
        assert not device_a.connack.is_failure
        assert watcher.subscribe("#") == [1]
        own = f"owntracks/{a.external_id}"
        assert device_a.publish(own, b"mine") == 0
        # Under another device's topic, or the canonical topic of a third: refused.
        assert device_a.publish(f"owntracks/{b.external_id}", b"spoof") == 135
        assert device_a.publish(f"hearth/v1/{c.device_id}/climate", b"spoof") == 135
        assert device_a.publish(f"owntracks/{a.external_id}/event", b"marker") == 0
        wait_for(lambda: (f"{own}/event", b"marker") in watcher.received, "marker")
        payloads = [p for _, p in watcher.received]
        assert b"mine" in payloads and b"spoof" not in payloads
    finally:
        device_a.close()
        watcher.close()


def test_collector_reads_shared_subscription_but_cannot_publish(setup: Setup) -> None:
    port = setup.port
    collector = connect(port, COLLECTOR_USERNAME, setup.ab.accounts[COLLECTOR_USERNAME])
    c = setup.devices["c"]
    device_c = connect(port, c.mqtt_username, c.mqtt_password)
    try:
        assert collector.subscribe("$share/hearth/hearth/v1/+/+") == [1]
        assert device_c.publish(f"hearth/v1/{c.device_id}/climate", b"{}") == 0
        wait_for(lambda: collector.received, "shared-subscription delivery")
        assert collector.publish(f"hearth/v1/{c.device_id}/climate", b"forged") == 135
        assert collector.publish("owntracks/x/y", b"forged") == 135
    finally:
        collector.close()
        device_c.close()


def test_tls_listener_with_generated_ca(setup: Setup) -> None:
    wait_for(lambda: _port_open(setup.ab.tls_port), "TLS listener")
    a = setup.devices["a"]
    device = connect(
        setup.ab.tls_port, a.mqtt_username, a.mqtt_password, ca_file=setup.ab.paths.ca_cert
    )
    try:
        assert not device.connack.is_failure
        assert device.publish(f"owntracks/{a.external_id}", b"over tls") in (
            0,
            16,
        )  # 16: no subscriber
    finally:
        device.close()


def test_retire_and_sync_revokes_the_credential(setup: Setup) -> None:
    port = setup.port
    r = setup.devices["retiree"]
    assert not refused(connect(port, r.mqtt_username, r.mqtt_password))
    with psycopg.connect(setup.database_url, autocommit=True) as conn:
        admin.retire_device(conn, r.device_id)
        # The files were generated from this database, so the automatic sync applies (and
        # SIGHUPs the broker through the pid file in the state directory).
        assert broker_auth.sync_if_configured(conn, setup.database_url, setup.ab.paths)
        other_db = "postgresql://elsewhere/db"
        assert not broker_auth.sync_if_configured(conn, other_db, setup.ab.paths)
    assert f"{r.mqtt_username}:" not in setup.ab.paths.passwd.read_text()
    wait_for(lambda: refused(connect(port, r.mqtt_username, r.mqtt_password)), "revocation")
    a = setup.devices["a"]
    assert not refused(connect(port, a.mqtt_username, a.mqtt_password))  # others unaffected


def _port_open(port: int) -> bool:
    import socket

    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


def test_init_local_writes_urls_and_config(tmp_path: Path, database_url: str) -> None:
    paths = AuthPaths(tmp_path)
    (tmp_path / "hearth.toml").write_text('pseudonym_key = "k"\n')
    with psycopg.connect(database_url, autocommit=True) as conn:
        urls = broker_auth.init_local(paths, conn, database_url, mqtt_port=1999, mqtts_port=None)
    toml = (tmp_path / "hearth.toml").read_text()
    assert 'pseudonym_key = "k"' in toml and f'mqtt_url = "{urls["collector"]}"' in toml
    assert urls["collector"].startswith(f"mqtt://{COLLECTOR_USERNAME}:")
    assert urls["collector"].endswith("@127.0.0.1:1999")
    assert (tmp_path / "mqtt-operator.url").read_text().strip() == urls["operator"]
    assert oct((tmp_path / "mqtt-accounts.json").stat().st_mode & 0o777) == "0o600"
    conf = paths.auth_conf.read_text()
    assert "allow_anonymous false" in conf and "listener" not in conf
    again = broker_auth.init_local(paths, None, database_url, mqtt_port=1999, mqtts_port=None)
    assert again == urls  # service passwords are kept


def test_sync_watch_admits_devices_registered_elsewhere(setup: Setup) -> None:
    """``broker sync --watch`` follows registry NOTIFYs (devices added through the HTTP API)."""
    env = {
        **os.environ,
        "HEARTH_DATABASE_URL": setup.database_url,
        "HEARTH_STATE_DIR": str(setup.ab.paths.root),
    }
    watcher = subprocess.Popen(
        [sys.executable, "-m", "collector", "broker", "sync", "--watch"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(lambda: b"watching" in _peek(watcher), "watcher start", deadline_s=60)
        with psycopg.connect(setup.database_url, autocommit=True) as conn:
            creds = admin.register_device(
                conn,
                user_id=setup.devices["a"].user_id,
                kind="plug",
                format="tasmota",
                external_id=unique("watched"),
            )
        wait_for(
            lambda: not refused(connect(setup.port, creds.mqtt_username, creds.mqtt_password)),
            "new device admitted",
            deadline_s=30,
        )
    finally:
        watcher.terminate()
        watcher.wait(timeout=10)


_peeked: dict[int, bytes] = {}


def _peek(proc: subprocess.Popen[str]) -> bytes:
    """Non-blocking read of what the process wrote to stderr so far."""
    import fcntl

    assert proc.stderr is not None
    fd = proc.stderr.fileno()
    fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) | os.O_NONBLOCK)
    try:
        chunk = os.read(fd, 65536)
    except BlockingIOError:
        chunk = b""
    _peeked[proc.pid] = _peeked.get(proc.pid, b"") + chunk
    return _peeked[proc.pid]
