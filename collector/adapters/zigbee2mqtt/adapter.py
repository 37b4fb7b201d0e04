"""Zigbee2MQTT (https://www.zigbee2mqtt.io/guide/usage/mqtt_topics_and_messages.html).

Device state on ``zigbee2mqtt/<friendly_name>`` (friendly names may contain ``/``), availability
on ``zigbee2mqtt/<friendly_name>/availability``; ``zigbee2mqtt/bridge/...`` and the command
subtopics ``/set`` and ``/get`` carry nothing Hearth stores. See README.md beside this file.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Final

from pydantic import BaseModel, ConfigDict, Field

from collector.adapters.base import DeviceMessage, Reading, Reason, Rejected
from collector.adapters.parsing import (
    decode_text,
    from_epoch_millis,
    parse_model,
    parse_rfc3339,
)
from hearth.formats import ZIGBEE2MQTT

FORMAT: Final = ZIGBEE2MQTT.name
PREFIX: Final = "zigbee2mqtt/"
_COMMAND_LEVELS: Final = frozenset({"set", "get"})
_AVAILABILITY: Final = {"online": 1.0, "offline": 0.0}


class _State(BaseModel):
    """The keys Hearth reads; every other key of the (device-specific) state is ignored.

    ``null`` means "not known yet" in Zigbee2MQTT (e.g. after a restart) and gives no reading;
    a value of the wrong type is a SCHEMA error (strict: no "21.5" → 21.5).
    """

    model_config = ConfigDict(strict=True, allow_inf_nan=False, extra="ignore")
    power: float | None = None  # W
    energy: float | None = None  # kWh, cumulative
    contact: bool | None = None  # true = closed
    occupancy: bool | None = None
    temperature: float | None = None  # °C
    local_temperature: float | None = None  # °C, thermostats (TRVs) report this instead
    humidity: float | None = None  # %
    battery: float | None = None  # %
    linkquality: float | None = None  # LQI 0..255
    current_heating_setpoint: float | None = None  # °C
    occupied_heating_setpoint: float | None = None  # °C
    # advanced.last_seen: ISO_8601 / ISO_8601_local (string with offset) or epoch (ms number)
    last_seen: Annotated[str | float | None, Field(union_mode="left_to_right")] = None


class _Availability(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")
    state: str


def _split(topic: str) -> tuple[str, str | None] | None:
    """(friendly_name, subtopic or None) for a Zigbee2MQTT topic, else None."""
    if not topic.startswith(PREFIX):
        return None
    rest = topic[len(PREFIX) :]
    if not rest:
        return None
    if rest == "bridge" or rest.startswith("bridge/"):
        return "bridge", "bridge"
    name, _, last = rest.rpartition("/")
    if name and last in _COMMAND_LEVELS:
        return name, last
    if name and last == "availability":
        return name, "availability"
    # zigbee2mqtt/<name>/set/<attribute> (attribute-level commands)
    name2, _, middle = name.rpartition("/")
    if name2 and middle in _COMMAND_LEVELS:
        return name2, middle
    return rest, None


def _event_time(last_seen: str | float | None) -> datetime | None:
    if last_seen is None:
        return None
    if isinstance(last_seen, str):
        return parse_rfc3339(last_seen, require_offset=True)
    return from_epoch_millis(last_seen)


class Zigbee2MqttAdapter:
    format: Final = FORMAT
    topic_filters: Final = ZIGBEE2MQTT.topic_filters

    def matches(self, topic: str) -> bool:
        return _split(topic) is not None

    def adapt(self, topic: str, payload: bytes) -> list[DeviceMessage]:
        split = _split(topic)
        if split is None:
            raise Rejected(Reason.UNKNOWN_TOPIC, "not zigbee2mqtt/<friendly_name>")
        name, sub = split
        if sub == "availability":
            return [self._availability(name, payload)]
        if sub is not None:  # bridge status/logs/config, set/get commands
            return []
        state = parse_model(_State, payload)
        readings = []
        if state.power is not None:
            readings.append(Reading("power_w", state.power))
        if state.energy is not None:
            readings.append(Reading("energy_total_kwh", state.energy))
        if state.contact is not None:  # contact=true means the magnet is near: door CLOSED
            readings.append(Reading("contact_open", 0.0 if state.contact else 1.0))
        if state.occupancy is not None:
            readings.append(Reading("occupancy", 1.0 if state.occupancy else 0.0))
        temperature = (
            state.temperature if state.temperature is not None else state.local_temperature
        )
        if temperature is not None:
            readings.append(Reading("temperature_c", temperature))
        if state.humidity is not None:
            readings.append(Reading("humidity_pct", state.humidity))
        if state.battery is not None:
            readings.append(Reading("battery_pct", state.battery))
        if state.linkquality is not None:
            readings.append(Reading("link_quality", state.linkquality))
        setpoint = (
            state.current_heating_setpoint
            if state.current_heating_setpoint is not None
            else state.occupied_heating_setpoint
        )
        if setpoint is not None:
            readings.append(Reading("setpoint_c", setpoint))
        event_time = _event_time(state.last_seen)
        if not readings:  # e.g. a light's state/brightness: understood, nothing stored
            return []
        return [
            DeviceMessage(
                format=FORMAT, external_id=name, event_time=event_time, readings=tuple(readings)
            )
        ]

    @staticmethod
    def _availability(name: str, payload: bytes) -> DeviceMessage:
        """``{"state": "online"}`` (current) or plain ``online`` (legacy_availability_payload)."""
        if payload.lstrip()[:1] == b"{":
            state = parse_model(_Availability, payload).state
        else:
            state = decode_text(payload).strip()
        value = _AVAILABILITY.get(state)
        if value is None:
            raise Rejected(Reason.SCHEMA, f"availability {state[:20]!r} is not online/offline")
        return DeviceMessage(
            format=FORMAT,
            external_id=name,
            event_time=None,  # no timestamp in the message: receive time is stored
            readings=(Reading("online", value),),
        )


ADAPTER: Final = Zigbee2MqttAdapter()
