"""Phone care: how the phone is kept charged (battery, charging state, SIM)."""

from __future__ import annotations

import numpy as np

from features.catalogue.library.base import Result, Window, feature
from features.catalogue.library.routine import charge_onsets
from hearth.signals import Category

FAMILY = "phone_care"
LOW_BATTERY_PCT = 15.0
OVERNIGHT_HOURS = (0, 1, 2, 3, 4, 5)
CITATION = "Björkegren & Grissen 2020, World Bank Econ. Rev. (phone usage and repayment)"


@feature("low_battery_day_share", family=FAMILY, unit="ratio", category=Category.DEVICE_HEALTH,
         null_semantics="null without battery readings", citation=CITATION,
         reason="Days the phone battery ran low")  # fmt: skip
def low_battery_day_share(w: Window) -> Result:
    """Share of days with battery data whose minimum battery level was below 15 %.

    Formula: |{days d : min battery_pct_d < 15}| / |{days with battery readings}|
    Window: 30, 90 days. Unit: ratio. Category: device_health.
    """
    dmin = w.daily_min(w.min("battery_pct"))
    has = ~np.isnan(dmin)
    k = has.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        value = (has & (np.nan_to_num(dmin, nan=100.0) < LOW_BATTERY_PCT)).sum(axis=1) / k
    return np.where(k > 0, value, np.nan), w.day_coverage(w.has("battery_pct"))


@feature("mean_daily_min_battery_pct", family=FAMILY, unit="%",
         category=Category.DEVICE_HEALTH, null_semantics="null without battery readings",
         citation=CITATION,
         reason="Lowest daily phone battery level")  # fmt: skip
def mean_daily_min_battery_pct(w: Window) -> Result:
    """Mean over days of the day's lowest reported battery level.

    Formula: mean_d min battery_pct_d over days with battery readings
    Window: 30, 90 days. Unit: %. Category: device_health.
    """
    dmin = w.daily_min(w.min("battery_pct"))
    has = ~np.isnan(dmin)
    k = has.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        value = np.nan_to_num(dmin).sum(axis=1) / k
    return np.where(k > 0, value, np.nan), w.day_coverage(w.has("battery_pct"))


@feature("charge_sessions_per_day", family=FAMILY, unit="1/day",
         category=Category.DEVICE_HEALTH, null_semantics="null without charging-state readings",
         citation=CITATION,
         reason="Phone charging sessions per day")  # fmt: skip
def charge_sessions_per_day(w: Window) -> Result:
    """Charging starts (0→1 of the charging flag) per day with charging-state data.

    Formula: |{charging starts}| / |{days with charging readings}|
    Window: 30, 90 days. Unit: 1/day. Category: device_health.
    """
    users, _ = charge_onsets(w)
    has = w.has("charging")
    days = w.daily_any(has).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        value = np.bincount(users, minlength=w.U) / days
    return np.where(days > 0, value, np.nan), w.day_coverage(has)


@feature("overnight_charge_share", family=FAMILY, unit="ratio",
         category=Category.DEVICE_HEALTH,
         null_semantics="null without night-time (00-06 local) charging-state readings",
         citation=CITATION,
         reason="Nights the phone charged overnight")  # fmt: skip
def overnight_charge_share(w: Window) -> Result:
    """Share of nights (local 00:00-06:00) with charging-state data on which the phone charged.

    Formula: |{nights with max charging = 1}| / |{nights with charging readings}|
    Window: 30, 90 days. Unit: ratio. Category: device_health.
    """
    night = np.isin(w.hod, OVERNIGHT_HOURS)
    has = w.has("charging") & night
    charged = (w.max("charging") == 1) & night
    k = w.daily_any(has).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        value = w.daily_any(charged).sum(axis=1) / k
    return np.where(k > 0, value, np.nan), w.day_coverage(w.has("charging"))


@feature("sim_changes_per_year", family=FAMILY, unit="1/year", category=Category.DEVICE_HEALTH,
         null_semantics="null without SIM readings", citation=CITATION,
         reason="SIM card changes")  # fmt: skip
def sim_changes_per_year(w: Window) -> Result:
    """SIM swaps: changes of the (hashed) SIM between consecutive reports, per year.

    Formula: |{k : sim_k ≠ sim_{k-1}}| · 365 / window days
    Window: 30, 90 days. Unit: 1/year. Category: device_health.
    """
    codes = w.codes("sim_id_hash")
    seen = codes >= 0
    H = w.H
    hours = np.arange(H)
    last_seen = np.maximum.accumulate(np.where(seen, hours, -1), axis=1)
    prev = np.concatenate([np.full((w.U, 1), -1), last_seen[:, :-1]], axis=1)
    prev_code = np.take_along_axis(codes, np.maximum(prev, 0), 1)
    changed = seen & (prev >= 0) & (prev_code != codes)
    value = changed.sum(axis=1) * 365.0 / w.days
    return np.where(seen.any(axis=1), value, np.nan), w.day_coverage(seen)
