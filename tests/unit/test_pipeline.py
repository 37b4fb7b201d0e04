"""The pipeline as a pure function: one message in, rows or exactly one dead letter out."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from collector.minimise import Minimiser
from collector.pipeline import Batch, Caches, Pipeline, digest_of
from collector.service import flush_size
from hearth.ledger import DeviceRecord
from hearth.settings import load_settings
from hearth.signals import Category

NOW = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)
KEY = b"unit-test-pseudonym-key-0123456789"


def device(device_id: str = "dev1", user: str = "u1") -> DeviceRecord:
    return DeviceRecord(device_id, user, "phone", "hearth", device_id, "UTC", None)


def make_pipeline(consents: set[tuple[str, Category]] | None = None) -> Pipeline:
    caches = Caches(
        devices={("hearth", "dev1"): device()},
        consents=frozenset(consents if consents is not None else {("u1", c) for c in Category}),
    )
    settings = load_settings(max_payload_bytes=1024, dead_letter_payload_bytes=64)
    return Pipeline(settings, Minimiser(KEY), caches)


def body(readings: dict[str, object], ts: object = None, **extra: object) -> bytes:
    ts = ts if ts is not None else (NOW - timedelta(minutes=1)).isoformat()
    return json.dumps({"ts": ts, "readings": readings, **extra}).encode()


def run(pipeline: Pipeline, topic: str, payload: bytes) -> Batch:
    batch = Batch()
    pipeline.process(topic, payload, batch, received_at=NOW)
    return batch


def test_good_message_becomes_typed_rows_with_the_bound_user() -> None:
    batch = run(
        make_pipeline(),
        "hearth/v1/dev1/phone",
        body({"battery_pct": 55, "net_type": "wifi", "position": {"lat": 52.5, "lon": 13.4}}),
    )
    assert batch.dead_letters == []
    assert [(r[1], r[2], r[3], r[4], r[5]) for r in batch.numeric] == [
        ("dev1", "u1", "battery_pct", 55.0, False)
    ]
    signals = {r[3]: r[4] for r in batch.categorical}
    assert signals["net_type"] == "wifi"
    assert len(signals["geohash"]) == 7  # raw coordinates never leave the pipeline
    assert batch.latest_event == NOW - timedelta(minutes=1)


@pytest.mark.parametrize(
    ("topic", "payload", "reason"),
    [
        ("hearth/v1/dev1/x", b"{not json", "bad_json"),
        ("hearth/v1/dev1/x", b"\xff\xfe\x00binary", "bad_json"),
        ("hearth/v1/dev1/x", body({"battery_pct": "high"}), "schema"),
        ("hearth/v1/dev1/x", body({"battery_pct": 500}), "schema"),
        ("hearth/v1/dev1/x", b'{"ts": 1, "readings": {"battery_pct": NaN}}', "schema"),
        ("hearth/v1/dev1/x", b'{"readings": {"battery_pct": 1}}', "schema"),
        ("hearth/v1/dev1/x", body({"battery_pct": 1}, ts="2099-01-01T00:00:00Z"), "bad_timestamp"),
        ("hearth/v1/dev1/x", b"x" * 2000, "too_large"),
        ("hearth/v1/nobody/x", body({"battery_pct": 1}), "unknown_device"),
        ("somewhere/else", body({"battery_pct": 1}), "unknown_topic"),
    ],
)
def test_bad_input_is_one_dead_letter_with_its_reason(
    topic: str, payload: bytes, reason: str
) -> None:
    batch = run(make_pipeline(), topic, payload)
    assert batch.numeric == [] and batch.categorical == []
    assert [d[1] for d in batch.dead_letters] == [reason]
    dead = batch.dead_letters[0]
    assert dead[3] is not None and len(dead[3]) <= 64  # truncated payload kept
    assert dead[4] == len(payload) and dead[5] == digest_of(topic, payload)
    assert batch.dead_by_reason == {reason: 1}


def test_unconsented_readings_are_dropped_and_counted() -> None:
    pipeline = make_pipeline({("u1", Category.DEVICE_HEALTH)})
    batch = run(pipeline, "hearth/v1/dev1/p", body({"battery_pct": 5, "net_type": "wifi"}))
    assert [r[3] for r in batch.numeric] == ["battery_pct"]
    assert batch.categorical == [] and batch.dead_letters == []
    assert batch.dropped_by_category == {"connectivity": 1}


def test_message_without_any_consented_reading_is_a_redacted_dead_letter() -> None:
    batch = run(make_pipeline(set()), "hearth/v1/dev1/p", body({"battery_pct": 5}))
    assert batch.numeric == []
    [(_topic, reason, detail, payload, size, _)] = batch.dead_letters
    assert (reason, detail, payload) == ("no_consent", "", None)
    assert size > 0


def test_cache_swap_is_seen_by_the_next_message() -> None:
    pipeline = make_pipeline()
    pipeline.caches.devices = {}
    batch = run(pipeline, "hearth/v1/dev1/p", body({"battery_pct": 5}))
    assert batch.dead_by_reason == {"unknown_device": 1}


def test_two_batches_fit_in_the_receive_window() -> None:
    assert flush_size(load_settings(batch_max_messages=2000, mqtt_receive_maximum=2000)) == 1000
    assert flush_size(load_settings(batch_max_messages=100, mqtt_receive_maximum=2000)) == 100
    assert flush_size(load_settings(batch_max_messages=100, mqtt_receive_maximum=1)) == 1
