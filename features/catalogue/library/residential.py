"""Residential stability: where the household sleeps, and how long it has slept there.

Home is the modal night-time geohash (local 22:00-06:00). Hourly location bins hold the
dominant geohash of the hour (rollups), so "time at a place" is counted in located hours.
"""

from __future__ import annotations

import numpy as np

from features.catalogue.library.base import I64, Bool, Result, Window, feature
from hearth.signals import Category

FAMILY = "residential"
NIGHT_HOURS = (22, 23, 0, 1, 2, 3, 4, 5)
CITATION = "Blumenstock et al. 2015 (home detection from night-time locations); docs/features.md"


def modal_code(row: I64, code: I64, n_rows: int) -> I64:
    """For each row id in 0..n_rows-1 the most frequent code (ties: smallest); -1 if none."""
    out = np.full(n_rows, -1, dtype=np.int64)
    if row.size == 0:
        return out
    k = int(code.max()) + 1
    keys, counts = np.unique(row * k + code, return_counts=True)
    rows, codes = keys // k, keys % k
    order = np.lexsort((codes, -counts, rows))
    first = np.ones(order.size, dtype=bool)
    first[1:] = rows[order][1:] != rows[order][:-1]
    out[rows[order][first]] = codes[order][first]
    return out


def _location(w: Window) -> tuple[I64, Bool, I64]:
    """Geohash codes [U, H], night mask, night id [U, H] (0.. , nights shifted by one day)."""
    key = ("loc",)
    if key not in w._cache:
        codes = w.codes("geohash")
        night = np.isin(w.hod, NIGHT_HOURS) & (codes >= 0)
        # Hours after midnight belong to the night that started the previous evening.
        nid = w.day - (w.hod < 12) + 1  # +1 keeps the night before the first day at 0
        w._cache[key] = (codes, night, nid)
    return w._cache[key]  # type: ignore[return-value]


def home_code(w: Window) -> I64:
    """[U] modal night-time geohash code of the window, -1 without night fixes."""
    codes, night, _ = _location(w)
    u = np.broadcast_to(np.arange(w.U)[:, None], codes.shape)
    return modal_code(u[night], codes[night], w.U)


def _nightly(w: Window) -> tuple[I64, Bool, int]:
    """[U, N] share-at-home-test per night: modal night code, nights with fixes, N nights."""
    codes, night, nid = _location(w)
    n_nights = w.D + 1
    u = np.broadcast_to(np.arange(w.U)[:, None], codes.shape)
    row = (u * n_nights + nid)[night]
    modal = modal_code(row, codes[night], w.U * n_nights).reshape(w.U, n_nights)
    return modal, modal >= 0, n_nights


@feature("home_night_share", family=FAMILY, unit="ratio", category=Category.LOCATION,
         null_semantics="null without night-time location fixes", citation=CITATION,
         reason="Nights spent at home")  # fmt: skip
def home_night_share(w: Window) -> Result:
    """Share of observed nights whose modal night-time geohash is home.

    Formula: |{nights n : mode(night fixes_n) = home}| / |{nights with fixes}|
    Window: 30, 90 days. Unit: ratio. Category: location.
    """
    home = home_code(w)
    modal, observed, _ = _nightly(w)
    k = observed.sum(axis=1)
    at_home = (observed & (modal == home[:, None])).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        value = at_home / k
    cov = np.minimum(1.0, k / np.maximum(w.days_per_user, 1.0))
    return np.where(k > 0, value, np.nan), cov


@feature("home_time_share", family=FAMILY, unit="ratio", category=Category.LOCATION,
         null_semantics="null without location fixes", citation=CITATION,
         reason="Time spent at home")  # fmt: skip
def home_time_share(w: Window) -> Result:
    """Share of located hours spent at the home geohash.

    Formula: |{located hours at home}| / |{located hours}|
    Window: 30, 90 days. Unit: ratio. Category: location.
    """
    codes, _, _ = _location(w)
    home = home_code(w)
    located = codes >= 0
    k = located.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        value = (located & (codes == home[:, None])).sum(axis=1) / k
    return np.where((k > 0) & (home >= 0), value, np.nan), w.day_coverage(located)


def _weekly_homes(w: Window) -> tuple[I64, Bool, int]:
    modal, observed, n_nights = _nightly(w)
    n_weeks = (n_nights + 6) // 7
    u = np.broadcast_to(np.arange(w.U)[:, None], modal.shape)
    week = np.broadcast_to(np.arange(n_nights)[None, :] // 7, modal.shape)
    row = (u * n_weeks + week)[observed]
    weekly = modal_code(row, modal[observed], w.U * n_weeks).reshape(w.U, n_weeks)
    return weekly, weekly >= 0, n_weeks


def _home_changes(w: Window) -> tuple[Result, Result]:
    weekly, observed, n_weeks = _weekly_homes(w)
    changes = np.zeros(w.U)
    last_change_week = np.full(w.U, -1)
    first_week = np.where(observed.any(axis=1), observed.argmax(axis=1), -1)
    prev = np.full(w.U, -1)
    for k in range(n_weeks):  # a few weeks: a loop over columns, vectorised over users
        cur = weekly[:, k]
        changed = observed[:, k] & (prev >= 0) & (cur != prev)
        changes += changed
        last_change_week = np.where(changed, k, last_change_week)
        prev = np.where(observed[:, k], cur, prev)
    has = first_week >= 0
    cov = observed.sum(axis=1) / float(n_weeks)
    since_week = np.where(last_change_week >= 0, last_change_week, first_week)
    days_since = (w.D + 1) - since_week * 7.0
    return (
        (np.where(has, changes, np.nan), cov),
        (np.where(has, np.clip(days_since, 0, w.days), np.nan), cov),
    )


@feature("home_changes", family=FAMILY, unit="count", category=Category.LOCATION,
         null_semantics="null without night-time location fixes", citation=CITATION,
         reason="Changes of home location")  # fmt: skip
def home_changes(w: Window) -> Result:
    """How often the weekly home (modal night geohash of a local week) changed.

    Formula: |{consecutive observed weeks w, w' : home_w ≠ home_w'}|
    Window: 30, 90 days. Unit: count. Category: location.
    """
    return _home_changes(w)[0]


@feature("days_since_home_change", family=FAMILY, unit="days", category=Category.LOCATION,
         null_semantics="null without night fixes; censored at the window start (no change "
         "seen: days since the first observed week)", citation=CITATION,
         reason="Time since the last change of home")  # fmt: skip
def days_since_home_change(w: Window) -> Result:
    """Days since the week in which the weekly home last changed (censored at the window).

    Formula: T - start(week of last change), or T - start(first observed week) if none
    Window: 30, 90 days. Unit: days. Category: location.
    """
    return _home_changes(w)[1]
