"""Household infrastructure: always-on devices (routers, plugs) staying up, plugs drawing steady
energy, thermostats left alone, devices not rebooting."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from features.catalogue.library.base import (
    F64,
    I64,
    Bool,
    Chunk,
    Result,
    Window,
    coefficient_of_variation,
    feature,
)
from hearth.signals import Category

FAMILY = "infrastructure"
CITATION = "docs/features.md (household infrastructure hypotheses; no published default result)"


# --- always-on devices: outages seen as silences ---------------------------------------------

# Device kinds expected to report around the clock (mains-powered; registry ``devices.kind``).
# Battery sensors (door, motion, climate) report on events or sleep for hours: their silence
# says nothing.
ALWAYS_ON_KINDS = frozenset({"router", "plug"})
# A silence is an outage when it is longer than the larger of MIN_SILENCE_S and SILENCE_FACTOR
# times the device's own usual interval between reports:
# * MIN_SILENCE_S = 2 h is twice the longest regular interval of the always-on formats:
#   Tasmota sends tele SENSOR/STATE every TelePeriod (default 300 s, at most 3600 s);
#   Zigbee2MQTT configures mains plugs to report power/energy on change and at least hourly
#   (zigbee-herdsman-converters reporting max interval repInterval.HOUR = 3600 s). A plug at a
#   constant load that only sends its hourly report is therefore never "down".
# * SILENCE_FACTOR = 1.5 adapts to devices reporting less often (a router agent's heartbeat
#   every few hours, the simulator's compressed message budget): a periodic reporter's normal
#   interval is 1x (± jitter), one missed report makes 2x, and 1.5 is halfway between.
# The usual interval is the median interval between readings in consecutive reporting hours
# (robust to the rare outage), over the 90 days before T.
MIN_SILENCE_S = 2 * 3600.0
SILENCE_FACTOR = 1.5


@dataclass(frozen=True)
class AlwaysOn:
    """The chunk's always-on devices over the whole grid (G hours), one row per device."""

    owner: I64  # [S] user index
    start: I64  # [S] observed from this grid hour (the first reading, ≥ 0) ...
    end: I64  # [S] ... up to this one, exclusive (T or the device's retirement)
    down: Bool  # [S, G] hours inside an outage (long silence or explicit offline report)


def _intervals_to_mask(s: I64, a: I64, b: I64, S: int, G: int) -> Bool:
    """[S, G] mask of the half-open hour intervals [a, b) of rows s (overlaps merge)."""
    a, b = np.clip(a, 0, G), np.clip(b, 0, G)
    keep = b > a
    diff = np.zeros((S, G + 1), dtype=np.int32)
    np.add.at(diff, (s[keep], a[keep]), 1)
    np.add.at(diff, (s[keep], b[keep]), -1)
    out: Bool = np.cumsum(diff[:, :G], axis=1) > 0
    return out


def _group_median(group: I64, x: F64, n_groups: int) -> F64:
    """Median of ``x`` (finite) per group index (NaN for an empty group)."""
    # One argsort of group·range + x orders by (group, x): much faster than np.lexsort here.
    lo_x = x.min() if x.size else 0.0
    width = (x.max() - lo_x + 1.0) if x.size else 1.0
    xs = x[np.argsort(group * width + (x - lo_x))]
    count = np.bincount(group, minlength=n_groups)
    first = np.concatenate([[0], np.cumsum(count)[:-1]])
    lo = first + np.maximum(count - 1, 0) // 2
    hi = first + count // 2
    out = np.full(n_groups, np.nan)
    has = count > 0
    out[has] = (xs[lo[has]] + xs[hi[has]]) / 2.0
    return out


@dataclass(frozen=True)
class _Alive:
    """One record per (device row, hour) with a reading that is not an offline report, sorted:
    row, hour and the first/last reading time in seconds from the grid start."""

    s: I64
    h: I64
    t_first: F64
    t_last: F64


def _alive(chunk: Chunk, row: I64, mine: Bool) -> _Alive:
    nb, G = chunk.numeric, chunk.hours
    online = nb.s == chunk.signal_index.get("online", -1)
    alive = mine & (~online | (nb.max == 1))
    keys = row[nb.d[alive]] * G + nb.h[alive]
    if keys.size == 0:
        empty = np.zeros(0, dtype=np.int64)
        return _Alive(empty, empty, empty.astype(np.float64), empty.astype(np.float64))
    order = np.argsort(keys, kind="stable")
    keys = keys[order]
    cut = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])
    rec = keys[cut]
    base = (rec % G) * 3600.0
    return _Alive(
        s=rec // G,
        h=rec % G,
        t_first=base + np.minimum.reduceat(nb.first_off[alive][order], cut),
        t_last=base + np.maximum.reduceat(nb.last_off[alive][order], cut),
    )


