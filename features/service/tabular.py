"""Historical rows in and out, column by column: the formats of ``POST /v1/features/historical``.

* **In** — a JSON body (``HistoricalRequest``) or an Apache Arrow IPC stream
  (``Content-Type: application/vnd.apache.arrow.stream``) with columns ``user_id`` (string)
  and ``as_of`` (timestamp with a time zone); the JSON body's other fields (``mode``,
  ``max_age_s``, ``features``, ``include_coverage``) then travel as a JSON object under the
  schema's metadata key ``hearth``. Arrow rows are validated as arrays (the id rule, the as_of
  rule), not one by one.
* **Out**, by ``Accept`` — NDJSON (one ``HistoricalRowOut`` per line, the default), CSV, or an
  Arrow IPC stream: one record batch per chunk of rows with ``row``, ``user_id``, ``as_of``,
  ``reason``, ``source``, ``computed_at``, ``snapshot_as_of``, then a float64 column per
  selected feature (null when the value is null, for any reason) and, with
  ``include_coverage``, ``<name>__coverage`` after it. The feature-set version is the schema's
  metadata ``feature_set_version``. The three carry the same values: the CSV's numbers are the
  shortest text that reads back as the same float64.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any, Final

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import ValidationError

from features.engine import as_of_problem
from features.engine.as_of import AS_OF_MIN
from features.service.errors import ApiError, validation_details
from features.service.models import HistoricalOptions
from features.service.resolve.bulk import NO_TIME, REASONS, SOURCES, ResolvedRows, from_us, to_us
from features.snapshots.codec import CATALOGUE_COLUMNS, LAYOUT, cells_json_rows
from hearth.ids import ID_PATTERN

ARROW_STREAM: Final = "application/vnd.apache.arrow.stream"
NDJSON: Final = "application/x-ndjson"
CSV: Final = "text/csv"
ARROW_END: Final = b"\xff\xff\xff\xff\x00\x00\x00\x00"  # end-of-stream marker
OPTIONS_KEY: Final = b"hearth"
VERSION_KEY: Final = b"feature_set_version"
MAX_DETAILS = 20
TIMESTAMP = pa.timestamp("us", tz="UTC")


def response_format(accept: str) -> str:
    """The response's media type for an ``Accept`` header: Arrow when asked for, CSV when asked
    for without NDJSON, NDJSON otherwise."""
    if ARROW_STREAM in accept:
        return ARROW_STREAM
    if CSV in accept and NDJSON not in accept:
        return CSV
    return NDJSON


def selected_columns(names: Sequence[str] | None) -> npt.NDArray[np.intp]:
    """The current layout's positions of the requested features (all, in catalogue order,
    when none are named); a 400 naming each unknown one."""
    if names is None:
        return CATALOGUE_COLUMNS
    unknown = [(f"features.{i}", "unknown feature") for i, n in enumerate(names)
               if n not in LAYOUT.index]  # fmt: skip
    if unknown:
        raise ApiError(400, "invalid_request", "unknown feature name", unknown[:MAX_DETAILS])
    return LAYOUT.columns(dict.fromkeys(names))


# --- Arrow request -----------------------------------------------------------------------------


def _invalid(details: list[tuple[str, str]]) -> ApiError:
    return ApiError(400, "invalid_request", "request body is invalid", details[:MAX_DETAILS])


def arrow_request(
    body: bytes, latest: datetime
) -> tuple[list[str], npt.NDArray[np.int64], HistoricalOptions]:
    """(user ids, as_of in µs, options) of an Arrow IPC stream request body."""
    try:
        table = pa.ipc.open_stream(body).read_all()
    except (pa.ArrowException, ValueError, OSError) as exc:
        raise _invalid([("body", f"not an Arrow IPC stream: {str(exc)[:120]}")]) from None
    metadata = table.schema.metadata or {}
    try:
        options = HistoricalOptions.model_validate_json(metadata.get(OPTIONS_KEY, b"{}"))
    except ValidationError as exc:
        raise _invalid(validation_details(exc)) from None
    missing = [name for name in ("user_id", "as_of") if name not in table.column_names]
    if missing:
        raise _invalid([(name, "required column") for name in missing])
    if table.num_rows == 0:
        raise _invalid([("rows", "at least one row")])
    users = _user_ids(table.column("user_id"))
    as_of = _as_ofs(table.column("as_of"), latest)
    return users, as_of, options


def _bad_rows(ok: Any, field: str, reason: str) -> list[tuple[str, str]]:
    mask = np.asarray(pc.fill_null(ok, False).to_numpy(zero_copy_only=False), dtype=bool)
    return [(f"rows.{i}.{field}", reason) for i in np.flatnonzero(~mask)[:MAX_DETAILS].tolist()]


def _user_ids(column: Any) -> list[str]:
    if not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)
            or pa.types.is_dictionary(column.type)):  # fmt: skip
        raise _invalid([("user_id", "must be a string column")])
    column = column.cast(pa.string())
    bad = _bad_rows(pc.match_substring_regex(column, ID_PATTERN), "user_id",
                    f"must match {ID_PATTERN}")  # fmt: skip
    if bad:
        raise _invalid(bad)
    users: list[str] = column.to_pylist()
    return users


def _as_ofs(column: Any, latest: datetime) -> npt.NDArray[np.int64]:
    if not pa.types.is_timestamp(column.type) or column.type.tz is None:
        raise _invalid([("as_of", "must be a timestamp column with a time zone")])
    us = column.cast(TIMESTAMP, safe=False).cast(pa.int64())
    if us.null_count:
        raise _invalid(_bad_rows(pc.is_valid(us), "as_of", "must not be null"))
    values = np.asarray(us.to_numpy(), dtype=np.int64)
    low, high = to_us(AS_OF_MIN), to_us(latest)
    out = (values < low) | (values > high)
    if out.any():
        details = [
            (f"rows.{i}.as_of", as_of_problem(from_us(int(values[i])), latest) or "out of range")
            for i in np.flatnonzero(out)[:MAX_DETAILS].tolist()
        ]
        raise _invalid(details)
    return values


# --- Arrow response ----------------------------------------------------------------------------


def feature_names(columns: npt.NDArray[np.intp], include_coverage: bool) -> list[str]:
    names = []
    for j in columns.tolist():
        names.append(LAYOUT.names[j])
        if include_coverage:
            names.append(f"{LAYOUT.names[j]}__coverage")
    return names


def arrow_schema(columns: npt.NDArray[np.intp], include_coverage: bool, version: str) -> pa.Schema:
    fields = [
        pa.field("row", pa.int64(), nullable=False),
        pa.field("user_id", pa.string(), nullable=False),
        pa.field("as_of", TIMESTAMP, nullable=False),
        pa.field("reason", pa.string()),
        pa.field("source", pa.string()),
        pa.field("computed_at", TIMESTAMP),
        pa.field("snapshot_as_of", TIMESTAMP),
    ]
    fields += [pa.field(n, pa.float64()) for n in feature_names(columns, include_coverage)]
    return pa.schema(fields, metadata={VERSION_KEY: version.encode()})


def _times(us: npt.NDArray[np.int64]) -> Any:
    return pa.array(us, type=TIMESTAMP, mask=us == NO_TIME)


def _labels(codes: npt.NDArray[np.int8], labels: Sequence[str | None]) -> Any:
    return pa.array([labels[c] for c in codes.tolist()], type=pa.string())


def _floats(
    matrix: npt.NDArray[np.float64],
    columns: npt.NDArray[np.intp],
    absent: npt.NDArray[np.bool_] | None = None,
) -> list[Any]:
    """The matrix's ``columns`` as float64 arrays, null where NaN (values) or, given
    ``absent`` (rows without a vector), on those rows (coverage)."""
    picked = np.ascontiguousarray(matrix[:, columns].T)
    if absent is None:
        return [pa.array(col, mask=np.isnan(col)) for col in picked]
    return [pa.array(col, mask=absent) for col in picked]


def arrow_batch(
    rows: ResolvedRows, columns: npt.NDArray[np.intp], include_coverage: bool, schema: pa.Schema
) -> bytes:
    """One record batch of ``schema`` as an encapsulated IPC message (the stream's schema
    message is ``schema.serialize()``, its end :data:`ARROW_END`)."""
    n = len(rows)
    arrays = [
        pa.array(np.arange(rows.start, rows.start + n, dtype=np.int64)),
        pa.array(rows.user_ids, type=pa.string()),
        _times(rows.as_of_us),
        _labels(rows.reason, REASONS),
        _labels(rows.source, SOURCES),
        _times(rows.computed_at_us),
        _times(rows.snapshot_as_of_us),
    ]
    values = _floats(rows.values, columns)
    if include_coverage:
        coverage = _floats(rows.coverage, columns, rows.source == 0)
        for v, c in zip(values, coverage, strict=True):
            arrays += [v, c]
    else:
        arrays += values
    batch = pa.RecordBatch.from_arrays(arrays, schema=schema)
    return bytes(batch.serialize())


# --- NDJSON and CSV ----------------------------------------------------------------------------


class _Iso:
    """RFC 3339 text of µs timestamps, each value formatted once."""

    def __init__(self) -> None:
        self._cache: dict[int, str] = {NO_TIME: "null"}

    def json(self, us: int) -> str:
        text = self._cache.get(us)
        if text is None:
            text = self._cache[us] = '"' + from_us(us).isoformat() + '"'
        return text

    def csv(self, us: int) -> str:
        return "" if us == NO_TIME else self.json(us)[1:-1]


_str = json.encoder.encode_basestring_ascii  # what json.dumps uses for str (ensure_ascii)


def ndjson_lines(rows: ResolvedRows, version: str, columns: npt.NDArray[np.intp]) -> str:
    """One ``HistoricalRowOut`` JSON document per row, each ending in a newline; the vectors'
    cells rendered together (:func:`features.snapshots.codec.cells_json_rows`)."""
    with_vector = np.flatnonzero(rows.source != 0)
    cells: dict[int, str] = {}
    if with_vector.size:
        texts = cells_json_rows(
            rows.values[with_vector],
            rows.coverage[with_vector],
            [rows.withheld[i] for i in with_vector.tolist()],
            columns,
        )
        cells = dict(zip(with_vector.tolist(), texts, strict=True))
    iso = _Iso()
    version_json = _str(version)
    reasons = ["null" if r is None else _str(r) for r in REASONS]
    sources = ["null" if s is None else _str(s) for s in SOURCES]
    out = []
    for i, (user, at, reason, source, computed, snap) in enumerate(
        zip(rows.user_ids, rows.as_of_us.tolist(), rows.reason.tolist(), rows.source.tolist(),
            rows.computed_at_us.tolist(), rows.snapshot_as_of_us.tolist(), strict=True)
    ):  # fmt: skip
        out.append(
            f'{{"row": {rows.start + i}, "user_id": {_str(user)}, "as_of": {iso.json(at)}, '
            f'"feature_set_version": {version_json}, "reason": {reasons[reason]}, '
            f'"source": {sources[source]}, "computed_at": {iso.json(computed)}, '
            f'"snapshot_as_of": {iso.json(snap)}, "features": {cells.get(i, "null")}}}\n'
        )
    return "".join(out)


CSV_FIXED_COLUMNS = (
    "row",
    "user_id",
    "as_of",
    "feature_set_version",
    "reason",
    "source",
    "computed_at",
    "snapshot_as_of",
)


def csv_header(columns: npt.NDArray[np.intp], include_coverage: bool) -> str:
    return ",".join([*CSV_FIXED_COLUMNS, *feature_names(columns, include_coverage)]) + "\n"


def _texts(arrays: list[Any]) -> list[Any]:
    """Float64 arrays as text (shortest round-trip, empty when null), via Arrow's casts."""
    return [pc.fill_null(pc.cast(a, pa.string()), "") for a in arrays]


