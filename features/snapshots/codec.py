"""The one encoder and decoder of feature vectors: packed (stored) and JSON (served).

Two shapes of one vector:

* **packed** — how ``feature_snapshots`` stores it (migration 0055): ``vals`` and ``covs``, one
  big-endian IEEE 754 float64 per feature in the feature set's *column order* (names sorted by
  code point: :attr:`Layout.names`), NaN where the value is null; ``withheld``, a JSON object
  ``{category: reason}`` for the categories whose features are null by consent. A batch of
  them is two ``[rows, features]`` float64 matrices, which is what the bulk paths (materialise,
  backfill, Arrow and CSV responses) work on, without a Python object per cell.
* **cells** — ``{name: cell}`` with a :func:`hearth.vectors.cell` for every feature: the
  ``"features"`` of every JSON document the service sends. An engine
  :class:`~features.engine.FeatureVector` gives them as dicts (``vector_json()``).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
import numpy.typing as npt

from features.catalogue import DEFINITIONS
from features.engine import REASON_CODES, ChunkResults, FeatureCell, FeatureVector
from hearth.vectors import CellReason, reason_suffix

Cells = Mapping[str, Mapping[str, object]]  # {name: cell}, parsed
F64 = npt.NDArray[np.float64]
STORED = np.dtype(">f8")  # one packed value: PostgreSQL's binary float8 (float8send)
NO_WITHHELD = "{}"


@dataclass(frozen=True)
class Layout:
    """A feature set's columns: names in column order (sorted by code point, as
    ``hearth_feature_names()`` sorts them with ``COLLATE "C"``) and each one's category."""

    names: tuple[str, ...]
    categories: tuple[str, ...]

    @functools.cached_property
    def index(self) -> dict[str, int]:
        return {n: i for i, n in enumerate(self.names)}

    @property
    def width(self) -> int:
        return len(self.names)

    def columns(self, names: Iterable[str]) -> npt.NDArray[np.intp]:
        """The column positions of ``names``, in their order (KeyError for an unknown name)."""
        return np.array([self.index[n] for n in names], dtype=np.intp)


def layout_of(pairs: Iterable[tuple[str, str]]) -> Layout:
    """The layout of a feature set given its (name, category) pairs, in any order."""
    ordered = sorted(pairs)
    return Layout(tuple(n for n, _ in ordered), tuple(c for _, c in ordered))


LAYOUT = layout_of((d.name, d.category) for d in DEFINITIONS)  # the current feature set
# The current feature set's columns in catalogue order (the order of the definitions).
CATALOGUE_COLUMNS = LAYOUT.columns(d.name for d in DEFINITIONS)


@dataclass(frozen=True, slots=True)
class PackedVector:
    """One vector as ``feature_snapshots`` stores it (``withheld``: JSON object text)."""

    vals: bytes
    covs: bytes
    withheld: str = NO_WITHHELD


# --- engine results → packed ------------------------------------------------------------------


def _finite(values: F64) -> F64:
    """Values with every non-finite one as the canonical NaN (null): one bit pattern, so the
    purge's check of a withdrawn cell (``hearth_snapshot_shows``) compares bytes."""
    out = np.asarray(values, dtype=np.float64).copy()
    out[~np.isfinite(out)] = np.nan
    return out


def pack_results(results: ChunkResults, n_users: int) -> tuple[F64, F64, list[str]]:
    """A computed chunk in the current layout: values [U, F] (NaN = null), coverage [U, F]
    (rounded to 6 decimals) and each user's ``withheld`` JSON text."""
    values = np.empty((n_users, LAYOUT.width))
    coverage = np.empty((n_users, LAYOUT.width))
    for j, name in enumerate(LAYOUT.names):
        v, c = results[name]
        values[:, j] = v[:n_users]
        coverage[:, j] = c[:n_users]
    codes: dict[str, np.ndarray] = {}
    for name, category in zip(LAYOUT.names, LAYOUT.categories, strict=True):
        if category not in codes and name in results.reasons:
            codes[category] = results.reasons[name][:n_users]
    return _finite(values), np.round(coverage, 6), withheld_texts(codes, n_users)


def withheld_texts(codes: Mapping[str, np.ndarray], n_users: int) -> list[str]:
    """Per user, ``{category: reason}`` as JSON text from per-category :data:`REASON_CODES`
    indices (0: the category's values stand)."""
    if not codes:
        return [NO_WITHHELD] * n_users
    cats = sorted(codes)
    matrix = np.stack([np.asarray(codes[c], dtype=np.int64) for c in cats], axis=1)
    if not matrix.any():
        return [NO_WITHHELD] * n_users
    keys, inverse = np.unique(matrix, axis=0, return_inverse=True)
    texts = [
        json.dumps({c: str(REASON_CODES[k]) for c, k in zip(cats, row, strict=True) if k})
        for row in keys.tolist()
    ]
    return [texts[i] for i in inverse.ravel().tolist()]


