"""Canonical format: every sample, plus malformed input mapped to the right reason."""

from __future__ import annotations

import pytest

from collector.adapters.base import Reason, Rejected
from collector.adapters.hearth.adapter import ADAPTER
from collector.adapters.samples import Sample, load_samples
from collector.adapters.testing import check_sample, run_pipeline

SAMPLES = load_samples("hearth")
TOPIC = "hearth/v1/dev-1/phone"


def test_there_are_samples() -> None:
    assert len(SAMPLES) >= 3


@pytest.mark.parametrize("sample", SAMPLES, ids=lambda s: s.name)
def test_sample(sample: Sample) -> None:
    check_sample(sample)


@pytest.mark.parametrize(
    ("topic", "owned"),
    [
        ("hearth/v1/dev-1/phone", True),
        ("hearth/v1/dev-1", False),
        ("hearth/v1//phone", False),
        ("hearth/v1/dev-1/phone/extra", False),
        ("hearth/v2/dev-1/phone", False),
        ("owntracks/a/b", False),
    ],
)
def test_matches(topic: str, owned: bool) -> None:
    assert ADAPTER.matches(topic) is owned


def test_stream_and_claimed_id_are_kept() -> None:
    [msg] = ADAPTER.adapt(
        TOPIC, b'{"ts": 1714531200, "device_id": "dev-1", "readings": {"online": 1}}'
    )
    assert msg.extras == {"stream": "phone"}
    assert msg.claimed_id == "dev-1"
    assert msg.external_id == "dev-1"


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"", Reason.BAD_JSON),
        (b"not json", Reason.BAD_JSON),
        (b"\xff\xfe\x00garbage", Reason.BAD_JSON),
        (b'{"ts": 1, "readings": {"online": 1}} trailing', Reason.BAD_JSON),
        (b"[1, 2]", Reason.BAD_JSON),
        (b'"text"', Reason.BAD_JSON),
        (b"null", Reason.BAD_JSON),
        (b'{"readings": {"online": 1}}', Reason.SCHEMA),  # ts missing
        (b'{"ts": 1714531200}', Reason.SCHEMA),  # readings missing
        (b'{"ts": 1714531200, "readings": {}}', Reason.SCHEMA),  # empty
        (b'{"ts": 1714531200, "readings": [1]}', Reason.SCHEMA),
        (b'{"ts": 1714531200, "readings": {"battery_pct": NaN}}', Reason.SCHEMA),
        (b'{"ts": 1714531200, "readings": {"battery_pct": Infinity}}', Reason.SCHEMA),
        (b'{"ts": 1714531200, "readings": {"battery_pct": -Infinity}}', Reason.SCHEMA),
        (b'{"ts": 1714531200, "readings": {"battery_pct": true}}', Reason.SCHEMA),
        (b'{"ts": 1714531200, "readings": {"battery_pct": "55"}}', Reason.SCHEMA),
        (b'{"ts": 1714531200, "readings": {"battery_pct": 101}}', Reason.SCHEMA),
        (b'{"ts": 1714531200, "readings": {"battery_pct": null}}', Reason.SCHEMA),
        (b'{"ts": 1714531200, "readings": {"no_such_signal": 1}}', Reason.SCHEMA),
        (b'{"ts": 1714531200, "readings": {"net_type": 3}}', Reason.SCHEMA),
        (b'{"ts": 1714531200, "readings": {"position": 3}}', Reason.SCHEMA),
        (b'{"ts": 1714531200, "readings": {"position": {"lat": 91, "lon": 0}}}', Reason.SCHEMA),
        (b'{"ts": 1714531200, "readings": {"position": {"lat": NaN, "lon": 0}}}', Reason.SCHEMA),
        (b'{"ts": 1714531200, "readings": {"position": {"lat": 1}}}', Reason.SCHEMA),
        (b'{"ts": 1714531200, "readings": {"position": {"lat": "1", "lon": 2}}}', Reason.SCHEMA),
        (b'{"ts": 1714531200, "readings": {"geohash": "wtw3sjqxyzab"}}', Reason.SCHEMA),
        (b'{"ts": 1714531200, "readings": {"wifi_ssid_hash": "HomeNet"}}', Reason.SCHEMA),
        (b'{"ts": 1714531200, "readings": {"battery_pct": {"lat": 1, "lon": 2}}}', Reason.SCHEMA),
        (b'{"ts": true, "readings": {"online": 1}}', Reason.SCHEMA),
        (b'{"ts": "yesterday", "readings": {"online": 1}}', Reason.BAD_TIMESTAMP),
        (b'{"ts": "2024-05-01T10:00:00", "readings": {"online": 1}}', Reason.BAD_TIMESTAMP),
        (b'{"ts": 1e300, "readings": {"online": 1}}', Reason.BAD_TIMESTAMP),
        (b'{"ts": -1e300, "readings": {"online": 1}}', Reason.BAD_TIMESTAMP),
        (b'{"ts": 1714531200, "device_id": "other", "readings": {"online": 1}}', Reason.SPOOFED),
    ],
)
def test_malformed(payload: bytes, reason: Reason) -> None:
    with pytest.raises(Rejected) as info:
        run_pipeline(TOPIC, payload)
    assert info.value.reason is reason, info.value
    assert "\n" not in info.value.detail


def test_too_long_raw_id_is_rejected() -> None:
    payload = b'{"ts": 1714531200, "readings": {"wifi_ssid": "' + b"x" * 300 + b'"}}'
    with pytest.raises(Rejected) as info:
        run_pipeline(TOPIC, payload)
    assert info.value.reason is Reason.SCHEMA
