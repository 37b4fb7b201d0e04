"""Hearth's canonical format: ``hearth/v1/<device_id>/<stream>`` with a JSON body.

See README.md beside this file for the specification.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Final

from pydantic import BaseModel, ConfigDict, Field

from collector.adapters.base import DeviceMessage, GeoPoint, Reading, Reason, Rejected
from collector.adapters.parsing import from_epoch_seconds, parse_model, parse_rfc3339
from hearth.formats import HEARTH

FORMAT: Final = HEARTH.name
PREFIX: Final = "hearth/v1/"
MAX_ID_CHARS: Final = 128


class _Position(BaseModel):
    model_config = ConfigDict(strict=True, allow_inf_nan=False, extra="forbid")
    lat: float
    lon: float


class _Body(BaseModel):
    # strict: no "1.5" → 1.5 or true → 1 coercion; unknown top-level keys are ignored so a
    # newer device firmware can add fields without being dead-lettered.
    model_config = ConfigDict(strict=True, allow_inf_nan=False)
    # left_to_right unions: try the cheap member first and stop at the first that fits.
    # Numbers come out as float (JSON ints too), so every numeric reading has one type.
    ts: Annotated[str | float, Field(union_mode="left_to_right")]
    device_id: str | None = None
    readings: dict[str, Annotated[float | str | _Position, Field(union_mode="left_to_right")]]


def _split_topic(topic: str) -> tuple[str, str] | None:
    """(device_id, stream) of a canonical topic, or None when it is not one."""
    if not topic.startswith(PREFIX):
        return None
    parts = topic[len(PREFIX) :].split("/")
    if len(parts) != 2:
        return None
    device_id, stream = parts
    if not device_id or not stream or len(device_id) > MAX_ID_CHARS:
        return None
    return device_id, stream


class HearthAdapter:
    format: Final = FORMAT
    topic_filters: Final = HEARTH.topic_filters

    def matches(self, topic: str) -> bool:
        return _split_topic(topic) is not None

    def adapt(self, topic: str, payload: bytes) -> list[DeviceMessage]:
        split = _split_topic(topic)
        if split is None:
            raise Rejected(Reason.UNKNOWN_TOPIC, "not hearth/v1/<device_id>/<stream>")
        device_id, stream = split
        body = parse_model(_Body, payload)
        if body.device_id is not None and body.device_id != device_id:
            raise Rejected(Reason.SPOOFED, "payload device_id differs from the topic's")
        ts = body.ts
        event_time: datetime = (
            parse_rfc3339(ts, require_offset=True)
            if isinstance(ts, str)
            else from_epoch_seconds(ts)
        )
        readings = tuple(
            [
                Reading(name, GeoPoint(value.lat, value.lon))
                if isinstance(value, _Position)
                else Reading(name, value)
                for name, value in body.readings.items()
            ]
        )
        return [
            DeviceMessage(
                format=FORMAT,
                external_id=device_id,
                event_time=event_time,
                readings=readings,
                claimed_id=body.device_id,
                extras={"stream": stream},
            )
        ]


ADAPTER: Final = HearthAdapter()
