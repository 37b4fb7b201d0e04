"""OwnTracks (https://owntracks.org/booklet/tech/json/): phones publishing JSON over MQTT.

Topics ``owntracks/<user>/<device>`` (``_type`` location, lwt) and
``owntracks/<user>/<device>/<sub>`` (``event`` → transition, ``cmd``, ``status``, ``step``,
``waypoint(s)``, ``info``, ``dump``, ``beacon``). The registry knows the phone as
``<user>/<device>``. See README.md beside this file.
"""

from __future__ import annotations

from typing import Annotated, Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, TypeAdapter

from collector.adapters.base import DeviceMessage, GeoPoint, Reading, Reason, Rejected
from collector.adapters.parsing import from_epoch_seconds, parse_with
from hearth.formats import OWNTRACKS

FORMAT: Final = OWNTRACKS.name
PREFIX: Final = "owntracks/"

# bs: battery status. 0 unknown (→ no reading), 1 unplugged, 2 charging, 3 full.
_CHARGING: Final = {1: 0.0, 2: 1.0, 3: 1.0}
# conn: w Wi-Fi, m mobile data, o offline.
_NET_TYPE: Final = {"w": "wifi", "m": "mobile", "o": "offline"}
_REGION_EVENT: Final = {"enter": 1.0, "leave": 0.0}
# Documented types that carry nothing Hearth stores: understood, acknowledged, not stored.
_NOTHING_TO_STORE: Final = frozenset(
    {
        "lwt",
        "cmd",
        "card",
        "waypoint",
        "waypoints",
        "status",
        "steps",
        "beacon",
        "request",
        "configuration",
        "dump",
    }
)


class _Location(BaseModel):
    # strict: the apps send JSON numbers; a "55" string is a broken client, not data.
    model_config = ConfigDict(strict=True, allow_inf_nan=False)
    lat: float
    lon: float
    tst: float  # epoch seconds of the fix (required by the spec)
    batt: float | None = None  # battery level, % (an integer in practice)
    bs: Literal[0, 1, 2, 3] | None = None
    conn: str | None = None
    SSID: str | None = None
    BSSID: str | None = None


class _Transition(BaseModel):
    model_config = ConfigDict(strict=True, allow_inf_nan=False)
    tst: float  # time of the transition
    event: Literal["enter", "leave"]


class _Other(BaseModel):
    type_: str = Field(alias="_type")


def _tag(value: Any) -> str | None:
    if isinstance(value, dict):
        kind = value.get("_type")
        if kind in ("location", "transition"):
            return str(kind)
        if isinstance(kind, str):
            return "other"
    return None  # no _type: "union_tag_not_found" → SCHEMA


_MESSAGE: Final = TypeAdapter(
    Annotated[
        Annotated[_Location, Tag("location")]
        | Annotated[_Transition, Tag("transition")]
        | Annotated[_Other, Tag("other")],
        Discriminator(_tag),
    ]
)


def _external_id(topic: str) -> str | None:
    """``<user>/<device>`` for owntracks/<user>/<device>[/<sub>], else None."""
    if not topic.startswith(PREFIX):
        return None
    parts = topic[len(PREFIX) :].split("/")
    if not 2 <= len(parts) <= 3 or not all(parts):
        return None
    return f"{parts[0]}/{parts[1]}"


class OwnTracksAdapter:
    format: Final = FORMAT
    topic_filters: Final = OWNTRACKS.topic_filters

    def matches(self, topic: str) -> bool:
        return _external_id(topic) is not None

    def adapt(self, topic: str, payload: bytes) -> list[DeviceMessage]:
        external_id = _external_id(topic)
        if external_id is None:
            raise Rejected(Reason.UNKNOWN_TOPIC, "not owntracks/<user>/<device>[/<sub>]")
        msg = parse_with(_MESSAGE, payload)
        if isinstance(msg, _Location):
            return [self._location(external_id, msg)]
        if isinstance(msg, _Transition):
            return [
                DeviceMessage(
                    format=FORMAT,
                    external_id=external_id,
                    event_time=from_epoch_seconds(msg.tst),
                    readings=(Reading("region_event", _REGION_EVENT[msg.event]),),
                )
            ]
        if msg.type_ in _NOTHING_TO_STORE:
            return []
        if msg.type_ == "encrypted":
            raise Rejected(Reason.UNSUPPORTED, "encrypted payload (app 'encryption key' is set)")
        raise Rejected(Reason.UNSUPPORTED, f"_type {msg.type_[:40]!r}")

    @staticmethod
    def _location(external_id: str, loc: _Location) -> DeviceMessage:
        readings = [Reading("position", GeoPoint(loc.lat, loc.lon))]
        if loc.batt is not None:
            readings.append(Reading("battery_pct", loc.batt))
        if loc.bs is not None and loc.bs in _CHARGING:
            readings.append(Reading("charging", _CHARGING[loc.bs]))
        if loc.conn is not None:
            net_type = _NET_TYPE.get(loc.conn)
            if net_type is not None:  # an unknown letter from a newer app: skip, keep the fix
                readings.append(Reading("net_type", net_type))
        if loc.SSID:
            readings.append(Reading("wifi_ssid", loc.SSID))
        if loc.BSSID:
            readings.append(Reading("wifi_bssid", loc.BSSID))
        return DeviceMessage(
            format=FORMAT,
            external_id=external_id,
            event_time=from_epoch_seconds(loc.tst),
            readings=tuple(readings),
        )


ADAPTER: Final = OwnTracksAdapter()
