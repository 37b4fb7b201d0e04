"""Coverage and tenure: how much, and for how long, the household has been observed.

Heartbeats are the device-health reports (battery, charging state, uptime) every phone, plug
and router sends; they say "this device was alive and reporting", whatever else it measured.
"""

from __future__ import annotations

import numpy as np

from features.catalogue.library.base import F64, Bool, Result, Window, feature
from hearth.signals import SIGNALS, Category

FAMILY = "coverage"
HEARTBEAT_SIGNALS = ("battery_pct", "charging", "uptime_s")
CONNECTIVITY_SIGNALS = tuple(
    s.name for s in SIGNALS.values() if s.category is Category.CONNECTIVITY and s.kind != "raw"
)


def _consented(w: Window, category: Category) -> Bool:
    return w.chunk.consented[category]


def _heartbeat(w: Window) -> Bool:
    return w.has(*HEARTBEAT_SIGNALS)


@feature(
    "active_day_ratio",
    family=FAMILY,
    unit="ratio",
    category=Category.DEVICE_HEALTH,
    null_semantics="null when device_health is not consented at T (0 is a measured value)",
    citation="Björkegren & Grissen 2020 (usage regularity); docs/features.md",
    reason="Days with any device heartbeat",
)
def active_day_ratio(w: Window) -> Result:
    """Share of local days in the window with at least one heartbeat.

    Formula: |{local days with ≥1 heartbeat}| / |{local days in window}|
    Window: 30, 90 days. Unit: ratio. Category: device_health.
    """
    value = w.day_coverage(_heartbeat(w))
    ok = _consented(w, Category.DEVICE_HEALTH)
    return np.where(ok, value, np.nan), np.where(ok, 1.0, 0.0)


@feature(
    "heartbeat_hour_share",
    family=FAMILY,
    unit="ratio",
    category=Category.DEVICE_HEALTH,
    null_semantics="null when device_health is not consented at T",
    citation="docs/features.md (share of expected heartbeats received)",
    reason="Hours with a device heartbeat",
)
def heartbeat_hour_share(w: Window) -> Result:
    """Share of the window's hours with at least one heartbeat (expected: one per hour).

    Formula: |{hours with ≥1 heartbeat}| / (24 · window days)
    Window: 30, 90 days. Unit: ratio. Category: device_health.
    """
    value = _heartbeat(w).sum(axis=1) / float(w.H)
    ok = _consented(w, Category.DEVICE_HEALTH)
    return np.where(ok, value, np.nan), np.where(ok, 1.0, 0.0)


def _gaps(mask: Bool) -> tuple[F64, F64, Bool]:
    """Per row: longest gap (hours) and number of gaps > 24 h between observed hours,
    the trailing silence up to T included; third item: rows with any observation."""
    U, H = mask.shape
    hours = np.arange(H)
    last_seen = np.maximum.accumulate(np.where(mask, hours, -1), axis=1)
    prev = np.concatenate([np.full((U, 1), -1), last_seen[:, :-1]], axis=1)
    gap = np.where(mask & (prev >= 0), hours - prev, 0).astype(np.float64)
    tail = np.where(last_seen[:, -1] >= 0, H - last_seen[:, -1], 0).astype(np.float64)
    longest = np.maximum(gap.max(axis=1, initial=0.0), tail)
    over = (gap > 24).sum(axis=1) + (tail > 24)
    return longest, over.astype(np.float64), last_seen[:, -1] >= 0


@feature(
    "longest_gap_days",
    family=FAMILY,
    unit="days",
    category=Category.DEVICE_HEALTH,
    null_semantics="null when no heartbeat in the window",
    citation="docs/features.md",
    reason="Longest silence of the devices",
)
def longest_gap_days(w: Window) -> Result:
    """Longest time between consecutive heartbeat hours, silence up to T included.

    Formula: max_k (t_{k+1} - t_k) over heartbeat hours t_1 < … < t_m and T, in days
    Window: 30, 90 days. Unit: days. Category: device_health.
    """
    mask = _heartbeat(w)
    longest, _, seen = _gaps(mask)
    return np.where(seen, longest / 24.0, np.nan), w.day_coverage(mask)


@feature(
    "gaps_over_24h",
    family=FAMILY,
    unit="count",
    category=Category.DEVICE_HEALTH,
    null_semantics="null when no heartbeat in the window",
    citation="docs/features.md",
    reason="Silences of the devices longer than a day",
)
def gaps_over_24h(w: Window) -> Result:
    """Number of silences longer than 24 h between heartbeats (silence up to T included).

    Formula: |{k : t_{k+1} - t_k > 24 h}|
    Window: 30, 90 days. Unit: count. Category: device_health.
    """
    mask = _heartbeat(w)
    _, over, seen = _gaps(mask)
    return np.where(seen, over, np.nan), w.day_coverage(mask)


@feature(
    "days_since_first_seen",
    family=FAMILY,
    unit="days",
    category=Category.DEVICE_HEALTH,
    windows=(0,),
    null_semantics="null when nothing was ever received (as of T) from a consented category",
    citation="docs/features.md (tenure)",
    reason="Time since the first device reading",
)
def days_since_first_seen(w: Window) -> Result:
    """Tenure: days from the first reading ever received (ingested ≤ T) to T.

    Formula: (T - min event time) / 1 day, over all history of consented categories
    Window: all history. Unit: days. Category: device_health.
    """
    hours = w.chunk.first_seen_hours
    ok = _consented(w, Category.DEVICE_HEALTH) & ~np.isnan(hours)
    return np.where(ok, hours / 24.0, np.nan), np.where(ok, 1.0, 0.0)


@feature(
    "active_device_count",
    family=FAMILY,
    unit="count",
    category=Category.CONNECTIVITY,
    null_semantics="null when connectivity is not consented at T",
    citation="docs/features.md",
    reason="Devices online",
)
def active_device_count(w: Window) -> Result:
    """Devices that reported any connectivity signal (online, RSSI, network) in the window.

    Formula: |{devices with ≥1 connectivity reading}|
    Window: 30, 90 days. Unit: count. Category: connectivity.
    """
    c = w.chunk
    sids = [c.signal_index[s] for s in CONNECTIVITY_SIGNALS if s in c.signal_index]
    pairs = []
    for bins in (c.numeric, c.categorical):
        m = np.isin(bins.s, sids) & (bins.h >= w.c0)
        pairs.append(bins.u[m] * (int(c.n_devices) + 1) + bins.d[m])
    uniq = np.unique(np.concatenate(pairs))
    count = np.bincount(uniq // (int(c.n_devices) + 1), minlength=w.U).astype(np.float64)
    ok = _consented(w, Category.CONNECTIVITY)
    has = w.has(*[s for s in CONNECTIVITY_SIGNALS if SIGNALS[s].kind == "numeric"])
    return np.where(ok, count, np.nan), np.where(ok, w.day_coverage(has), 0.0)
