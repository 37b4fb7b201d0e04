"""OwnTracks: every sample, topic ownership, malformed input mapped to the right reason."""

from __future__ import annotations

import pytest

from collector.adapters.base import Reason, Rejected
from collector.adapters.owntracks.adapter import ADAPTER
from collector.adapters.samples import Sample, load_samples
from collector.adapters.testing import check_sample, run_pipeline

SAMPLES = load_samples("owntracks")
TOPIC = "owntracks/jane/iphone"


def test_there_are_samples() -> None:
    assert len(SAMPLES) >= 5


@pytest.mark.parametrize("sample", SAMPLES, ids=lambda s: s.name)
def test_sample(sample: Sample) -> None:
    check_sample(sample)


@pytest.mark.parametrize(
    ("topic", "owned"),
    [
        ("owntracks/jane/iphone", True),
        ("owntracks/jane/iphone/event", True),
        ("owntracks/jane/iphone/cmd", True),
        ("owntracks/jane", False),
        ("owntracks//iphone", False),
        ("owntracks/jane/iphone/a/b", False),
        ("hearth/v1/a/b", False),
    ],
)
def test_matches(topic: str, owned: bool) -> None:
    assert ADAPTER.matches(topic) is owned


def test_external_id_ignores_subtopic() -> None:
    loc = b'{"_type":"transition","tst":1714557600,"event":"enter"}'
    [msg] = ADAPTER.adapt("owntracks/jane/iphone/event", loc)
    assert msg.external_id == "jane/iphone"


def test_unknown_type_is_unsupported() -> None:
    with pytest.raises(Rejected) as info:
        ADAPTER.adapt(TOPIC, b'{"_type": "teleport"}')
    assert info.value.reason is Reason.UNSUPPORTED


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"", Reason.BAD_JSON),
        (b"\x00\x01\xfe binary", Reason.BAD_JSON),
        (b"[]", Reason.BAD_JSON),
        (b'{"_type": "location", "lat": 1', Reason.BAD_JSON),
        (b'{"lat": 51.5, "lon": 0.1, "tst": 1714557600}', Reason.SCHEMA),  # no _type
        (b'{"_type": 3}', Reason.SCHEMA),
        (b'{"_type": "location", "lon": 0.1, "tst": 1714557600}', Reason.SCHEMA),
        (b'{"_type": "location", "lat": 51.5, "lon": 0.1}', Reason.SCHEMA),  # no tst
        (b'{"_type": "location", "lat": "51.5", "lon": 0.1, "tst": 1714557600}', Reason.SCHEMA),
        (b'{"_type": "location", "lat": NaN, "lon": 0.1, "tst": 1714557600}', Reason.SCHEMA),
        (b'{"_type": "location", "lat": 95, "lon": 0.1, "tst": 1714557600}', Reason.SCHEMA),
        (b'{"_type":"location","lat":51.5,"lon":0.1,"tst":1714557600,"batt":140}', Reason.SCHEMA),
        (b'{"_type":"location","lat":51.5,"lon":0.1,"tst":1714557600,"bs":7}', Reason.SCHEMA),
        (b'{"_type":"location","lat":51.5,"lon":0.1,"tst":1714557600,"SSID":5}', Reason.SCHEMA),
        (b'{"_type": "location", "lat": 51.5, "lon": 0.1, "tst": 1e30}', Reason.BAD_TIMESTAMP),
        (b'{"_type": "location", "lat": 51.5, "lon": 0.1, "tst": true}', Reason.SCHEMA),
        (b'{"_type": "transition", "tst": 1714557600, "event": "hover"}', Reason.SCHEMA),
        (b'{"_type": "transition", "event": "enter"}', Reason.SCHEMA),
    ],
)
def test_malformed(payload: bytes, reason: Reason) -> None:
    with pytest.raises(Rejected) as info:
        run_pipeline(TOPIC, payload)
    assert info.value.reason is reason, info.value


def test_unknown_conn_letter_keeps_the_fix() -> None:
    payload = b'{"_type":"location","lat":51.5,"lon":0.1,"tst":1714557600,"conn":"x"}'
    _, stored = run_pipeline(TOPIC, payload)
    assert [r.signal for r in stored] == ["geohash"]
