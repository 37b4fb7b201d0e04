"""Broker identity with a private Mosquitto running Hearth's dynamic-security setup (issue 13):
device accounts made, rotated and deleted through the plugin's control API, never by files."""

from __future__ import annotations

import base64
import json
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest

from collector.broker import local_setup, sync
from collector.broker.local_setup import AuthPaths
from collector.broker.passwd import mosquitto_password_hash
from hearth import admin
from hearth.broker import (
    BROKER_ADMIN_USERNAME,
    COLLECTOR_USERNAME,
    OPERATOR_USERNAME,
    REGISTRY_MARKER_ROLE,
    BrokerAccounts,
    BrokerUnavailable,
    DynsecClient,
    device_role,
)
from hearth.errors import ConfigError, Invalid
from tests.conftest import ROOT, free_port, start_broker
from tests.integration.auth_broker import AuthBroker, Client, connect, start_auth_broker, wait_for
from tests.integration.consent_fixtures import unique


def test_hash_format_matches_real_mosquitto_passwd(tmp_path: Path) -> None:
    """Recompute mosquitto_passwd's own output from its salt: same algorithm, same encoding
    (the hash the plugin's first file carries for the service accounts)."""
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
    ab = start_auth_broker(tmp_path_factory.mktemp("authbroker"), database_url)
    devices = {}
    try:
        with psycopg.connect(database_url, autocommit=True) as conn:
            user_a, user_b = unique("ua"), unique("ub")
            for name, user, fmt, ext in (
                ("a", user_a, "owntracks", f"{user_a}/phone"),
                ("b", user_b, "owntracks", f"{user_b}/phone"),
                ("c", user_b, "hearth", unique("router")),
                ("retiree", user_b, "tasmota", unique("plug")),
            ):
                devices[name] = admin.register_device(
                    conn,
                    user_id=user,
                    kind="phone",
                    format=fmt,
                    external_id=ext,
                    user_tz="UTC",
                    broker=ab.admin,
                )
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


def test_only_the_admin_account_may_change_accounts(setup: Setup) -> None:
    """The operator may publish anywhere, but not to the plugin; the admin may not read
    device traffic."""
    port = setup.port
    operator = connect(port, OPERATOR_USERNAME, setup.ab.accounts[OPERATOR_USERNAME])
    admin_client = connect(port, BROKER_ADMIN_USERNAME, setup.ab.accounts[BROKER_ADMIN_USERNAME])
    try:
        command = {"commands": [{"command": "deleteClient", "username": COLLECTOR_USERNAME}]}
        assert operator.publish("$CONTROL/dynamic-security/v1", json.dumps(command).encode()) == 135
        assert admin_client.subscribe("#") == [135]
    finally:
        operator.close()
        admin_client.close()
    assert COLLECTOR_USERNAME in setup.ab.usernames()


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


def test_retire_revokes_the_credential(setup: Setup) -> None:
    port = setup.port
    r = setup.devices["retiree"]
    assert not refused(connect(port, r.mqtt_username, r.mqtt_password))
    with psycopg.connect(setup.database_url, autocommit=True) as conn:
        admin.retire_device(conn, r.device_id, broker=setup.ab.admin)
    assert refused(connect(port, r.mqtt_username, r.mqtt_password))  # at once: no reload
    assert r.mqtt_username not in setup.ab.usernames()
    assert device_role(r.mqtt_username) not in setup.ab.admin.state().roles
    a = setup.devices["a"]
    assert not refused(connect(port, a.mqtt_username, a.mqtt_password))  # others unaffected


def test_registering_again_rotates_the_password(setup: Setup, db: psycopg.Connection) -> None:
    """Same user, format and external id: the same device, a new password (the old one stops
    at once), an audit record; another user's attempt is still refused."""
    c = setup.devices["c"]
    old = connect(setup.port, c.mqtt_username, c.mqtt_password)
    assert not old.connack.is_failure
    audits_before = _audit_count(db, "rotate_device_credentials")
    again = _register_again(db, c, setup)
    assert again.rotated and again.device_id == c.device_id
    assert again.mqtt_password != c.mqtt_password and again.topics == c.topics
    wait_for(lambda: old.disconnected.is_set(), "the old session dropped", deadline_s=1)
    old.close()
    assert refused(connect(setup.port, c.mqtt_username, c.mqtt_password))
    assert not refused(connect(setup.port, again.mqtt_username, again.mqtt_password))
    assert _audit_count(db, "rotate_device_credentials") == audits_before + 1
    with pytest.raises(Invalid, match="already registered"):
        admin.register_device(
            db,
            user_id=setup.devices["a"].user_id,
            kind=c.kind,
            format=c.format,
            external_id=c.external_id,
            broker=setup.ab.admin,
        )
    setup.devices["c"] = again


