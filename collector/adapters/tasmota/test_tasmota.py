"""Tasmota: every sample, topics, naive local time, malformed input mapped to reasons."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from collector.adapters.base import Reason, Rejected
from collector.adapters.samples import Sample, load_samples
from collector.adapters.tasmota.adapter import ADAPTER
from collector.adapters.testing import check_sample, run_pipeline

SAMPLES = load_samples("tasmota")
SENSOR = "tele/plug1/SENSOR"
STATE = "tele/plug1/STATE"


def test_there_are_samples() -> None:
    assert len(SAMPLES) >= 5


@pytest.mark.parametrize("sample", SAMPLES, ids=lambda s: s.name)
def test_sample(sample: Sample) -> None:
    check_sample(sample)


@pytest.mark.parametrize(
    ("topic", "owned"),
    [
        ("tele/plug1/SENSOR", True),
        ("tele/plug1/STATE", True),
        ("tele/plug1/LWT", True),
        ("tele/plug1/INFO1", False),
        ("stat/plug1/RESULT", False),
        ("tele//SENSOR", False),
        ("tele/a/b/SENSOR", False),
    ],
)
def test_matches(topic: str, owned: bool) -> None:
    assert ADAPTER.matches(topic) is owned


def test_time_is_naive_local_unless_offset_given() -> None:
    [msg] = ADAPTER.adapt(SENSOR, b'{"Time":"2024-03-31T02:30:00","ENERGY":{"Power":5}}')
    assert msg.event_time == datetime(2024, 3, 31, 2, 30)
    assert msg.event_time.tzinfo is None
    [msg] = ADAPTER.adapt(SENSOR, b'{"Time":"2024-03-31T02:30:00+02:00","ENERGY":{"Power":5}}')
    assert msg.event_time == datetime(2024, 3, 31, 2, 30, tzinfo=timezone(timedelta(hours=2)))


def test_multichannel_power_is_summed_and_first_probe_wins() -> None:
    payload = (
        b'{"Time":"2024-05-01T12:00:00","ENERGY":{"Power":[10,32.5]},'
        b'"DS18B20-1":{"Id":"A","Temperature":20.5},"DS18B20-2":{"Id":"B","Temperature":60}}'
    )
    _, stored = run_pipeline(SENSOR, payload)
    assert [(r.signal, r.value) for r in stored] == [("power_w", 42.5), ("temperature_c", 20.5)]


def test_rssi_quality_is_not_stored_as_dbm() -> None:
    _, stored = run_pipeline(STATE, b'{"Time":"2024-05-01T12:00:00","Wifi":{"RSSI":100}}')
    assert stored == []


@pytest.mark.parametrize(
    ("topic", "payload", "reason"),
    [
        (SENSOR, b"", Reason.BAD_JSON),
        (SENSOR, b"\x89PNG\r\n", Reason.BAD_JSON),
        (SENSOR, b'"Online"', Reason.BAD_JSON),
        (SENSOR, b'{"Time":"2024-05-01T12:00:00","ENERGY":{"Power":"42"}}', Reason.SCHEMA),
        (SENSOR, b'{"Time":"2024-05-01T12:00:00","ENERGY":{"Power":NaN}}', Reason.SCHEMA),
        (SENSOR, b'{"Time":"2024-05-01T12:00:00","ENERGY":{"Total":-1}}', Reason.SCHEMA),
        (SENSOR, b'{"Time":"2024-05-01T12:00:00","AM2301":{"Temperature":"hot"}}', Reason.SCHEMA),
        (SENSOR, b'{"Time":"2024-05-01T12:00:00","AM2301":{"Temperature":500}}', Reason.SCHEMA),
        (SENSOR, b'{"Time":"2024-05-01T12:00:00","ENERGY":[1]}', Reason.SCHEMA),
        (SENSOR, b'{"Time":"2024-05-01T12:00:00","TempUnit":"K"}', Reason.SCHEMA),
        (SENSOR, b'{"Time":"01.05.2024 12:00","ENERGY":{"Power":1}}', Reason.BAD_TIMESTAMP),
        (SENSOR, b'{"Time":12,"ENERGY":{"Power":1}}', Reason.SCHEMA),
        (STATE, b'{"Time":"2024-05-01T12:00:00","UptimeSec":"5"}', Reason.SCHEMA),
        (STATE, b'{"Time":"2024-05-01T12:00:00","Wifi":{"Signal":-500}}', Reason.SCHEMA),
        ("tele/plug1/LWT", b"Sleeping", Reason.SCHEMA),
        ("tele/plug1/LWT", b"\xc3\x28", Reason.BAD_JSON),
    ],
)
def test_malformed(topic: str, payload: bytes, reason: Reason) -> None:
    with pytest.raises(Rejected) as info:
        run_pipeline(topic, payload)
    assert info.value.reason is reason, info.value
