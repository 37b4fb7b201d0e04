"""The collector fails closed on consent (issue 11 §8): a dead cache keeper ends the process,
a stale cache stops consumption; and ``mqtt_connects`` counts every (re)connect.

Real broker, real database (a private one where the test breaks it), collector subprocesses.
"""

from __future__ import annotations

import time

import paho.mqtt.client as mqtt
import psycopg
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from collector.service import EXIT_TASK_DIED
from hearth.ledger import CURRENT_NOTICE_VERSION
from tests.conftest import BASE_DATABASE_URL, Broker
from tests.integration.fleet import (
    CollectorFactory,
    canonical_messages,
    count_rows,
    publish_all,
    register_fleet,
    wait_until,
)


def test_a_dead_cache_keeper_stops_the_collector_with_nothing_lost(
    own_database: tuple[str, str], broker: Broker, tag: str, make_collector: CollectorFactory
) -> None:
    url, _ = own_database
    with psycopg.connect(url, autocommit=True) as conn:
        devices = register_fleet(conn, tag, 5)
        # A ledger row this build cannot read, as a newer release's would be during a rolling
        # upgrade: the keeper's reload raises, and its task ends.
        [constraint] = conn.execute(
            "SELECT conname FROM pg_constraint WHERE conrelid = 'consent_events'::regclass "
            "AND contype = 'c' AND pg_get_constraintdef(oid) LIKE '%category%'"
        ).fetchall()
        conn.execute(f"ALTER TABLE consent_events DROP CONSTRAINT {constraint[0]}")
        collector = make_collector(database_url=url)
        collector.start()
        publish_all(broker.host, broker.port, canonical_messages(devices, 50))
        wait_until(lambda: collector.acked() >= 50, 20, "the first messages acknowledged")

        conn.execute(
            "INSERT INTO consent_events (user_id, category, notice_version, action) "
            "VALUES (%s, 'finance', %s, 'grant')",
            (f"{tag}-u0", CURRENT_NOTICE_VERSION),
        )
        assert collector.proc is not None
        assert collector.proc.wait(timeout=20) == EXIT_TASK_DIED
        log = collector.log()
        assert "event=task_died task=cache-keeper error=ValueError" in log
        assert "Traceback" in log  # a bug: the operator gets the whole story

        # What arrives meanwhile waits in the broker, and is stored once the ledger is readable.
        later = canonical_messages(devices, 50, offset=50)
        publish_all(broker.host, broker.port, later)
        assert count_rows(conn, "numeric_readings", tag) == 50
        with conn.transaction():
            conn.execute("SET LOCAL hearth.erasing = 'on'")  # the ledger is append-only
            conn.execute("DELETE FROM consent_events WHERE category = 'finance'")
            # consent_state follows ledger appends only (its trigger): clear its row too.
            conn.execute("DELETE FROM consent_state WHERE category = 'finance'")
        collector.start()
        wait_until(lambda: count_rows(conn, "numeric_readings", tag) == 100, 30, "backlog stored")


def test_a_stale_consent_cache_stops_consumption_until_it_is_fresh(
    own_database: tuple[str, str], broker: Broker, tag: str, make_collector: CollectorFactory
) -> None:
    url, name = own_database
    bound_s = 2
    with psycopg.connect(url, autocommit=True) as conn:
        devices = register_fleet(conn, tag, 5)
    collector = make_collector(database_url=url, HEARTH_CONSENT_CACHE_MAX_AGE_S=str(bound_s))
    collector.start()
    publish_all(broker.host, broker.port, canonical_messages(devices, 20))
    wait_until(lambda: collector.acked() >= 20, 20, "the first messages acknowledged")
    assert collector.metrics()["hearth_collector_consent_cache_age_seconds"] < bound_s

    with psycopg.connect(BASE_DATABASE_URL, autocommit=True) as admin:
        # The LISTEN connection drops and cannot come back (nor can the writer's).
        admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
        admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = %s AND usename = current_user AND backend_type = 'client backend'",
            (name,),
        )
        wait_until(lambda: collector.health()["consent_cache_fresh"] is False, 15, "stale cache")
        assert collector.metrics()["hearth_collector_consent_cache_age_seconds"] > bound_s
        publish_all(broker.host, broker.port, canonical_messages(devices, 30, offset=20))
        # Not read at all (a failing writer alone would read them and hold them unacked).
        end = time.monotonic() + 2
        while time.monotonic() < end:
            state = collector.health()
            assert state["in_flight"] == 0 and state["ok"] is False, state
            time.sleep(0.2)
        admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')

    with psycopg.connect(url, autocommit=True) as conn:
        wait_until(lambda: count_rows(conn, "numeric_readings", tag) == 50, 40, "backlog stored")
    wait_until(lambda: collector.health()["ok"] is True, 10, "healthy again")
    assert "event=consent_cache_stale" in collector.log()
    assert "event=consent_cache_fresh" in collector.log()
    assert collector.alive() and collector.starts == 1


def test_mqtt_connects_counts_reconnects(
    db: psycopg.Connection[tuple[object, ...]],
    broker: Broker,
    tag: str,
    make_collector: CollectorFactory,
) -> None:
    register_fleet(db, tag, 1)
    collector = make_collector()
    collector.start()
    connects = "hearth_collector_mqtt_connects_total"
    assert collector.metrics()[connects] == 1
    # Another client taking over the collector's session makes the broker drop it.
    intruder = mqtt.Client(
        callback_api_version=CallbackAPIVersion.VERSION2,
        client_id=f"{tag}-collector-0",
        protocol=mqtt.MQTTv5,
        manual_ack=True,  # never acknowledge anything of the collector's session
    )
    props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    props.SessionExpiryInterval = 3600
    intruder.connect(broker.host, broker.port, clean_start=False, properties=props)
    intruder.loop_start()
    try:
        wait_until(intruder.is_connected, 10, "the intruder connected")
    finally:
        intruder.disconnect()
        intruder.loop_stop()
    wait_until(lambda: collector.metrics().get(connects) == 2, 20, "the collector reconnected")
    assert collector.health()["mqtt_connected"] is True
