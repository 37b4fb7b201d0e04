"""The library internals our fast paths rely on are still there and shaped as we use them.

collector/paho_fast.py, device_sim/paho_fast.py and device_sim/json_fast.py reach into paho-mqtt
and ``json`` below their public APIs (each says why); features/service/header_timeout.py does
the same with aiohttp's runner. An upgrade that moves any of it must fail here, by name, not as
a slow drain or a wrong byte somewhere downstream.
"""

from __future__ import annotations

import inspect
import json
from importlib.metadata import version
from typing import Any

import paho.mqtt.client as mqtt
from aiohttp import web
from paho.mqtt import _packet
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from collector.paho_fast import FastClient
from device_sim.json_fast import compact_dumps


async def _no_handler(request: web.BaseRequest) -> web.StreamResponse:
    raise AssertionError("never called")


def _parameters(func: Any) -> list[str]:
    return list(inspect.signature(func).parameters)


def test_paho_is_the_pinned_minor_version() -> None:
    assert version("paho-mqtt").startswith("2.2."), (
        "paho-mqtt changed: re-check collector/paho_fast.py and device_sim/paho_fast.py "
        "against its source, then move the pin in pyproject.toml"
    )


def test_paho_client_internals_the_collector_overrides_or_calls() -> None:
    client = mqtt.Client(CallbackAPIVersion.VERSION2)
    assert _parameters(mqtt.Client._sock_recv) == ["self", "bufsize"]
    assert _parameters(mqtt.Client._handle_publish) == ["self"]
    assert _parameters(mqtt.Client._packet_queue)[:5] == ["self", "command", "packet", "mid", "qos"]
    # paho dispatches to the overrides by these names.
    assert "_handle_publish" in inspect.getsource(mqtt.Client._packet_handle)
    assert "_sock_recv" in inspect.getsource(mqtt.Client._packet_read)
    in_packet = client._in_packet
    assert isinstance(in_packet, dict) and {"command", "packet"} <= in_packet.keys()
    for name in ("_sock_recv", "_handle_publish"):
        assert getattr(FastClient, name) is not getattr(mqtt.Client, name)
    assert "_topic" in mqtt.MQTTMessage.__slots__
    assert isinstance(mqtt.MQTTMessage(topic=b"a/b")._topic, bytes)


def test_paho_packet_module_the_publisher_rebinds() -> None:
    # device_sim/paho_fast.py replaces these two names with copying constructors.
    rebound = getattr(_packet, "_hearth_prebuilt", False)
    assert getattr(_packet, "ReasonCode", None) is ReasonCode or rebound
    assert getattr(_packet, "Properties", None) is Properties or rebound
    assert _parameters(_packet.decode_puback) == ["header", "packet", "protocol"]
    # ... because the decoders build them by those module-level names, from a packet type only.
    source = inspect.getsource(_packet)
    assert "ReasonCode(packet_type)" in source and "Properties(packet_type)" in source
    assert _parameters(ReasonCode.__init__)[:2] == ["self", "packetType"]
    assert _parameters(Properties.__init__) == ["self", "packetType"]
    # The copies share state through the instance __dict__: no slots may hide attributes.
    assert not hasattr(ReasonCode, "__slots__") and not hasattr(Properties, "__slots__")


def test_json_fast_path_gives_json_dumps_bytes() -> None:
    assert json.encoder.c_make_encoder is not None  # type: ignore[attr-defined]  # CPython
    bodies: list[Any] = [
        {"ts": "2026-03-01T08:15:00Z", "device_id": "d-1", "readings": {"online": 1}},
        {"a": [1, 2.5, None, True, False], "b": {"c": 'é ü \u2028 \x00 "q"'}, "n": float("nan")},
        {"inf": float("inf"), "neg": -0.0, "big": 10**20, "empty": {}, "list": []},
        "plain",
        [],
    ]
    for body in bodies:
        expected = json.dumps(body, separators=(",", ":"), ensure_ascii=False, allow_nan=True)
        assert compact_dumps(body) == expected


async def test_aiohttp_runner_internals_the_header_timeout_uses() -> None:
    assert _parameters(web.AppRunner._make_server) == ["self"]
    assert inspect.iscoroutinefunction(web.AppRunner._make_server)
    server = web.Server(_no_handler)
    assert hasattr(server, "_loop") and isinstance(server._kwargs, dict)
