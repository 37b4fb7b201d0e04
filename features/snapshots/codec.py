"""The one encoder and decoder of feature vectors as JSON.

The shape: a vector is ``{name: cell}`` with a cell (:func:`hearth.vectors.cell`) for every
feature of its feature set — ``feature_snapshots.vector``, and the ``"features"`` of every
document the service sends. An engine :class:`~features.engine.FeatureVector` gives it as
dicts (``vector_json()``); this module turns vectors, one by one or a computed chunk's at a
time, into JSON text, and back.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import numpy as np

from features.catalogue import DEFINITIONS
from features.engine import REASON_CODES, ChunkResults, FeatureCell, FeatureVector
from hearth.vectors import CellReason, reason_suffix

Cells = Mapping[str, Mapping[str, object]]  # {name: cell}, parsed
_REASON_TEXT = [reason_suffix(r) for r in REASON_CODES]  # by ChunkResults reason code


def cells_json(vector: FeatureVector) -> str:
    """A vector's cells as JSON text (a non-finite number is an error, never ``NaN``)."""
    return json.dumps(vector.vector_json(), allow_nan=False)


def chunk_cells_json(results: dict[str, tuple[np.ndarray, np.ndarray]], n_users: int) -> list[str]:
    """The cells of each user of a computed chunk as JSON text: exactly what ``json.dumps``
    gives for {name: hearth.vectors.cell(value, coverage, reason)} (floats by ``repr``,
    non-finite values as null), written column by column instead of a dict per user (the
    materialisation's hot path)."""
    reasons = results.reasons if isinstance(results, ChunkResults) else {}
    columns = []
    for d in DEFINITIONS:
        values, coverage = results[d.name]
        finite = np.isfinite(values).tolist()
        shown = [repr(v) if ok else "null" for v, ok in zip(values.tolist(), finite, strict=True)]
        codes = reasons.get(d.name)
        why = [_REASON_TEXT[k] for k in codes.tolist()] if codes is not None else [""] * len(shown)
        head = json.dumps(d.name) + ': {"value": '
        columns.append(
            [
                f'{head}{v}, "coverage": {c!r}{r}}}'
                for v, c, r in zip(shown, np.round(coverage, 6).tolist(), why, strict=True)
            ]
        )
    return ["{" + ", ".join(row) + "}" for row in zip(*columns, strict=True)][:n_users]


def decode_cells(cells: Cells | str) -> dict[str, FeatureCell]:
    """Cells, parsed or as JSON text, as :class:`~features.engine.FeatureCell` values."""
    data: dict[str, Any] = cells if isinstance(cells, dict) else json.loads(str(cells))
    return {
        k: FeatureCell(
            v.get("value"),
            float(v.get("coverage", 0.0)),
            CellReason(v["reason"]) if v.get("reason") else None,
        )
        for k, v in data.items()
    }


def decode_vector(
    user_id: str, as_of: datetime, version: str, computed_at: datetime, cells: Cells | str
) -> FeatureVector:
    """A stored or served vector back as an engine :class:`~features.engine.FeatureVector`."""
    return FeatureVector(user_id, as_of, version, computed_at, decode_cells(cells))


def document_json(head: Mapping[str, object], cells_text: str | None) -> str:
    """``head`` as a JSON object with ``"features": <cells_text>`` (null without cells)
    appended, splicing text already encoded (a stored snapshot's) instead of parsing it."""
    text = json.dumps(head)
    if cells_text is None:
        return text[:-1] + ',"features":null}'
    return text[:-1] + ',"features":' + cells_text + "}"


def cells_columns(
    texts: Sequence[str | None], names: Sequence[str]
) -> tuple[np.ndarray, np.ndarray]:
    """Vectors as JSON text (None: no vector) → (values, coverage), ``[len(texts),
    len(names)]`` float64 arrays in ``names`` order; NaN for a null value, a missing feature or
    no vector (coverage 0 then). For bulk reads (the export), without a cell object per value."""
    values = np.full((len(texts), len(names)), np.nan)
    coverage = np.zeros((len(texts), len(names)))
    for i, text in enumerate(texts):
        if text is None:
            continue
        cells: dict[str, Any] = json.loads(text)
        row_v, row_c = values[i], coverage[i]
        for j, name in enumerate(names):
            cell = cells.get(name)
            if cell is None:
                continue
            value = cell.get("value")
            if value is not None:
                row_v[j] = value
            row_c[j] = cell.get("coverage", 0.0)
    return values, coverage
