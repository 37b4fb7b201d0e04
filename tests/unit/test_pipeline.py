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


LONG_AGO = NOW - timedelta(days=30)


def device(
    device_id: str = "dev1", user: str = "u1", bound_at: datetime = LONG_AGO
) -> DeviceRecord:
    return DeviceRecord(device_id, user, "phone", "hearth", device_id, "UTC", None, bound_at)


def make_pipeline(
    consents: set[tuple[str, Category]] | None = None,
    *,
    since: datetime = LONG_AGO,
    bound_at: datetime = LONG_AGO,
) -> Pipeline:
    """Device dev1 of user u1, bound at ``bound_at``; ``consents`` (default all) since ``since``."""
    pairs = consents if consents is not None else {("u1", c) for c in Category}
    caches = Caches(
        devices={("hearth", "dev1"): device(bound_at=bound_at)},
        consents=dict.fromkeys(pairs, since),
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


def test_readings_before_the_consent_began_are_refused_and_redacted() -> None:
    """Consented now, but not at the reading's event time: ``before_consent``, no payload."""
    pipeline = make_pipeline(since=NOW - timedelta(minutes=10))
    early = body({"battery_pct": 5}, ts=(NOW - timedelta(minutes=11)).isoformat())
    batch = run(pipeline, "hearth/v1/dev1/p", early)
    assert batch.numeric == []
    [(_topic, reason, detail, payload, _size, _)] = batch.dead_letters
    assert (reason, detail, payload) == ("before_consent", "", None)
    assert batch.dead_by_reason == {"before_consent": 1}
    assert batch.dropped_by_category == {"device_health": 1}
    on_time = body({"battery_pct": 5}, ts=(NOW - timedelta(minutes=10)).isoformat())
    assert [r[3] for r in run(pipeline, "hearth/v1/dev1/p", on_time).numeric] == ["battery_pct"]


def test_mixed_message_keeps_only_readings_consented_at_their_time() -> None:
    pipeline = make_pipeline({("u1", Category.DEVICE_HEALTH)}, since=NOW - timedelta(hours=1))
    batch = run(pipeline, "hearth/v1/dev1/p", body({"battery_pct": 5, "net_type": "wifi"}))
    assert [r[3] for r in batch.numeric] == ["battery_pct"] and batch.dead_letters == []
    # The same message dated before the grant: nothing consented at its time. The reason is
    # before_consent (a category is consented now), and no payload is kept.
    old = body({"battery_pct": 5, "net_type": "wifi"}, ts=(NOW - timedelta(hours=2)).isoformat())
    batch = run(pipeline, "hearth/v1/dev1/p", old)
    assert [(d[1], d[3]) for d in batch.dead_letters] == [("before_consent", None)]


def test_readings_before_the_device_was_bound_are_refused_and_redacted() -> None:
    pipeline = make_pipeline(bound_at=NOW - timedelta(minutes=5))
    early = body({"battery_pct": 5}, ts=(NOW - timedelta(minutes=6)).isoformat())
    batch = run(pipeline, "hearth/v1/dev1/p", early)
    assert batch.numeric == [] and batch.categorical == []
    [(_topic, reason, _detail, payload, size, _)] = batch.dead_letters
    assert (reason, payload) == ("before_binding", None) and size == len(early)
    assert batch.dead_by_reason == {"before_binding": 1}
    late = body({"battery_pct": 5}, ts=(NOW - timedelta(minutes=5)).isoformat())
    assert [r[3] for r in run(pipeline, "hearth/v1/dev1/p", late).numeric] == ["battery_pct"]


def test_cache_swap_is_seen_by_the_next_message() -> None:
    pipeline = make_pipeline()
    pipeline.caches.devices = {}
    batch = run(pipeline, "hearth/v1/dev1/p", body({"battery_pct": 5}))
    assert batch.dead_by_reason == {"unknown_device": 1}


def test_two_batches_fit_in_the_receive_window() -> None:
    assert flush_size(load_settings(batch_max_messages=2000, mqtt_receive_maximum=2000)) == 1000
    assert flush_size(load_settings(batch_max_messages=100, mqtt_receive_maximum=2000)) == 100
    assert flush_size(load_settings(batch_max_messages=100, mqtt_receive_maximum=1)) == 1
