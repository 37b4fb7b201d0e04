"""Replica sessions (issue 12 §1): heartbeat registry, stale warning, ``sessions drain``.

Mosquitto shares a group's messages round-robin across every session of the group, offline
ones included, so a stopped replica's session keeps queuing its share until it is drained.
"""

from __future__ import annotations

import json
import subprocess
import time

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from hearth.db import Conn
from tests.conftest import Broker
from tests.integration.fleet import (
    CollectorFactory,
    canonical_messages,
    collector_cli,
    count_rows,
    publish_all,
    register_fleet,
    wait_until,
)

FAST_REGISTRY = {"HEARTH_COLLECTOR_HEARTBEAT_S": "1", "HEARTH_COLLECTOR_STALE_AFTER_S": "2"}


def sessions_cli(database_url: str, broker: Broker, *args: str) -> subprocess.CompletedProcess[str]:
    return collector_cli(
        database_url,
        "sessions",
        *args,
        HEARTH_MQTT_URL=broker.url,
        HEARTH_COLLECTOR_STALE_AFTER_S="2",
    )


def sessions_by_id(database_url: str, broker: Broker) -> dict[str, dict[str, object]]:
    proc = sessions_cli(database_url, broker, "list")
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]
    return {str(r["client_id"]): r for r in rows}


def session_present(broker: Broker, client_id: str) -> bool:
    """Does the broker hold a session for ``client_id``? (Connects with clean start off and
    Session Expiry 0, so the probe itself leaves no session behind.)"""
    client = mqtt.Client(
        callback_api_version=CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5
    )
    flags: list[bool] = []
    client.on_connect = lambda _c, _u, f, _r, _p: flags.append(bool(f.session_present))
    props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    props.SessionExpiryInterval = 0
    client.connect(broker.host, broker.port, clean_start=False, properties=props)
    client.loop_start()
    try:
        wait_until(lambda: bool(flags), 10, "CONNACK")
    finally:
        client.disconnect()
        client.loop_stop()
    return flags[0]


def received(collector: object) -> float:
    return float(collector.metrics().get("hearth_collector_messages_received_total", 0))  # type: ignore[attr-defined]


def test_drain_stores_a_stopped_replicas_share_once_and_ends_its_session(
    db: Conn, database_url: str, broker: Broker, tag: str, make_collector: CollectorFactory
) -> None:
    devices = register_fleet(db, tag, 20)
    a, b = make_collector(0, **FAST_REGISTRY), make_collector(1, **FAST_REGISTRY)
    a_id, b_id = f"{tag}-collector-0", f"{tag}-collector-1"
    a.start()
    b.start()
    wait_until(
        lambda: (
            {k: v["state"] for k, v in sessions_by_id(database_url, broker).items() if tag in k}
            == {a_id: "running", b_id: "running"}
        ),
        20,
        "both replicas in the registry",
    )

    # A running replica is not drained (its session would be taken over under it).
    refused = sessions_cli(database_url, broker, "drain", "--client-id", b_id)
    assert refused.returncode == 2 and "is running" in refused.stderr, refused.stderr

    assert b.terminate() == 0  # clean stop: B's session stays on the broker and queues
    publish_all(broker.host, broker.port, canonical_messages(devices, 1_000))
    wait_until(lambda: count_rows(db, "numeric_readings", tag) > 0, 30, "A storing its share")

    # A notices that B's session may be queuing: metric and log line.
    wait_until(
        lambda: a.metrics().get("hearth_collector_stale_sessions") == 1,
        30,
        "A's stale-session gauge",
    )
    assert a.metrics()[f'hearth_collector_stale_session_seconds{{client_id="{b_id}"}}'] >= 2
    assert f"event=stale_session client_id={b_id}" in a.log()
    assert sessions_by_id(database_url, broker)[b_id]["state"] == "stopped"
    a_share = received(a)
    assert a_share < 1_000  # B's session took its share while B was away: the finding

    drained = sessions_cli(database_url, broker, "drain", "--client-id", b_id)
    assert drained.returncode == 0, drained.stderr
    report = json.loads(drained.stdout)
    assert report["session_present"] is True and report["session_ended"] is True, report
    assert report["messages"] > 0 and report["acked"] == report["messages"], report

    # All 1,000 stored exactly once: every natural key present, and no message processed twice.
    wait_until(lambda: count_rows(db, "numeric_readings", tag) == 1_000, 30, "all 1,000 stored")
    wait_until(lambda: received(a) + report["messages"] == 1_000, 10, "A's metrics caught up")
    assert sessions_by_id(database_url, broker)[b_id]["state"] == "drained"
    wait_until(
        lambda: a.metrics().get("hearth_collector_stale_sessions") == 0,
        30,
        "the stale gauge clears after the drain",
    )

    # B's session is gone: a later publish all goes to A.
    before = received(a)
    publish_all(broker.host, broker.port, canonical_messages(devices, 200, offset=1_000))
    wait_until(lambda: count_rows(db, "numeric_readings", tag) == 1_200, 30, "later publish")
    wait_until(lambda: received(a) - before == 200, 10, "A received the whole later publish")
    assert not session_present(broker, b_id)


def test_drain_of_an_id_without_a_session_ends_at_once(
    database_url: str, broker: Broker, tag: str
) -> None:
    started = time.monotonic()
    proc = sessions_cli(database_url, broker, "drain", "--client-id", f"{tag}-never-ran")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["session_present"] is False and report["messages"] == 0, report
    assert report["session_ended"] is True
    assert not session_present(broker, f"{tag}-never-ran")  # the drain's CONNECT left none
    assert time.monotonic() - started < 60
