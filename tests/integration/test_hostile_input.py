"""No message can stall ingest (issue 11 §1): text PostgreSQL cannot store, and rows it refuses.

Real broker, real database, the collector as a subprocess. Before this, one NUL in a payload made
the collector retry its batch forever (``CharacterNotInRepertoire``) and nothing after it was
stored.
"""

from __future__ import annotations

import json
import time
from datetime import timedelta

import psycopg

from collector.minimise import Minimiser
from collector.pipeline import Batch
from collector.service import Ack, Collector
from hearth.db import Conn
from hearth.settings import load_settings
from tests.conftest import TEST_PSEUDONYM_KEY, Broker
from tests.integration.fleet import (
    BASE_TIME,
    CollectorFactory,
    canonical_messages,
    count_rows,
    publish_all,
    register_fleet,
    wait_until,
)

# Dead letters are found by their keyed digest (the tests' pseudonym key).
digest_of = Minimiser(TEST_PSEUDONYM_KEY.encode(), 7).dead_letter_digest


def hostile(device: str) -> list[tuple[str, bytes, str]]:
    """(topic, payload, expected reason): NUL in a readings key (it reaches the dead letter's
    detail through pydantic's error text), NUL in a text value, a lone surrogate."""
    topic = f"hearth/v1/{device}/phone"
    ts = (BASE_TIME + timedelta(seconds=1)).isoformat()
    return [
        (topic, f'{{"ts": "{ts}", "readings": {{"battery\\u0000pct": [1]}}}}'.encode(), "schema"),
        (topic, f'{{"ts": "{ts}", "readings": {{"net_type": "wi\\u0000fi"}}}}'.encode(), "schema"),
        (topic, f'{{"ts": "{ts}", "readings": {{"net_type": "\\ud800"}}}}'.encode(), "bad_json"),
    ]


def test_nul_and_lone_surrogate_payloads_never_stall_ingest(
    db: Conn, broker: Broker, tag: str, make_collector: CollectorFactory
) -> None:
    devices = register_fleet(db, tag, 10)
    bad = hostile(devices[0])
    good = canonical_messages(devices, 100)
    collector = make_collector()
    collector.start()
    pid = collector.pid
    publish_all(broker.host, broker.port, [(t, p) for t, p, _ in bad])
    published = time.monotonic()
    publish_all(broker.host, broker.port, good)
    wait_until(lambda: collector.acked() >= len(bad) + len(good), 5, "all 103 messages acked")
    wait_until(lambda: count_rows(db, "numeric_readings", tag) == 100, 1, "the 100 stored")
    assert time.monotonic() - published < 5
    assert collector.alive() and collector.pid == pid and collector.starts == 1
    for topic, payload, reason in bad:
        row = db.execute(
            "SELECT reason, detail FROM dead_letters WHERE digest = %s",
            (digest_of(topic, payload),),
        ).fetchone()
        assert row is not None and row[0] == reason, (payload, row)
        assert "\x00" not in str(row[1])
    key_detail = db.execute(
        "SELECT detail FROM dead_letters WHERE digest = %s", (digest_of(bad[0][0], bad[0][1]),)
    ).fetchone()
    assert key_detail is not None and "battery\\x00pct" in str(key_detail[0])  # escaped, kept
    assert count_rows(db, "categorical_readings", tag) == 0
    assert collector.metrics().get("hearth_collector_db_errors_total", 0) == 0


POISON = 42.4242  # the value the planted constraint refuses (a valid temperature)


