"""Uptime and outages of always-on devices (routers, plugs) from hand-built hourly bins.

Readings are aggregated into bins exactly as the rollups do (n, min, max, first, last and the
offsets of the first and last reading), so these are the engine's inputs without a database.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from features.catalogue.library.base import Chunk, Window
from features.catalogue.library.infrastructure import (
    always_on_outages_per_30d,
    always_on_uptime_ratio,
)
from tests.support.hourly_bins import DAY, HOUR, Fleet, T


def features(chunk: Chunk, days: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(uptime, outages per 30 days, coverage) per user for one window."""
    w = Window(chunk, days)
    up, cov = always_on_uptime_ratio(w)
    out, cov2 = always_on_outages_per_30d(w)
    np.testing.assert_array_equal(cov, cov2)
    return up, out, cov


START_30D = T - 30 * DAY
SILENCE = (T - 10 * DAY + 9 * HOUR, T - 10 * DAY + 15 * HOUR)  # 6 h, on the hour


@pytest.mark.parametrize("days", [30, 90])
def test_five_minute_plug_with_one_six_hour_silence(days: int) -> None:
    fleet = Fleet()
    plug = fleet.device("plug")
    fleet.every(plug, 300, START_30D, skip=SILENCE)
    up, out, cov = features(fleet.chunk(), days)
    assert up[0] == pytest.approx(1 - 6 / 720, abs=1e-12)
    assert out[0] == pytest.approx(1.0, abs=1e-12)  # one outage in 30 observed days
    assert cov[0] == pytest.approx(30 / days, abs=1e-12)


def test_offline_report_and_silence_are_one_outage() -> None:
    fleet = Fleet()
    router = fleet.device("router")
    fleet.every(router, 300, START_30D, signal="online", skip=SILENCE)
    fleet.at(router, SILENCE[0] + 40, "online", 0.0)  # LWT Offline, then silence
    up, out, _ = features(fleet.chunk(), 30)
    assert up[0] == pytest.approx(1 - 6 / 720, abs=1e-12)
    assert out[0] == pytest.approx(1.0, abs=1e-12)


def test_short_explicit_outage_is_counted_without_a_silence() -> None:
    # A reboot: Offline at 09:20, Online at 09:25, readings go on. Too short for a silence,
    # but the offline report says it was down; the hour with it is not up.
    fleet = Fleet()
    router = fleet.device("router")
    fleet.every(router, 300, START_30D, signal="online")
    fleet.at(router, SILENCE[0] + 20 * 60 + 1, "online", 0.0)
    up, out, _ = features(fleet.chunk(), 30)
    assert up[0] == pytest.approx(1 - 1 / 720, abs=1e-12)
    assert out[0] == pytest.approx(1.0, abs=1e-12)


def test_offline_report_keeps_the_device_down_until_it_reports_again() -> None:
    # A heartbeat every 5 h (silence threshold 7.5 h); Offline 1 h after heartbeat 50, the
    # next heartbeat on time 4 h later: no silence, but down from the report until then.
    fleet = Fleet()
    router = fleet.device("router")
    start = START_30D + 600
    fleet.every(router, 5 * HOUR, start, signal="online")
    fleet.at(router, start + 50 * 5 * HOUR + HOUR, "online", 0.0)
    up, out, _ = features(fleet.chunk(), 30)
    assert up[0] == pytest.approx(1 - 4 / 720, abs=1e-12)
    assert out[0] == pytest.approx(1.0, abs=1e-12)


def test_one_power_cut_silencing_router_and_plug_is_one_household_outage() -> None:
    fleet = Fleet()
    router, plug = fleet.device("router"), fleet.device("plug")
    fleet.every(router, 300, START_30D, signal="rssi_dbm", value=-60, skip=SILENCE)
    fleet.every(plug, 60, START_30D, skip=(SILENCE[0] - HOUR, SILENCE[1]))  # plug: 7 h
    up, out, _ = features(fleet.chunk(), 30)
    assert up[0] == pytest.approx(1 - (6 + 7) / (2 * 720), abs=1e-12)
    assert out[0] == pytest.approx(1.0, abs=1e-12)


