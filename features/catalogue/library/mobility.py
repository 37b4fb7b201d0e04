"""Mobility: how far and how variously the phone moves (hourly dominant geohash cells)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from features.catalogue.library.base import F64, I64, Result, Window, feature
from features.catalogue.library.residential import _location
from hearth.signals import Category

FAMILY = "mobility"
EARTH_RADIUS_KM = 6371.0088
_BASE32 = "0123456789bcdefghjkmnpqrstuvwxyz"


_DIGIT = np.full(0x110000 >> 8, -1, dtype=np.int64)  # code point → base-32 digit (-1: none)
_DIGIT[[ord(c) for c in _BASE32]] = np.arange(len(_BASE32))


def geohash_centres(hashes: Sequence[str]) -> tuple[F64, F64]:
    """(lat, lon) in degrees of the centre of each geohash cell (NaN for an invalid hash).

    Geohash (Niemeyer 2008): base-32 digits whose bits, most significant first, alternately
    halve the longitude range [-180, 180] and the latitude range [-90, 90]; the centre is the
    middle of the last ranges. Every hash is halved at once, bit by bit, with the same float
    operations one hash at a time would do (a chunk's dictionary holds thousands of values).
    """
    n = len(hashes)
    lengths = np.array([len(h) for h in hashes], dtype=np.int64)
    width = max(int(lengths.max()) if n else 0, 1)
    points = np.array(hashes, dtype=f"<U{width}").view(np.uint32).reshape(n, width)
    digits = np.where(points < _DIGIT.size, _DIGIT[np.minimum(points, _DIGIT.size - 1)], -1)
    inside = np.arange(width) < lengths[:, None]
    valid = np.flatnonzero(~((digits < 0) & inside).any(axis=1))
    digits, inside = digits[valid], inside[valid]
    ranges = {False: [np.full(valid.size, -90.0), np.full(valid.size, 90.0)],  # latitude
              True: [np.full(valid.size, -180.0), np.full(valid.size, 180.0)]}  # fmt: skip
    even = True  # the first bit halves the longitude
    for j in range(int(lengths[valid].max()) if valid.size else 0):
        for bit in (16, 8, 4, 2, 1):
            lo, hi = ranges[even]
            mid = (lo + hi) / 2
            up = (digits[:, j] & bit) != 0
            np.copyto(lo, mid, where=inside[:, j] & up)
            np.copyto(hi, mid, where=inside[:, j] & ~up)
            even = not even
    lat, lon = np.full(n, np.nan), np.full(n, np.nan)
    lat[valid] = (ranges[False][0] + ranges[False][1]) / 2
    lon[valid] = (ranges[True][0] + ranges[True][1]) / 2
    return lat, lon


def geohash_centre(geohash: str) -> tuple[float, float]:
    """(lat, lon) of the centre of a geohash cell (NaN, NaN for an invalid hash)."""
    lat, lon = geohash_centres([geohash])
    return float(lat[0]), float(lon[0])


def _centres(w: Window) -> tuple[F64, F64]:
    key = ("centres",)
    cache = w.chunk._cache
    if key not in cache:
        lat, lon = geohash_centres(w.values)
        cache[key] = (np.radians(lat), np.radians(lon))
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
