"""Closed-form reference users: features whose exact value is known by construction (1e-9)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import psycopg
import pytest

from features.engine import FeatureVector, compute_vectors
from features.rollups import refresh_rollups
from features.testing import add_device, add_user, insert_categorical, insert_numeric

T = datetime(2026, 4, 15, tzinfo=UTC)  # 90-day window spans the 29 March 2026 DST change
START = T - timedelta(days=100)
BERLIN = ZoneInfo("Europe/Berlin")
ING = timedelta(minutes=1)
SILENCE = (T - timedelta(days=10, hours=-9), T - timedelta(days=10, hours=-15))


def _local_days(tz: ZoneInfo) -> list[datetime]:
    day = START.astimezone(tz).replace(hour=0, minute=0, second=0, microsecond=0)
    out = []
    while day < T:
        out.append(day)
        day = (day + timedelta(days=1, hours=3)).replace(hour=0)  # next local midnight
    return out


@pytest.fixture(scope="module")
def vectors(database_url: str) -> dict[str, FeatureVector]:
    with psycopg.connect(database_url, autocommit=True) as conn:
        granted = START - timedelta(days=1)
        # A phone in Berlin that starts charging at exactly 23:00 local every night.
        add_user(conn, "ref-charge", tz="Europe/Berlin", granted_at=granted)
        add_device(conn, "ref-charge-phone", "ref-charge", "phone")
        rows = []
        for day in _local_days(BERLIN):
            on = day.replace(hour=23).astimezone(UTC)
            off = day.replace(hour=7).astimezone(UTC)
            for t, v in ((off, 0.0), (on, 1.0)):
                if t < T:
                    rows.append((t, "ref-charge-phone", "ref-charge", "charging", v, t + ING))
            t = day.replace(hour=12).astimezone(UTC)
            rows.append((t, "ref-charge-phone", "ref-charge", "battery_pct", 50.0, t + ING))
        insert_numeric(conn, rows)

        # A phone that never leaves one geohash cell (four fixes a day).
        add_user(conn, "ref-geo", granted_at=granted)
        add_device(conn, "ref-geo-phone", "ref-geo", "phone")
        cat = []
        for day in _local_days(ZoneInfo("UTC")):
            for hour in (1, 8, 15, 23):
                t = day.replace(hour=hour).astimezone(UTC)
                cat.append((t, "ref-geo-phone", "ref-geo", "geohash", "u33dc0c", t + ING))
        insert_categorical(conn, cat)

        # A plug whose counter grows by exactly 2.5 kWh a day, and a door opened at 08:00 daily.
        add_user(conn, "ref-home", granted_at=granted)
        add_device(conn, "ref-home-plug", "ref-home", "plug")
        add_device(conn, "ref-home-door", "ref-home", "contact")
        rows = []
        for i, day in enumerate(_local_days(ZoneInfo("UTC"))):
            t = day.replace(hour=12).astimezone(UTC)
            rows.append(
                (t, "ref-home-plug", "ref-home", "energy_total_kwh", 100 + 2.5 * i, t + ING)
            )
            t = day.replace(hour=8).astimezone(UTC)
            rows.append((t, "ref-home-door", "ref-home", "contact_open", 1.0, t + ING))
            t2 = t + timedelta(minutes=5)
            rows.append((t2, "ref-home-door", "ref-home", "contact_open", 0.0, t2 + ING))
        insert_numeric(conn, rows)

        # A plug reporting every 5 min for the last 30 days, silent for 6 h (10 days before T,
        # 09:00-15:00); a router with a 10-min heartbeat for 100 days whose Tasmota-style LWT
        # "Offline" opens the same 6-h silence (one outage, not two).
        add_user(conn, "ref-plug", granted_at=granted)
        add_device(conn, "ref-plug-plug", "ref-plug", "plug")
        add_user(conn, "ref-router", granted_at=granted)
        add_device(conn, "ref-router-router", "ref-router", "router")
        rows = []
        for device, user, signal, period, since in (
            ("ref-plug-plug", "ref-plug", "power_w", 5, 30),
            ("ref-router-router", "ref-router", "online", 10, 100),
        ):
            t = T - timedelta(days=since)
            while t < T:
                if not SILENCE[0] <= t < SILENCE[1]:
                    rows.append((t, device, user, signal, 1.0, t + ING))
                t += timedelta(minutes=period)
        off = SILENCE[0] + timedelta(seconds=40)
        rows.append((off, "ref-router-router", "ref-router", "online", 0.0, off + ING))
        insert_numeric(conn, rows)
        refresh_rollups(conn, full=True)
        users = ["ref-charge", "ref-geo", "ref-home", "ref-plug", "ref-router", "nobody"]
        got = compute_vectors(conn, users, T)
    return {v.user_id: v for v in got}


def value(vec: FeatureVector, name: str) -> float:
    v = vec.values[name].value
    assert v is not None, f"{name} is null"
    return v


def test_unknown_users_are_omitted(vectors: dict[str, FeatureVector]) -> None:
    assert set(vectors) == {"ref-charge", "ref-geo", "ref-home", "ref-plug", "ref-router"}


@pytest.mark.parametrize("window", ["30d", "90d"])
def test_charging_at_23_local_across_dst_has_zero_circular_variance(
    vectors: dict[str, FeatureVector], window: str
) -> None:
    vec = vectors["ref-charge"]
    assert value(vec, f"charge_start_circvar_{window}") == pytest.approx(0.0, abs=1e-9)
    assert value(vec, f"charge_sessions_per_day_{window}") == pytest.approx(1.0, abs=1e-9)
    assert value(vec, f"low_battery_day_share_{window}") == 0.0


@pytest.mark.parametrize("window", ["30d", "90d"])
def test_one_geohash_has_zero_radius_and_entropy(
    vectors: dict[str, FeatureVector], window: str
) -> None:
    vec = vectors["ref-geo"]
    assert value(vec, f"radius_of_gyration_km_{window}") == pytest.approx(0.0, abs=1e-9)
    assert value(vec, f"location_entropy_{window}") == pytest.approx(0.0, abs=1e-9)
    assert value(vec, f"places_80pct_{window}") == 1.0
    assert value(vec, f"week_churn_{window}") == pytest.approx(0.0, abs=1e-9)
    assert value(vec, f"home_night_share_{window}") == 1.0
    assert value(vec, f"home_changes_{window}") == 0.0
    assert vec.values[f"location_entropy_{window}"].coverage == 1.0


@pytest.mark.parametrize("window", ["30d", "90d"])
def test_constant_daily_energy_has_zero_cv(vectors: dict[str, FeatureVector], window: str) -> None:
    assert value(vectors["ref-home"], f"daily_kwh_cv_{window}") == pytest.approx(0.0, abs=1e-9)


@pytest.mark.parametrize("days", [30, 90])
def test_daily_door_spike_has_hand_computed_is_and_iv(
    vectors: dict[str, FeatureVector], days: int
) -> None:
    vec = vectors["ref-home"]
    # x = 1 at 08:00 every day, 0 otherwise, N = 24·D complete hours (D = days):
    # IS = 1 (every day identical); IV = N·ΣΔ² / ((N-1)·Σ(x-x̄)²) with ΣΔ² = 2D (up and down
    # around each spike) and Σ(x-x̄)² = D - N/24² = D - D/24.
    n = 24 * days
    iv = n * (2 * days) / ((n - 1) * (days - days / 24))
    assert value(vec, f"is_presence_{days}d") == pytest.approx(1.0, abs=1e-9)
    assert value(vec, f"iv_presence_{days}d") == pytest.approx(iv, abs=1e-9)
    assert value(vec, f"first_door_open_circvar_{days}d") == pytest.approx(0.0, abs=1e-9)
    assert value(vec, f"hour_entropy_presence_{days}d") == pytest.approx(0.0, abs=1e-9)
    assert value(vec, f"autocorr_24h_presence_{days}d") == pytest.approx(1.0, abs=1e-9)


def test_missing_categories_are_null_with_zero_coverage(
    vectors: dict[str, FeatureVector],
) -> None:
    vec = vectors["ref-home"]  # no phone, no location data at all
    for name in ("radius_of_gyration_km_30d", "charge_start_circvar_90d", "setpoint_std_c_30d"):
        assert vec.values[name].value is None
        assert vec.values[name].coverage == 0.0
    assert vec.values["active_day_ratio_30d"].value == 0.0  # consented, measured: no heartbeat


@pytest.mark.parametrize("window", ["30d", "90d"])
def test_plug_silent_for_six_hours_has_one_outage(
    vectors: dict[str, FeatureVector], window: str
) -> None:
    # Observed since its first reading 30 days (720 h) before T, in both windows.
    vec = vectors["ref-plug"]
    assert value(vec, f"always_on_uptime_ratio_{window}") == pytest.approx(1 - 6 / 720, abs=1e-9)
    assert value(vec, f"always_on_outages_per_30d_{window}") == pytest.approx(1.0, abs=1e-9)
    coverage = 1.0 if window == "30d" else 30 / 90
    assert vec.values[f"always_on_uptime_ratio_{window}"].coverage == pytest.approx(coverage)


@pytest.mark.parametrize("days", [30, 90])
def test_offline_report_and_silence_make_one_router_outage(
    vectors: dict[str, FeatureVector], days: int
) -> None:
    # Reporting since before the 90-day grid: observed the whole window.
    vec = vectors["ref-router"]
    hours = 24 * days
    uptime = value(vec, f"always_on_uptime_ratio_{days}d")
    assert uptime == pytest.approx(1 - 6 / hours, abs=1e-9)
    outages = value(vec, f"always_on_outages_per_30d_{days}d")
    assert outages == pytest.approx(720 / hours, abs=1e-9)


@pytest.mark.parametrize("window", ["30d", "90d"])
def test_once_a_day_plug_is_not_down_between_reports(
    vectors: dict[str, FeatureVector], window: str
) -> None:
    vec = vectors["ref-home"]
    assert value(vec, f"always_on_uptime_ratio_{window}") == 1.0
    assert value(vec, f"always_on_outages_per_30d_{window}") == 0.0


def test_without_always_on_devices_uptime_is_null(vectors: dict[str, FeatureVector]) -> None:
    for user in ("ref-charge", "ref-geo"):  # a phone only
        cell = vectors[user].values["always_on_uptime_ratio_30d"]
        assert cell.value is None and cell.coverage == 0.0
