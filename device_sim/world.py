"""Where and when households live: city centres, time zones and fast time formatting.

Households live around a few real city centres in several IANA zones, including zones with
daylight-saving time (Berlin, London, New York, Chicago, Sydney), so hour-of-day features must
be computed in local time across DST changes. Time formatting is vectorised with numpy because
the simulator formats millions of timestamps.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from zoneinfo import ZoneInfo

import numpy as np
import numpy.typing as npt

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True, slots=True)
class City:
    name: str
    tz: str
    lat: float
    lon: float
    weight: float  # share of households
    ssid_style: str  # how home Wi-Fi networks tend to be named there


CITIES: tuple[City, ...] = (
    City("Shanghai", "Asia/Shanghai", 31.2304, 121.4737, 0.22, "cn"),
    City("Beijing", "Asia/Shanghai", 39.9042, 116.4074, 0.16, "cn"),
    City("Shenzhen", "Asia/Shanghai", 22.5431, 114.0579, 0.12, "cn"),
    City("Singapore", "Asia/Singapore", 1.3521, 103.8198, 0.06, "en"),
    City("Berlin", "Europe/Berlin", 52.5200, 13.4050, 0.10, "de"),
    City("Munich", "Europe/Berlin", 48.1351, 11.5820, 0.05, "de"),
    City("London", "Europe/London", 51.5074, -0.1278, 0.08, "en"),
    City("New York", "America/New_York", 40.7128, -74.0060, 0.10, "en"),
    City("Chicago", "America/Chicago", 41.8781, -87.6298, 0.06, "en"),
    City("Sydney", "Australia/Sydney", -33.8688, 151.2093, 0.05, "en"),
)

KM_PER_DEG_LAT = 111.32


def offset_point(lat: float, lon: float, km_north: float, km_east: float) -> tuple[float, float]:
    """A point ``km_north``/``km_east`` away (flat-earth approximation, fine at city scale)."""
    dlat = km_north / KM_PER_DEG_LAT
    dlon = km_east / (KM_PER_DEG_LAT * max(0.2, math.cos(math.radians(lat))))
    return lat + dlat, lon + dlon


@lru_cache(maxsize=64)
def _hourly_offsets(tz: str, start_hour: int, hours: int) -> IntArray:
    """UTC offset in seconds of ``tz`` for each UTC hour in [start_hour, start_hour + hours)."""
    zone = ZoneInfo(tz)
    out = np.empty(hours, dtype=np.int64)
    for i in range(hours):
        moment = datetime.fromtimestamp((start_hour + i) * 3600, tz=UTC).astimezone(zone)
        delta = moment.utcoffset()
        out[i] = int(delta.total_seconds()) if delta is not None else 0
    return out


class LocalClock:
    """UTC ↔ local wall-clock conversions for one zone over the simulated period (vectorised)."""

    def __init__(self, tz: str, start_ts: int, end_ts: int) -> None:
        self.tz = tz
        # One hour of margin each side plus a day for events that spill past the ends.
        self.start_hour = start_ts // 3600 - 48
        hours = (end_ts // 3600 + 48) - self.start_hour
        self.offsets = _hourly_offsets(tz, self.start_hour, hours)
        self._offset_list: list[int] = self.offsets.tolist()

    def offset_of(self, utc_ts: int) -> int:
        """UTC offset (s) at one instant; the scalar twin of :meth:`offset_at`."""
        idx = utc_ts // 3600 - self.start_hour
        idx = 0 if idx < 0 else min(idx, len(self._offset_list) - 1)
        return self._offset_list[idx]

    def offset_at(self, utc_ts: IntArray) -> IntArray:
        idx = np.clip(utc_ts // 3600 - self.start_hour, 0, len(self.offsets) - 1)
        result: IntArray = self.offsets[idx]
        return result

    def to_local(self, utc_ts: IntArray) -> IntArray:
        local: IntArray = utc_ts + self.offset_at(utc_ts)
        return local

    def to_utc(self, local_ts: IntArray) -> IntArray:
        """Local wall-clock seconds → UTC; in a DST gap or overlap the earlier offset wins."""
        guess = local_ts - self.offset_at(local_ts)
        utc: IntArray = local_ts - self.offset_at(guess)
        return utc

    def local_midnight_utc(self, local_day_start: int) -> int:
        return int(self.to_utc(np.array([local_day_start], dtype=np.int64))[0])


def rfc3339_utc(ts: IntArray) -> list[str]:
    """``2026-03-01T08:15:00Z`` for each epoch second."""
    text = np.datetime_as_string(ts.astype("datetime64[s]"), unit="s")
    return [t + "Z" for t in text.tolist()]


def iso_ms_utc(ts_ms: IntArray) -> list[str]:
    """``2026-03-01T08:15:00.123Z`` (JavaScript ``toISOString``, Zigbee2MQTT ``ISO_8601``)."""
    text = np.datetime_as_string(ts_ms.astype("datetime64[ms]"), unit="ms")
    return [t + "Z" for t in text.tolist()]


def naive_local(local_ts: IntArray) -> list[str]:
    """``2026-03-01T09:15:00`` without zone (Tasmota ``Time``)."""
    text: list[str] = np.datetime_as_string(local_ts.astype("datetime64[s]"), unit="s").tolist()
    return text


def format_rfc3339(ts: int) -> str:
    return datetime.fromtimestamp(ts, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
