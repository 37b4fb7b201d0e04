"""Tasmota (https://tasmota.github.io/docs/MQTT/): ``tele/<topic>/SENSOR|STATE|LWT``.

``Time`` is the device's local wall-clock time without an offset (unless the firmware is set to
add one): the adapter returns it naive and the pipeline reads it in the device's time zone.
See README.md beside this file.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from collector.adapters.base import DeviceMessage, Reading, Reason, Rejected
from collector.adapters.parsing import decode_text, parse_model, parse_rfc3339, rejection_from
from hearth.formats import TASMOTA

FORMAT: Final = TASMOTA.name
PREFIX: Final = "tele/"
_KINDS: Final = frozenset({"SENSOR", "STATE", "LWT"})
_LWT: Final = {"Online": 1.0, "Offline": 0.0}

_Strict = ConfigDict(strict=True, allow_inf_nan=False, extra="ignore")


class _Energy(BaseModel):
    model_config = _Strict
    # Power is a list on multi-channel meters (one value per channel): summed.
    Power: Annotated[float | list[float] | None, Field(union_mode="left_to_right")] = None
    Total: float | None = None  # kWh
    Today: float | None = None  # kWh since local midnight


class _Climate(BaseModel):
    model_config = _Strict
    Temperature: float | None = None
    Humidity: float | None = None


class _Sensor(BaseModel):
    # extra="allow": sensor objects are keyed by driver name (AM2301, DS18B20-1, BME280, …).
    model_config = ConfigDict(strict=True, allow_inf_nan=False, extra="allow")
    Time: str | None = None
    ENERGY: _Energy | None = None
    TempUnit: Literal["C", "F"] = "C"


class _Wifi(BaseModel):
    model_config = _Strict
    Signal: float | None = None  # dBm (RSSI is a 0..100 quality, not stored)
    SSId: str | None = None
    BSSId: str | None = None


class _State(BaseModel):
    model_config = _Strict
    Time: str | None = None
    UptimeSec: float | None = None
    Wifi: _Wifi | None = None


def _split(topic: str) -> tuple[str, str] | None:
    """(device topic, message kind) of tele/<topic>/SENSOR|STATE|LWT, else None."""
    if not topic.startswith(PREFIX):
        return None
    parts = topic[len(PREFIX) :].split("/")
    if len(parts) != 2 or not parts[0] or parts[1] not in _KINDS:
        return None
    return parts[0], parts[1]


def _time(text: str | None) -> datetime | None:
    return None if text is None else parse_rfc3339(text, require_offset=False)


def _climate(extra: dict[str, Any] | None) -> _Climate | None:
    """The first sensor object (in message order) that reports a temperature.

    A device with several probes (DS18B20-1, DS18B20-2) would otherwise write several values
    for one (device, time, signal) key; the first is the one Tasmota lists as primary.
    """
    for value in (extra or {}).values():
        if isinstance(value, dict) and "Temperature" in value:
            try:
                return _Climate.model_validate(value)
            except ValidationError as exc:
                raise rejection_from(exc) from None
    return None


class TasmotaAdapter:
    format: Final = FORMAT
    topic_filters: Final = TASMOTA.topic_filters

    def matches(self, topic: str) -> bool:
        return _split(topic) is not None

    def adapt(self, topic: str, payload: bytes) -> list[DeviceMessage]:
        split = _split(topic)
        if split is None:
            raise Rejected(Reason.UNKNOWN_TOPIC, "not tele/<topic>/SENSOR|STATE|LWT")
        device, kind = split
        if kind == "LWT":
            text = decode_text(payload).strip()
            if text not in _LWT:
                raise Rejected(Reason.SCHEMA, f"LWT {text[:20]!r} is not Online/Offline")
            return [_message(device, None, [Reading("online", _LWT[text])])]
        if kind == "STATE":
            state = parse_model(_State, payload)
            readings = []
            if state.UptimeSec is not None:
                readings.append(Reading("uptime_s", state.UptimeSec))
            if state.Wifi is not None:
                if state.Wifi.Signal is not None:
                    readings.append(Reading("rssi_dbm", state.Wifi.Signal))
                if state.Wifi.SSId:
                    readings.append(Reading("wifi_ssid", state.Wifi.SSId))
                if state.Wifi.BSSId:
                    readings.append(Reading("wifi_bssid", state.Wifi.BSSId))
            return [_message(device, _time(state.Time), readings)] if readings else []
        sensor = parse_model(_Sensor, payload)
        readings = []
        if sensor.ENERGY is not None:
            energy = sensor.ENERGY
            if energy.Power is not None:
                power = sum(energy.Power) if isinstance(energy.Power, list) else energy.Power
                readings.append(Reading("power_w", power))
            if energy.Total is not None:
                readings.append(Reading("energy_total_kwh", energy.Total))
            if energy.Today is not None:
                readings.append(Reading("energy_today_kwh", energy.Today))
        climate = _climate(sensor.model_extra)
        if climate is not None:
            if climate.Temperature is not None:
                celsius = climate.Temperature
                if sensor.TempUnit == "F":
                    celsius = (celsius - 32.0) * 5.0 / 9.0
                readings.append(Reading("temperature_c", celsius))
            if climate.Humidity is not None:
                readings.append(Reading("humidity_pct", climate.Humidity))
        return [_message(device, _time(sensor.Time), readings)] if readings else []


def _message(device: str, event_time: datetime | None, readings: list[Reading]) -> DeviceMessage:
    return DeviceMessage(
        format=FORMAT, external_id=device, event_time=event_time, readings=tuple(readings)
    )


ADAPTER: Final = TasmotaAdapter()
