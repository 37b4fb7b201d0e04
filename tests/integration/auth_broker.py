"""MQTT v5 test clients and a private Mosquitto with Hearth's dynamic-security setup."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import psycopg
from paho.mqtt.enums import CallbackAPIVersion

from collector.broker import local_setup, sync
from collector.broker.local_setup import AuthPaths
from collector.broker.sync import SyncReport
from hearth.broker import BROKER_ADMIN_USERNAME, COLLECTOR_USERNAME, BrokerAccounts, DynsecClient
from tests.conftest import Broker, free_port, start_broker, wait_for_port
from tests.integration.consent_fixtures import unique
from tests.integration.fleet import CollectorProcess


@dataclass
class AuthBroker:
    broker: Broker
    paths: AuthPaths
    tls_port: int
    accounts: dict[str, str]
    database_url: str
    admin: BrokerAccounts  # pass as ``broker=`` to hearth.admin's operations

    @property
    def admin_url(self) -> str:
        password = self.accounts[BROKER_ADMIN_USERNAME]
        return local_setup.mqtt_url(BROKER_ADMIN_USERNAME, password, "127.0.0.1", self.port)

    @property
    def port(self) -> int:
        return self.broker.port

    @property
    def collector_url(self) -> str:
        password = self.accounts[COLLECTOR_USERNAME]
        return local_setup.mqtt_url(COLLECTOR_USERNAME, password, "127.0.0.1", self.port)

    def collector(self, log_path: Path) -> CollectorProcess:
        """A collector replica logged in as the read-only collector account, in a share group
        of its own."""
        return CollectorProcess(
            database_url=self.database_url,
            mqtt_url=self.collector_url,
            client_id=unique("collector"),
            share_group=unique("g"),
            http_port=free_port(),
            log_path=log_path,
        )

    def env(self) -> dict[str, str]:
        """What a Hearth command needs to manage this broker for the test database."""
        return {
            "HEARTH_DATABASE_URL": self.database_url,
            "HEARTH_BROKER_ADMIN_URL": self.admin_url,
            "HEARTH_STATE_DIR": str(self.paths.root),
        }

    def resync(self) -> SyncReport:
        """One ``broker sync`` against the test database (drift repair)."""
        with psycopg.connect(self.database_url, autocommit=True) as conn:
            return sync.sync(conn, self.admin_url, paths=self.paths)

    def usernames(self) -> set[str]:
        return set(self.admin.state().clients)

    def restart(self) -> None:
        """Stop the broker and start it again on the same port with the same state."""
        self.stop()
        self.broker = _start(self.paths, self.port)
        wait_for_port(self.port)

    def stop(self) -> None:
        self.broker.process.terminate()
        self.broker.process.wait(timeout=10)


def _start(paths: AuthPaths, port: int | None = None) -> Broker:
    # One line, as scripts/services renders it (the template's @AUTH@ is single-line).
    return start_broker(paths.root, auth=f"include_dir {paths.auth_conf.parent}", port=port)


def start_auth_broker(state: Path, database_url: str) -> AuthBroker:
    """The plugin's first file with the service accounts, a TLS listener from a fresh test CA,
    then the admin connection; devices come from registrations made with ``broker=admin``."""
    paths = AuthPaths(state)
    local_setup.ensure_test_ca(paths)
    accounts = local_setup.ensure_service_accounts(paths)
    local_setup.write_dynsec_config(paths, accounts, None)
    tls_port = free_port()
    local_setup.write_auth_conf(paths, mqtts_port=tls_port)
    b = _start(paths)
    url = local_setup.mqtt_url(
        BROKER_ADMIN_USERNAME, accounts[BROKER_ADMIN_USERNAME], "127.0.0.1", b.port
    )
    admin = BrokerAccounts(DynsecClient(url))
    return AuthBroker(b, paths, tls_port, accounts, database_url, admin)


@dataclass
class Client:
    """A paho MQTT v5 client with the events the tests wait on."""

    client: mqtt.Client
    connack: Any = None
    connected: threading.Event = field(default_factory=threading.Event)
    disconnected: threading.Event = field(default_factory=threading.Event)
    disconnected_at: float | None = None  # time.monotonic() of the first disconnect
    received: list[tuple[str, bytes]] = field(default_factory=list)
    pubacks: dict[int, int] = field(default_factory=dict)  # mid → reason code value
    subacks: dict[int, list[int]] = field(default_factory=dict)

    def publish(self, topic: str, payload: bytes) -> int:
        """QoS 1 publish; the broker's PUBACK reason code (0 ok, 135 not authorised)."""
        info = self.client.publish(topic, payload, qos=1)
        wait_for(lambda: info.mid in self.pubacks, f"PUBACK for {topic}")
        return self.pubacks[info.mid]

    def subscribe(self, topic: str) -> list[int]:
        _, mid = self.client.subscribe(topic, qos=1)
        wait_for(lambda: mid in self.subacks, f"SUBACK for {topic}")
        return self.subacks[mid]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def wait_for(condition: Any, what: str, deadline_s: float = 10.0) -> None:
    end = time.monotonic() + deadline_s
    while not condition():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def connect(
    port: int,
    username: str | None,
    password: str | None,
    *,
    ca_file: Path | None = None,
    reconnect: bool = True,
) -> Client:
    """Connect and wait for the CONNACK (``connack.is_failure`` tells a refusal); with
    ``reconnect=False`` paho stays away after a disconnect."""
    c = mqtt.Client(
        callback_api_version=CallbackAPIVersion.VERSION2,
        client_id=unique("t"),
        protocol=mqtt.MQTTv5,
        reconnect_on_failure=reconnect,
    )
    wrapper = Client(c)
    if username is not None:
        c.username_pw_set(username, password)
    if ca_file is not None:
        c.tls_set(ca_certs=str(ca_file))

    def on_connect(_c: Any, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        wrapper.connack = reason
        wrapper.connected.set()

    def on_publish(_c: Any, _u: Any, mid: int, reason: Any, _p: Any) -> None:
        wrapper.pubacks[mid] = reason.value

    def on_subscribe(_c: Any, _u: Any, mid: int, reasons: Any, _p: Any) -> None:
        wrapper.subacks[mid] = [r.value for r in reasons]

    def on_message(_c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        wrapper.received.append((msg.topic, msg.payload))

    def on_disconnect(_c: Any, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        if not wrapper.connected.is_set():
            wrapper.connack = reason
            wrapper.connected.set()
        if wrapper.disconnected_at is None:
            wrapper.disconnected_at = time.monotonic()
        wrapper.disconnected.set()

    c.on_connect, c.on_publish, c.on_subscribe = on_connect, on_publish, on_subscribe
    c.on_message, c.on_disconnect = on_message, on_disconnect
    c.connect("127.0.0.1", port, keepalive=30)
    c.loop_start()
    assert wrapper.connected.wait(10), "no CONNACK"
    return wrapper
