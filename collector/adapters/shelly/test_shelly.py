"""Shelly Gen2+: every sample, topics, event time, units, spoofing, malformed input → reasons."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from collector.adapters.base import Reason, Rejected
from collector.adapters.registry import find_adapter
from collector.adapters.samples import Sample, load_samples
from collector.adapters.shelly.adapter import ADAPTER
from collector.adapters.testing import check_sample, run_pipeline

SAMPLES = load_samples("shelly")
DEVICE = "shellyplus1pm-a8032ab12345"
RPC = f"{DEVICE}/events/rpc"
SWITCH = f"{DEVICE}/status/switch:0"


def frame(params: object, *, method: str = "NotifyStatus", src: str = DEVICE) -> bytes:
    return json.dumps(
        {"src": src, "dst": f"{src}/events", "method": method, "params": params}
    ).encode()


def test_there_are_samples() -> None:
    assert len(SAMPLES) >= 5


@pytest.mark.parametrize("sample", SAMPLES, ids=lambda s: s.name)
def test_sample(sample: Sample) -> None:
    check_sample(sample)


@pytest.mark.parametrize(
    ("topic", "owned"),
    [
        (RPC, True),
        (SWITCH, True),
        (f"{DEVICE}/online", True),
        (f"{DEVICE}/status/switch:1", False),  # only channel 0 is read (and granted)
        (f"{DEVICE}/rpc", False),  # requests *to* the device
        (f"{DEVICE}/events/rpc/x", False),
        ("/events/rpc", False),
        ("tele/events/rpc", False),  # reserved roots belong to other formats
        ("owntracks/online", False),
        ("a/b/online", False),
    ],
)
def test_matches(topic: str, owned: bool) -> None:
    assert ADAPTER.matches(topic) is owned


def test_other_formats_keep_their_topics() -> None:
    for topic, fmt in [
        ("zigbee2mqtt/online", "zigbee2mqtt"),
        ("tele/plug/LWT", "tasmota"),
        ("owntracks/events/rpc", "owntracks"),
        (RPC, "shelly"),
    ]:
        adapter = find_adapter(topic)
        assert adapter is not None and adapter.format == fmt, topic


def test_event_time_is_params_ts_else_receive_time() -> None:
    [msg] = ADAPTER.adapt(RPC, frame({"ts": 1700000000.5, "switch:0": {"apower": 1.5}}))
    assert msg.event_time == datetime(2023, 11, 14, 22, 13, 20, 500000, tzinfo=UTC)
    [msg] = ADAPTER.adapt(RPC, frame({"switch:0": {"apower": 1.5}}))
    assert msg.event_time is None
    [msg] = ADAPTER.adapt(SWITCH, b'{"id":0,"apower":1.5}')
    assert msg.event_time is None


def test_energy_counter_is_converted_from_wh_to_kwh() -> None:
    _, stored = run_pipeline(SWITCH, b'{"id":0,"aenergy":{"total":2500.0}}')
    assert [(r.signal, r.value) for r in stored] == [("energy_total_kwh", 2.5)]


def test_relay_temperature_is_not_room_temperature() -> None:
    _, stored = run_pipeline(SWITCH, b'{"id":0,"apower":0,"temperature":{"tC":51.2,"tF":124.2}}')
    assert [r.signal for r in stored] == ["power_w"]


def test_null_sensor_values_give_no_reading() -> None:
    assert ADAPTER.adapt(RPC, frame({"ts": 1.0e9, "temperature:0": {"id": 0, "tC": None}})) == []


@pytest.mark.parametrize(
    ("topic", "payload", "reason"),
    [
        (RPC, frame({"switch:0": {"apower": 5}}, src="shellyplus1pm-other"), Reason.SPOOFED),
        (RPC, frame({"ts": 1.0e9}, method="Switch.Set"), Reason.UNSUPPORTED),
        (RPC, b"", Reason.BAD_JSON),
        (RPC, b"[1, 2]", Reason.BAD_JSON),
        (RPC, b'{"method":"NotifyStatus","params":{}}', Reason.SCHEMA),  # no src
        (RPC, frame({"switch:0": {"apower": "5"}}), Reason.SCHEMA),
        (RPC, frame({"switch:0": {"apower": -5}}), Reason.SCHEMA),
        (RPC, frame({"temperature:0": {"tC": 500}}), Reason.SCHEMA),
        (RPC, frame({"switch:0": []}), Reason.SCHEMA),
        (RPC, frame({"ts": "2024-01-01", "switch:0": {"apower": 5}}), Reason.SCHEMA),
        (RPC, frame({"ts": 1e300, "switch:0": {"apower": 5}}), Reason.BAD_TIMESTAMP),
        (RPC, frame({"wifi": {"ssid": "a\u0000b"}}), Reason.SCHEMA),
        (
            RPC,
            b'{"src":"x","method":"NotifyStatus","params":{"switch:0":{"apower":NaN}}}',
            Reason.SCHEMA,
        ),
        (SWITCH, b'{"apower": true}', Reason.SCHEMA),
        (f"{DEVICE}/online", b"maybe", Reason.SCHEMA),
        (f"{DEVICE}/online", b"\xff", Reason.BAD_JSON),
    ],
)
def test_malformed(topic: str, payload: bytes, reason: Reason) -> None:
    with pytest.raises(Rejected) as info:
        run_pipeline(topic, payload)
    assert info.value.reason is reason, info.value
