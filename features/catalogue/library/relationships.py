"""Relationships: the household a user lives in, seen through the networks its members share.

Every input is a network sighting (:mod:`.sightings`): who saw which home network (a Wi-Fi
access point, or a geohash-7 at night) or daytime network (a Wi-Fi access point on a weekday's
working hours) on which local night or weekday. Nothing here reads another user's labels,
scores, defaults or feature values — only the structure of the graph (docs/invariants.md#9);
there is no label propagation.

* Two people are **co-resident** on a night when they saw one of the owner's home networks
  that night (a network the owner saw on at least :data:`LINK_NIGHTS` nights of the 90 days).
  The chunk user (the owner) is **linked** to another person over the window when they were
  co-resident on at least :data:`LINK_NIGHTS` nights of it.
* Weekly co-resident set ``S_w`` = the owner and every linked person co-resident with the owner
  on at least one night of week ``w`` (weeks of 7 nights from the window's first night); a week
  is observed when the owner saw any network at night in it.
* A **daytime link**: the owner and another person saw the same daytime network on at least
  :data:`LINK_DAYS` common weekdays; the owner's shared daytime network is the one of those on
  which the owner was seen most weekdays (not a network the owner saw at night: that is home).

No published credit-scoring result exists for household features derived from shared networks:
like the smart-home signals, they are hypotheses to be measured (IV, AUC; docs/features.md).
"""

from __future__ import annotations

import numpy as np

from features.catalogue.library.base import F64, I64, Bool, Result, Window, feature
from features.catalogue.library.sightings import (
    LINK_DAYS,
    LINK_NIGHTS,
    WORK_WEEKDAYS,
    Sightings,
)
from hearth.signals import Category

FAMILY = "relationships"
CITATION = (
    "No published credit-scoring result: a hypothesis to be measured (docs/features.md). "
    "Co-location from shared Wi-Fi: Sapiezynski et al. 2015; graph features in credit "
    "scoring (call graphs): Óskarsdóttir et al. 2019"
)
_C = Category.RELATIONSHIPS


def _first_index(rows: I64, n_rows: int) -> I64:
    """Position of each row id's first occurrence in ``rows`` (sorted); -1 if absent."""
    out = np.full(n_rows, -1, dtype=np.int64)
    if rows.size:
        first = np.ones(rows.size, dtype=bool)
        first[1:] = rows[1:] != rows[:-1]
        out[rows[first]] = np.flatnonzero(first)
    return out


