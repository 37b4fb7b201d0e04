"""The one encoder and decoder of feature vectors as JSON.

The shape: a vector is ``{name: cell}`` with a cell (:func:`hearth.vectors.cell`) for every
feature of its feature set — ``feature_snapshots.vector``, and the ``"features"`` of every
document the service sends. An engine :class:`~features.engine.FeatureVector` gives it as
dicts (``vector_json()``); this module turns vectors into JSON text and back.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from features.engine import FeatureCell, FeatureVector
from hearth.vectors import CellReason

Cells = Mapping[str, Mapping[str, object]]  # {name: cell}, parsed


def cells_json(vector: FeatureVector) -> str:
    """A vector's cells as JSON text (a non-finite number is an error, never ``NaN``)."""
    return json.dumps(vector.vector_json(), allow_nan=False)


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


def document_json(head: Mapping[str, object], cells_json: str | None) -> str:
    """``head`` as a JSON object with ``"features": <cells_json>`` (null without cells)
    appended, splicing text already encoded (a stored snapshot's) instead of parsing it."""
    text = json.dumps(head)
    if cells_json is None:
        return text[:-1] + ',"features":null}'
    return text[:-1] + ',"features":' + cells_json + "}"
