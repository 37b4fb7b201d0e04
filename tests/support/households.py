"""Hand-built households for the relationship features: nights at home and days at an office as
network readings (a Wi-Fi access point and a geohash), on the hour, in UTC.

Days count from ``DAY0`` = T - 90 days, the first day of the engine's 90-day grid ending at T;
the 30-day window's nights are the evenings of days 59 .. 89.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import psycopg

from hearth.signals import Category
from tests.support.builders import CategoricalRow, add_device, add_user

T = datetime(2026, 5, 6, tzinfo=UTC)
DAY0 = T - timedelta(days=90)
HISTORY = range(-10, 90)  # days of readings, relative to DAY0
ING = timedelta(minutes=1)
NETWORK = (Category.CONNECTIVITY, Category.LOCATION)
OTHERS = tuple(c for c in Category if c not in (*NETWORK, Category.RELATIONSHIPS))


def at(day: int, hour: int) -> datetime:
    return DAY0 + timedelta(days=day, hours=hour)


def home(device: str, user: str, day: int, bssid: str, cell: str) -> list[CategoricalRow]:
    """A night at home: the phone's Wi-Fi access point and geohash at 23:00."""
    t = at(day, 23)
    return [
        (t, device, user, "wifi_bssid_hash", bssid, t + ING),
        (t, device, user, "geohash", cell, t + ING),
    ]


def office(device: str, user: str, day: int, bssid: str) -> list[CategoricalRow]:
    t = at(day, 10)
    return [(t, device, user, "wifi_bssid_hash", bssid, t + ING)]


def weekday(day: int) -> bool:
    return at(day, 0).weekday() < 5


def people(
    conn: psycopg.Connection[tuple[object, ...]],
    users: Sequence[str],
    categories: Sequence[Category] = tuple(Category),
) -> None:
    """Users in UTC with a phone each, consented to ``categories`` well before the history."""
    for user in users:
        add_user(conn, user, categories=categories, granted_at=at(-20, 0))
        add_device(conn, f"{user}-phone", user, "phone")


def together(users: Sequence[str], bssid: str, cell: str) -> list[CategoricalRow]:
    """``users`` at home together every night of the history."""
    return [r for day in HISTORY for u in users for r in home(f"{u}-phone", u, day, bssid, cell)]