def always_on(chunk: Chunk) -> AlwaysOn:
    """Where each always-on device was down, from the numeric hourly bins (cached per chunk).

    A device is *alive* in an hour with any reading other than an explicit offline report
    (``online`` = 0: Tasmota LWT ``Offline``, Zigbee2MQTT availability ``offline``); every
    consented numeric signal counts, only its time (and the online flag's value) is read. It
    is *down* in

    * the hours between two alive hours whose readings are further apart than its silence
      threshold (MIN_SILENCE_S, SILENCE_FACTOR); likewise before its first reading in the grid
      when it was seen before the grid, and after its last reading up to T (or retirement);
    * an hour with an offline report, and every hour after it until the device is alive again.

    The union is taken per device, so an offline report followed by a silence is one outage.
    """
    key = ("always_on",)
    if key in chunk._cache:
        return chunk._cache[key]  # type: ignore[return-value]
    G, nb = chunk.hours, chunk.numeric
    is_on = np.array([k in ALWAYS_ON_KINDS for k in chunk.device_kinds], dtype=bool)
    mine = is_on[nb.d] if is_on.size else np.zeros(nb.d.size, dtype=bool)
    seen = chunk.device_first_seen_hours
    dev = np.flatnonzero(is_on & ~np.isnan(seen))
    S = dev.size
    row = np.full(is_on.size, -1, dtype=np.int64)
    row[dev] = np.arange(S)
    owner = chunk.device_owner[dev]

    # Observed from the first reading (grid hour; negative = before the grid) to T or retirement.
    first_h = np.floor(chunk.as_of_hours - seen[dev] + 1e-9).astype(np.int64)
    before = first_h < 0
    end_s = 3600.0 * (chunk.as_of_hours - np.nan_to_num(chunk.device_retired_hours[dev]))
    end_h = np.clip(np.ceil(end_s / 3600.0 - 1e-9), 0, G).astype(np.int64)
    start_h = np.minimum(np.maximum(first_h, 0), end_h)

    # Silences between consecutive alive hours of a device, before the first, after the last.
    al = _alive(chunk, row, mine)
    same = al.s[1:] == al.s[:-1]
    gap = al.t_first[1:] - al.t_last[:-1]
    usual = _group_median(al.s[:-1][same], gap[same], S)
    threshold = np.maximum(MIN_SILENCE_S, SILENCE_FACTOR * np.nan_to_num(usual))
    lead = np.r_[True, ~same][: al.s.size]
    tail = np.r_[~same, True][: al.s.size]
    inner = same & (gap > threshold[al.s[:-1]])
    lead &= before[al.s] & (al.t_first > threshold[al.s])
    tail &= end_s[al.s] - al.t_last > threshold[al.s]
    quiet = before.copy()  # seen before the grid and never alive in it: silent throughout
    quiet[al.s] = False
    parts = [
        (al.s[:-1][inner], al.h[:-1][inner] + 1, al.h[1:][inner]),
        (al.s[lead], np.zeros(int(lead.sum()), dtype=np.int64), al.h[lead]),
        (al.s[tail], al.h[tail] + 1, end_h[al.s[tail]]),
        (np.flatnonzero(quiet), np.zeros(int(quiet.sum()), dtype=np.int64), end_h[quiet]),
    ]

    # Explicit offline reports: down from that hour until the next alive hour (or the end).
    off = mine & (nb.s == chunk.signal_index.get("online", -1)) & (nb.min == 0)
    off_s, off_h = row[nb.d[off]], nb.h[off]
    nxt = np.searchsorted(al.s * G + al.h, off_s * G + off_h, side="right")
    nxt_ok = nxt < al.s.size
    nxt_c = np.minimum(nxt, max(al.s.size - 1, 0))
    if al.s.size:
        nxt_ok &= al.s[nxt_c] == off_s
        until = np.where(nxt_ok, al.h[nxt_c], end_h[off_s])
    else:
        until = end_h[off_s]
    parts.append((off_s, off_h, np.maximum(until, off_h + 1)))

    s_, a_, b_ = (np.concatenate([p[i] for p in parts]).astype(np.int64) for i in range(3))
    a_ = np.maximum(a_, start_h[s_])  # nothing is down outside the observed span
    b_ = np.minimum(b_, end_h[s_])
    result = AlwaysOn(owner, start_h, end_h, _intervals_to_mask(s_, a_, b_, S, G))
    chunk._cache[key] = result
    return result


