"""Routine regularity: how much the household's day repeats (plugs, doors, screen, charging), and
the phone's own routine (wake-up, bedtime, weekday commute), which a member without home
sensors shows too.

Van Someren et al. (1999) define interdaily stability (IS) and intradaily variability (IV) on a
complete hourly series. Telemetry here is sparse and has outages, so both are written in their
general form over the *valid* hours (hours of local days on which the sensor reported at all):

  IS = Σ_h n_h (x̄_h - x̄)² / Σ_i (x_i - x̄)²       (n_h = valid hours at local hour-of-day h)
  IV = [Σ_pairs (x_i - x_{i-1})² / P] / [Σ_i (x_i - x̄)² / N]   (P consecutive valid pairs)

With a complete series n_h = N/p and P = N - 1, which gives exactly Van Someren's
IS = N·Σ_h(x̄_h - x̄)² / (p·Σ_i(x_i - x̄)²) and IV = N·Σ(Δx)² / ((N - 1)·Σ(x_i - x̄)²).
Hour-of-day is the user's local hour (DST included).
"""

from __future__ import annotations

import numpy as np

from features.catalogue.library.base import (
    F64,
    I64,
    Bool,
    Result,
    Window,
    coefficient_of_variation,
    feature,
)
from hearth.signals import Category

FAMILY = "routine"
PRESENCE_SIGNALS = ("contact_open", "occupancy")
VAN_SOMEREN = "Van Someren et al. 1999, Chronobiol. Int. 16(4):505-518"


