"""What every feature function sees: one window of hourly bins for a batch of users.

The engine loads a chunk of users' hourly bins (rollups, or raw rows recomputed as of T) into
flat numpy record arrays once. :class:`Window` turns them, lazily and cached, into dense
``[users, hours]`` matrices in each user's *local* time, so a feature is a few vectorised numpy
operations over the whole chunk and never a Python loop over rows.

Conventions for feature functions (bandicoot style: one small function per feature, its
docstring gives formula, window, unit, data category and citation):

* signature ``f(w: Window) -> Result`` with ``value[u]`` (NaN means *no value*, reported as
  null) and ``coverage[u]`` in [0, 1] (share of the window's local days with the inputs the
  feature needs). Missing data is never a silent zero.
* every input is read through ``w`` by signal name; the engine has already removed signals
  whose category the user had not consented to at T, so a withdrawn category simply looks like
  a category with no data (null, coverage 0).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np
import numpy.typing as npt

from features.catalogue.library.sightings import Sightings
from hearth.signals import Category

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]
Bool = npt.NDArray[np.bool_]
Result = tuple[F64, F64]

NUMERIC_FIELDS = ("n", "sum", "min", "max", "first", "last", "first_off", "last_off")


@dataclass(frozen=True)
class NumericBins:
    """Flat records of numeric hourly bins: one per (user, device, signal, hour) with data."""

    u: I64  # user index in the chunk
    d: I64  # device index in the chunk
    s: I64  # signal index (features.engine.bins.SIGNAL_INDEX)
    h: I64  # hour index in the 90-day grid
    n: F64
    sum: F64
    min: F64
    max: F64
    first: F64
    last: F64
    first_off: F64  # seconds from bucket start to the first reading
    last_off: F64

    def select(self, mask: Bool) -> NumericBins:
        return NumericBins(**{k: getattr(self, k)[mask] for k in self.__dataclass_fields__})

    def take(self, rows: I64) -> NumericBins:
        """The bins at ``rows`` (indexes), in that order."""
        return NumericBins(**{k: getattr(self, k)[rows] for k in self.__dataclass_fields__})


@dataclass(frozen=True)
class CategoricalBins:
    u: I64
    d: I64
    s: I64
    h: I64
    code: I64  # index into the chunk's ``values`` list
    share: F64
    n: F64


@dataclass(frozen=True)
class LocalGrid:
    """Local clock of each grid hour for each user: time of day, local day, weekday."""

    tod: F64  # [U, H] local time of day (hours, fractional for :30 zones) at bucket start
    day: I64  # [U, H] local calendar day index, 0 = first local day of the 90-day grid
    weekday: I64  # [U, H] 0 = Monday


class DeviceSeries:
    """Per-device matrices ``[S, H]`` of one signal, built lazily per statistic.

    ``owner[s]`` is the series' user index, ``device[s]`` its chunk device index.
    """

    _STATS = ("n", "first", "last", "min", "max", "first_off", "last_off")

    def __init__(self, bins: NumericBins, c0: int, H: int) -> None:
        dev_ids, series = np.unique(bins.d, return_inverse=True)
        self.device: I64 = dev_ids.astype(np.int64)
        self.owner: I64 = np.zeros(dev_ids.size, dtype=np.int64)
        self.owner[series] = bins.u
        self._bins = bins
        self._flat = series.ravel() * H + (bins.h - c0)
        self._shape = (int(dev_ids.size), H)
        self._mats: dict[str, F64] = {}

    def _mat(self, stat: str) -> F64:
        if stat not in self._mats:
            m = np.full(self._shape[0] * self._shape[1], 0.0 if stat == "n" else np.nan)
            m[self._flat] = getattr(self._bins, stat)
            self._mats[stat] = m.reshape(self._shape)
        return self._mats[stat]

    @property
    def n(self) -> F64:
        return self._mat("n")

    @property
    def first(self) -> F64:
        return self._mat("first")

    @property
    def last(self) -> F64:
        return self._mat("last")

    @property
    def min(self) -> F64:
        return self._mat("min")

    @property
    def max(self) -> F64:
        return self._mat("max")

    @property
    def first_off(self) -> F64:
        return self._mat("first_off")

    @property
    def last_off(self) -> F64:
        return self._mat("last_off")


@dataclass
class Chunk:
    """Everything loaded for a chunk of users for one as-of time (90-day grid of H90 hours)."""

    n_users: int
    hours: int  # H90
    numeric: NumericBins
    categorical: CategoricalBins
    categorical_values: list[str]
    grid: LocalGrid
    signal_index: dict[str, int]
    first_seen_hours: F64  # [U] hours from first-ever reading (≤ T) to T; NaN if never
    consented: dict[Category, Bool]  # [U] per category: consent active at T, not withdrawn since
    device_kinds: list[str]  # kind of each chunk device index
    device_owner: I64  # [n_devices] user index of each chunk device
    # [n_devices] hours from the device's first-ever reading (≤ T) to T; NaN if never
    device_first_seen_hours: F64
    # [n_devices] hours from the device's retirement to T; NaN if not retired by T
    device_retired_hours: F64
    as_of_hours: float  # T in grid hours from the grid start (hours - 1 < as_of_hours ≤ hours)
    # [U] per category: consented at T but withdrawn since (so not in ``consented``)
    withdrawn: dict[Category, Bool] = field(default_factory=dict)
    # Shared-network sightings of the chunk's users and their neighbours (features.engine.graph);
    # None: not loaded, the relationship features are null.
    sightings: Sightings | None = None
    _cache: dict[tuple[object, ...], object] = field(default_factory=dict)

    @property
    def n_devices(self) -> int:
        return len(self.device_kinds)


class Window:
    """The last ``days`` days of a chunk's grid, with cached per-signal matrices."""

    def __init__(self, chunk: Chunk, days: int) -> None:
        self.chunk = chunk
        self.days = days
        self.U = chunk.n_users
        self.H = min(chunk.hours, days * 24)
        self.c0 = chunk.hours - self.H  # first grid column of this window
        self._cache: dict[tuple[object, ...], object] = {}

    # --- local clock ------------------------------------------------------------------------

    @cached_property
    def tod(self) -> F64:
        return self.chunk.grid.tod[:, self.c0 :]

    @cached_property
    def hod(self) -> I64:
        """Local hour of day 0..23 of each bin."""
        return np.floor(self.tod).astype(np.int64) % 24

    @cached_property
    def day(self) -> I64:
        d = self.chunk.grid.day[:, self.c0 :]
        return d - d[:, :1]

    @cached_property
    def D(self) -> int:
        return int(self.day.max()) + 1 if self.day.size else 0

    @cached_property
    def days_per_user(self) -> F64:
        out: F64 = (self.day.max(axis=1) + 1).astype(np.float64)
        return out

    @cached_property
    def _flat_day(self) -> I64:
        return (np.arange(self.U)[:, None] * self.D + self.day).ravel()

    def daily_sum(self, x: F64) -> F64:
        """[U, D] sum of an [U, H] matrix per local day (NaN treated as 0)."""
        w = np.nan_to_num(x, nan=0.0).ravel()
        out: F64 = np.bincount(self._flat_day, weights=w, minlength=self.U * self.D).astype(
            np.float64
        )
        return out.reshape(self.U, self.D)

    def daily_min(self, x: F64) -> F64:
        """[U, D] minimum per local day, NaN where the day has no value."""
        out = np.full(self.U * self.D, np.inf)
        v = x.ravel()
        ok = ~np.isnan(v)
        np.minimum.at(out, self._flat_day[ok], v[ok])
        out[np.isinf(out)] = np.nan
        return out.reshape(self.U, self.D)

    @cached_property
    def _day_runs(self) -> tuple[I64, I64] | None:
        """Start of each run of hours of one (user, local day) in the flattened [U, H] grid,
        and its u·D + day; None if a day comes back after another (never in practice)."""
        flat = self._flat_day
        starts = np.flatnonzero(np.r_[True, flat[1:] != flat[:-1]]) if flat.size else flat
        slots = flat[starts]
        return (starts, slots) if bool(np.all(slots[1:] > slots[:-1])) else None

    def daily_any(self, mask: Bool) -> Bool:
        """[U, D] whether any hour of the local day is set in ``mask``."""
        runs = self._day_runs
        if runs is None or not runs[0].size:
            counts = np.bincount(self._flat_day[mask.ravel()], minlength=self.U * self.D)
            return counts.reshape(self.U, self.D) > 0
        out = np.zeros(self.U * self.D, dtype=bool)
        out[runs[1]] = np.logical_or.reduceat(mask.ravel(), runs[0])
        return out.reshape(self.U, self.D)

    def day_coverage(self, has_data: Bool) -> F64:
        """Share of the user's local days in the window with data (``has_data`` [U, H])."""
        days = self.daily_any(has_data).sum(axis=1)
        return np.asarray(days / np.maximum(self.days_per_user, 1.0), dtype=np.float64)

    # --- numeric signals -------------------------------------------------------------------

    def _rows(self, signal: str) -> I64:
        """Indexes (chunk order) of the signal's numeric bins in the window."""
        key = ("rows", signal)
        if key not in self._cache:
            c, nb = self.chunk, self.chunk.numeric
            sid = c.signal_index.get(signal, -1)
            rows = c._cache.get(("rows", sid))  # the signal's bins: shared by the windows
            if rows is None:
                rows = c._cache[("rows", sid)] = np.flatnonzero(nb.s == sid)
            assert isinstance(rows, np.ndarray)
            self._cache[key] = rows[nb.h[rows] >= self.c0]
        return self._cache[key]  # type: ignore[return-value]

    def _column(self, signal: str, name: str) -> npt.NDArray[Any]:
        """One field of :meth:`_bins` without gathering the others."""
        key = ("column", signal, name)
        if key not in self._cache:
            self._cache[key] = getattr(self.chunk.numeric, name)[self._rows(signal)]
        return self._cache[key]  # type: ignore[return-value]

    def _bins(self, signal: str) -> NumericBins:
        key = ("bins", signal)
        if key not in self._cache:
            fields = NumericBins.__dataclass_fields__
            self._cache[key] = NumericBins(**{k: self._column(signal, k) for k in fields})
        return self._cache[key]  # type: ignore[return-value]

    def _user_matrix(self, signal: str, stat: str) -> F64:
        key = ("user", signal, stat)
        if key in self._cache:
            return self._cache[key]  # type: ignore[return-value]
        if stat not in NUMERIC_FIELDS:
            raise KeyError(stat)
        b = _Columns(self, signal)
        flat = b.u * self.H + (b.h - self.c0)
        size = self.U * self.H
        if stat in ("n", "sum"):
            out = np.bincount(flat, weights=getattr(b, stat), minlength=size)
        elif flat.size < 2 or bool(np.all(flat[1:] > flat[:-1])):
            # One bin per cell (one device per user sends the signal): nothing to choose.
            out = np.full(size, np.nan)
            out[flat] = getattr(b, stat)
        elif stat in ("min", "max"):
            # Sorted by (cell, value): the last entry of each cell is its max, the first its min.
            vals = getattr(b, stat)
            order = np.lexsort((vals, flat))
            fs = flat[order]
            take = np.ones(order.size, dtype=bool)
            if stat == "max":
                take[:-1] = fs[1:] != fs[:-1]
            else:
                take[1:] = fs[1:] != fs[:-1]
            out = np.full(size, np.nan)
            out[fs[take]] = vals[order][take]
        elif stat in ("first", "first_off", "last", "last_off"):
            # Across a user's devices: the reading earliest (first) / latest (last) in the hour.
            if stat.startswith("first"):
                order = np.lexsort((b.first_off, flat))
                take = np.ones(order.size, dtype=bool)
                take[1:] = flat[order][1:] != flat[order][:-1]
            else:
                order = np.lexsort((b.last_off, flat))
                take = np.ones(order.size, dtype=bool)
                take[:-1] = flat[order][1:] != flat[order][:-1]
            idx = order[take]
            out = np.full(size, np.nan)
            out[flat[idx]] = getattr(b, stat)[idx]
        else:
            raise KeyError(stat)
        matrix: F64 = np.asarray(out, dtype=np.float64).reshape(self.U, self.H)
        self._cache[key] = matrix
        return matrix

    def n(self, signal: str) -> F64:
        """Readings per hour (0 where none)."""
        return self._user_matrix(signal, "n")

    def sum(self, signal: str) -> F64:
        return self._user_matrix(signal, "sum")

    def mean(self, signal: str) -> F64:
        """Hourly mean of the readings, NaN where the hour has none."""
        n = self.n(signal)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(n > 0, self.sum(signal) / n, np.nan)

    def min(self, signal: str) -> F64:
        return self._user_matrix(signal, "min")

    def max(self, signal: str) -> F64:
        return self._user_matrix(signal, "max")

    def has(self, *signals: str) -> Bool:
        """[U, H] whether any of ``signals`` has a reading in the hour."""
        key = ("has", *signals)
        if key not in self._cache:
            out = np.zeros((self.U, self.H), dtype=bool)
            for s in signals:
                u, h = self._column(s, "u"), self._column(s, "h")
                out.ravel()[u * self.H + (h - self.c0)] = True
            self._cache[key] = out
        return self._cache[key]  # type: ignore[return-value]

    def series(self, signal: str) -> tuple[NumericBins, Bool, F64]:
        """The signal's bins sorted by (device, hour), whether each bin's previous one is of
        the same device, and that previous bin's ``last`` value (NaN for a device's first).

        Transitions (charging starts, reboots, outages, setpoint changes) are then one
        vectorised comparison over the sparse bins instead of dense matrices."""
        key = ("series", signal)
        if key not in self._cache:
            b = self._bins(signal)
            order = np.lexsort((b.h, b.d))
            b = NumericBins(**{k: getattr(b, k)[order] for k in b.__dataclass_fields__})
            same = np.zeros(order.size, dtype=bool)
            same[1:] = b.d[1:] == b.d[:-1]
            prev_last = np.full(order.size, np.nan)
            prev_last[1:] = b.last[:-1]
            prev_last[~same] = np.nan
            self._cache[key] = (b, same, prev_last)
        return self._cache[key]  # type: ignore[return-value]

    def per_user(self, users: I64, weights: F64 | Bool | None = None) -> F64:
        """Sum of ``weights`` (default 1) per user index."""
        w = None if weights is None else np.asarray(weights, dtype=np.float64)
        return np.bincount(users, weights=w, minlength=self.U).astype(np.float64)

    def devices(self, signal: str) -> DeviceSeries:
        """Per-device ``[S, H]`` matrices of one signal (only devices that sent it)."""
        key = ("dev", signal)
        if key not in self._cache:
            self._cache[key] = DeviceSeries(self._bins(signal), self.c0, self.H)
        return self._cache[key]  # type: ignore[return-value]

    # --- categorical signals ---------------------------------------------------------------

    def codes(self, signal: str) -> I64:
        """[U, H] dominant value code per hour across the user's devices; -1 where none."""
        key = ("cat", signal)
        if key in self._cache:
            return self._cache[key]  # type: ignore[return-value]
        c = self.chunk.categorical
        sid = self.chunk.signal_index.get(signal, -1)
        m = (c.s == sid) & (c.h >= self.c0)
        flat = c.u[m] * self.H + (c.h[m] - self.c0)
        weight = c.n[m] * c.share[m]
        code = c.code[m]
        # Several devices in one hour: the value with most readings wins (ties: lowest code).
        order = np.lexsort((code, -weight, flat))
        take = np.ones(order.size, dtype=bool)
        take[1:] = flat[order][1:] != flat[order][:-1]
        out = np.full(self.U * self.H, -1, dtype=np.int64)
        out[flat[order[take]]] = code[order[take]]
        codes: I64 = out.reshape(self.U, self.H)
        self._cache[key] = codes
        return codes

    @property
    def values(self) -> list[str]:
        return self.chunk.categorical_values


