"""The export's population sample: every k-th exported row across parts, read in batches."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from features.book import export, population, vectors

AS_OF = datetime(2026, 1, 1, tzinfo=UTC)


def test_sample_is_every_kth_row_across_parts_and_batches(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(population, "SAMPLE_ROWS", 1_000)  # 2,500 rows: every 3rd
    monkeypatch.setattr(export, "SAMPLE_BATCH_ROWS", 128)  # batches that straddle the steps
    rng = np.random.default_rng(5)
    sizes = [700, 0, 1_100, 701]
    entries, parts = [], []
    for i, n in enumerate(sizes):
        values = rng.normal(size=(n, len(vectors.NAMES)))
        values[rng.random(values.shape) < 0.1] = np.nan  # missing values stay missing
        parts.append(values)
        if n:
            table = pa.table({name: values[:, j] for j, name in enumerate(vectors.NAMES)})
            pq.write_table(table, tmp_path / f"part-{i}.parquet")
        entries.append({"rows": n, "file": f"part-{i}.parquet" if n else None})
    everything = np.concatenate(parts)
    step = population.sample_step(len(everything))
    assert step == 3
    expected = population.build_population(
        AS_OF,
        "v",
        len(everything),
        {name: everything[::step, j] for j, name in enumerate(vectors.NAMES)},
    )
    got = export._describe_population(tmp_path, entries, AS_OF)
    assert got.n_users == len(everything)
    assert got.grids == expected.grids
    assert all(grid is not None for grid in got.grids.values())
