"""Validate adapter output against the signal catalogue and resolve event times.

Adapters check the *shape* of their format; this module checks what every format must agree on:
signal names, value types and ranges (from :mod:`hearth.signals`), and a plausible event time.
Both run on the per-message hot path, so the catalogue is turned into lookup tables once.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Final
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from collector.adapters.base import (
    DeviceMessage,
    GeoPoint,
    Reason,
    Rejected,
    has_unstorable_text,
)
from hearth.signals import SIGNALS

MAX_RAW_ID_CHARS: Final = 256
EARLIEST_EVENT_TIME: Final = datetime(2000, 1, 1, tzinfo=UTC)

# What an adapter may emit, by signal name:
#   _NUMERIC: (low, high) bounds; _CATEGORICAL: allowed values; "position": a GeoPoint;
#   _RAW_IDS: network/SIM identifiers (strings) that minimise() hashes.
# Signals that only minimisation produces (geohash, *_hash) are NOT accepted as input: a device
# sending "wifi_ssid_hash" could otherwise store a raw SSID under a hashed name, and a
# "geohash" of precision 12 would be a raw coordinate in disguise.
_DERIVED: Final = frozenset(s.stored_as for s in SIGNALS.values() if s.stored_as)
_NUMERIC: Final[dict[str, tuple[float, float]]] = {
    s.name: (
        s.low if s.low is not None else -math.inf,
        s.high if s.high is not None else math.inf,
    )
    for s in SIGNALS.values()
    if s.kind == "numeric"
}
# Categorical input is closed-vocabulary: each signal's allow-list from the catalogue.
_CATEGORICAL: Final[dict[str, frozenset[str]]] = {
    s.name: frozenset(s.allowed or ())
    for s in SIGNALS.values()
    if s.kind == "categorical" and s.name not in _DERIVED
}
_POSITION: Final = "position"
_RAW_IDS: Final = frozenset(
    s.name for s in SIGNALS.values() if s.kind == "raw" and s.name != _POSITION
)


def check_readings(msg: DeviceMessage) -> None:
    """Raise ``Rejected(SCHEMA)`` unless every reading is a known signal with a valid value."""
    if not msg.readings:
        raise Rejected(Reason.SCHEMA, "no readings")
    for reading in msg.readings:
        name = reading.signal
        value = reading.value
        # Refused here, not left to the database: one NUL would fail the whole batch's COPY.
        if type(value) is str and has_unstorable_text(value):
            raise Rejected(Reason.SCHEMA, f"{name}: NUL or lone surrogate in text")
        bounds = _NUMERIC.get(name)
        if bounds is not None:
            # bool is an int subclass: True must not pass as 1.
            if type(value) is not float and type(value) is not int:
                raise Rejected(Reason.SCHEMA, f"{name}: expected a number")
            if not bounds[0] <= value <= bounds[1]:  # NaN fails every comparison
                raise Rejected(
                    Reason.SCHEMA, f"{name}: {value!r} outside [{bounds[0]}, {bounds[1]}]"
                )
        elif name in _CATEGORICAL:
            allowed = _CATEGORICAL[name]
            if type(value) is not str or value not in allowed:
                # The value itself stays out of the detail: free text may identify someone.
                raise Rejected(
                    Reason.SCHEMA, f"{name}: expected one of {', '.join(sorted(allowed))}"
                )
        elif name == _POSITION:
            if type(value) is not GeoPoint:
                raise Rejected(Reason.SCHEMA, f"{name}: expected lat/lon")
            lat, lon = value.lat, value.lon
            if not (
                type(lat) in (float, int)
                and type(lon) in (float, int)
                and -90.0 <= lat <= 90.0
                and -180.0 <= lon <= 180.0
            ):
                raise Rejected(Reason.SCHEMA, f"{name}: lat/lon out of range")
        elif name in _RAW_IDS:
            if type(value) is not str or not 0 < len(value) <= MAX_RAW_ID_CHARS:
                raise Rejected(
                    Reason.SCHEMA, f"{name}: expected a string of 1..{MAX_RAW_ID_CHARS} chars"
                )
        elif name in _DERIVED:
            raise Rejected(Reason.SCHEMA, f"{name}: derived signal; send the raw signal instead")
        else:
            raise Rejected(Reason.SCHEMA, f"unknown signal {name[:64]!r}")


@lru_cache(maxsize=1024)
def _zone(tz: str) -> ZoneInfo:
    return ZoneInfo(tz)


def resolve_event_time(
    event_time: datetime | None,
    *,
    received_at: datetime,
    tz: str,
    max_skew_s: int,
    max_age_days: int,
) -> tuple[datetime, bool]:
    """The event time to store, as aware UTC, and whether it is the receive time.

    - ``None`` (the format has no device timestamp) → ``(received_at, True)``.
    - Naive (device wall-clock time, e.g. Tasmota ``Time``) → read in the device's zone ``tz``.
      DST: an ambiguous time (the repeated hour in autumn) takes the first occurrence
      (``fold=0``, the summer offset); a non-existent time (the skipped hour in spring) is read
      with the offset before the change, which shifts it forward by the gap (02:30 → 03:30).
      That is ``zoneinfo``'s PEP 495 behaviour with ``fold=0``.
    - Before 2000-01-01 or more than ``max_skew_s`` after ``received_at`` →
      ``Rejected(BAD_TIMESTAMP)``; otherwise more than
      ``max_age_days`` before it → ``Rejected(TOO_OLD)``: raw rows that old may already have
      been dropped by retention, and a late reading must not rebuild history from less data.
      ``received_at`` must be aware (UTC).
    """
    if event_time is None:
        return received_at, True
    if event_time.tzinfo is None:
        try:
            zone = _zone(tz)
        except (ZoneInfoNotFoundError, ValueError):
            raise Rejected(Reason.BAD_TIMESTAMP, f"device time zone {tz!r} unknown") from None
        event_time = event_time.replace(tzinfo=zone, fold=0)
    try:
        event_utc = event_time.astimezone(UTC)
    except (OverflowError, ValueError):  # year 1 minus an offset, and the like
        raise Rejected(Reason.BAD_TIMESTAMP, "event time out of range") from None
    if event_utc < EARLIEST_EVENT_TIME:  # a clock never set (epoch 0), not late data
        raise Rejected(Reason.BAD_TIMESTAMP, f"{event_utc.isoformat()} is before 2000-01-01")
    delta = event_utc - received_at
    if delta > timedelta(seconds=max_skew_s):
        raise Rejected(Reason.BAD_TIMESTAMP, f"{event_utc.isoformat()} is {delta} in the future")
    if -delta > timedelta(days=max_age_days):
        raise Rejected(Reason.TOO_OLD, f"{event_utc.isoformat()} is older than {max_age_days} days")
    return event_utc, False
