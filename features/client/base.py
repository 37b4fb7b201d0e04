"""Python client of the feature service: :class:`HearthClient` (sync, standard library only) and
:class:`AsyncHearthClient` (aiohttp), with typed results and ``to_frame()`` for pandas.

Both retry with exponential backoff and jitter on connection errors and on 500/502/503/504;
every call is a read, so a retry cannot do harm. Errors
the caller must fix raise :class:`HearthError` with the service's code, message and details.

    with HearthClient("http://127.0.0.1:8080", token) as client:
        frame = client.historical([("u1", datetime(2026, 1, 1, tzinfo=UTC))]).to_frame()
"""

from __future__ import annotations

import asyncio
import functools
import json
import random
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from http.client import HTTPResponse
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self, TypeVar
from urllib.parse import quote, urlencode

if TYPE_CHECKING:
    import aiohttp
    import pandas as pd

T = TypeVar("T")

RETRY_STATUSES = frozenset({500, 502, 503, 504})
HISTORICAL_BATCH_ROWS = 100_000  # the service's per-request limit


class HearthError(Exception):
    """The service refused the request (4xx, or 5xx after the last retry)."""

    def __init__(self, status: int, code: str, message: str, details: list[dict[str, str]]):
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.details = details


@dataclass(frozen=True, slots=True)
class FeatureCell:
    value: float | None
    coverage: float
    reason: str | None = None  # why value is null by consent (not_consented, consent_withdrawn)


@dataclass(frozen=True, slots=True)
class FeatureVector:
    user_id: str
    as_of: datetime
    feature_set_version: str
    computed_at: datetime
    stale: bool
    source: str
    features: dict[str, FeatureCell]


@dataclass(frozen=True, slots=True)
class OnlineResult:
    feature_set_version: str
    vectors: list[FeatureVector]
    missing: dict[str, str]  # user id → reason

    def to_frame(self, include_coverage: bool = False) -> pd.DataFrame:
        """One row per returned user (index ``user_id``), one column per feature."""
        import pandas as pd

        names: dict[str, None] = {}
        for v in self.vectors:
            names.update(dict.fromkeys(v.features))
        ordered = list(names)
        columns = output_columns(ordered, include_coverage)
        records = [
            {"user_id": v.user_id, "as_of": v.as_of, **_flat(v.features, ordered, include_coverage)}
            for v in self.vectors
        ]
        frame = pd.DataFrame.from_records(records, columns=["user_id", "as_of", *columns])
        return frame.set_index("user_id")


@dataclass(frozen=True, slots=True)
class HistoricalRow:
    row: int
    user_id: str
    as_of: datetime
    feature_set_version: str
    reason: str | None
    source: str | None
    computed_at: datetime | None
    features: dict[str, FeatureCell] | None


@dataclass(frozen=True, slots=True)
class HistoricalResult:
    rows: list[HistoricalRow]

    def to_frame(
        self, features: Sequence[str] | None = None, include_coverage: bool = False
    ) -> pd.DataFrame:
        """One row per input row, in order: user_id, as_of, reason, then feature columns
        (NaN when null or when the row has a reason); ``<name>__coverage`` when asked."""
        import pandas as pd

        names = list(features) if features is not None else _feature_names(self.rows)
        records = []
        for r in self.rows:
            record: dict[str, Any] = {"user_id": r.user_id, "as_of": r.as_of, "reason": r.reason}
            record.update(_flat(r.features or {}, names, include_coverage))
            records.append(record)
        columns = ["user_id", "as_of", "reason", *output_columns(names, include_coverage)]
        frame = pd.DataFrame.from_records(records, columns=columns)
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
    cells: dict[str, FeatureCell], names: Sequence[str] | None, include_coverage: bool
) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    for name in names if names is not None else list(cells):
        cell = cells.get(name)
        out[name] = None if cell is None else cell.value
        if include_coverage:
            out[f"{name}__coverage"] = None if cell is None else cell.coverage
    return out


# --- parsing (shared by both clients) -------------------------------------------------------


@functools.lru_cache(maxsize=4096)
def _time(text: str) -> datetime:
    # Cached: a historical response repeats the same few as_of and computed_at strings.
    return datetime.fromisoformat(text)


def _cells(raw: dict[str, Any] | None) -> dict[str, FeatureCell] | None:
    if raw is None:
        return None
    return {
        k: FeatureCell(v.get("value"), float(v.get("coverage", 0.0)), v.get("reason"))
        for k, v in raw.items()
    }


