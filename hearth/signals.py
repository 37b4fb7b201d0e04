"""The catalogue of stored signals: name, consent category, storage kind, unit and valid range.

One concept, one place: adapters emit these names, the collector validates against the ranges
and routes each reading to its table by ``kind``, consent is checked by ``category``, purges
delete by category, and features read by name.

Signals marked ``raw`` never reach disk: the collector's minimise step turns them into the
``stored_as`` signal (docs/invariants.md#7) — coordinates into a geohash, network identifiers
into keyed hashes.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Literal


class Category(StrEnum):
    """Consent scopes (docs/invariants.md, data categories). Location needs its own toggle
    (PIPL Art. 28). ``relationships`` holds no signal of its own: it gates links between users
    derived from the networks and homes they share (docs/invariants.md#9), its own toggle
    because one person's data then shapes another person's features."""

    LOCATION = "location"
    CONNECTIVITY = "connectivity"
    DEVICE_HEALTH = "device_health"
    ENERGY = "energy"
    PRESENCE = "presence"
    CLIMATE = "climate"
    USAGE = "usage"
    RELATIONSHIPS = "relationships"


PURPOSE_CREDIT_SCORING = "credit_scoring"

# The categories a relationship link can be derived from (a shared Wi-Fi access point, a shared
# geohash): a link needs one of them and ``relationships`` on both ends (docs/invariants.md#9).
LINK_CATEGORIES = (Category.CONNECTIVITY, Category.LOCATION)
# The signals links are derived from, one per link category: the rollup job keeps their
# sightings by value (network_sightings, features.rollups) for the household graph.
LINK_SIGNALS = ("wifi_bssid_hash", "geohash")

Kind = Literal["numeric", "categorical", "raw"]


@dataclass(frozen=True, slots=True)
class Signal:
    name: str
    category: Category
    kind: Kind
    unit: str
    description: str
    low: float | None = None  # inclusive valid range for numeric signals
    high: float | None = None
    stored_as: str | None = None  # for raw signals: the minimised signal written instead
    # For categorical signals a device sends: the only values accepted (stored as sent). Free
    # text could carry a name, an SSID or a phone number past minimisation (docs/invariants.md#7).
    allowed: tuple[str, ...] | None = None


_C = Category
SIGNALS: dict[str, Signal] = {
    s.name: s
    for s in (
        # location
        Signal(
            "position",
            _C.LOCATION,
            "raw",
            "deg",
            "raw latitude/longitude; never stored",
            stored_as="geohash",
        ),
        Signal(
            "geohash",
            _C.LOCATION,
            "categorical",
            "geohash7",
            "location fix as a geohash of precision 7 (~150 m) or coarser",
        ),
        Signal(
            "region_event",
            _C.LOCATION,
            "numeric",
            "flag",
            "geofence transition: 1 enter, 0 leave",
            0,
            1,
        ),
        # connectivity
        Signal(
            "net_type",
            _C.CONNECTIVITY,
            "categorical",
            "enum",
            "network in use (one of the allowed values)",
            allowed=("wifi", "mobile", "offline", "ethernet"),
        ),
        Signal(
            "wifi_ssid",
            _C.CONNECTIVITY,
            "raw",
            "text",
            "raw SSID; never stored",
            stored_as="wifi_ssid_hash",
        ),
        Signal(
            "wifi_bssid",
            _C.CONNECTIVITY,
            "raw",
            "text",
            "raw BSSID; never stored",
            stored_as="wifi_bssid_hash",
        ),
        Signal(
            "wifi_ssid_hash", _C.CONNECTIVITY, "categorical", "hmac", "keyed hash of the Wi-Fi SSID"
        ),
        Signal(
            "wifi_bssid_hash",
            _C.CONNECTIVITY,
            "categorical",
            "hmac",
            "keyed hash of the Wi-Fi BSSID",
        ),
        Signal("rssi_dbm", _C.CONNECTIVITY, "numeric", "dBm", "Wi-Fi signal strength", -130, 10),
        Signal("link_quality", _C.CONNECTIVITY, "numeric", "lqi", "Zigbee link quality", 0, 255),
        Signal(
            "online",
            _C.CONNECTIVITY,
            "numeric",
            "flag",
            "device/router reachable: 1 online, 0 offline",
            0,
            1,
        ),
        # device health
        Signal("battery_pct", _C.DEVICE_HEALTH, "numeric", "%", "battery level", 0, 100),
        Signal(
            "charging",
            _C.DEVICE_HEALTH,
            "numeric",
            "flag",
            "1 plugged in (charging or full), 0 unplugged",
            0,
            1,
        ),
        Signal(
            "uptime_s", _C.DEVICE_HEALTH, "numeric", "s", "time since boot", 0, 10 * 365 * 86400
        ),
        Signal(
            "sim_id",
            _C.DEVICE_HEALTH,
            "raw",
            "text",
            "raw SIM identifier; never stored",
            stored_as="sim_id_hash",
        ),
        Signal(
            "sim_id_hash",
            _C.DEVICE_HEALTH,
            "categorical",
            "hmac",
            "keyed hash of the SIM identifier",
        ),
        # energy
        Signal("power_w", _C.ENERGY, "numeric", "W", "instantaneous active power", 0, 100_000),
        Signal(
            "energy_total_kwh",
            _C.ENERGY,
            "numeric",
            "kWh",
            "cumulative energy counter",
            0,
            10_000_000,
        ),
        Signal(
            "energy_today_kwh",
            _C.ENERGY,
            "numeric",
            "kWh",
            "energy since local midnight",
            0,
            10_000,
        ),
        # presence
        Signal(
            "contact_open", _C.PRESENCE, "numeric", "flag", "door/window: 1 open, 0 closed", 0, 1
        ),
        Signal("occupancy", _C.PRESENCE, "numeric", "flag", "motion/occupancy detected", 0, 1),
        # climate
        Signal("temperature_c", _C.CLIMATE, "numeric", "°C", "air temperature", -60, 90),
        Signal("humidity_pct", _C.CLIMATE, "numeric", "%", "relative humidity", 0, 100),
        Signal("setpoint_c", _C.CLIMATE, "numeric", "°C", "thermostat setpoint", 0, 40),
        # usage
        Signal("screen_on", _C.USAGE, "numeric", "flag", "phone screen: 1 on, 0 off", 0, 1),
    )
}


def signal(name: str) -> Signal:
    try:
        return SIGNALS[name]
    except KeyError:
        raise KeyError(f"unknown signal {name!r}") from None


def stored_signals(category: Category) -> list[str]:
    """Names of the signals written to disk for a category (what a purge deletes); none for
    ``relationships``, which only gates links derived from other categories."""
    return [s.name for s in SIGNALS.values() if s.category is category and s.kind != "raw"]


# Device kinds the registry accepts (`devices add --kind`). Features read some of them: router
# and plug count as always-on infrastructure (features/library/infrastructure.py).
DEVICE_KINDS = (
    "phone",
    "phone_app",
    "router",
    "plug",
    "door",
    "contact",
    "motion",
    "climate",
    "thermostat",
    "sensor",
)
