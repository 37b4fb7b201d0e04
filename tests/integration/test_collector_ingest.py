"""The collector end to end: real broker, real database, the collector as a subprocess."""

from __future__ import annotations

import os
import random
import subprocess
import sys

from hearth.db import Conn
from tests.conftest import Broker, free_port
from tests.integration.fleet import (
    CollectorFactory,
    CollectorProcess,
    canonical_messages,
    count_rows,
    publish_all,
    register_fleet,
    wait_until,
)


def test_duplicates_are_stored_once_and_counted(
    db: Conn, broker: Broker, tag: str, make_collector: CollectorFactory
) -> None:
    devices = register_fleet(db, tag, 50)
    messages = canonical_messages(devices, 20_000)
    rng = random.Random(7)
    resent = rng.sample(messages, 1_000)  # 5 % sent twice
    stream = messages + resent
    rng.shuffle(stream)
    collector = make_collector()
    collector.start()
    publish_all(broker.host, broker.port, stream)
    wait_until(
        lambda: collector.metrics().get("hearth_collector_messages_acked_total", 0) >= len(stream),
        60,
        "every message acknowledged",
    )
    assert count_rows(db, "numeric_readings", tag) == 20_000
    m = collector.metrics()
    assert m['hearth_collector_duplicates_skipped_total{table="numeric_readings"}'] == 1_000
    assert m['hearth_collector_rows_stored_total{table="numeric_readings"}'] == 20_000
    assert m["hearth_collector_messages_received_total"] == len(stream)
    assert collector.terminate() == 0


def test_sigterm_drains_the_batch_in_hand_and_exits_zero(
    db: Conn, broker: Broker, tag: str, make_collector: CollectorFactory
) -> None:
    devices = register_fleet(db, tag, 5)
    # A long batch age: without the drain these messages would sit unwritten at SIGTERM.
    collector = make_collector(HEARTH_BATCH_MAX_AGE_MS="60000", HEARTH_BATCH_MAX_MESSAGES="5000")
    collector.start()
    publish_all(broker.host, broker.port, canonical_messages(devices, 300))
    wait_until(lambda: _received_by_broker(collector, 300), 10, "messages in hand")
    assert collector.terminate() == 0
    assert count_rows(db, "numeric_readings", tag) == 300
    assert "event=collector_stopped" in collector.log()


def _received_by_broker(collector: CollectorProcess, n: int) -> bool:
    # in_flight is only published at ack time; the unacked count shows in /healthz.
    import json
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{collector.http_port}/healthz") as r:
        return int(json.loads(r.read())["in_flight"]) >= n


def test_unreachable_broker_is_one_line(database_url: str) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "collector", "run"],
        env={
            **os.environ,
            "HEARTH_DATABASE_URL": database_url,
            "HEARTH_MQTT_URL": f"mqtt://127.0.0.1:{free_port()}",
            "HEARTH_COLLECTOR_HTTP_PORT": "0",
        },
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode != 0
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert lines[0].startswith("error: HEARTH_MQTT_URL") and "Traceback" not in out.stderr


def test_unreachable_database_is_one_line() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "collector", "run"],
        env={
            **os.environ,
            "HEARTH_DATABASE_URL": "postgresql://hearth:secret@127.0.0.1:1/hearth",
            "HEARTH_COLLECTOR_HTTP_PORT": "0",
        },
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode != 0
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert "HEARTH_DATABASE_URL" in lines[0] and "secret" not in lines[0]


def test_missing_pseudonym_key_is_a_config_error(database_url: str) -> None:
    env = {**os.environ, "HEARTH_DATABASE_URL": database_url}
    env.pop("HEARTH_PSEUDONYM_KEY", None)
    out = subprocess.run(
        [sys.executable, "-m", "collector", "run"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 78, out.stderr
    assert "HEARTH_PSEUDONYM_KEY" in out.stderr and "Traceback" not in out.stderr