def pack_vector(vector: FeatureVector) -> PackedVector:
    """An engine vector of the current feature set, packed."""
    values = np.full(LAYOUT.width, np.nan)
    coverage = np.zeros(LAYOUT.width)
    withheld: dict[str, str] = {}
    for name, cell in vector.values.items():
        j = LAYOUT.index[name]
        values[j] = np.nan if cell.value is None else cell.value
        coverage[j] = cell.coverage
        if cell.reason is not None:
            withheld[LAYOUT.categories[j]] = str(cell.reason)
    return PackedVector(
        _finite(values).astype(STORED).tobytes(),
        coverage.astype(STORED).tobytes(),
        json.dumps(dict(sorted(withheld.items()))) if withheld else NO_WITHHELD,
    )


# --- packed → matrices, cells, JSON ------------------------------------------------------------


def unpack(rows: Sequence[PackedVector], layout: Layout = LAYOUT) -> tuple[F64, F64]:
    """Values and coverage of packed rows as native [R, F] matrices (one copy, no loop per
    cell). A row whose width is not the layout's is an error, never a misaligned column."""
    values = stored_matrix([r.vals for r in rows], layout)
    coverage = stored_matrix([r.covs for r in rows], layout)
    return values.astype(np.float64), coverage.astype(np.float64)


def stored_matrix(packed: Sequence[bytes], layout: Layout = LAYOUT) -> npt.NDArray[Any]:
    """One packed column (``vals`` or ``covs``) of R rows as a read-only [R, F] matrix of
    :data:`STORED` floats: a view of the joined bytes, converted by whoever reads it. A row
    whose width is not the layout's is an error, never a misaligned column."""
    width = layout.width * STORED.itemsize
    if set(map(len, packed)) - {width}:
        raise ValueError(f"packed vector is not {layout.width} features wide")
    return np.frombuffer(b"".join(packed), dtype=STORED).reshape(len(packed), layout.width)


@functools.lru_cache(maxsize=256)
def parse_withheld(text: str) -> dict[str, str]:
    """``withheld`` JSON text as a dict (cached: a response repeats a handful of values)."""
    data: dict[str, str] = json.loads(text)
    return data


def packed_cells(vector: PackedVector, layout: Layout = LAYOUT) -> dict[str, FeatureCell]:
    """A packed vector as engine cells, in column order."""
    values, coverage = unpack([vector], layout)
    withheld = parse_withheld(vector.withheld)
    out = {}
    for j, name in enumerate(layout.names):
        v = float(values[0, j])
        reason = withheld.get(layout.categories[j])
        out[name] = FeatureCell(
            None if np.isnan(v) else v,
            float(coverage[0, j]),
            CellReason(reason) if reason else None,
        )
    return out


def cells_json_rows(
    values: F64,
    coverage: F64,
    withheld: Sequence[str],
    columns: npt.NDArray[np.intp] = CATALOGUE_COLUMNS,
    layout: Layout = LAYOUT,
) -> list[str]:
    """Each row's cells (the features at ``columns``, in that order) as JSON text: exactly what
    ``json.dumps`` gives for {name: hearth.vectors.cell(value, coverage, reason)} (floats by
    ``repr``, NaN as null), filled into one template per column selection instead of a dict
    per row."""
    template = _template(tuple(columns.tolist()), layout)
    k = len(columns)
    picked = values[:, columns]
    finite = np.isfinite(picked).tolist()
    shown = picked.tolist()
    covered = coverage[:, columns].tolist()
    categories = [layout.categories[j] for j in columns.tolist()]
    no_reasons = [""] * k
    out = []
    for row, ok, cov, held in zip(shown, finite, covered, withheld, strict=True):
        args: list[object] = [None] * (3 * k)
        args[0::3] = [repr(x) if f else "null" for x, f in zip(row, ok, strict=True)]
        args[1::3] = cov
        reasons = parse_withheld(held)
        args[2::3] = [_suffix(reasons.get(c)) for c in categories] if reasons else no_reasons
        out.append(template % tuple(args))
    return out


@functools.lru_cache(maxsize=64)
def _template(columns: tuple[int, ...], layout: Layout) -> str:
    """``{"<name>": {"value": %s, "coverage": %r%s}, ...}`` for the features at ``columns``."""
    cells = [json.dumps(layout.names[j]) + ': {"value": %s, "coverage": %r%s}' for j in columns]
    return "{" + ", ".join(cells) + "}"


@functools.lru_cache(maxsize=8)
def _suffix(reason: str | None) -> str:
    return reason_suffix(CellReason(reason) if reason else None)


# --- JSON cells (computed vectors, documents) --------------------------------------------------


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
    user_id: str,
    as_of: datetime,
    version: str,
    computed_at: datetime,
    cells: Cells | str | PackedVector,
    layout: Layout = LAYOUT,
) -> FeatureVector:
    """A stored (packed) or served (JSON) vector back as an engine
    :class:`~features.engine.FeatureVector`."""
    decoded = (
        packed_cells(cells, layout) if isinstance(cells, PackedVector) else decode_cells(cells)
    )
    return FeatureVector(user_id, as_of, version, computed_at, decoded)


def document_json(head: Mapping[str, object], cells_text: str | None) -> str:
    """``head`` as a JSON object with ``"features": <cells_text>`` (null without cells)
    appended, splicing text already encoded instead of parsing it."""
    text = json.dumps(head)
    if cells_text is None:
        return text[:-1] + ',"features":null}'
    return text[:-1] + ',"features":' + cells_text + "}"
