"""Household infrastructure: routers staying up, plugs drawing steady energy, thermostats left
alone, devices not rebooting."""

from __future__ import annotations

import numpy as np

from features.library.base import (
    F64,
    I64,
    Bool,
    NumericBins,
    Result,
    Window,
    coefficient_of_variation,
    feature,
)
from hearth.signals import Category

FAMILY = "infrastructure"
CITATION = "DESIGN §6 (household infrastructure hypotheses; no published default result)"


def _next_hour(w: Window, h: I64, same_next: Bool) -> I64:
    """Window hour of the next bin of the same device, or the window end."""
    nxt = np.full(h.size, w.c0 + w.H, dtype=np.int64)
    nxt[:-1] = np.where(same_next[:-1], h[1:], w.c0 + w.H)
    return nxt


def _router_bins(w: Window) -> tuple[NumericBins, Bool, F64]:
    b, same, prev_last = w.series("online")
    kinds = w.chunk.device_kinds
    keep = np.array([kinds[d] == "router" for d in b.d], dtype=bool)
    if keep.all():
        return b, same, prev_last
    return b.select(keep), same[keep], prev_last[keep]


@feature("router_uptime_ratio", family=FAMILY, unit="ratio", category=Category.CONNECTIVITY,
         null_semantics="null without router online/offline reports",
         citation=CITATION)  # fmt: skip
def router_uptime_ratio(w: Window) -> Result:
    """Share of router-hours online, the last reported state carried forward.

    Formula: sum_routers sum_h online_h / sum_routers |{hours since the router's first report}|
    (an hour with any offline report is not online)
    Window: 30, 90 days. Unit: ratio. Category: connectivity.
    """
    b, same, _ = _router_bins(w)
    same_next = np.zeros(same.size, dtype=bool)
    same_next[:-1] = same[1:]
    span = _next_hour(w, b.h, same_next) - b.h
    up = b.last == 1
    online = (up & (b.min != 0)) + up * (span - 1)
    total = w.per_user(b.u, span.astype(np.float64))
    with np.errstate(invalid="ignore", divide="ignore"):
        value = w.per_user(b.u, online.astype(np.float64)) / total
    has = np.zeros((w.U, w.H), dtype=bool)
    has[b.u, b.h - w.c0] = True
    return np.where(total > 0, value, np.nan), w.day_coverage(has)


@feature("router_outages_per_30d", family=FAMILY, unit="1/30 days",
         category=Category.CONNECTIVITY,
         null_semantics="null without router online/offline reports",
         citation=CITATION)  # fmt: skip
def router_outages_per_30d(w: Window) -> Result:
    """Router outages (online -> offline transitions) per 30 days.

    Formula: |{online->offline transitions between or within reports}| * 30 / window days
    Window: 30, 90 days. Unit: 1/30 days. Category: connectivity.
    """
    b, _, prev_last = _router_bins(w)
    went_down = (b.min == 0) & ((prev_last == 1) | (b.first == 1))
    count = w.per_user(b.u, went_down)
    has = w.per_user(b.u) > 0
    cov = np.zeros((w.U, w.H), dtype=bool)
    cov[b.u, b.h - w.c0] = True
    return np.where(has, count * 30.0 / w.days, np.nan), w.day_coverage(cov)


@feature("daily_kwh_cv", family=FAMILY, unit="ratio", category=Category.ENERGY,
         null_semantics="null with < 2 full days of energy-counter readings on any plug",
         citation="DESIGN §6 (plug energy CV)")  # fmt: skip
def daily_kwh_cv(w: Window) -> Result:
    """Coefficient of variation of each plug's daily energy, averaged over the user's plugs.

    Daily energy = difference of the cumulative counter's last reading of consecutive local
    days (a counter reset gives no value for that day).
    Formula: mean_plugs sd(e_d) / μ(e_d), population sd over days with a value
    Window: 30, 90 days. Unit: ratio (0 = the same kWh every day). Category: energy.
    """
    dev = w.devices("energy_total_kwh")
    S, H = dev.n.shape
    if S == 0:
        return np.full(w.U, np.nan), np.zeros(w.U)
    day = w.day[dev.owner]
    seen = dev.n > 0
    flat = (np.arange(S)[:, None] * w.D + day)[seen]
    hour = np.broadcast_to(np.arange(H), (S, H))[seen]
    last_h = np.full(S * w.D, -1)
    np.maximum.at(last_h, flat, hour)
    last_h = last_h.reshape(S, w.D)
    val = np.where(last_h >= 0, np.take_along_axis(dev.last, np.maximum(last_h, 0), 1), np.nan)
    delta = val[:, 1:] - val[:, :-1]
    ok = ~np.isnan(delta) & (delta >= 0)
    cv = coefficient_of_variation(np.nan_to_num(delta), ok)
    good = ~np.isnan(cv)
    total = w.per_user(dev.owner[good], cv[good])
    count = np.bincount(dev.owner[good], minlength=w.U)
    with np.errstate(invalid="ignore", divide="ignore"):
        value = total / count
    return np.where(count > 0, value, np.nan), w.day_coverage(w.has("energy_total_kwh"))


@feature("setpoint_std_c", family=FAMILY, unit="°C", category=Category.CLIMATE,
         null_semantics="null with < 2 hours of thermostat setpoints",
         citation=CITATION)  # fmt: skip
def setpoint_std_c(w: Window) -> Result:
    """Standard deviation of the hourly mean thermostat setpoint (0 = never touched).

    Formula: sd(s̄_h) over hours h with setpoint readings (population sd)
    Window: 30, 90 days. Unit: °C. Category: climate.
    """
    x = w.mean("setpoint_c")
    valid = ~np.isnan(x)
    k = valid.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(valid, x, 0.0).sum(axis=1) / k
        var = np.where(valid, (x - mean[:, None]) ** 2, 0.0).sum(axis=1) / k
    return np.where(k >= 2, np.sqrt(var), np.nan), w.day_coverage(valid)


@feature("setpoint_changes_per_week", family=FAMILY, unit="1/week", category=Category.CLIMATE,
         null_semantics="null without thermostat setpoints", citation=CITATION)  # fmt: skip
def setpoint_changes_per_week(w: Window) -> Result:
    """Setpoint changes between consecutive reports, per week.

    Formula: |{changes of setpoint_c between reports}| · 7 / window days (a change inside an
    hour counts once)
    Window: 30, 90 days. Unit: 1/week. Category: climate.
    """
    b, same, prev_last = w.series("setpoint_c")
    changes = (same & (b.first != prev_last)) | (b.min != b.max)
    count = w.per_user(b.u, changes)
    has = w.per_user(b.u) > 0
    return np.where(has, count * 7.0 / w.days, np.nan), w.day_coverage(w.has("setpoint_c"))


@feature("reboots_per_30d", family=FAMILY, unit="1/30 days", category=Category.DEVICE_HEALTH,
         null_semantics="null without uptime reports", citation=CITATION)  # fmt: skip
def reboots_per_30d(w: Window) -> Result:
    """Device reboots (uptime counter going down) per 30 days, all devices of the household.

    Formula: |{consecutive uptime reports u_k < u_{k-1}}| · 30 / window days
    Window: 30, 90 days. Unit: 1/30 days. Category: device_health.
    """
    b, same, prev_last = w.series("uptime_s")
    reboots = (same & (b.first < prev_last)) | (b.min < b.first)
    count = w.per_user(b.u, reboots)
    has = w.per_user(b.u) > 0
    return np.where(has, count * 30.0 / w.days, np.nan), w.day_coverage(w.has("uptime_s"))