def parse_vector(doc: dict[str, Any]) -> FeatureVector:
    return FeatureVector(
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


STREAM_READ_BYTES = 256 * 1024


def _read_all(response: HTTPResponse) -> bytes:
    return response.read()


def _parse_stream(response: HTTPResponse, offset: int) -> list[HistoricalRow]:
    """NDJSON rows parsed as they arrive, so parsing overlaps the service producing the rest."""
    rows: list[HistoricalRow] = []
    tail = b""
    while piece := response.read1(STREAM_READ_BYTES):
        lines = (tail + piece).split(b"\n")
        tail = lines.pop()
        rows.extend(parse_historical_line(line, offset) for line in lines if line)
    if tail.strip():
        rows.append(parse_historical_line(tail, offset))
    return rows


def _iso(t: datetime) -> str:
    if t.tzinfo is None:
        raise ValueError(f"as_of {t.isoformat()} has no time zone; use an aware datetime")
    return t.isoformat()


def historical_batches(rows: Iterable[tuple[str, datetime]]) -> list[bytes]:
    """Request bodies of at most HISTORICAL_BATCH_ROWS rows each."""
    batch: list[dict[str, str]] = []
    bodies = []
    for user_id, as_of in rows:
        batch.append({"user_id": user_id, "as_of": _iso(as_of)})
        if len(batch) == HISTORICAL_BATCH_ROWS:
            bodies.append(json.dumps({"rows": batch}).encode())
            batch = []
    if batch:
        bodies.append(json.dumps({"rows": batch}).encode())
    return bodies


def _error(status: int, body: bytes) -> HearthError:
    try:
        err = json.loads(body)["error"]
        return HearthError(status, err["code"], err["message"], err.get("details", []))
    except (ValueError, KeyError, TypeError):
        return HearthError(status, "http_error", body[:200].decode(errors="replace"), [])


def _features_path(user_id: str, as_of: datetime | None) -> str:
    path = f"/v1/users/{quote(user_id, safe='')}/features"
    return path + ("?" + urlencode({"as_of": _iso(as_of)}) if as_of is not None else "")


def _online_body(user_ids: Sequence[str], as_of: datetime | None) -> bytes:
    body: dict[str, Any] = {"user_ids": list(user_ids)}
    if as_of is not None:
        body["as_of"] = _iso(as_of)
    return json.dumps(body).encode()


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    attempts: int = 4
    backoff_s: float = 0.2
    max_backoff_s: float = 5.0

    def delay(self, attempt: int) -> float:
        base: float = min(self.max_backoff_s, self.backoff_s * 2**attempt)
        return base * (0.5 + random.random() / 2)


# --- sync -----------------------------------------------------------------------------------


class HearthClient:
    """Blocking client on the standard library (no extra dependency)."""

    def __init__(
        self,
        base_url: str,
        token: str,
        *,
        timeout_s: float = 60.0,
        retry: RetryPolicy | None = None,
    ) -> None:
        if not base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url must be http:// or https://, got {base_url!r}")
        self.base_url = base_url.rstrip("/")
        self._token = token
        self.timeout_s = timeout_s
        self.retry = retry or RetryPolicy()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Nothing to release (one connection per request); here for symmetry."""

    def _request(
        self, method: str, path: str, body: bytes | None = None, accept: str = "application/json"
    ) -> bytes:
        return self._exchange(method, path, body, accept, _read_all)

    def _exchange(
        self,
        method: str,
        path: str,
        body: bytes | None,
        accept: str,
        consume: Callable[[HTTPResponse], T],
    ) -> T:
        """Send with retries; ``consume`` reads a successful response (a failure while reading
        retries the whole request, as a failure before the response would)."""
        headers = {"Authorization": f"Bearer {self._token}", "Accept": accept}
        if body is not None:
            headers["Content-Type"] = "application/json"
        last: Exception | None = None
        for attempt in range(self.retry.attempts):
            if attempt:
                time.sleep(self.retry.delay(attempt - 1))
            # S310: base_url is checked to be http(s) in __init__.
            request = urllib.request.Request(  # noqa: S310
                self.base_url + path, data=body, headers=headers, method=method
            )
            try:
                with urllib.request.urlopen(request, timeout=self.timeout_s) as response:  # noqa: S310
                    return consume(response)
            except urllib.error.HTTPError as exc:
                error = _error(exc.code, exc.read())
                if exc.code not in RETRY_STATUSES:
                    raise error from None
                last = error
            except (urllib.error.URLError, ConnectionError, TimeoutError) as exc:
                last = exc
        assert last is not None
        if isinstance(last, HearthError):
            raise last
        raise ConnectionError(f"feature service unreachable at {self.base_url}: {last}")

    def get_features(self, user_id: str, as_of: datetime | None = None) -> FeatureVector:
        return parse_vector(json.loads(self._request("GET", _features_path(user_id, as_of))))

    def online(self, user_ids: Sequence[str], as_of: datetime | None = None) -> OnlineResult:
        body = _online_body(user_ids, as_of)
        return parse_online(json.loads(self._request("POST", "/v1/features/online", body)))

    def historical(self, rows: Iterable[tuple[str, datetime]]) -> HistoricalResult:
        """Point-in-time rows, one per input row in order (batched past 100,000 rows)."""
        out: list[HistoricalRow] = []
        for body in historical_batches(rows):
            offset = len(out)
            out.extend(
                self._exchange(
                    "POST",
                    "/v1/features/historical",
                    body,
                    "application/x-ndjson",
                    functools.partial(_parse_stream, offset=offset),
                )
            )
        return HistoricalResult(out)

    def feature_definitions(self) -> list[dict[str, Any]]:
        doc = json.loads(self._request("GET", "/v1/feature-definitions"))
        definitions: list[dict[str, Any]] = doc["definitions"]
        return definitions

    def ready(self) -> bool:
        try:
            self._request("GET", "/readyz")
        except (HearthError, ConnectionError):
            return False
        return True


# --- async ----------------------------------------------------------------------------------


class AsyncHearthClient:
    """aiohttp client; use as ``async with AsyncHearthClient(...) as client``."""

    def __init__(
        self,
        base_url: str,
        token: str,
        *,
        timeout_s: float = 60.0,
        retry: RetryPolicy | None = None,
        session: aiohttp.ClientSession | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._token = token
        self.timeout_s = timeout_s
        self.retry = retry or RetryPolicy()
        self._session = session
        self._owns_session = session is None

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        if self._session is not None and self._owns_session:
            await self._session.close()
            self._session = None

    def _get_session(self) -> aiohttp.ClientSession:
        import aiohttp

        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.timeout_s),
                headers={"Authorization": f"Bearer {self._token}"},
            )
        return self._session

    async def _request(
        self, method: str, path: str, body: bytes | None = None, accept: str = "application/json"
    ) -> bytes:
        import aiohttp

        session = self._get_session()
        headers = {"Accept": accept}
        if body is not None:
            headers["Content-Type"] = "application/json"
        last: Exception | None = None
        for attempt in range(self.retry.attempts):
            if attempt:
                await asyncio.sleep(self.retry.delay(attempt - 1))
            try:
                async with session.request(
                    method, self.base_url + path, data=body, headers=headers
                ) as response:
                    data = await response.read()
                    if response.status < 400:
                        return data
                    error = _error(response.status, data)
                    if response.status not in RETRY_STATUSES:
                        raise error
                    last = error
            except (aiohttp.ClientConnectionError, TimeoutError) as exc:
                last = exc
        assert last is not None
        if isinstance(last, HearthError):
            raise last
        raise ConnectionError(f"feature service unreachable at {self.base_url}: {last}")

    async def get_features(self, user_id: str, as_of: datetime | None = None) -> FeatureVector:
        data = await self._request("GET", _features_path(user_id, as_of))
        return parse_vector(json.loads(data))

    async def online(self, user_ids: Sequence[str], as_of: datetime | None = None) -> OnlineResult:
        data = await self._request("POST", "/v1/features/online", _online_body(user_ids, as_of))
        return parse_online(json.loads(data))

    async def historical(self, rows: Iterable[tuple[str, datetime]]) -> HistoricalResult:
        out: list[HistoricalRow] = []
        for body in historical_batches(rows):
            data = await self._request(
                "POST", "/v1/features/historical", body, "application/x-ndjson"
            )
            offset = len(out)
            out.extend(parse_historical_line(line, offset) for line in data.splitlines() if line)
        return HistoricalResult(out)

    async def feature_definitions(self) -> list[dict[str, Any]]:
        doc = json.loads(await self._request("GET", "/v1/feature-definitions"))
        definitions: list[dict[str, Any]] = doc["definitions"]
        return definitions
