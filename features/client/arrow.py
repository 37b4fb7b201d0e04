"""Historical requests and answers as Apache Arrow IPC streams: the clients' DataFrame path.

The rows go out as two Arrow columns (``user_id``, ``as_of``) with the request's options as
JSON in the schema metadata (``hearth``); the answer comes back as Arrow record batches and
becomes a pandas DataFrame in one conversion, without a Python object per row or per cell.
pyarrow and pandas are imported on first use: they take a second to import, and a scoring
process that only fetches single vectors never needs them.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, BinaryIO

from features.client.base import HISTORICAL_BATCH_ROWS
from features.client.results import HearthError

if TYPE_CHECKING:  # imported on first use only (see above)
    import pandas as pd

ARROW_STREAM = "application/vnd.apache.arrow.stream"
OPTIONS_KEY = b"hearth"
VERSION_KEY = b"feature_set_version"


def _pyarrow() -> Any:
    import pyarrow  # start-up cost: see the module docstring

    return pyarrow


def _pandas() -> Any:
    import pandas  # start-up cost: see the module docstring

    return pandas


def _columns(rows: Iterable[tuple[str, datetime]] | pd.DataFrame) -> tuple[Any, Any]:
    """(user_id, as_of) as Arrow arrays; a naive as_of is an error, as in every request."""
    pa = _pyarrow()
    timestamp = pa.timestamp("us", tz="UTC")
    if hasattr(rows, "columns"):  # a DataFrame with user_id and as_of
        frame: Any = rows
        missing = [c for c in ("user_id", "as_of") if c not in frame.columns]
        if missing:
            raise ValueError(f"the frame lacks column(s) {missing}")
        as_of = _pandas().to_datetime(frame["as_of"])
        if getattr(as_of.dt, "tz", None) is None:
            raise ValueError("as_of has no time zone; use aware timestamps")
        return (
            pa.array(frame["user_id"].astype(str), type=pa.string()),
            pa.array(as_of.dt.tz_convert("UTC")).cast(timestamp),
        )
    pairs = list(rows)
    users = [u for u, _ in pairs]
    times = [t for _, t in pairs]
    if any(t.tzinfo is None for t in times):
        raise ValueError("an as_of has no time zone; use aware datetimes")
    return pa.array(users, type=pa.string()), pa.array(times, type=timestamp)


def request_bodies(
    rows: Iterable[tuple[str, datetime]] | pd.DataFrame, options: dict[str, Any]
) -> list[tuple[bytes, int]]:
    """Arrow request bodies of at most HISTORICAL_BATCH_ROWS rows each, with their row counts."""
    pa = _pyarrow()
    users, as_of = _columns(rows)
    schema = pa.schema(
        [pa.field("user_id", pa.string()), pa.field("as_of", as_of.type)],
        metadata={OPTIONS_KEY: json.dumps(options).encode()},
    )
    table = pa.Table.from_arrays([users, as_of], schema=schema)
    bodies = []
    for start in range(0, max(table.num_rows, 1), HISTORICAL_BATCH_ROWS):
        part = table.slice(start, HISTORICAL_BATCH_ROWS)
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, schema) as writer:
            writer.write_table(part)
        bodies.append((sink.getvalue().to_pybytes(), part.num_rows))
    return bodies


def read_table(body: bytes | BinaryIO, rows: int) -> Any:
    """One answer (its bytes, or the response to read them from as they arrive) as an Arrow
    table; a stream with fewer rows than asked (cut off by an error after it started) is a
    :class:`HearthError`."""
    pa = _pyarrow()
    source = body if isinstance(body, bytes) else pa.PythonFile(body, mode="r")
    try:
        table = pa.ipc.open_stream(source).read_all()
    except (pa.ArrowException, OSError) as exc:
        raise HearthError(502, "bad_stream", f"unreadable Arrow stream: {exc}", []) from None
    if table.num_rows != rows:
        raise HearthError(
            502, "stream_ended_early", f"{table.num_rows} of {rows} rows came back", []
        )
    return table


def to_frame(tables: Sequence[Any]) -> pd.DataFrame:
    """The answers as one DataFrame: one row per input row, in order (the index), columns
    ``user_id``, ``as_of``, ``reason``, ``source``, ``computed_at``, ``snapshot_as_of`` and
    the features (NaN where null); ``attrs["feature_set_version"]``."""
    pa = _pyarrow()
    table = pa.concat_tables(tables) if len(tables) > 1 else tables[0]
    version = (table.schema.metadata or {}).get(VERSION_KEY, b"").decode()
    # Columns freed as they are converted: the table and the frame are not both held whole.
    frame: pd.DataFrame = table.drop_columns(["row"]).to_pandas(
        self_destruct=True, split_blocks=True
    )
    frame.attrs["feature_set_version"] = version
    return frame
