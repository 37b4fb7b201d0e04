"""The hourly grid a chunk is read into, and each user's local clock on it."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import numpy as np

from features.catalogue.library.base import LocalGrid

GRID_DAYS = 90  # the longest window; shorter windows are the tail of this grid


def grid_bounds(as_of: datetime) -> tuple[datetime, datetime, int]:
    """(start, end, hours) of the 90-day hourly grid ending at the hour that contains T."""
    if as_of.tzinfo is None:
        raise ValueError("as_of must be timezone-aware")
    as_of = as_of.astimezone(UTC)
    end = as_of.replace(minute=0, second=0, microsecond=0)
    if end < as_of:
        end += timedelta(hours=1)
    hours = GRID_DAYS * 24
    return end - timedelta(hours=hours), end, hours


def _zone(tz: str) -> ZoneInfo:
    try:
        return ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError):
        return ZoneInfo("UTC")


@lru_cache(maxsize=256)
def _local_clock(tz: str, start: datetime, hours: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Local time of day (hours), local day index and weekday of each grid hour, across DST."""
    zone = _zone(tz)
    tod = np.empty(hours)
    day = np.empty(hours, dtype=np.int64)
    wd = np.empty(hours, dtype=np.int64)
    base = start.astimezone(zone).date().toordinal()
    for h in range(hours):
        local = (start + timedelta(hours=h)).astimezone(zone)
        tod[h] = local.hour + local.minute / 60.0
        d = local.toordinal()
        day[h] = d - base
        wd[h] = local.weekday()
    return tod, day, wd


def local_grid(tzs: Sequence[str], start: datetime, hours: int) -> LocalGrid:
    parts = [_local_clock(tz, start, hours) for tz in tzs]
    if not parts:
        empty = np.zeros((0, hours))
        return LocalGrid(empty, empty.astype(np.int64), empty.astype(np.int64))
    return LocalGrid(
        tod=np.stack([p[0] for p in parts]),
        day=np.stack([p[1] for p in parts]),
        weekday=np.stack([p[2] for p in parts]),
    )