def test_a_row_the_database_refuses_is_dead_lettered_and_the_rest_of_its_batch_stored(
    own_database: tuple[str, str], broker: Broker, tag: str, make_collector: CollectorFactory
) -> None:
    url, _ = own_database
    with psycopg.connect(url, autocommit=True) as conn:
        devices = register_fleet(conn, tag, 20)
        # A class-23 error (check_violation) for one planted value, every time it is written.
        conn.execute(
            f"ALTER TABLE numeric_readings ADD CONSTRAINT refuse_poison CHECK (value <> {POISON})"
        )
        messages = canonical_messages(devices, 2_000)
        poisoned_at = 1_234
        topic, payload = messages[poisoned_at]
        body = json.loads(payload)
        body["readings"]["temperature_c"] = POISON
        messages[poisoned_at] = (topic, json.dumps(body).encode())
        # One batch of exactly 2,000 messages: flushed by size, never by age.
        collector = make_collector(
            database_url=url,
            HEARTH_BATCH_MAX_MESSAGES="2000",
            HEARTH_MQTT_RECEIVE_MAXIMUM="4000",
            HEARTH_BATCH_MAX_AGE_MS="600000",
        )
        collector.start()
        pid = collector.pid
        publish_all(broker.host, broker.port, messages)
        wait_until(lambda: collector.acked() >= 2_000, 60, "the whole batch acknowledged")
        assert count_rows(conn, "numeric_readings", tag) == 1_999
        dead = conn.execute(
            "SELECT reason, detail, digest, payload_bytes FROM dead_letters"
        ).fetchall()
        assert len(dead) == 1
        reason, detail, digest, size = dead[0]
        assert reason == "unstorable" and "CheckViolation" in str(detail)
        assert bytes(digest) == digest_of(*messages[poisoned_at])
        assert size == len(messages[poisoned_at][1])
        m = collector.metrics()
        assert m["hearth_collector_batch_messages_count"] == 1  # one batch ...
        assert m["hearth_collector_batch_messages_sum"] == 2_000  # ... of all 2,000
        assert m['hearth_collector_dead_lettered_total{reason="unstorable"}'] == 1
        assert m['hearth_collector_rows_stored_total{table="numeric_readings"}'] == 1_999
        assert collector.alive() and collector.pid == pid and collector.starts == 1


async def test_text_the_database_or_its_driver_refuses_is_isolated_by_message(
    database_url: str, db: Conn, tag: str
) -> None:
    """Defence in depth behind validation: rows an adapter might let through with a NUL (the
    server refuses it, class 22) or a lone surrogate (psycopg cannot encode it) are found by
    the split and dead-lettered; the rest of the batch is stored."""
    devices = register_fleet(db, tag, 4)
    collector = Collector(load_settings(database_url=database_url))
    await collector.keeper.start()
    await collector.writer.connect()
    try:
        batch, acks = Batch(), list[Ack]()
        good = canonical_messages(devices, 300)
        bad_at = {17: "wi\x00fi", 250: "mo\ud800bile"}
        for i, (topic, payload) in enumerate(good):
            if i in bad_at:  # as if an adapter had skipped check_readings
                bad = (BASE_TIME, devices[0], f"{tag}-u0", "net_type", bad_at[i], False)
                batch.categorical.append(bad)
                batch.messages += 1
                batch.ends.append(
                    (len(batch.numeric), len(batch.categorical), len(batch.dead_letters))
                )
            else:
                collector.pipeline.process(topic, payload, batch)
            acks.append((1, i + 1, 1, topic, payload))
        await collector.commit(batch, acks)
    finally:
        await collector.writer.close()
        await collector.keeper.close()
    assert count_rows(db, "numeric_readings", tag) == 298
    assert count_rows(db, "categorical_readings", tag) == 0
    for i, error in (
        (17, "CharacterNotInRepertoire (SQLSTATE 22021)"),
        (250, "UnicodeEncodeError"),
    ):
        row = db.execute(
            "SELECT reason, detail FROM dead_letters WHERE digest = %s", (digest_of(*good[i]),)
        ).fetchone()
        assert row == ("unstorable", error)
    unstorable = collector.metrics.registry.get_sample_value(
        "hearth_collector_dead_lettered_total", {"reason": "unstorable"}
    )
    assert unstorable == 2