class _Columns:
    """Attribute access to :meth:`Window._column` (the fields of a signal's bins, gathered
    only when read)."""

    def __init__(self, w: Window, signal: str) -> None:
        self._w, self._signal = w, signal

    def __getattr__(self, name: str) -> npt.NDArray[Any]:
        return self._w._column(self._signal, name)


# --- helpers shared by families -------------------------------------------------------------


def circular_variance(theta_hours: F64, valid: Bool) -> F64:
    """Row-wise 1 - |mean(e^{iθ})| with θ = 2π·t/24h over valid entries; NaN if none."""
    theta = 2.0 * np.pi * np.where(valid, theta_hours, 0.0) / 24.0
    k = valid.sum(axis=1)
    c = np.where(valid, np.cos(theta), 0.0).sum(axis=1)
    s = np.where(valid, np.sin(theta), 0.0).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        r = np.hypot(c, s) / k
    return np.where(k > 0, np.maximum(0.0, 1.0 - r), np.nan)


def coefficient_of_variation(x: F64, valid: Bool, min_count: int = 2) -> F64:
    """Row-wise population std / mean over valid entries; NaN with < min_count or mean 0."""
    k = valid.sum(axis=1)
    xv = np.where(valid, x, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = xv.sum(axis=1) / k
        var = np.where(valid, (x - mean[:, None]) ** 2, 0.0).sum(axis=1) / k
        cv = np.sqrt(var) / mean
    return np.where((k >= min_count) & (mean > 0), cv, np.nan)


FeatureFn = Callable[[Window], Result]


@dataclass(frozen=True)
class FeatureSpec:
    """Metadata attached to a feature function by :func:`feature`."""

    base_name: str
    family: str
    unit: str
    category: Category
    windows: tuple[int, ...]
    null_semantics: str
    citation: str
    fn: FeatureFn
    # What the feature measures, in a few words an applicant understands (a reason code's text,
    # docs/book.md). Presentation, not computation: the feature-set version does not hash it.
    reason: str = ""


SPECS: list[FeatureSpec] = []


def feature(
    name: str,
    *,
    family: str,
    unit: str,
    category: Category,
    windows: tuple[int, ...] = (30, 90),
    null_semantics: str = "null when the window has no input data",
    citation: str = "",
    reason: str = "",
) -> Callable[[FeatureFn], FeatureFn]:
    """Register a feature function (one definition per window: ``<name>_<w>d``). ``reason``
    names what it measures for an applicant ("Nights the phone charged overnight"): the text
    of its reason codes."""

    def register(fn: FeatureFn) -> FeatureFn:
        SPECS.append(
            FeatureSpec(name, family, unit, category, windows, null_semantics, citation, fn, reason)
        )
        return fn

    return register