def _register_again(
    db: psycopg.Connection, creds: admin.DeviceCredentials, setup: Setup
) -> admin.DeviceCredentials:
    return admin.register_device(
        db,
        user_id=creds.user_id,
        kind=creds.kind,
        format=creds.format,
        external_id=creds.external_id,
        broker=setup.ab.admin,
    )


def _audit_count(db: psycopg.Connection, action: str) -> int:
    row = db.execute("SELECT count(*) FROM audit_log WHERE action = %s", (action,)).fetchone()
    assert row is not None
    return int(row[0])


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
        urls = local_setup.init_local(paths, conn, mqtt_port=1999, mqtts_port=None)
    toml = (tmp_path / "hearth.toml").read_text()
    assert 'pseudonym_key = "k"' in toml and f'mqtt_url = "{urls["collector"]}"' in toml
    assert f'broker_admin_url = "{urls["admin"]}"' in toml
    assert urls["collector"].startswith(f"mqtt://{COLLECTOR_USERNAME}:")
    assert urls["collector"].endswith("@127.0.0.1:1999")
    assert urls["admin"].startswith(f"mqtt://{BROKER_ADMIN_USERNAME}:")
    assert (tmp_path / "mqtt-operator.url").read_text().strip() == urls["operator"]
    assert oct((tmp_path / "mqtt-accounts.json").stat().st_mode & 0o777) == "0o600"
    assert oct(paths.dynsec.stat().st_mode & 0o777) == "0o600"
    assert oct(paths.dynsec.parent.stat().st_mode & 0o777) == "0o700"
    conf = paths.auth_conf.read_text()
    assert "allow_anonymous false" in conf and "listener" not in conf
    assert f"plugin_opt_config_file {paths.dynsec.resolve()}" in conf
    assert "password_file" not in conf and "acl_file" not in conf
    first = paths.dynsec.read_text()
    for password in json.loads((tmp_path / "mqtt-accounts.json").read_text()).values():
        assert password not in first  # hashes only
    again = local_setup.init_local(paths, None, mqtt_port=1999, mqtts_port=None)
    assert again == urls  # service passwords are kept
    assert paths.dynsec.read_text() == first  # and the plugin's file is the broker's now


def test_first_plugin_file_carries_a_password_file_setup_over(
    tmp_path: Path, database_url: str
) -> None:
    """Live devices of a registry that still has ``$7$`` hashes (before migration 0040) keep
    their passwords when ``broker init`` writes the plugin's first file; retired ones do not."""
    schema = unique("legacy").replace("-", "_")
    device_password = "carried-over-password"
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
        conn.execute(f"SET search_path = {schema}")  # a `devices` table as 0001 made it
        conn.execute(
            "CREATE TABLE devices (device_id text, format text, external_id text, "
            "mqtt_username text, mqtt_password_hash text, retired_at timestamptz)"
        )
        conn.execute(
            "INSERT INTO devices VALUES ('dlegacy', 'tasmota', 'legacy1', 'dlegacy', %s, NULL), "
            "('dgone', 'tasmota', 'gone1', 'dgone', %s, now())",
            (mosquitto_password_hash(device_password), mosquitto_password_hash("x")),
        )
        paths = AuthPaths(tmp_path)
        assert local_setup.write_dynsec_config(
            paths, local_setup.ensure_service_accounts(paths), conn
        )
        conn.execute(f"DROP SCHEMA {schema} CASCADE")
    assert "dgone" not in paths.dynsec.read_text()
    local_setup.write_auth_conf(paths, mqtts_port=None)
    b = start_broker(tmp_path, auth=f"include_dir {paths.auth_conf.parent}")
    try:
        device = connect(b.port, "dlegacy", device_password)
        assert not device.connack.is_failure
        assert device.publish("tele/legacy1/SENSOR", b"{}") in (0, 16)
        assert device.publish("tele/other/SENSOR", b"{}") == 135
        device.close()
    finally:
        b.process.terminate()
        b.process.wait(timeout=10)


# --- sync: drift, binding ----------------------------------------------------------------------


def test_sync_repairs_drift_and_is_idempotent(setup: Setup, db: psycopg.Connection) -> None:
    a = setup.devices["a"]
    setup.ab.resync()  # whatever earlier tests left: from here on the broker matches
    assert setup.ab.resync().changes == 0  # idempotent
    from hearth.broker import check_answers as _check

    _check(
        setup.ab.admin.client.run(
            [
                {"command": "deleteClient", "username": a.mqtt_username},
                {"command": "createClient", "username": "intruder", "password": "let-me-in"},
            ]
        )
    )
    assert not refused(connect(setup.port, "intruder", "let-me-in"))
    report = setup.ab.resync()
    assert report.created == [f"{a.mqtt_username}: recreated without a password"]
    assert report.removed == ["intruder: not a live device in the registry"]
    clients = setup.ab.admin.state().clients
    assert "intruder" not in clients and clients[a.mqtt_username].roles == (
        device_role(a.mqtt_username),
    )
    assert refused(connect(setup.port, "intruder", "let-me-in"))
    # No password is kept anywhere, so the recreated account cannot log in until the device is
    # registered again, which issues a new password.
    assert refused(connect(setup.port, a.mqtt_username, a.mqtt_password))
    again = _register_again(db, a, setup)
    assert not refused(connect(setup.port, again.mqtt_username, again.mqtt_password))
    setup.devices["a"] = again
    assert setup.ab.resync().changes == 0


