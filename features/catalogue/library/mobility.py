"""Mobility: how far and how variously the phone moves (hourly dominant geohash cells)."""

from __future__ import annotations

import numpy as np

from features.catalogue.library.base import F64, I64, Result, Window, feature
from features.catalogue.library.residential import _location
from hearth.signals import Category

FAMILY = "mobility"
EARTH_RADIUS_KM = 6371.0088
_BASE32 = "0123456789bcdefghjkmnpqrstuvwxyz"


def geohash_centre(geohash: str) -> tuple[float, float]:
    """(lat, lon) of the centre of a geohash cell (NaN, NaN for an invalid hash)."""
    lat, lon = [-90.0, 90.0], [-180.0, 180.0]
    even = True
    for ch in geohash:
        v = _BASE32.find(ch)
        if v < 0:
            return float("nan"), float("nan")
        for bit in (16, 8, 4, 2, 1):
            rng = lon if even else lat
            mid = (rng[0] + rng[1]) / 2
            if v & bit:
                rng[0] = mid
            else:
                rng[1] = mid
            even = not even
    return (lat[0] + lat[1]) / 2, (lon[0] + lon[1]) / 2


def _centres(w: Window) -> tuple[F64, F64]:
    key = ("centres",)
    cache = w.chunk._cache
    if key not in cache:
        pts = np.array([geohash_centre(v) for v in w.values] or np.zeros((0, 2)))
        cache[key] = (np.radians(pts[:, 0]), np.radians(pts[:, 1]))
    return cache[key]  # type: ignore[return-value]


def haversine_km(lat1: F64, lon1: F64, lat2: F64, lon2: F64) -> F64:
    """Great-circle distance (radians in, km out)."""
    a = (
        np.sin((lat2 - lat1) / 2) ** 2
        + np.cos(lat1) * np.cos(lat2) * np.sin((lon2 - lon1) / 2) ** 2
    )
    return np.asarray(2 * EARTH_RADIUS_KM * np.arcsin(np.sqrt(np.clip(a, 0, 1))))