def test_sparse_reporter_is_judged_by_its_own_interval() -> None:
    # A router heartbeat every 5 h: no outage between reports; one missed report is one.
    fleet = Fleet(n_users=2)
    steady = fleet.device("router", 0)
    missed = fleet.device("router", 1)
    start = START_30D + 600
    fleet.every(steady, 5 * HOUR, start, signal="uptime_s", value=1e5)
    skip = (start + 50 * 5 * HOUR - 60, start + 50 * 5 * HOUR + 60)
    fleet.every(missed, 5 * HOUR, start, signal="uptime_s", value=1e5, skip=skip)
    fleet.at(missed, skip[1] + HOUR, "online", 0.0)  # an offline report inside the silence
    up, out, _ = features(fleet.chunk(), 30)
    assert up[0] == 1.0 and out[0] == 0.0
    # Reports at 49·5 h and 51·5 h: the 9 empty hours between are down, one outage.
    assert up[1] == pytest.approx(1 - 9 / 720, abs=1e-12)
    assert out[1] == pytest.approx(1.0, abs=1e-12)


def test_hourly_report_at_the_maximum_interval_is_not_an_outage() -> None:
    # A Zigbee2MQTT plug at constant load reports by day every minute, by night only its
    # hourly maximum-interval report (± a few seconds).
    fleet = Fleet()
    plug = fleet.device("plug")
    rng = np.random.default_rng(1)
    for day in range(30):
        base = START_30D + day * DAY
        fleet.every(plug, 60, base + 8 * HOUR, base + 22 * HOUR)
        for k in range(10):
            fleet.at(plug, base + 22 * HOUR + (k + 1) * 3600 + float(rng.normal(0, 5)))
    up, out, _ = features(fleet.chunk(), 30)
    assert up[0] == 1.0 and out[0] == 0.0


def test_silence_up_to_t_is_an_outage_but_retirement_is_not() -> None:
    fleet = Fleet(n_users=2)
    gone = fleet.device("plug", 0)
    retired = fleet.device("plug", 1, retired_h=10.0)
    fleet.every(gone, 300, START_30D, T - 10 * HOUR)
    fleet.every(retired, 300, START_30D, T - 10 * HOUR)
    up, out, _ = features(fleet.chunk(), 30)
    assert up[0] == pytest.approx(1 - 10 / 720, abs=1e-12)
    assert out[0] == pytest.approx(1.0, abs=1e-12)
    assert up[1] == 1.0 and out[1] == 0.0  # observed only until retirement


def test_device_seen_before_the_grid_and_silent_at_its_start_is_down() -> None:
    fleet = Fleet()
    plug = fleet.device("plug", old=True)
    fleet.every(plug, 300, 10 * DAY)  # first in-grid reading 10 days after the grid start
    up, out, cov = features(fleet.chunk(), 90)
    assert up[0] == pytest.approx(1 - 240 / 2160, abs=1e-12)
    assert out[0] == pytest.approx(720 / 2160, abs=1e-12)
    assert cov[0] == 1.0
    up30, out30, _ = features(fleet.chunk(), 30)
    assert up30[0] == 1.0 and out30[0] == 0.0


def test_silence_across_the_30_day_window_start_counts_in_that_window() -> None:
    fleet = Fleet()
    plug = fleet.device("plug")
    fleet.every(plug, 300, T - 60 * DAY, skip=(START_30D - 3 * HOUR, START_30D + 4 * HOUR))
    up, out, _ = features(fleet.chunk(), 30)
    assert up[0] == pytest.approx(1 - 4 / 720, abs=1e-12)
    assert out[0] == pytest.approx(1.0, abs=1e-12)


def test_battery_sensors_and_never_seen_devices_give_null_with_zero_coverage() -> None:
    fleet = Fleet(n_users=3)
    door = fleet.device("door", 0)
    fleet.every(door, 6 * HOUR, START_30D, signal="contact_open")
    fleet.device("router", 1)  # registered, never reported
    plug = fleet.device("plug", 2)
    fleet.every(plug, 300, START_30D)
    up, out, cov = features(fleet.chunk(), 30)
    assert math.isnan(up[0]) and math.isnan(out[0]) and cov[0] == 0.0
    assert math.isnan(up[1]) and math.isnan(out[1]) and cov[1] == 0.0
    assert up[2] == 1.0 and out[2] == 0.0 and cov[2] == 1.0


def test_without_connectivity_consent_the_features_are_null() -> None:
    fleet = Fleet()
    plug = fleet.device("plug")
    fleet.every(plug, 300, START_30D)
    up, out, cov = features(fleet.chunk(consented=False), 30)
    assert math.isnan(up[0]) and math.isnan(out[0]) and cov[0] == 0.0
