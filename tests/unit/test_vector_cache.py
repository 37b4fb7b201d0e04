"""The service's vector cache keeps each vector's cells rendered once, and drops expired
entries; a cached outcome's cells are exactly what rendering its packed vector gives."""

from __future__ import annotations

import time
from dataclasses import replace
from datetime import UTC, datetime

import numpy as np

from features.service.cache import VectorCache
from features.service.resolve.vectors import Outcome, features_json, vector_json
from features.snapshots.codec import CATALOGUE_COLUMNS, LAYOUT, STORED, PackedVector


def _outcome(seed: int, withheld: str = "{}") -> Outcome:
    rng = np.random.default_rng(seed)
    values = rng.random(LAYOUT.width) * 10
    values[rng.random(LAYOUT.width) < 0.2] = np.nan
    coverage = np.round(rng.random(LAYOUT.width), 6)
    vector = PackedVector(
        values.astype(STORED).tobytes(), coverage.astype(STORED).tobytes(), withheld
    )
    at = datetime(2026, 1, 1, tzinfo=UTC)
    return Outcome(f"u{seed}", at, True, source="snapshot", computed_at=at, vector=vector)


def test_cached_cells_are_the_rendered_vector() -> None:
    plain = [_outcome(1), _outcome(2, '{"location": "consent_withdrawn"}'), _outcome(3)]
    missing = Outcome("gone", plain[0].as_of, True, reason="unknown_user")
    texts = features_json([*plain, missing])
    assert texts[-1] is None
    rendered = [replace(o, cells=t) for o, t in zip(plain, texts[:3], strict=True)]
    # all features: the outcome's own cells; a mix of rendered and not keeps the order
    assert features_json([rendered[0], plain[1], missing, rendered[2]]) == [
        texts[0], texts[1], None, texts[2],
    ]  # fmt: skip
    assert features_json(rendered, CATALOGUE_COLUMNS.copy()) == texts[:3]
    for o, r in zip(plain, rendered, strict=True):
        assert vector_json(r, "v", False) == vector_json(o, "v", False)
    # a selection of features is rendered from the vector, never from the cells
    columns = CATALOGUE_COLUMNS[:5]
    assert features_json(rendered, columns) == features_json(plain, columns)
    assert features_json(rendered, columns)[0] != texts[0]


def test_put_drops_expired_entries() -> None:
    cache: VectorCache[int] = VectorCache(100, ttl_s=0.05)
    cache.listening = True
    for i in range(10):
        cache.put(i, i, cache.generation)
    assert len(cache) == 10
    time.sleep(0.06)
    cache.put("new", 1, cache.generation)
    assert len(cache) == 1
    assert cache.get("new") == 1
