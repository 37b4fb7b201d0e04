"""The pipeline as a pure function: one message in, rows or exactly one dead letter out."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime, timedelta

import pytest

from collector.minimise import Minimiser
from collector.pipeline import Batch, Caches, Pipeline
from collector.service import flush_size
from hearth.ledger import DeviceRecord
from hearth.pseudonym import DOMAIN_DEAD_LETTER, keyed_digest
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
    assert dead[4] == len(payload)
    assert dead[5] == keyed_digest(KEY, DOMAIN_DEAD_LETTER, topic.encode(), payload)
    assert batch.dead_by_reason == {reason: 1}


def test_unconsented_readings_are_dropped_and_counted() -> None:
    pipeline = make_pipeline({("u1", Category.DEVICE_HEALTH)})
    batch = run(pipeline, "hearth/v1/dev1/p", body({"battery_pct": 5, "net_type": "wifi"}))
    assert [r[3] for r in batch.numeric] == ["battery_pct"]
    assert batch.categorical == [] and batch.dead_letters == []
    assert batch.dropped_by_category == {"connectivity": 1}


def test_message_without_any_consented_reading_is_a_redacted_dead_letter() -> None:
    payload = body({"battery_pct": 5})
    batch = run(make_pipeline(set()), "hearth/v1/dev1/p", payload)
    assert batch.numeric == []
    [(topic, reason, detail, kept, size, digest, device_id)] = batch.dead_letters
    # Nothing of the message but its size, a keyed digest and the device it came from.
    assert (topic, reason, detail, kept, device_id) == ("", "no_consent", "", None, "dev1")
    assert size == len(payload)
    assert digest != hashlib.sha256(b"hearth/v1/dev1/p\0" + payload).digest()
    assert digest == keyed_digest(KEY, DOMAIN_DEAD_LETTER, b"hearth/v1/dev1/p", payload)


def test_every_dead_letter_digest_is_keyed() -> None:
    topic, payload = "hearth/v1/dev1/x", b"{not json"
    [dead] = run(make_pipeline(), topic, payload).dead_letters
    unkeyed = hashlib.sha256(topic.encode() + b"\0" + payload).digest()
    assert dead[5] != unkeyed and len(dead[5]) == 32
    other_key = Pipeline(
        load_settings(), Minimiser(b"another-key-0123456789abcdef"), make_pipeline().caches
    )
    [again] = run(other_key, topic, payload).dead_letters
    assert again[5] != dead[5]  # without the key nobody can recompute it


@pytest.mark.parametrize(
    ("fmt", "external_id", "topic", "attributed"),
    [
        ("hearth", "dev-x", "hearth/v1/dev-x/phone", True),  # canonical: device id = external
        ("owntracks", "alice/phone", "owntracks/alice/phone", True),
        ("owntracks", "alice/phone", "owntracks/alice/phone/event", True),
        ("zigbee2mqtt", "door", "zigbee2mqtt/door", True),
        ("zigbee2mqtt", "door", "zigbee2mqtt/door/availability", True),
        ("tasmota", "plug1", "tele/plug1/SENSOR", True),
        ("shelly", "shellyplus1-a8032ab1", "shellyplus1-a8032ab1/events/rpc", True),
        ("hearth", "dev-x", "hearth/v1/dev2/phone", False),
        ("tasmota", "plug1", "tele/plug2/SENSOR", False),
        ("owntracks", "alice/phone", "owntracks/alice/tablet", False),
    ],
)
def test_dead_letter_names_the_device_that_may_publish_on_its_topic(
    fmt: str, external_id: str, topic: str, attributed: bool
) -> None:
    record = DeviceRecord("dev-x", "u1", "sensor", fmt, external_id, "UTC", None)
    pipeline = make_pipeline()
    pipeline.caches.devices = {(fmt, external_id): record}
    [dead] = run(pipeline, topic, b"\xff not json").dead_letters
    assert dead[6] == ("dev-x" if attributed else None)


def test_refused_net_type_is_kept_nowhere() -> None:
    secret = "Alice-iPhone-0151-2345-6789"
    batch = run(make_pipeline(), "hearth/v1/dev1/p", body({"net_type": secret, "battery_pct": 5}))
    assert batch.categorical == [] and batch.numeric == []
    [(_, reason, detail, kept, _, _, device_id)] = batch.dead_letters
    assert (reason, device_id) == ("schema", "dev1")
    assert kept is not None and b'"net_type":"<redac' in kept
    for part in ("Alice", "iPhone", "2345"):
        assert part not in detail and part.encode() not in kept


def test_detail_is_scrubbed_before_it_is_cut() -> None:
    # pydantic names the offending key; here a key that is a long id ending at the cut.
    key = "x" * 480 + "356938035643809"
    batch = run(make_pipeline(), "hearth/v1/dev1/p", body({key: "y"}))
    [dead] = batch.dead_letters
    assert dead[1] == "schema" and len(dead[2]) <= 500
    assert "3569380" not in dead[2]  # not even the part before a 500-character cut


def test_event_older_than_max_age_is_too_old() -> None:
    old = (NOW - timedelta(days=91)).isoformat()
    batch = run(make_pipeline(), "hearth/v1/dev1/p", body({"battery_pct": 5}, ts=old))
    assert batch.dead_by_reason == {"too_old": 1} and batch.numeric == []


def test_readings_before_the_consent_began_are_refused_and_redacted() -> None:
    """Consented now, but not at the reading's event time: ``before_consent``, no payload."""
    pipeline = make_pipeline(since=NOW - timedelta(minutes=10))
    early = body({"battery_pct": 5}, ts=(NOW - timedelta(minutes=11)).isoformat())
    batch = run(pipeline, "hearth/v1/dev1/p", early)
    assert batch.numeric == []
    [(_topic, reason, detail, payload, _size, _digest, _device)] = batch.dead_letters
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
    [(_topic, reason, _detail, payload, size, _digest, _device)] = batch.dead_letters
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
