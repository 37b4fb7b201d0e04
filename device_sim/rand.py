"""Fast scalar random draws for per-event loops.

numpy's ``Generator`` costs microseconds per scalar call; the simulator draws millions of
scalars. :class:`FastRandom` pulls uniforms from a seeded generator in blocks and derives the
other distributions from them in plain Python — same determinism, ~10x cheaper per draw.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TypeVar

import numpy as np

T = TypeVar("T")
_BLOCK = 4096


class FastRandom:
    def __init__(self, rng: np.random.Generator) -> None:
        self._rng = rng
        self._buf: list[float] = []
        self._pos = 0
        self._normals: list[float] = []
        self._npos = 0

    def random(self) -> float:
        if self._pos >= len(self._buf):
            self._buf = self._rng.random(_BLOCK).tolist()
            self._pos = 0
        value = self._buf[self._pos]
        self._pos += 1
        return value

    def uniform(self, low: float, high: float) -> float:
        return low + (high - low) * self.random()

    def integers(self, low: int, high: int) -> int:
        """Integer in [low, high)."""
        return low + min(high - low - 1, int(self.random() * (high - low)))

    def normal(self, mean: float = 0.0, sd: float = 1.0) -> float:
        if self._npos >= len(self._normals):
            self._normals = self._rng.standard_normal(_BLOCK).tolist()
            self._npos = 0
        value = self._normals[self._npos]
        self._npos += 1
        return mean + sd * value

    def exponential(self, mean: float) -> float:
        return -mean * math.log(1.0 - self.random())

    def poisson(self, lam: float) -> int:
        if lam <= 0:
            return 0
        if lam > 30:  # normal approximation; never needed at the default budget
            return max(0, round(self.normal(lam, math.sqrt(lam))))
        limit = math.exp(-lam)
        k, prod = 0, self.random()
        while prod > limit:
            k += 1
            prod *= self.random()
        return k

    def choice(self, seq: Sequence[T]) -> T:
        return seq[min(len(seq) - 1, int(self.random() * len(seq)))]
