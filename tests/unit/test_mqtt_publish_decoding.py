"""The lean PUBLISH decoder hands over topics PostgreSQL can store (collector.mqtt)."""

from __future__ import annotations

import struct

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from collector.paho_fast import FastClient


def _publish_qos1(topic: bytes, payload: bytes, mid: int = 7) -> bytes:
    # Variable header: topic, packet id, MQTT v5 properties (none); then the payload.
    return struct.pack("!H", len(topic)) + topic + struct.pack("!H", mid) + b"\x00" + payload


@pytest.mark.parametrize(
    ("raw", "topic"),
    [
        (b"hearth/v1/d1/phone", "hearth/v1/d1/phone"),
        (b"hearth/v1/d\x001/phone", "hearth/v1/d\ufffd1/phone"),  # NUL: forbidden by MQTT
        (b"tele/\xed\xa0\x80/LWT", "tele/\ufffd\ufffd\ufffd/LWT"),  # an encoded lone surrogate
        (b"tele/\xff/LWT", "tele/\ufffd/LWT"),
    ],
)
def test_topics_come_out_without_nul_or_surrogates(raw: bytes, topic: str) -> None:
    client = FastClient(
        callback_api_version=CallbackAPIVersion.VERSION2,
        client_id="t",
        protocol=mqtt.MQTTv5,
        manual_ack=True,
    )
    got: list[tuple[str, bytes, int, int]] = []
    client.publish_sink = lambda *args: got.append(args)
    client._in_packet = {"command": 0x32, "packet": _publish_qos1(raw, b"{}")}  # type: ignore[typeddict-item]
    client._handle_publish()
    assert got == [(topic, b"{}", 7, 1)]