def test_sync_refuses_a_broker_bound_to_another_registry(setup: Setup) -> None:
    setup.ab.resync()
    from hearth.broker import check_answers as _check

    other = "00000000-0000-0000-0000-000000000000"
    _check(
        setup.ab.admin.client.run(
            [{"command": "modifyRole", "rolename": REGISTRY_MARKER_ROLE, "textdescription": other}]
        )
    )
    with pytest.raises(ConfigError, match=f"registry {other}"):
        setup.ab.resync()
    with psycopg.connect(setup.database_url, autocommit=True) as conn:
        report = sync.sync(conn, setup.ab.admin_url, paths=setup.ab.paths, rebind=True)
    assert any(line.startswith(REGISTRY_MARKER_ROLE) for line in report.repaired)
    assert setup.ab.resync().changes == 0


# --- an unreachable broker -------------------------------------------------------------------


def test_registration_needs_the_broker_retirement_does_not(
    tmp_path: Path, database_url: str, db: psycopg.Connection, caplog: pytest.LogCaptureFixture
) -> None:
    """A password the broker never got is useless, so an unreachable broker fails the
    registration and registers nothing; a retirement still happens (the collector refuses the
    device's data) and the account goes at the next sync."""
    ab = start_auth_broker(tmp_path / "down", database_url)
    try:
        user = unique("down")
        admin.add_user(db, user)
        kept = admin.register_device(
            db,
            user_id=user,
            kind="plug",
            format="tasmota",
            external_id=unique("k"),
            broker=ab.admin,
        )
        slow = BrokerAccounts(DynsecClient(ab.admin_url, timeout_s=1.0))
        ab.stop()
        ext = unique("never")
        with pytest.raises(BrokerUnavailable):
            admin.register_device(
                db, user_id=user, kind="plug", format="tasmota", external_id=ext, broker=slow
            )
        assert db.execute("SELECT 1 FROM devices WHERE external_id = %s", (ext,)).fetchone() is None
        with caplog.at_level(logging.WARNING, logger="hearth.admin"):
            info = admin.retire_device(db, kept.device_id, broker=slow)
        assert info.retired_at is not None
        assert "removed by the next `broker sync`" in caplog.text
        ab.restart()
        ab.resync()
        assert kept.mqtt_username not in ab.usernames()
        out = subprocess.run(
            [sys.executable, "-m", "collector", "devices", "add", "--user-id", user,
             "--kind", "plug", "--format", "tasmota", "--external-id", ext],
            env={**os.environ, **ab.env(), "HEARTH_BROKER_ADMIN_URL": f"mqtt://a:b@127.0.0.1:{free_port()}"},
            cwd=ROOT, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert out.returncode == 69, out.stderr
        assert out.stderr.strip().startswith("error: broker admin: cannot reach")
        assert db.execute("SELECT 1 FROM devices WHERE external_id = %s", (ext,)).fetchone() is None
    finally:
        ab.stop()


def test_a_failed_batch_leaves_no_account_behind(setup: Setup) -> None:
    """``devices add --batch`` is one transaction: when a later line fails, the accounts its
    earlier lines made go too, and nothing is registered."""
    before = setup.ab.usernames()
    prefix = unique("batch")
    good = {"user_id": f"{prefix}-u", "kind": "plug", "format": "tasmota", "user_tz": "UTC"}
    lines = [
        good | {"external_id": f"{prefix}-1"},
        good | {"external_id": f"{prefix}-2"},
        good | {"external_id": f"{prefix}-1", "user_id": f"{prefix}-other"},  # a clash
    ]
    out = subprocess.run(
        [sys.executable, "-m", "collector", "devices", "add", "--batch", "-"],
        input="\n".join(json.dumps(line) for line in lines),
        env={**os.environ, **setup.ab.env()}, cwd=ROOT, capture_output=True, text=True,
        timeout=60,
    )  # fmt: skip
    assert out.returncode == 2 and "line 3" in out.stderr, out.stderr
    assert setup.ab.usernames() == before
    with psycopg.connect(setup.database_url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM devices WHERE external_id LIKE %s", (f"{prefix}%",)
        ).fetchone()
    assert row == (0,)