def interdaily_stability(x: F64, hod: I64, valid: Bool) -> F64:
    """Row-wise IS (general form above); NaN with < 2 valid days' worth or zero variance."""
    U = x.shape[0]
    k = valid.sum(axis=1)
    xv = np.where(valid, x, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = xv.sum(axis=1) / k
        dev = np.where(valid, x - mean[:, None], 0.0)
        total = (dev**2).sum(axis=1)
        flat = (np.arange(U)[:, None] * 24 + hod).ravel()
        s_h = np.bincount(flat, weights=dev.ravel(), minlength=U * 24).reshape(U, 24)
        n_h = np.bincount(flat, weights=valid.ravel().astype(float), minlength=U * 24)
        n_h = n_h.reshape(U, 24)
        # n_h (x̄_h - x̄)² = (Σ_{i∈h} (x_i - x̄))² / n_h
        between = np.where(n_h > 0, s_h**2 / np.maximum(n_h, 1), 0.0).sum(axis=1)
        out = between / total
    return np.where((k >= 48) & (total > 0), out, np.nan)


def intradaily_variability(x: F64, valid: Bool) -> F64:
    """Row-wise IV (general form above); NaN without variance or consecutive pairs."""
    k = valid.sum(axis=1)
    xv = np.where(valid, x, 0.0)
    pair = valid[:, 1:] & valid[:, :-1]
    p = pair.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = xv.sum(axis=1) / k
        total = np.where(valid, (x - mean[:, None]) ** 2, 0.0).sum(axis=1)
        diff2 = np.where(pair, (xv[:, 1:] - xv[:, :-1]) ** 2, 0.0).sum(axis=1)
        out = (diff2 / p) / (total / k)
    return np.where((p > 0) & (total > 0), out, np.nan)


def hour_entropy(x: F64, hod: I64) -> F64:
    """Normalised entropy of the hour-of-day distribution of x ≥ 0: -Σ p_h ln p_h / ln 24."""
    U = x.shape[0]
    flat = (np.arange(U)[:, None] * 24 + hod).ravel()
    per_h = np.bincount(flat, weights=np.nan_to_num(x).ravel(), minlength=U * 24).reshape(U, 24)
    tot = per_h.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        p = per_h / tot
        ent = -np.where(p > 0, p * np.log(p), 0.0).sum(axis=1) / np.log(24.0)
    return np.where(tot[:, 0] > 0, ent, np.nan)


def autocorrelation(x: F64, valid: Bool, lag: int) -> F64:
    """Row-wise lag-k autocorrelation over pairs where both hours are valid."""
    k = valid.sum(axis=1)
    xv = np.where(valid, x, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = xv.sum(axis=1) / k
        dev = np.where(valid, x - mean[:, None], 0.0)
        var = (dev**2).sum(axis=1) / k
        if lag >= x.shape[1]:
            return np.full(x.shape[0], np.nan)
        pair = valid[:, lag:] & valid[:, :-lag]
        p = pair.sum(axis=1)
        cov = np.where(pair, dev[:, lag:] * dev[:, :-lag], 0.0).sum(axis=1) / p
        out = cov / var
    return np.where((p >= 2 * lag) & (var > 0), out, np.nan)


def presence_activity(w: Window) -> tuple[F64, Bool]:
    """Door-open plus motion-detected events per hour; valid on local days with any presence
    reading (a silent sensor is missing data, not a still house)."""
    x = w.sum("contact_open") + w.sum("occupancy")
    has = w.has(*PRESENCE_SIGNALS)
    day_ok = w.daily_any(has)
    valid = np.take_along_axis(day_ok, w.day, axis=1)
    return x, valid


def _presence(w: Window) -> tuple[F64, Bool, F64]:
    key = ("presence",)
    if key not in w._cache:
        x, valid = presence_activity(w)
        w._cache[key] = (x, valid, w.day_coverage(w.has(*PRESENCE_SIGNALS)))
    return w._cache[key]  # type: ignore[return-value]


@feature("is_presence", family=FAMILY, unit="ratio", category=Category.PRESENCE,
         null_semantics="null with < 2 days of presence data or no activity variance",
         citation=VAN_SOMEREN,
         reason="Regularity of the daily routine at home")  # fmt: skip
def is_presence(w: Window) -> Result:
    """Interdaily stability of hourly door/motion activity (0 = no 24 h pattern, 1 = perfect).

    Formula: IS = Σ_h n_h (x̄_h - x̄)² / Σ_i (x_i - x̄)², x = door opens + motion events per hour
    Window: 30, 90 days. Unit: ratio. Category: presence.
    """
    x, valid, cov = _presence(w)
    return interdaily_stability(x, w.hod, valid), cov


@feature("iv_presence", family=FAMILY, unit="ratio", category=Category.PRESENCE,
         null_semantics="null without presence data or activity variance",
         citation=VAN_SOMEREN,
         reason="Fragmentation of activity at home")  # fmt: skip
def iv_presence(w: Window) -> Result:
    """Intradaily variability of hourly door/motion activity (fragmentation; ≈2 for noise).

    Formula: IV = [Σ (x_i - x_{i-1})² / P] / [Σ (x_i - x̄)² / N]
    Window: 30, 90 days. Unit: ratio. Category: presence.
    """
    x, valid, cov = _presence(w)
    return intradaily_variability(x, valid), cov


@feature("hour_entropy_presence", family=FAMILY, unit="ratio", category=Category.PRESENCE,
         null_semantics="null without any presence event",
         citation="Shannon 1948; Eagle & Pentland 2009 (behavioural entropy)",
         reason="Spread of home activity over the day")  # fmt: skip
def hour_entropy_presence(w: Window) -> Result:
    """How spread over the local day door/motion events are (0 = one hour, 1 = uniform).

    Formula: -Σ_h p_h ln p_h / ln 24, p_h = share of events at local hour h
    Window: 30, 90 days. Unit: ratio. Category: presence.
    """
    x, valid, cov = _presence(w)
    return hour_entropy(np.where(valid, x, 0.0), w.hod), cov


@feature("autocorr_24h_presence", family=FAMILY, unit="correlation", category=Category.PRESENCE,
         null_semantics="null with too few valid hour pairs 24 h apart",
         citation="Box & Jenkins 1976; docs/features.md",
         reason="Day-to-day repetition of home activity")  # fmt: skip
def autocorr_24h_presence(w: Window) -> Result:
    """Lag-24 h autocorrelation of hourly door/motion activity (same time tomorrow).

    Formula: r_24 = mean_pairs((x_t - x̄)(x_{t+24} - x̄)) / var(x)
    Window: 30, 90 days. Unit: correlation. Category: presence.
    """
    x, valid, cov = _presence(w)
    return autocorrelation(x, valid, 24), cov


@feature("autocorr_168h_presence", family=FAMILY, unit="correlation", category=Category.PRESENCE,
         null_semantics="null with too few valid hour pairs a week apart",
         citation="Box & Jenkins 1976; docs/features.md",
         reason="Week-to-week repetition of home activity")  # fmt: skip
def autocorr_168h_presence(w: Window) -> Result:
    """Lag-168 h autocorrelation of hourly door/motion activity (same time next week).

    Formula: r_168 = mean_pairs((x_t - x̄)(x_{t+168} - x̄)) / var(x)
    Window: 30, 90 days. Unit: correlation. Category: presence.
    """
    x, valid, cov = _presence(w)
    return autocorrelation(x, valid, 168), cov


@feature("daily_event_cv_presence", family=FAMILY, unit="ratio", category=Category.PRESENCE,
         null_semantics="null with < 2 days of presence data or no events",
         citation="docs/features.md (CV of daily counts)",
         reason="Day-to-day swings in home activity")  # fmt: skip
def daily_event_cv_presence(w: Window) -> Result:
    """Coefficient of variation of daily door/motion event counts.

    Formula: CV = sd(c_d) / μ(c_d) over local days d with presence data (population sd)
    Window: 30, 90 days. Unit: ratio. Category: presence.
    """
    x, valid, cov = _presence(w)
    daily = w.daily_sum(np.where(valid, x, 0.0))
    day_ok = w.daily_any(w.has(*PRESENCE_SIGNALS))
    return coefficient_of_variation(daily, day_ok), cov


def _event_time_offset(
    first: F64, first_off: F64, last: F64, last_off: F64, value: float = 1.0
) -> F64:
    """Seconds into the hour of an event (a reading equal to ``value``, 1 for a 0→1 change):
    the first reading if it has the value, else the last one (the change happened within
    the hour), else the middle of the hour. Swap the ends for the hour's last such event."""
    return np.where(first == value, first_off, np.where(last == value, last_off, 1800.0))


def _circular_sums(users: I64, tod: F64, n_users: int) -> tuple[F64, F64, F64]:
    """[U] count, Σ cos θ and Σ sin θ of each user's times of day ``tod`` (θ = 2π·t/24 h)."""
    theta = 2.0 * np.pi * tod / 24.0
    k = np.bincount(users, minlength=n_users).astype(np.float64)
    c: F64 = np.bincount(users, weights=np.cos(theta), minlength=n_users).astype(np.float64)
    s: F64 = np.bincount(users, weights=np.sin(theta), minlength=n_users).astype(np.float64)
    return k, c, s


def per_user_circular_variance(w: Window, users: I64, tod: F64, min_days: int = 1) -> F64:
    """[U] circular variance 1 - |mean_k e^{iθ_k}|, θ_k = 2π·t_k/24 h, of each user's event
    times ``tod`` (local hours); NaN with fewer than ``min_days`` events."""
    k, c, s = _circular_sums(users, tod, w.U)
    with np.errstate(invalid="ignore", divide="ignore"):
        value = np.maximum(0.0, 1.0 - np.hypot(c, s) / k)
    return np.where(k >= max(1, min_days), value, np.nan)


def daily_event_times(
    w: Window, signal: str, value: float, *, last: bool = False, day_starts_h: float = 0.0
) -> tuple[I64, F64, I64]:
    """(user, local time of day in hours, weekday 0 = Monday) of each user's first (or, with
    ``last``, last) reading equal to ``value`` (0 or 1) per day, a day running from local
    ``day_starts_h`` to the same time the next day (04:00 keeps a night's events with the
    evening before; 12:00 keeps a bedtime after midnight with its evening). Only days whose
    first (last) event the window can hold count.

    Inside an hour's bin the exact time is the first (last) reading when it has ``value``,
    else the other end's, else the middle of the hour (the rollups keep only those)."""
    key = ("daily_event_times", signal, value, last, day_starts_h)
    if key in w._cache:
        return w._cache[key]  # type: ignore[return-value]
    b, _, _ = w.series(signal)
    m = (b.max == value) if value == 1 else (b.min == value)
    u, h = b.u[m], b.h[m] - w.c0
    if last:  # the hour's last such reading: look from its end
        off = _event_time_offset(b.last[m], b.last_off[m], b.first[m], b.first_off[m], value)
    else:
        off = _event_time_offset(b.first[m], b.first_off[m], b.last[m], b.last_off[m], value)
    t = w.tod[u, h] + off / 3600.0
    early = (t < day_starts_h).astype(np.int64)  # still the previous day's
    day = w.day[u, h] - early + 1  # ≥ 0
    # A day cut by the window has an unknown first (last) event: its start is before the
    # window (the day before its first local day), or its end after T (the last hour's day,
    # unless that hour closes it).
    if last:
        end_tod = w.tod[:, -1]
        open_day = w.day[:, -1] - (end_tod < day_starts_h) + 1
        open_day[(end_tod + 1.0) % 24.0 == day_starts_h % 24.0] = -1
        whole = day != open_day[u]
    else:
        whole = day >= 1
    u, h, off, t, early, day = u[whole], h[whole], off[whole], t[whole], early[whole], day[whole]
    weekday = (w.chunk.grid.weekday[:, w.c0 :][u, h] - early) % 7
    group = u * (w.D + 1) + day
    order = np.lexsort((h + off / 3600.0, group))
    if last:
        order = order[::-1]
    pick = np.ones(order.size, dtype=bool)
    pick[1:] = group[order][1:] != group[order][:-1]
    chosen = order[pick]
    out = (u[chosen], t[chosen] % 24.0, weekday[chosen])
    w._cache[key] = out
    return out


@feature("first_door_open_circvar", family=FAMILY, unit="ratio", category=Category.PRESENCE,
         null_semantics="null without any door opening",
         citation="Fisher 1993, Statistical Analysis of Circular Data; "
                  "docs/features.md",
         reason="Variation in the time of the first door opening")  # fmt: skip
def first_door_open_circvar(w: Window) -> Result:
    """Circular variance of the local time of the first door opening of each day.

    Formula: 1 - |mean_d e^{iθ_d}|, θ_d = 2π·t_d/24 h, t_d = local time of day's first open
    Window: 30, 90 days. Unit: ratio (0 = same time every day). Category: presence.
    """
    users, tod, _ = daily_event_times(w, "contact_open", 1)
    return per_user_circular_variance(w, users, tod), w.day_coverage(w.has("contact_open"))


# Phone routine: wake-up, bedtime and the weekday commute, from what the phone itself reports,
# so a household member without home sensors shows their own routine (docs/features.md).
WAKE_DAY_STARTS_H = 4.0  # a screen-on at 02:00 belongs to the night before, not to the wake-up
BEDTIME_DAY_STARTS_H = 12.0  # a bedtime after midnight belongs to the evening before
MIN_ROUTINE_DAYS = 2  # one day has no variance to speak of
SLEEP_REGULARITY = (
    "Phillips et al. 2017, Sci. Rep. 7:3216 (sleep regularity); Fisher 1993 (circular variance)"
)


def _circvar_of_days(w: Window, signal: str, value: float, *, last: bool, starts_h: float,
                     weekdays_only: bool = False) -> Result:  # fmt: skip
    users, tod, weekday = daily_event_times(w, signal, value, last=last, day_starts_h=starts_h)
    if weekdays_only:
        keep = weekday < 5
        users, tod = users[keep], tod[keep]
    value_ = per_user_circular_variance(w, users, tod, MIN_ROUTINE_DAYS)
    return value_, w.day_coverage(w.has(signal))


@feature("wake_time_circvar", family=FAMILY, unit="ratio", category=Category.USAGE,
         null_semantics="null with fewer than 2 days with a screen-on",
         citation=SLEEP_REGULARITY,
         reason="Irregular wake-up time")  # fmt: skip
def wake_time_circvar(w: Window) -> Result:
    """Circular variance of the wake-up time: the first screen-on of each day from 04:00.

    Formula: 1 - |mean_d e^{iθ_d}|, θ_d = 2π·t_d/24 h, t_d = local time of the day's first
    screen_on = 1 (days run 04:00-04:00)
    Window: 30, 90 days. Unit: ratio (0 = same time every day). Category: usage.
    """
    return _circvar_of_days(w, "screen_on", 1, last=False, starts_h=WAKE_DAY_STARTS_H)


@feature("bedtime_circvar", family=FAMILY, unit="ratio", category=Category.USAGE,
         null_semantics="null with fewer than 2 days with a screen-off",
         citation=SLEEP_REGULARITY,
         reason="Irregular bedtime")  # fmt: skip
def bedtime_circvar(w: Window) -> Result:
    """Circular variance of the bedtime: the last screen-off of each day from noon to noon.

    Formula: 1 - |mean_d e^{iθ_d}|, θ_d = 2π·t_d/24 h, t_d = local time of the last
    screen_on = 0 of the day (days run 12:00-12:00)
    Window: 30, 90 days. Unit: ratio (0 = same time every night). Category: usage.
    """
    return _circvar_of_days(w, "screen_on", 0, last=True, starts_h=BEDTIME_DAY_STARTS_H)


def _circular_mean_h(users: I64, tod: F64, n_users: int) -> tuple[F64, F64]:
    """[U] circular mean time of day (hours) and count of ``tod`` per user."""
    k, c, s = _circular_sums(users, tod, n_users)
    return (np.arctan2(s, c) * 24.0 / (2.0 * np.pi)) % 24.0, k


@feature("weekend_wake_shift_h", family=FAMILY, unit="hours", category=Category.USAGE,
         null_semantics="null with fewer than 2 weekend or 2 weekday wake-ups",
         citation="Wittmann et al. 2006, Chronobiol. Int. 23(1-2):497-509 (social jetlag); "
                  "here on wake-up time",
         reason="Wake-up time shifts on weekends")  # fmt: skip
def weekend_wake_shift_h(w: Window) -> Result:
    """How far the weekend wake-up time is from the weekday one (social jetlag).

    Formula: |circmean(t_d, Saturday/Sunday) - circmean(t_d, Monday-Friday)| on the 24 h
    circle, t_d = local time of the day's first screen_on = 1 (days run 04:00-04:00)
    Window: 30, 90 days. Unit: hours (0-12). Category: usage.
    """
    users, tod, weekday = daily_event_times(w, "screen_on", 1, day_starts_h=WAKE_DAY_STARTS_H)
    weekend = weekday >= 5
    end_mean, end_k = _circular_mean_h(users[weekend], tod[weekend], w.U)
    week_mean, week_k = _circular_mean_h(users[~weekend], tod[~weekend], w.U)
    shift = np.abs(end_mean - week_mean)
    shift = np.minimum(shift, 24.0 - shift)
    ok = (end_k >= MIN_ROUTINE_DAYS) & (week_k >= MIN_ROUTINE_DAYS)
    return np.where(ok, shift, np.nan), w.day_coverage(w.has("screen_on"))


@feature("weekday_departure_circvar", family=FAMILY, unit="ratio", category=Category.LOCATION,
         null_semantics="null with fewer than 2 weekdays with a home-region leave",
         citation="Fisher 1993 (circular variance); docs/features.md (commute regularity)",
         reason="Irregular time of leaving home on weekdays")  # fmt: skip
def weekday_departure_circvar(w: Window) -> Result:
    """Circular variance of the time the phone first leaves its home region on weekdays.

    Formula: 1 - |mean_d e^{iθ_d}|, θ_d = 2π·t_d/24 h, t_d = local time of the weekday's first
    region_event = 0 (leave; days run 04:00-04:00, Monday-Friday)
    Window: 30, 90 days. Unit: ratio (0 = same time every weekday). Category: location.
    """
    return _circvar_of_days(w, "region_event", 0, last=False, starts_h=WAKE_DAY_STARTS_H,
                            weekdays_only=True)  # fmt: skip


@feature("weekday_return_circvar", family=FAMILY, unit="ratio", category=Category.LOCATION,
         null_semantics="null with fewer than 2 weekdays with a home-region enter",
         citation="Fisher 1993 (circular variance); docs/features.md (commute regularity)",
         reason="Irregular time of coming home on weekdays")  # fmt: skip
def weekday_return_circvar(w: Window) -> Result:
    """Circular variance of the time the phone last enters its home region on weekdays.

    Formula: 1 - |mean_d e^{iθ_d}|, θ_d = 2π·t_d/24 h, t_d = local time of the weekday's last
    region_event = 1 (enter; days run 04:00-04:00, Monday-Friday)
    Window: 30, 90 days. Unit: ratio (0 = same time every weekday). Category: location.
    """
    return _circvar_of_days(w, "region_event", 1, last=True, starts_h=WAKE_DAY_STARTS_H,
                            weekdays_only=True)  # fmt: skip


def charge_onsets(w: Window) -> tuple[I64, F64]:
    """(user, local time of day in hours) of every charging start (0→1) in the window.

    A start is an hour whose charging flag reaches 1 while the previous known state (last
    reading of the previous reported hour, or an earlier reading in the same hour) was 0.
    The very first reported hour only counts if the 0→1 change is seen inside it.
    """
    key = ("charge_onsets",)
    if key in w._cache:
        return w._cache[key]  # type: ignore[return-value]
    b, _, prev_last = w.series("charging")
    onset = (b.max == 1) & ((b.first == 0) | (prev_last == 0))
    off = _event_time_offset(b.first[onset], b.first_off[onset], b.last[onset], b.last_off[onset])
    users = b.u[onset]
    tod = (w.tod[users, b.h[onset] - w.c0] + off / 3600.0) % 24.0
    w._cache[key] = (users, tod)
    return users, tod


@feature("charge_start_circvar", family=FAMILY, unit="ratio", category=Category.DEVICE_HEALTH,
         null_semantics="null without any observed charging start",
         citation="Fisher 1993; docs/features.md (a plain CV breaks at midnight)",
         reason="Variation in the time the phone starts charging")  # fmt: skip
def charge_start_circvar(w: Window) -> Result:
    """Circular variance of the local time at which the phone starts charging.

    Formula: 1 - |mean_k e^{iθ_k}|, θ_k = 2π·t_k/24 h over charging starts k
    Window: 30, 90 days. Unit: ratio (0 = always the same time). Category: device_health.
    """
    users, tod = charge_onsets(w)
    return per_user_circular_variance(w, users, tod), w.day_coverage(w.has("charging"))


@feature("is_power", family=FAMILY, unit="ratio", category=Category.ENERGY,
         null_semantics="null with < 48 hours of plug power readings",
         citation=VAN_SOMEREN,
         reason="Regularity of daily power use")  # fmt: skip
def is_power(w: Window) -> Result:
    """Interdaily stability of the household's hourly mean plug power.

    Formula: IS as above over hours with power readings, x = mean power_w in the hour
    Window: 30, 90 days. Unit: ratio. Category: energy.
    """
    x = w.mean("power_w")
    valid = ~np.isnan(x)
    return interdaily_stability(x, w.hod, valid), w.day_coverage(valid)


@feature("iv_power", family=FAMILY, unit="ratio", category=Category.ENERGY,
         null_semantics="null without consecutive hours of power readings",
         citation=VAN_SOMEREN,
         reason="Fragmentation of power use")  # fmt: skip
def iv_power(w: Window) -> Result:
    """Intradaily variability of hourly mean plug power (consecutive reported hours).

    Formula: IV as above, x = mean power_w in the hour
    Window: 30, 90 days. Unit: ratio. Category: energy.
    """
    x = w.mean("power_w")
    valid = ~np.isnan(x)
    return intradaily_variability(x, valid), w.day_coverage(valid)


@feature("hour_entropy_screen", family=FAMILY, unit="ratio", category=Category.USAGE,
         null_semantics="null without any screen-on reading",
         citation="Shannon 1948; Eagle & Pentland 2009",
         reason="Spread of phone screen use over the day")  # fmt: skip
def hour_entropy_screen(w: Window) -> Result:
    """How spread over the local day screen-on readings are (0 = one hour, 1 = uniform).

    Formula: -Σ_h p_h ln p_h / ln 24, p_h = share of screen-on readings at local hour h
    Window: 30, 90 days. Unit: ratio. Category: usage.
    """
    return hour_entropy(w.sum("screen_on"), w.hod), w.day_coverage(w.has("screen_on"))
