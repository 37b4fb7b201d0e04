"""Shelly Gen2+ (https://shelly-api-docs.shelly.cloud/gen2/): ``<id>/events/rpc``,
``<id>/status/switch:0`` and ``<id>/online``.

``<id>`` is the device's MQTT topic prefix, which must be left at its default, the device id
(``shellyplus1pm-a8032ab12345``): RPC frames name their sender in ``src``, and a frame whose
``src`` is not the topic's device is ``spoofed``. See README.md beside this file.
"""

from __future__ import annotations

from datetime import datetime
from typing import Final

from pydantic import BaseModel, ConfigDict, Field

from collector.adapters.base import DeviceMessage, Reading, Reason, Rejected
from collector.adapters.parsing import decode_text, from_epoch_seconds, parse_model
from hearth.formats import RESERVED_TOPIC_ROOTS, SHELLY, SHELLY_SUBTOPICS

FORMAT: Final = SHELLY.name
RPC, SWITCH_STATUS, ONLINE = SHELLY_SUBTOPICS
_SUBTOPICS: Final = frozenset(SHELLY_SUBTOPICS)
_ONLINE: Final = {"true": 1.0, "false": 0.0}
_STATUS_METHODS: Final = frozenset({"NotifyStatus", "NotifyFullStatus"})
# Events (button pushes, scheduled restarts, ...): understood, nothing Hearth stores.
_NOTHING_TO_STORE: Final = frozenset({"NotifyEvent"})
WH_PER_KWH: Final = 1000.0

# strict: no "12.5" → 12.5; unknown keys ignored (firmware adds fields); NaN/Infinity refused.
_Strict = ConfigDict(strict=True, allow_inf_nan=False, extra="ignore")


class _Energy(BaseModel):
    model_config = _Strict
    total: float | None = None  # Wh since the counter was last reset (not kWh)


class _Switch(BaseModel):
    """``switch:0`` status. Its ``temperature`` is the relay's own (40-60 °C under load), not
    the room's: it is not stored as ``temperature_c``."""

    model_config = _Strict
    apower: float | None = None  # W
    aenergy: _Energy | None = None


class _Temperature(BaseModel):
    model_config = _Strict
    tC: float | None = None  # null when the sensor has no reading


class _Humidity(BaseModel):
    model_config = _Strict
    rh: float | None = None  # %


class _Battery(BaseModel):
    model_config = _Strict
    percent: float | None = None


class _DevicePower(BaseModel):
    model_config = _Strict
    battery: _Battery | None = None


class _Wifi(BaseModel):
    model_config = _Strict
    rssi: float | None = None  # dBm
    ssid: str | None = None


class _Sys(BaseModel):
    model_config = _Strict
    uptime: float | None = None  # s


class _Status(BaseModel):
    """``params`` of NotifyStatus/NotifyFullStatus: component statuses keyed ``type[:id]``.

    NotifyStatus carries only what changed, so any component may be missing. The first
    instance of each sensor type is read, as for Tasmota's first probe.
    """

    model_config = _Strict
    ts: float | None = None  # unix seconds (UTC) of the change
    switch: _Switch | None = Field(default=None, alias="switch:0")
    temperature: _Temperature | None = Field(default=None, alias="temperature:0")
    humidity: _Humidity | None = Field(default=None, alias="humidity:0")
    devicepower: _DevicePower | None = Field(default=None, alias="devicepower:0")
    wifi: _Wifi | None = None
    sys: _Sys | None = None


class _Frame(BaseModel):
    """A JSON-RPC 2.0 notification frame (https://shelly-api-docs.shelly.cloud/gen2/General/RPCProtocol)."""

    model_config = _Strict
    src: str
    method: str
    params: _Status = Field(default_factory=_Status)


def _split(topic: str) -> tuple[str, str] | None:
    """(device id, subtopic) of a Shelly topic Hearth reads, else None."""
    device, _, rest = topic.partition("/")
    if not device or rest not in _SUBTOPICS or device in RESERVED_TOPIC_ROOTS:
        return None
    return device, rest


def _switch_readings(switch: _Switch, readings: list[Reading]) -> None:
    if switch.apower is not None:
        readings.append(Reading("power_w", switch.apower))
    if switch.aenergy is not None and switch.aenergy.total is not None:
        readings.append(Reading("energy_total_kwh", switch.aenergy.total / WH_PER_KWH))


def _status_readings(status: _Status) -> list[Reading]:
    readings: list[Reading] = []
    if status.switch is not None:
        _switch_readings(status.switch, readings)
    if status.temperature is not None and status.temperature.tC is not None:
        readings.append(Reading("temperature_c", status.temperature.tC))
    if status.humidity is not None and status.humidity.rh is not None:
        readings.append(Reading("humidity_pct", status.humidity.rh))
    battery = status.devicepower.battery if status.devicepower is not None else None
    if battery is not None and battery.percent is not None:
        readings.append(Reading("battery_pct", battery.percent))
    if status.wifi is not None:
        if status.wifi.rssi is not None:
            readings.append(Reading("rssi_dbm", status.wifi.rssi))
        if status.wifi.ssid:
            readings.append(Reading("wifi_ssid", status.wifi.ssid))
    if status.sys is not None and status.sys.uptime is not None:
        readings.append(Reading("uptime_s", status.sys.uptime))
    return readings


class ShellyAdapter:
    format: Final = FORMAT
    topic_filters: Final = SHELLY.topic_filters

    def matches(self, topic: str) -> bool:
        return _split(topic) is not None

    def adapt(self, topic: str, payload: bytes) -> list[DeviceMessage]:
        split = _split(topic)
        if split is None:
            raise Rejected(Reason.UNKNOWN_TOPIC, "not <id>/events/rpc|status/switch:0|online")
        device, sub = split
        if sub == ONLINE:
            text = decode_text(payload).strip()
            if text not in _ONLINE:
                raise Rejected(Reason.SCHEMA, f"online {text[:20]!r} is not true/false")
            return [_message(device, None, [Reading("online", _ONLINE[text])])]
        if sub == SWITCH_STATUS:
            readings: list[Reading] = []
            _switch_readings(parse_model(_Switch, payload), readings)
            return [_message(device, None, readings)] if readings else []
        frame = parse_model(_Frame, payload)
        if frame.src != device:
            raise Rejected(Reason.SPOOFED, "frame src differs from the topic's device id")
        if frame.method in _NOTHING_TO_STORE:
            return []
        if frame.method not in _STATUS_METHODS:
            raise Rejected(Reason.UNSUPPORTED, f"method {frame.method[:40]!r}")
        readings = _status_readings(frame.params)
        if not readings:  # e.g. a relay switched on: nothing Hearth stores
            return []
        ts = frame.params.ts
        return [_message(device, None if ts is None else from_epoch_seconds(ts), readings)]


def _message(device: str, event_time: datetime | None, readings: list[Reading]) -> DeviceMessage:
    return DeviceMessage(
        format=FORMAT,
        external_id=device,
        event_time=event_time,
        readings=tuple(readings),
    )


ADAPTER: Final = ShellyAdapter()
