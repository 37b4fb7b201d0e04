"""The pure parts of historical resolution (features.service.resolve.bulk): the probe's answer
decoded (rows go back to their places whatever order the database aggregated them in, and no
snapshot is NO_TIME, never a time), layout runs, the ids' array text, and the consent step of
each row's time."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

import numpy as np
import pytest

from features.service.resolve.bulk import (
    NO_TIME,
    _last_at_or_before,
    array_literal,
    decode_probe,
    runs_of,
    to_us,
)
from features.snapshots.codec import LAYOUT, STORED

PG_EPOCH_US = to_us(datetime(2000, 1, 1, tzinfo=UTC))


def _answer(
    order: list[int], at_us: Sequence[int | None]
) -> tuple[bytes, bytes, bytes, bytes, bytes, str]:
    """The probe's six byte strings for rows arriving in ``order`` (indexes into ``at_us``):
    row i's values are all i, its coverage all i / 10, its withheld ``{"i": i}``."""
    times = [at_us[i] for i in order]
    wire = [NO_TIME if t is None else t - PG_EPOCH_US for t in times]
    vals = np.concatenate([np.full(LAYOUT.width, i, dtype=STORED) for i in order])
    covs = np.concatenate([np.full(LAYOUT.width, i / 10, dtype=STORED) for i in order])
    return (
        (np.array(order, dtype=np.int64) + 1).astype(">i8").tobytes(),
        np.array(wire, dtype=np.int64).astype(">i8").tobytes(),
        np.array(wire, dtype=np.int64).astype(">i8").tobytes(),
        vals.astype(STORED).tobytes(),
        covs.astype(STORED).tobytes(),
        "\n".join(f'{{"i": {i}}}' for i in order),
    )


def test_rows_aggregated_out_of_order_go_back_to_their_places() -> None:
    at = [to_us(datetime(2026, 3, d, tzinfo=UTC)) for d in (1, 2, 3, 4)]
    at_out, computed, values, coverage, withheld = decode_probe(_answer([2, 0, 3, 1], at), 4)
    assert at_out.tolist() == at
    assert computed.tolist() == at
    assert values[:, 0].tolist() == [0.0, 1.0, 2.0, 3.0]
    assert np.allclose(coverage[:, -1], [0.0, 0.1, 0.2, 0.3])
    assert withheld == ['{"i": 0}', '{"i": 1}', '{"i": 2}', '{"i": 3}']


def test_a_row_without_a_snapshot_has_no_time() -> None:
    at = [to_us(datetime(2026, 3, 1, tzinfo=UTC)), None]
    at_out, computed, _, _, _ = decode_probe(_answer([0, 1], at), 2)
    assert at_out.tolist() == [at[0], NO_TIME]
    assert computed.tolist() == [at[0], NO_TIME]


def test_a_missing_or_repeated_row_is_refused() -> None:
    at = [to_us(datetime(2026, 3, d, tzinfo=UTC)) for d in (1, 2, 3)]
    with pytest.raises(RuntimeError, match="misaligned"):
        decode_probe(_answer([0, 0, 2], at), 3)  # row 1 never came, row 0 twice
    with pytest.raises(RuntimeError, match="misaligned"):
        decode_probe(_answer([0, 1], at), 3)


def test_runs_group_adjacent_positions() -> None:
    assert runs_of(np.array([7, 0, 2, 1, 9, 8], dtype=np.intp)) == ((0, 3), (7, 3))
    assert runs_of(np.array([5], dtype=np.intp)) == ((5, 1),)


def test_an_array_literal_quotes_every_id() -> None:
    assert array_literal(["a", "NULL", "x:y-1.2"]) == '{"a","NULL","x:y-1.2"}'


def test_the_last_step_at_or_before_each_time_is_found_exactly() -> None:
    """Against a brute-force search, on random steps (distinct times per user, as the
    database gives them) and times (on a step, and one µs either side)."""
    rng = np.random.default_rng(7)
    for _ in range(300):
        users, steps = int(rng.integers(1, 6)), int(rng.integers(0, 11))
        su = rng.integers(0, users, steps)
        sa = rng.choice(np.arange(10) * 1000, steps, replace=False)
        order = np.lexsort((sa, su))
        su, sa = su[order].astype(np.int64), sa[order].astype(np.int64)
        rows = rng.integers(0, users, 20).astype(np.int64)
        times = (rng.integers(-1, 11, 20) * 1000 + rng.integers(-1, 2, 20)).astype(np.int64)
        found = _last_at_or_before(su, sa, rows, times)
        for i in range(20):
            at_or_before = [j for j in range(steps) if su[j] == rows[i] and sa[j] <= times[i]]
            assert found[i] == (at_or_before[-1] if at_or_before else -1)