class _Graph:
    """One window's view of the chunk's sightings (cached per window)."""

    def __init__(self, w: Window) -> None:
        s = w.chunk.sightings or Sightings.empty(w.U)
        U = w.U
        grid_day = w.chunk.grid.day
        self.U = U
        self.first = grid_day[:, w.c0].astype(np.int64) if U else np.zeros(0, np.int64)
        last = grid_day[:, -1].astype(np.int64) if U else np.zeros(0, np.int64)
        self.n_nights = last - self.first + 2  # the evening before the first day, ... the last
        self.n_days = last - self.first + 1
        self.NN = int(self.n_nights.max()) if U else 1
        self.K = max(1, int(s.key_wifi.size))
        self.P = max(1, len(s.people))
        o, p, k = s.owner, s.person, s.key
        n = s.slot - self.first[o] + 1
        d = s.slot - self.first[o]
        in_night = s.night & (n >= 0) & (n < self.n_nights[o])
        in_day = ~s.night & (d >= 0) & (d < self.n_days[o])
        own = p == o
        self.own_night = self._mark(o[in_night & own], n[in_night & own])
        self.own_nights = self.own_night.sum(axis=1).astype(np.float64)
        # Co-resident nights: another person saw, the same night, a home network the owner saw.
        home = s.key_home[k] if k.size else np.zeros(0, dtype=bool)
        mine = in_night & own & home
        theirs = in_night & ~own & home
        code = (o * self.K + k) * self.NN + n
        hit = theirs & np.isin(code, code[mine])
        pair_code, pair_of_row = np.unique(o[hit] * self.P + p[hit], return_inverse=True)
        self.pair_owner = pair_code // self.P
        self.pair_person = pair_code % self.P
        co = np.unique(pair_of_row.ravel() * self.NN + n[hit])
        self.co_pair, self.co_night = co // self.NN, co % self.NN
        self.linked = np.bincount(self.co_pair, minlength=pair_code.size) >= LINK_NIGHTS
        # Rows for home-network stability and daytime links.
        self._s, self._n, self._d = s, n, d
        self._in_night, self._in_day, self._own = in_night, in_day, own

    def _mark(self, rows: I64, cols: I64, width: int | None = None) -> Bool:
        out = np.zeros((self.U, width or self.NN), dtype=bool)
        out[rows, cols] = True
        return out

    def per_owner(self, pairs: Bool) -> F64:
        """Sum over the owner's pairs of a [pairs] mask."""
        return np.bincount(self.pair_owner[pairs], minlength=self.U).astype(np.float64)

    def members_by_week(self) -> tuple[Bool, Bool, I64]:
        """(observed [U, W], member [linked pairs, W], owner of each linked pair)."""
        weeks = (self.NN + 6) // 7
        observed = np.zeros((self.U, weeks), dtype=bool)
        u, n = np.nonzero(self.own_night)
        observed[u, n // 7] = True
        linked_ids = np.flatnonzero(self.linked)
        index = np.full(self.linked.size, -1, dtype=np.int64)
        index[linked_ids] = np.arange(linked_ids.size)
        member = np.zeros((linked_ids.size, weeks), dtype=bool)
        keep = self.linked[self.co_pair]
        member[index[self.co_pair[keep]], self.co_night[keep] // 7] = True
        return observed, member, self.pair_owner[linked_ids]

    def home_key(self) -> I64:
        """[U] the owner's home network: the key it saw on most nights (ties: lowest); -1."""
        s, mine = self._s, self._in_night & self._own
        keys = np.unique((s.owner[mine] * self.K + s.key[mine]) * self.NN + self._n[mine])
        owner_key, count = np.unique(keys // self.NN, return_counts=True)
        owner, key = owner_key // self.K, owner_key % self.K
        order = np.lexsort((key, -count, owner))
        out = np.full(self.U, -1, dtype=np.int64)
        first = _first_index(owner[order], self.U)
        has = first >= 0
        out[has] = key[order][first[has]]
        return out

    def home_seen(self) -> Bool:
        """[U, nights] the owner's home network was seen that night by the owner or by a
        person linked to the owner."""
        s, home = self._s, self.home_key()
        o = s.owner
        linked_people = self.pair_owner[self.linked] * self.P + self.pair_person[self.linked]
        member = self._own | np.isin(o * self.P + s.person, linked_people)
        on_home = self._in_night & member & (s.key == home[o]) & (home[o] >= 0)
        return self._mark(o[on_home], self._n[on_home])

    def daytime(self) -> tuple[F64, F64]:
        """[U] weekdays on the owner's shared daytime network, and weekdays with any daytime
        Wi-Fi sighting of the owner."""
        s, d = self._s, self._d
        o, k = s.owner, s.key
        wifi = s.key_wifi[k] if k.size else np.zeros(0, dtype=bool)
        at_night = self._in_night & self._own
        night_keys = np.unique(o[at_night] * self.K + k[at_night])
        not_home = ~np.isin(o * self.K + k, night_keys)
        day = self._in_day & wifi
        width = int(self.n_days.max()) if self.U else 1
        seen = self._mark(o[day & self._own], d[day & self._own], width).sum(axis=1)
        usable = day & not_home & (s.key_work[k] if k.size else np.zeros(0, dtype=bool))
        code = (o * self.K + k) * width + d
        mine = usable & self._own
        hit = usable & ~self._own & np.isin(code, code[mine])
        # Common weekdays per (owner, person, key); a daytime link at LINK_DAYS.
        together = np.unique(((o[hit] * self.P + s.person[hit]) * self.K + k[hit]) * width + d[hit])
        pair_key, days_together = np.unique(together // width, return_counts=True)
        linked = days_together >= LINK_DAYS
        owner_of, key_of = pair_key // self.K // self.P, pair_key % self.K
        shared_keys = np.unique(owner_of[linked] * self.K + key_of[linked])
        own_days = np.unique(code[mine])
        owner_key, count = np.unique(own_days // width, return_counts=True)
        on_shared = np.isin(owner_key, shared_keys)
        best = np.zeros(self.U)
        np.maximum.at(best, owner_key[on_shared] // self.K, count[on_shared].astype(np.float64))
        return best, seen.astype(np.float64)


def _graph(w: Window) -> _Graph:
    key = ("relationships",)
    if key not in w._cache:
        w._cache[key] = _Graph(w)
    return w._cache[key]  # type: ignore[return-value]


def _linked_data(g: _Graph) -> Bool:
    return np.asarray(g.own_nights > 0, dtype=bool)


@feature("linkable_night_share", family=FAMILY, unit="ratio", category=_C,
         null_semantics="0 means no linkable data (no night-time network seen under consent to "
         "relationships and connectivity or location), as opposed to living alone",
         citation=CITATION,
         reason="Nights with home network data")  # fmt: skip
def linkable_night_share(w: Window) -> Result:
    """Share of the window's nights on which the user saw a network that could link them.

    Formula: |{nights n : the user saw a Wi-Fi access point or geohash at night n}| / nights
    Window: 30, 90 days. Unit: ratio. Category: relationships.
    """
    g = _graph(w)
    with np.errstate(invalid="ignore", divide="ignore"):
        value = g.own_nights / np.maximum(g.n_nights, 1)
    return value, np.ones(w.U)


@feature("household_size", family=FAMILY, unit="people", category=_C,
         null_semantics="null without linkable night-time data (see linkable_night_share); "
         "1 is a measured 'lives alone, as far as consenting users show'",
         citation=CITATION,
         reason="Household size")  # fmt: skip
def household_size(w: Window) -> Result:
    """Observed household size: the user and every consenting person linked to them.

    Formula: 1 + |{v : v and the user saw a common home network on ≥ 4 nights of the window}|
    Window: 30, 90 days. Unit: people. Category: relationships.
    """
    g = _graph(w)
    size = 1.0 + g.per_owner(g.linked)
    cov = g.own_nights / np.maximum(g.n_nights, 1)
    return np.where(_linked_data(g), size, np.nan), cov


def _churn_and_tenure(w: Window) -> tuple[Result, Result]:
    g = _graph(w)
    observed, member, owner = g.members_by_week()
    weeks_of_user = np.maximum((g.n_nights + 6) // 7, 1).astype(np.float64)
    cov = observed.sum(axis=1) / weeks_of_user
    n_weeks = observed.shape[1]
    churn_sum = np.zeros(g.U)
    churn_n = np.zeros(g.U)
    prev = np.full(g.U, -1, dtype=np.int64)
    last_change = np.full(g.U, -1, dtype=np.int64)
    for k in range(n_weeks):  # ≤ 14 weeks: a loop over columns, vectorised over users and pairs
        ok = observed[:, k]
        if k + 1 < n_weeks:
            both = ok & observed[:, k + 1]
            a, b = member[:, k], member[:, k + 1]
            inter = np.bincount(owner[a & b], minlength=g.U)
            union = np.bincount(owner[a | b], minlength=g.U)
            distance = 1.0 - (1.0 + inter) / (1.0 + union)
            churn_sum += np.where(both, distance, 0.0)
            churn_n += both
        has_prev = ok & (prev >= 0)
        if member.size:
            before = member[np.arange(owner.size), np.maximum(prev[owner], 0)]
            differs = np.bincount(owner[member[:, k] != before], minlength=g.U) > 0
        else:
            differs = np.zeros(g.U, dtype=bool)
        last_change = np.where(has_prev & differs, k, last_change)
        prev = np.where(ok, k, prev)
    has = observed.any(axis=1)
    first_week = np.where(has, observed.argmax(axis=1), -1)
    since = np.where(last_change >= 0, last_change, first_week)
    tenure = np.clip(g.n_nights - 7.0 * since, 0, w.days)
    with np.errstate(invalid="ignore", divide="ignore"):
        churn = churn_sum / churn_n
    return (
        (np.where(churn_n > 0, churn, np.nan), cov),
        (np.where(has, tenure, np.nan), cov),
    )


@feature("household_churn", family=FAMILY, unit="ratio", category=_C,
         null_semantics="null without two consecutive weeks with linkable night-time data",
         citation=CITATION + "; Jaccard 1912",
         reason="Changes in who lives in the household")  # fmt: skip
def household_churn(w: Window) -> Result:
    """Mean Jaccard distance between the co-resident sets of consecutive observed weeks.

    Formula: mean over consecutive observed weeks w, w+1 of 1 - |S_w ∩ S_w+1| / |union(S_w, S_w+1)|
    (S_w: the user and the linked people co-resident with them in week w)
    Window: 30, 90 days. Unit: ratio. Category: relationships.
    """
    return _churn_and_tenure(w)[0]


@feature("household_tenure", family=FAMILY, unit="days", category=_C,
         null_semantics="null without linkable night-time data; censored at the window start "
         "(no change seen: days since the first observed week)", citation=CITATION,
         reason="Time since the household last changed")  # fmt: skip
def household_tenure(w: Window) -> Result:
    """Days since the set of co-residents last changed (censored at the window start).

    Formula: T - start(week of the last change of S_w), or T - start(first observed week)
    Window: 30, 90 days. Unit: days. Category: relationships.
    """
    return _churn_and_tenure(w)[1]


@feature("household_network_stability", family=FAMILY, unit="ratio", category=_C,
         null_semantics="null without linkable night-time data", citation=CITATION,
         reason="Nights the home network was seen")  # fmt: skip
def household_network_stability(w: Window) -> Result:
    """Share of the window's nights on which the home network was seen by any household member.

    Formula: |{nights n : the user's home network (seen on most nights) was seen at night n by
    the user or a linked person}| / nights in window
    Window: 30, 90 days. Unit: ratio. Category: relationships.
    """
    g = _graph(w)
    seen = g.home_seen().sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        value = seen / np.maximum(g.n_nights, 1)
    cov = g.own_nights / np.maximum(g.n_nights, 1)
    return np.where(_linked_data(g), value, np.nan), cov


@feature("daytime_network_regularity", family=FAMILY, unit="ratio", category=_C,
         null_semantics="null without any weekday working-hours Wi-Fi sighting; 0 when none of "
         "them is a network shared with another consenting person", citation=CITATION,
         reason="Weekdays on a shared daytime network")  # fmt: skip
def daytime_network_regularity(w: Window) -> Result:
    """Share of weekdays on which the user was on their shared daytime network.

    Formula: |{weekdays on the daytime network the user shares with someone on ≥ 3 common
    weekdays, seen on most weekdays}| / weekdays in window
    Window: 30, 90 days. Unit: ratio. Category: relationships.
    """
    g = _graph(w)
    best, seen = g.daytime()
    weekday = w.chunk.grid.weekday[:, w.c0 :]
    weekdays = w.daily_any(np.isin(weekday, WORK_WEEKDAYS)).sum(axis=1).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        value = best / weekdays
        cov = np.minimum(1.0, seen / weekdays)
    return np.where(seen > 0, value, np.nan), np.nan_to_num(cov)