@dataclass(frozen=True)
class _WindowAlwaysOn:
    observed_hours: F64  # [U] sum over the user's always-on devices of observed window hours
    down_hours: F64  # [U] sum over them of down hours in the window
    any_observed: Bool  # [U, H] some always-on device of the user is observed
    any_down: Bool  # [U, H] some always-on device of the user is down
    ok: Bool  # [U] connectivity consented at T
    coverage: F64  # [U] share of local days with some always-on device observed


def _always_on_window(w: Window) -> _WindowAlwaysOn:
    """The window's part of :func:`always_on`, per user (cached per window)."""
    key = ("always_on",)
    if key in w._cache:
        return w._cache[key]  # type: ignore[return-value]
    a = always_on(w.chunk)
    start = np.clip(a.start - w.c0, 0, w.H)
    end = np.clip(a.end - w.c0, 0, w.H)
    down = a.down[:, w.c0 :]
    any_observed = _intervals_to_mask(a.owner, start, end, w.U, w.H)
    any_down = np.zeros((w.U, w.H), dtype=bool)
    if a.owner.size:
        order = np.argsort(a.owner, kind="stable")
        users, first = np.unique(a.owner[order], return_index=True)
        any_down[users] = np.logical_or.reduceat(down[order], first, axis=0)
    ok = w.chunk.consented[Category.CONNECTIVITY]
    result = _WindowAlwaysOn(
        observed_hours=w.per_user(a.owner, (end - start).astype(np.float64)),
        down_hours=w.per_user(a.owner, down.sum(axis=1).astype(np.float64)),
        any_observed=any_observed,
        any_down=any_down,
        ok=ok,
        coverage=np.where(ok, w.day_coverage(any_observed), 0.0),
    )
    w._cache[key] = result
    return result


@feature("always_on_uptime_ratio", family=FAMILY, unit="ratio", category=Category.CONNECTIVITY,
         null_semantics="null when no router or plug has reported by T, or connectivity is not "
                        "consented at T",
         citation=CITATION,
         reason="Uptime of the router and plugs")  # fmt: skip
def always_on_uptime_ratio(w: Window) -> Result:
    """Share of always-on-device-hours (routers, plugs) not inside an outage.

    An outage is a silence longer than max(2 h, 1.5 times the device's usual interval between
    reports), or an explicit offline report until the device reports again; a device is
    observed from its first reading (or the window start) to T (or its retirement).
    Formula: 1 - sum_d |{down hours of d}| / sum_d |{observed hours of d in the window}|
    Window: 30, 90 days. Unit: ratio (1 = never down). Category: connectivity.
    """
    a = _always_on_window(w)
    with np.errstate(invalid="ignore", divide="ignore"):
        value = 1.0 - a.down_hours / a.observed_hours
    return np.where(a.ok & (a.observed_hours > 0), value, np.nan), a.coverage


@feature("always_on_outages_per_30d", family=FAMILY, unit="1/30 days",
         category=Category.CONNECTIVITY,
         null_semantics="null when no router or plug has reported by T, or connectivity is not "
                        "consented at T",
         citation=CITATION,
         reason="Outages of the router and plugs")  # fmt: skip
def always_on_outages_per_30d(w: Window) -> Result:
    """Household outages of the always-on devices (routers, plugs) per 30 days observed.

    Down hours as in always_on_uptime_ratio; devices down at the same time (one power cut
    silences router and plug) make one outage: a run of hours in which any device is down.
    Formula: |{runs of hours with ≥1 device down, in the window}| · 720 / |{hours with ≥1
    device observed}|
    Window: 30, 90 days. Unit: 1/30 days. Category: connectivity.
    """
    a = _always_on_window(w)
    starts = a.any_down.copy()
    starts[:, 1:] &= ~a.any_down[:, :-1]
    hours = a.any_observed.sum(axis=1).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        value = starts.sum(axis=1) * 720.0 / hours
    return np.where(a.ok & (hours > 0), value, np.nan), a.coverage


@feature("daily_kwh_cv", family=FAMILY, unit="ratio", category=Category.ENERGY,
         null_semantics="null with < 2 full days of energy-counter readings on any plug",
         citation="docs/features.md (plug energy CV)",
         reason="Day-to-day swings in plug energy use")  # fmt: skip
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
         citation=CITATION,
         reason="Spread of the thermostat setpoint")  # fmt: skip
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
         null_semantics="null without thermostat setpoints", citation=CITATION,
         reason="Thermostat adjustments per week")  # fmt: skip
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
         null_semantics="null without uptime reports", citation=CITATION,
         reason="Device reboots")  # fmt: skip
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