def csv_rows(
    rows: ResolvedRows, version: str, columns: npt.NDArray[np.intp], include_coverage: bool
) -> str:
    """The rows as CSV records (no quoting needed: ids follow the id rule, names and codes
    are fixed words)."""
    iso = _Iso()
    fixed = [
        pa.array([str(rows.start + i) for i in range(len(rows))]),
        pa.array(list(rows.user_ids), type=pa.string()),
        pa.array([iso.csv(t) for t in rows.as_of_us.tolist()]),
        pa.array([version] * len(rows)),
        pa.array([REASONS[c] or "" for c in rows.reason.tolist()]),
        pa.array([SOURCES[c] or "" for c in rows.source.tolist()]),
        pa.array([iso.csv(t) for t in rows.computed_at_us.tolist()]),
        pa.array([iso.csv(t) for t in rows.snapshot_as_of_us.tolist()]),
    ]
    values = _texts(_floats(rows.values, columns))
    if include_coverage:
        coverage = _texts(_floats(rows.coverage, columns, rows.source == 0))
        numbers = [a for pair in zip(values, coverage, strict=True) for a in pair]
    else:
        numbers = values
    lines = pc.binary_join_element_wise(*fixed, *numbers, ",")
    return "\n".join(lines.to_pylist()) + "\n"


def warm_up() -> None:
    """Render one tiny Arrow batch: pyarrow's first conversion of Python or numpy data imports
    pandas (seconds without compiled bytecode), which belongs to start-up, not to the first
    request."""
    rows = ResolvedRows(
        0, ["warm-up"], np.zeros(1, dtype=np.int64), np.zeros(1, dtype=np.int8),
        np.ones(1, dtype=np.int8), np.zeros(1, dtype=np.int64), np.zeros(1, dtype=np.int64),
        np.zeros((1, LAYOUT.width)), np.zeros((1, LAYOUT.width)), ["{}"],
    )  # fmt: skip
    arrow_batch(rows, CATALOGUE_COLUMNS, True, arrow_schema(CATALOGUE_COLUMNS, True, "warm-up"))
