"""Zigbee2MQTT: every sample, topic handling, malformed input mapped to the right reason."""

from __future__ import annotations

import pytest

from collector.adapters.base import Reason, Rejected
from collector.adapters.samples import Sample, load_samples
from collector.adapters.testing import check_sample, run_pipeline
from collector.adapters.zigbee2mqtt.adapter import ADAPTER

SAMPLES = load_samples("zigbee2mqtt")
TOPIC = "zigbee2mqtt/front_door"


def test_there_are_samples() -> None:
    assert len(SAMPLES) >= 5


@pytest.mark.parametrize("sample", SAMPLES, ids=lambda s: s.name)
def test_sample(sample: Sample) -> None:
    check_sample(sample)


@pytest.mark.parametrize(
    "topic",
    [
        "zigbee2mqtt/bridge",
        "zigbee2mqtt/bridge/logging",
        "zigbee2mqtt/bridge/devices",
        "zigbee2mqtt/lamp/set",
        "zigbee2mqtt/lamp/get",
        "zigbee2mqtt/lamp/set/brightness",
    ],
)
def test_non_state_topics_store_nothing(topic: str) -> None:
    assert ADAPTER.matches(topic)
    assert ADAPTER.adapt(topic, b'{"power": 5}') == []


def test_other_topics_not_owned() -> None:
    assert not ADAPTER.matches("zigbee2mqtt/")
    assert not ADAPTER.matches("zigbee2mqttx/lamp")
    assert not ADAPTER.matches("tele/plug/SENSOR")


def test_unknown_keys_ignored_and_null_gives_no_reading() -> None:
    _, stored = run_pipeline(TOPIC, b'{"power": null, "battery": 50, "new_key": {"a": [1]}}')
    assert [(r.signal, r.value) for r in stored] == [("battery_pct", 50.0)]


def test_contact_is_inverted() -> None:
    _, stored = run_pipeline(TOPIC, b'{"contact": true}')
    assert [(r.signal, r.value) for r in stored] == [("contact_open", 0.0)]


@pytest.mark.parametrize(
    ("topic", "payload", "reason"),
    [
        (TOPIC, b"", Reason.BAD_JSON),
        (TOPIC, b"\xff\xd8\xff\xe0 jpeg", Reason.BAD_JSON),
        (TOPIC, b"[1]", Reason.BAD_JSON),
        (TOPIC, b'{"power": "23"}', Reason.SCHEMA),
        (TOPIC, b'{"contact": "true"}', Reason.SCHEMA),
        (TOPIC, b'{"contact": 1}', Reason.SCHEMA),
        (TOPIC, b'{"temperature": NaN}', Reason.SCHEMA),
        (TOPIC, b'{"battery": 250}', Reason.SCHEMA),
        (TOPIC, b'{"power": -5}', Reason.SCHEMA),
        (TOPIC, b'{"power": 5, "last_seen": "last tuesday"}', Reason.BAD_TIMESTAMP),
        (TOPIC, b'{"power": 5, "last_seen": "2024-05-01T10:00:00"}', Reason.BAD_TIMESTAMP),
        (TOPIC, b'{"power": 5, "last_seen": 1e300}', Reason.BAD_TIMESTAMP),
        (TOPIC, b'{"power": 5, "last_seen": true}', Reason.SCHEMA),
        (TOPIC + "/availability", b"maybe", Reason.SCHEMA),
        (TOPIC + "/availability", b'{"state": 1}', Reason.SCHEMA),
        (TOPIC + "/availability", b"\xff\xfe", Reason.BAD_JSON),
    ],
)
def test_malformed(topic: str, payload: bytes, reason: Reason) -> None:
    with pytest.raises(Rejected) as info:
        run_pipeline(topic, payload)
    assert info.value.reason is reason, info.value
