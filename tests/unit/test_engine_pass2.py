"""Pure pieces of the engine's pass 2 (features.engine.load, features.engine.bins): key
lookups, recomputed rows as columns and the backfill memo's version bounds."""

from __future__ import annotations

import numpy as np

from features.engine import load
from features.engine.bins import add_numeric_rows, columns_of, numeric_from_arrays


def test_find_gives_each_needle_its_index_or_minus_one() -> None:
    haystack = np.array([40, 10, 30], dtype=np.int64)  # any order
    needles = np.array([30, 5, 10, 41, 40, 30], dtype=np.int64)
    assert load._find(haystack, needles).tolist() == [2, -1, 1, -1, 0, 2]
    assert load._find(haystack[:0], needles).tolist() == [-1] * 6


def test_recomputed_rows_become_typed_columns_and_none_becomes_nan() -> None:
    rows = [(0, 1, 2, 3, 2, 5.0, 1.0, 4.0, 1.0, 4.0, 0.5, None)]
    cols = columns_of("numeric", rows)
    assert cols["d"].dtype == np.int64 and cols["h"].tolist() == [3]
    assert np.isnan(cols["last_off"][0]) and cols["sum"].dtype == np.float64
    empty = columns_of("categorical")
    assert set(empty) == {"u", "d", "s", "h", "value", "share", "n"}
    assert all(v.size == 0 for v in empty.values())


def test_kept_bins_are_followed_by_the_recomputed_ones() -> None:
    z = np.zeros(3, dtype=np.int64)
    bins = numeric_from_arrays(
        {
            "u": z,
            "d": np.array([0, 1, 2]),
            "s": z,
            "h": np.array([5, 6, 7]),
            "n": np.ones(3),
            "sum": np.array([1.0, 2.0, 3.0]),
            **{k: np.ones(3) for k in ("min", "max", "first", "last")},
            "bucket": z,
            "first_time": z,
            "last_time": z,
        }
    )
    added = columns_of("numeric", [(0, 1, 0, 6, 2, 9.0, 4.0, 5.0, 4.0, 5.0, 0.0, 1.0)])
    out = add_numeric_rows(bins, added, np.array([True, False, True]))
    assert out.d.tolist() == [0, 2, 1] and out.sum.tolist() == [1.0, 3.0, 9.0]
    assert out.n.tolist() == [1.0, 1.0, 2.0]


def test_a_key_whose_versions_would_overflow_is_left_to_be_recomputed() -> None:
    code = np.array([3, 7, np.iinfo(np.int64).max // load._COUNTS + 1], dtype=np.int64)
    bounds = np.array([0, 2, 5, 6], dtype=np.int64)
    times = np.arange(6, dtype=np.int64)
    kept = load._versionable(code, bounds, times)
    assert kept[0].tolist() == [3, 7]
    assert kept[1].tolist() == [0, 2, 5] and kept[2].tolist() == [0, 1, 2, 3, 4]
    fitting = load._versionable(code[:2], bounds[:3], times[:5])
    assert [a.tolist() for a in fitting] == [[3, 7], [0, 2, 5], [0, 1, 2, 3, 4]]
