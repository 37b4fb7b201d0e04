"""What the client hands back: typed results of the feature service, with ``to_frame()`` for
pandas, and the parsing of the service's JSON documents into them.

The names say they are what the service *served* (``ServedVector``, ``ServedCell``): the engine's
own vector type (``features.engine``) and the HTTP schema (``features.service.models``) are other
types.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from hearth.times import parse_rfc3339

if TYPE_CHECKING:  # imported by to_frame only (see _pandas)
    import pandas as pd


class HearthError(Exception):
    """The service refused the request (4xx, or 5xx after the last retry)."""

    def __init__(self, status: int, code: str, message: str, details: list[dict[str, str]]):
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.details = details


@dataclass(frozen=True, slots=True)
class ServedCell:
    value: float | None
    coverage: float
    reason: str | None = None  # why value is null by consent (not_consented, consent_withdrawn)


@dataclass(frozen=True, slots=True)
class ServedVector:
    """One user's vector as the service served it (``GET /v1/users/{user_id}/features``)."""

    user_id: str
    as_of: datetime
    feature_set_version: str
    computed_at: datetime
    stale: bool
    source: str
    features: dict[str, ServedCell]


def _pandas() -> Any:
    """pandas, imported on first use: it takes about a second to import, and a scoring process
    that only fetches vectors never needs it (no cycle: pandas imports nothing of ours)."""
    import pandas

    return pandas


@dataclass(frozen=True, slots=True)
class OnlineResult:
    feature_set_version: str
    vectors: list[ServedVector]
    missing: dict[str, str]  # user id → reason

    def to_frame(self, include_coverage: bool = False) -> pd.DataFrame:
        """One row per returned user (index ``user_id``), one column per feature."""
        names: dict[str, None] = {}
        for v in self.vectors:
            names.update(dict.fromkeys(v.features))
        ordered = list(names)
        columns = output_columns(ordered, include_coverage)
        records = [
            {"user_id": v.user_id, "as_of": v.as_of, **_flat(v.features, ordered, include_coverage)}
            for v in self.vectors
        ]
        frame = _pandas().DataFrame.from_records(records, columns=["user_id", "as_of", *columns])
        indexed: pd.DataFrame = frame.set_index("user_id")
        return indexed


@dataclass(frozen=True, slots=True)
class HistoricalRow:
    row: int
    user_id: str
    as_of: datetime
    feature_set_version: str
    reason: str | None
    source: str | None
    computed_at: datetime | None
    features: dict[str, ServedCell] | None


@dataclass(frozen=True, slots=True)
class HistoricalResult:
    rows: list[HistoricalRow]

    def to_frame(
        self, features: Sequence[str] | None = None, include_coverage: bool = False
    ) -> pd.DataFrame:
        """One row per input row, in order: user_id, as_of, reason, then feature columns
        (NaN when null or when the row has a reason); ``<name>__coverage`` when asked."""
        names = list(features) if features is not None else _feature_names(self.rows)
        records = []
        for r in self.rows:
            record: dict[str, Any] = {"user_id": r.user_id, "as_of": r.as_of, "reason": r.reason}
            record.update(_flat(r.features or {}, names, include_coverage))
            records.append(record)
        columns = ["user_id", "as_of", "reason", *output_columns(names, include_coverage)]
        frame: pd.DataFrame = _pandas().DataFrame.from_records(records, columns=columns)
        frame[columns[3:]] = frame[columns[3:]].astype(float)
        return frame


def output_columns(names: Sequence[str], include_coverage: bool) -> list[str]:
    cols: list[str] = []
    for name in names:
        cols.append(name)
        if include_coverage:
            cols.append(f"{name}__coverage")
    return cols


def _feature_names(rows: Iterable[HistoricalRow]) -> list[str]:
    names: dict[str, None] = {}
    for r in rows:
        if r.features:
            names.update(dict.fromkeys(r.features))
    return list(names)


def _flat(
    cells: dict[str, ServedCell], names: Sequence[str] | None, include_coverage: bool
) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    for name in names if names is not None else list(cells):
        cell = cells.get(name)
        out[name] = None if cell is None else cell.value
        if include_coverage:
            out[f"{name}__coverage"] = None if cell is None else cell.coverage
    return out


# --- parsing --------------------------------------------------------------------------------


@functools.lru_cache(maxsize=4096)
def _time(text: str) -> datetime:
    # Cached: a historical response repeats the same few as_of and computed_at strings.
    return parse_rfc3339(text, what="time")


def _cells(raw: dict[str, Any] | None) -> dict[str, ServedCell] | None:
    if raw is None:
        return None
    return {
        k: ServedCell(v.get("value"), float(v.get("coverage", 0.0)), v.get("reason"))
        for k, v in raw.items()
    }


def parse_vector(doc: dict[str, Any]) -> ServedVector:
    return ServedVector(
        user_id=doc["user_id"],
        as_of=_time(doc["as_of"]),
        feature_set_version=doc["feature_set_version"],
        computed_at=_time(doc["computed_at"]),
        stale=bool(doc["stale"]),
        source=doc["source"],
        features=_cells(doc["features"]) or {},
    )


def parse_online(doc: dict[str, Any]) -> OnlineResult:
    return OnlineResult(
        feature_set_version=doc["feature_set_version"],
        vectors=[parse_vector(v) for v in doc["vectors"]],
        missing={m["user_id"]: m["reason"] for m in doc["missing"]},
    )


def parse_historical_line(line: str | bytes, offset: int = 0) -> HistoricalRow:
    doc = json.loads(line)
    if "error" in doc:  # the service failed after the stream started: the rest is missing
        err = doc["error"]
        status = 503 if err.get("code") in ("statement_timeout", "database_unavailable") else 500
        raise HearthError(status, err.get("code", "?"), err.get("message", ""), [])
    return HistoricalRow(
        row=int(doc["row"]) + offset,
        user_id=doc["user_id"],
        as_of=_time(doc["as_of"]),
        feature_set_version=doc["feature_set_version"],
        reason=doc.get("reason"),
        source=doc.get("source"),
        computed_at=_time(doc["computed_at"]) if doc.get("computed_at") else None,
        features=_cells(doc.get("features")),
    )


def parse_error(status: int, body: bytes) -> HearthError:
    """The service's JSON error body as a :class:`HearthError` (any other body: its start)."""
    try:
        err = json.loads(body)["error"]
        return HearthError(status, err["code"], err["message"], err.get("details", []))
    except (ValueError, KeyError, TypeError):
        return HearthError(status, "http_error", body[:200].decode(errors="replace"), [])
