"""device_sim.publish without a broker: paho's PUBACK objects after the prebuilt-copy shim."""

from __future__ import annotations

import struct

import pytest
from paho.mqtt.enums import MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from device_sim.paho_fast import use_prebuilt_ack_objects

_packet = pytest.importorskip("paho.mqtt._packet")
PUBACK_HEADER = 0x40


def _decode(packet: bytes, protocol: MQTTProtocolVersion) -> tuple[int, ReasonCode, Properties]:
    result = _packet.decode_puback(PUBACK_HEADER, packet, protocol)
    return result.mid, result.reason, result.properties


def test_prebuilt_puback_objects_behave_like_fresh_ones() -> None:
    assert use_prebuilt_ack_objects()
    assert use_prebuilt_ack_objects()  # idempotent
    mid, reason, props = _decode(struct.pack("!H", 7), MQTTProtocolVersion.MQTTv311)
    fresh = ReasonCode(PacketTypes.PUBACK)
    assert mid == 7
    assert isinstance(reason, ReasonCode) and isinstance(props, Properties)
    assert reason == fresh and reason.value == 0 and not reason.is_failure
    assert str(reason) == str(fresh) and reason.json() == fresh.json()
    assert props.isEmpty() and props.json() == Properties(PacketTypes.PUBACK).json()


def test_v5_reason_and_properties_land_on_the_copy_only() -> None:
    use_prebuilt_ack_objects()
    reason_string = b"\x1f" + struct.pack("!H", 6) + b"no acl"  # property 31: reason string
    packet = struct.pack("!H", 9) + bytes([135, len(reason_string)]) + reason_string
    mid, reason, props = _decode(packet, MQTTProtocolVersion.MQTTv5)
    assert (mid, reason.value, reason.is_failure) == (9, 135, True)
    assert props.ReasonString == "no acl"
    # The next PUBACK starts from a clean slate: nothing leaked into the shared template.
    _, reason2, props2 = _decode(struct.pack("!H", 10), MQTTProtocolVersion.MQTTv311)
    assert reason2.value == 0 and not reason2.is_failure
    assert props2.isEmpty() and not hasattr(props2, "ReasonString")
    assert reason is not reason2 and props is not props2


def test_other_constructor_calls_pass_through() -> None:
    use_prebuilt_ack_objects()
    code = _packet.ReasonCode(PacketTypes.CONNACK, "Not authorized")
    assert isinstance(code, ReasonCode) and code.value == 135
