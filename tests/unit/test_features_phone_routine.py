"""The phone's own routine (wake-up, bedtime, weekend shift, weekday commute) from hand-built
hourly bins, with closed-form expected values (features/catalogue/library/routine.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from features.catalogue.library.base import Window
from features.catalogue.library.routine import (
    bedtime_circvar,
    wake_time_circvar,
    weekday_departure_circvar,
    weekday_return_circvar,
    weekend_wake_shift_h,
)
from tests.support.hourly_bins import DAY, HOUR, Fleet, T

DAYS = 30
FIRST = T - DAYS * DAY  # midnight of the window's first day


def circvar(hours: list[float]) -> float:
    """1 - |mean e^{iθ}|, θ = 2π·t/24 h: the expected value, from the planted times."""
    return float(1.0 - abs(np.mean(np.exp(2j * np.pi * np.asarray(hours) / 24.0))))


def _weekday(day: int) -> int:
    return int((FIRST // DAY + day) % 7)  # grid day 0 is a Monday


def _value(fn, fleet: Fleet, days: int = DAYS) -> tuple[float, float]:  # type: ignore[no-untyped-def]
    value, coverage = fn(Window(fleet.chunk(), days))
    return float(value[0]), float(coverage[0])


def test_wake_time_ignores_a_night_screen_and_varies_with_the_first_screen_on() -> None:
    fleet = Fleet()
    phone = fleet.device("phone")
    wakes = []
    for day in range(DAYS):
        midnight = FIRST + day * DAY
        wake = 6.0 if day % 2 else 8.0
        wakes.append(wake)
        fleet.at(phone, midnight + 2.5 * HOUR, "screen_on", 1)  # up at night: not the wake-up
        fleet.at(phone, midnight + 2.7 * HOUR, "screen_on", 0)
        fleet.at(phone, midnight + wake * HOUR, "screen_on", 1)
        fleet.at(phone, midnight + 12 * HOUR, "screen_on", 1)
    value, coverage = _value(wake_time_circvar, fleet)
    assert value == pytest.approx(circvar(wakes), abs=1e-9) and value > 0.03
    assert coverage == 1.0


def test_bedtime_after_midnight_belongs_to_the_evening_before() -> None:
    fleet = Fleet()
    phone = fleet.device("phone")
    bedtimes = []
    for day in range(DAYS):
        midnight = FIRST + day * DAY
        fleet.at(phone, midnight + 15 * HOUR, "screen_on", 0)  # a break in the afternoon
        fleet.at(phone, midnight + 15.5 * HOUR, "screen_on", 1)
        if day == DAYS - 1:
            break  # still up at T: this evening's bedtime is not known yet
        bedtime = 23.0 if day % 2 else 25.0  # 23:00, or 01:00 the next morning
        fleet.at(phone, midnight + bedtime * HOUR, "screen_on", 0)
        bedtimes.append(bedtime)
    value, _ = _value(bedtime_circvar, fleet)
    # Days from midnight would take 01:00 as one day's last screen-off and 23:00 as the next's;
    # counting the evening not over at T would add its 15:00 break as a bedtime.
    assert value == pytest.approx(circvar(bedtimes), abs=1e-9) and value > 0.03


def test_weekend_wake_shift_is_the_distance_between_the_two_mean_wake_ups() -> None:
    fleet = Fleet()
    phone = fleet.device("phone")
    for day in range(DAYS):
        wake = 9.5 if _weekday(day) >= 5 else 7.0
        fleet.at(phone, FIRST + day * DAY + wake * HOUR, "screen_on", 1)
    value, _ = _value(weekend_wake_shift_h, fleet)
    assert value == pytest.approx(2.5, abs=1e-9)


def test_commute_times_count_weekdays_only() -> None:
    fleet = Fleet()
    phone = fleet.device("phone")
    returns: list[float] = []
    for day in range(DAYS):
        midnight = FIRST + day * DAY
        if _weekday(day) >= 5:  # weekend outings at other times: not the commute
            fleet.at(phone, midnight + 14 * HOUR, "region_event", 0)
            fleet.at(phone, midnight + 16 * HOUR, "region_event", 1)
            continue
        fleet.at(phone, midnight + 8 * HOUR, "region_event", 0)
        fleet.at(phone, midnight + 12 * HOUR, "region_event", 1)  # home for lunch
        fleet.at(phone, midnight + 13 * HOUR, "region_event", 0)
        home = 17.0 if len(returns) % 2 else 19.0
        fleet.at(phone, midnight + home * HOUR, "region_event", 1)
        returns.append(home)
    departure, coverage = _value(weekday_departure_circvar, fleet)
    back, _ = _value(weekday_return_circvar, fleet)
    assert departure == pytest.approx(0.0, abs=1e-9)
    assert back == pytest.approx(circvar(returns), abs=1e-9) and back > 0.03
    assert coverage == 1.0


def test_one_day_is_not_a_routine() -> None:
    fleet = Fleet()
    phone = fleet.device("phone")
    fleet.at(phone, T - 2 * DAY + 7 * HOUR, "screen_on", 1)
    fleet.at(phone, T - 2 * DAY + 23 * HOUR, "screen_on", 0)
    for fn in (wake_time_circvar, bedtime_circvar, weekend_wake_shift_h):
        value, coverage = _value(fn, fleet)
        assert math.isnan(value) and coverage == pytest.approx(1 / DAYS), fn.__name__
    value, coverage = _value(weekday_departure_circvar, fleet)
    assert math.isnan(value) and coverage == 0.0


def test_the_ninety_day_window_sees_the_same_routine() -> None:
    fleet = Fleet()
    phone = fleet.device("phone")
    for day in range(DAYS):
        fleet.at(phone, FIRST + day * DAY + 7.25 * HOUR, "screen_on", 1)
    short, _ = _value(wake_time_circvar, fleet)
    long, coverage = _value(wake_time_circvar, fleet, 90)
    assert short == pytest.approx(0.0, abs=1e-9) and long == pytest.approx(0.0, abs=1e-9)
    assert coverage == pytest.approx(DAYS / 90)
    assert np.isfinite(long)
