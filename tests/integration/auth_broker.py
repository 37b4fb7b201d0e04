"""MQTT v5 test clients and a private Mosquitto running Hearth's generated auth files."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import psycopg
from paho.mqtt.enums import CallbackAPIVersion

from collector import broker_auth
from collector.broker_auth import AuthPaths
from tests.conftest import Broker, free_port, start_broker
from tests.integration.consent_fixtures import unique


@dataclass
class AuthBroker:
    broker: Broker
    paths: AuthPaths
    tls_port: int
    accounts: dict[str, str]

    def resync(self, database_url: str) -> None:
        """Regenerate passwd/ACL from the registry and SIGHUP the broker (new devices)."""
        with psycopg.connect(database_url, autocommit=True) as conn:
            broker_auth.sync(self.paths, conn, database_url)

    def stop(self) -> None:
        self.broker.process.terminate()
        self.broker.process.wait(timeout=10)


def start_auth_broker(state: Path, database_url: str) -> AuthBroker:
    """Password file and ACL from the database's registry, TLS listener from a fresh test CA."""
    paths = AuthPaths(state)
    broker_auth.ensure_test_ca(paths)
    with psycopg.connect(database_url, autocommit=True) as conn:
        broker_auth.write_auth_files(paths, conn, database_url)
    tls_port = free_port()
    broker_auth.write_auth_conf(paths, mqtts_port=tls_port)
    # One line, as scripts/services renders it (the template's @AUTH@ is single-line).
    b = start_broker(state, auth=f"include_dir {paths.auth_conf.parent}")
    return AuthBroker(b, paths, tls_port, broker_auth.ensure_service_accounts(paths))


@dataclass
class Client:
    """A paho MQTT v5 client with the events the tests wait on."""

    client: mqtt.Client
    connack: Any = None
    connected: threading.Event = field(default_factory=threading.Event)
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
    port: int, username: str | None, password: str | None, *, ca_file: Path | None = None
) -> Client:
    c = mqtt.Client(
        callback_api_version=CallbackAPIVersion.VERSION2,
        client_id=unique("t"),
        protocol=mqtt.MQTTv5,
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

    c.on_connect, c.on_publish, c.on_subscribe = on_connect, on_publish, on_subscribe
    c.on_message, c.on_disconnect = on_message, on_disconnect
    c.connect("127.0.0.1", port, keepalive=30)
    c.loop_start()
    assert wrapper.connected.wait(10), "no CONNACK"
    return wrapper
