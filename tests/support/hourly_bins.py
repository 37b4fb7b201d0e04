"""Hand-built hourly bins: readings aggregated exactly as the rollups do (n, min, max, first,
last and the offsets of the first and last reading), so a feature's inputs without a database.
The grid is UTC (local time = UTC) and day 0 is a Monday."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from features.catalogue.library.base import CategoricalBins, Chunk, LocalGrid, NumericBins
from features.engine.bins import SIGNAL_INDEX
from features.engine.grid import GRID_DAYS
from hearth.signals import Category

G = GRID_DAYS * 24
T = G * 3600.0  # T on the hour, at the grid end; times are seconds from the grid start
HOUR = 3600.0
DAY = 86400.0


@dataclass
class Fleet:
    """Users with devices and readings; ``chunk()`` bins them like the rollup job."""

    kinds: list[str] = field(default_factory=list)
    owners: list[int] = field(default_factory=list)
    retired_before_t: list[float] = field(default_factory=list)  # hours before T, NaN = not
    seen_before_grid: list[bool] = field(default_factory=list)
    rows: list[tuple[int, int, str, float, float]] = field(default_factory=list)
    n_users: int = 1

    def device(
        self, kind: str, user: int = 0, *, retired_h: float = math.nan, old: bool = False
    ) -> int:
        self.kinds.append(kind)
        self.owners.append(user)
        self.retired_before_t.append(retired_h)
        self.seen_before_grid.append(old)
        self.n_users = max(self.n_users, user + 1)
        return len(self.kinds) - 1

    def every(
        self,
        d: int,
        period_s: float,
        start: float,
        end: float = T,
        signal: str = "power_w",
        value: float = 1.0,
        skip: tuple[float, float] | None = None,
    ) -> None:
        for t in np.arange(start, end, period_s):
            if skip is None or not skip[0] <= t < skip[1]:
                self.at(d, float(t), signal, value)

    def at(self, d: int, t: float, signal: str = "power_w", value: float = 1.0) -> None:
        if t < T:
            self.rows.append((self.owners[d], d, signal, t, value))

    def chunk(self, consented: bool = True) -> Chunk:
        frame = pd.DataFrame(self.rows, columns=["u", "d", "signal", "t", "v"])
        frame["s"] = frame["signal"].map(SIGNAL_INDEX)
        frame["h"] = (frame["t"] // HOUR).astype(np.int64)
        frame = frame.sort_values("t")
        g = frame.groupby(["u", "d", "s", "h"], sort=True)
        agg = g.agg(
            n=("v", "size"), sum=("v", "sum"), min=("v", "min"), max=("v", "max"),
            first=("v", "first"), last=("v", "last"), t0=("t", "min"), t1=("t", "max"),
        ).reset_index()  # fmt: skip
        ints = {k: agg[k].to_numpy(np.int64) for k in ("u", "d", "s", "h")}
        floats = {k: agg[k].to_numpy(np.float64) for k in ("n", "sum", "min", "max")}
        numeric = NumericBins(
            **ints, **floats,
            first=agg["first"].to_numpy(np.float64), last=agg["last"].to_numpy(np.float64),
            first_off=(agg["t0"] - agg["h"] * HOUR).to_numpy(np.float64),
            last_off=(agg["t1"] - agg["h"] * HOUR).to_numpy(np.float64),
        )  # fmt: skip
        z = np.zeros(0, dtype=np.int64)
        first_h = np.full(len(self.kinds), np.nan)
        for d in range(len(self.kinds)):
            ts = frame.loc[frame["d"] == d, "h"]
            if self.seen_before_grid[d]:
                first_h[d] = -500.0
            elif len(ts):
                first_h[d] = float(ts.min())
        hours = np.arange(G)
        U = self.n_users
        return Chunk(
            n_users=U,
            hours=G,
            numeric=numeric,
            categorical=CategoricalBins(z, z, z, z, z, z.astype(float), z.astype(float)),
            categorical_values=[],
            grid=LocalGrid(
                tod=np.tile((hours % 24).astype(np.float64), (U, 1)),
                day=np.tile(hours // 24, (U, 1)),
                weekday=np.tile((hours // 24) % 7, (U, 1)),
            ),
            signal_index=SIGNAL_INDEX,
            first_seen_hours=np.full(U, np.nan),
            consented={c: np.full(U, consented) for c in Category},
            device_kinds=self.kinds,
            device_owner=np.array(self.owners, dtype=np.int64),
            device_first_seen_hours=G - first_h,
            device_retired_hours=np.array(self.retired_before_t, dtype=np.float64),
            as_of_hours=float(G),
        )
