"""What the engine hands out: vectors of feature cells, and where the time went.

One meaning per name: a :class:`FeatureCell` is one feature's value, coverage and, when consent
nulls it, the reason (the cell of :mod:`hearth.vectors`); a :class:`FeatureVector` holds a cell
for every feature of one feature set, for one user as of one time. Their JSON text, and the
way back from it, is :mod:`features.snapshots.codec`.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from datetime import datetime

from hearth.vectors import CellReason, cell


@dataclass(frozen=True)
class FeatureCell:
    value: float | None
    coverage: float
    reason: CellReason | None = None  # why the value is null by consent (hearth.vectors)


@dataclass(frozen=True)
class FeatureVector:
    user_id: str
    as_of: datetime
    feature_set_version: str
    computed_at: datetime
    values: dict[str, FeatureCell] = field(default_factory=dict)

    def vector_json(self) -> dict[str, dict[str, object]]:
        """The ``feature_snapshots.vector`` shape, {name: :func:`hearth.vectors.cell`}; as
        JSON text: :func:`features.snapshots.codec.cells_json`."""
        return {k: cell(v.value, v.coverage, v.reason) for k, v in self.values.items()}


@dataclass
class Timings:
    """Where the time went (the benchmark prints the split). Thread-safe: with loader
    connections the next chunks are read while this one is computed, so loads overlap each
    other and the computing, and the sums can exceed the wall time."""

    sql_s: float = 0.0
    python_s: float = 0.0
    graph_s: float = 0.0  # loading the household graph's sightings (features.engine.graph)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, *, sql_s: float = 0.0, python_s: float = 0.0, graph_s: float = 0.0) -> None:
        with self._lock:
            self.sql_s += sql_s
            self.python_s += python_s
            self.graph_s += graph_s