def _place_counts(w: Window) -> tuple[I64, I64, F64]:
    """(user, code, located hours) for every place a user visited in the window."""
    key = ("places",)
    if key not in w._cache:
        codes, _, _ = _location(w)
        located = codes >= 0
        u = np.broadcast_to(np.arange(w.U)[:, None], codes.shape)[located]
        k = max(len(w.values), 1)
        keys, counts = np.unique(u * k + codes[located], return_counts=True)
        w._cache[key] = (keys // k, keys % k, counts.astype(np.float64))
    return w._cache[key]  # type: ignore[return-value]


def _coverage(w: Window) -> F64:
    codes, _, _ = _location(w)
    return w.day_coverage(codes >= 0)


@feature("radius_of_gyration_km", family=FAMILY, unit="km", category=Category.LOCATION,
         null_semantics="null without location fixes",
         citation="González, Hidalgo & Barabási 2008, Nature 453:779 (bandicoot's version adds "
         "each term twice; this one does not)",
         reason="Range of everyday movement")  # fmt: skip
def radius_of_gyration_km(w: Window) -> Result:
    """Radius of gyration of located hours around their centre of mass (cell centres).

    Formula: r_g = √(Σ_j w_j d(l_j, l_cm)² / Σ_j w_j), w_j = located hours at place j,
    l_cm = weighted mean latitude/longitude, d = haversine distance
    Window: 30, 90 days. Unit: km. Category: location.
    """
    users, codes, hours = _place_counts(w)
    lat, lon = _centres(w)
    plat, plon = lat[codes], lon[codes]
    tot = np.bincount(users, weights=hours, minlength=w.U)
    with np.errstate(invalid="ignore", divide="ignore"):
        clat = np.bincount(users, weights=hours * plat, minlength=w.U) / tot
        clon = np.bincount(users, weights=hours * plon, minlength=w.U) / tot
        d = haversine_km(plat, plon, clat[users], clon[users])
        rg = np.sqrt(np.bincount(users, weights=hours * d**2, minlength=w.U) / tot)
    return np.where(tot > 0, rg, np.nan), _coverage(w)


@feature("location_entropy", family=FAMILY, unit="ratio", category=Category.LOCATION,
         null_semantics="null without location fixes; 0 with a single place",
         citation="Eagle & Pentland 2009; de Montjoye et al. 2016 (bandicoot)",
         reason="Spread of time across places")  # fmt: skip
def location_entropy(w: Window) -> Result:
    """Normalised entropy of time spent across places (0 = one place, 1 = uniform).

    Formula: -Σ_j p_j ln p_j / ln K, p_j = located-hour share of place j, K places (K = 1 → 0)
    Window: 30, 90 days. Unit: ratio. Category: location.
    """
    users, _, hours = _place_counts(w)
    tot = np.bincount(users, weights=hours, minlength=w.U)
    k = np.bincount(users, minlength=w.U)
    p = hours / tot[users]
    ent = np.bincount(users, weights=-p * np.log(p), minlength=w.U)
    with np.errstate(invalid="ignore", divide="ignore"):
        value = np.where(k > 1, ent / np.log(np.maximum(k, 2)), 0.0)
    return np.where(tot > 0, value, np.nan), _coverage(w)


@feature("places_80pct", family=FAMILY, unit="count", category=Category.LOCATION,
         null_semantics="null without location fixes",
         citation="González et al. 2008; docs/features.md",
         reason="Places that hold most of the time")  # fmt: skip
def places_80pct(w: Window) -> Result:
    """Fewest places that together hold 80 % of located hours.

    Formula: min{k : Σ_{j ≤ k} p_(j) ≥ 0.8}, places sorted by time share descending
    Window: 30, 90 days. Unit: count. Category: location.
    """
    users, _, hours = _place_counts(w)
    order = np.lexsort((-hours, users))
    u, h = users[order], hours[order]
    tot = np.bincount(users, weights=hours, minlength=w.U)
    cum = np.cumsum(h)
    start = np.concatenate([[0.0], np.cumsum(np.bincount(u, weights=h, minlength=w.U))])[u]
    share = (cum - start) / np.where(tot[u] > 0, tot[u], 1)
    # places needed = 1 + number of places before the cumulative share reaches 0.8
    below = np.bincount(u, weights=(share < 0.8 - 1e-12).astype(float), minlength=w.U)
    return np.where(tot > 0, below + 1, np.nan), _coverage(w)


@feature("week_churn", family=FAMILY, unit="ratio", category=Category.LOCATION,
         null_semantics="null with fewer than two consecutive weeks of fixes",
         citation="Óskarsdóttir et al. 2019 (mobility churn); docs/features.md",
         reason="Week-to-week change in places visited")  # fmt: skip
def week_churn(w: Window) -> Result:
    """Mean week-to-week change of the place-visit profile.

    Formula: mean_w [1 - cos(f_w, f_{w+1})], f_w = located hours per place in local week w
    Window: 30, 90 days. Unit: ratio (0 = same places each week). Category: location.
    """
    codes, _, _ = _location(w)
    located = codes >= 0
    n_weeks = (w.D + 6) // 7
    k = max(len(w.values), 1)
    u = np.broadcast_to(np.arange(w.U)[:, None], codes.shape)[located]
    week = (w.day // 7)[located]
    keys, counts = np.unique((u * n_weeks + week) * k + codes[located], return_counts=True)
    cnt = counts.astype(np.float64)
    uw = keys // k
    norm2 = np.bincount(uw, weights=cnt**2, minlength=w.U * n_weeks)
    nxt = keys + k  # same user and place, next week
    pos = np.searchsorted(keys, nxt)
    pos_ok = pos < keys.size
    match = pos_ok & (keys[np.minimum(pos, keys.size - 1)] == nxt)
    dot = np.zeros(w.U * n_weeks)
    np.add.at(dot, uw[match], cnt[match] * cnt[np.minimum(pos, keys.size - 1)][match])
    norm2_w = norm2.reshape(w.U, n_weeks)
    dot_w = dot.reshape(w.U, n_weeks)
    both = (norm2_w[:, :-1] > 0) & (norm2_w[:, 1:] > 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        churn = 1.0 - dot_w[:, :-1] / np.sqrt(norm2_w[:, :-1] * norm2_w[:, 1:])
    npairs = both.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        value = np.where(both, churn, 0.0).sum(axis=1) / npairs
    return np.where(npairs > 0, np.maximum(value, 0.0), np.nan), _coverage(w)
