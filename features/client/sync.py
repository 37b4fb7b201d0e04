"""The blocking client, on the standard library's ``urllib`` (one connection per request).

with HearthClient("http://127.0.0.1:8080", token) as client:
    frame = client.historical([("u1", datetime(2026, 1, 1, tzinfo=UTC))], mode="snapshot")
"""

from __future__ import annotations

import functools
import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime, timedelta
from http.client import HTTPResponse
from typing import TYPE_CHECKING, Any, Self, TypeVar

from features.client.arrow import ARROW_STREAM, read_table, request_bodies, to_frame
from features.client.base import (
    NOT_READY,
    READY_PATH,
    ClientBase,
    Mode,
    definitions_of,
    features_path,
    historical_batches,
    historical_options,
    online_body,
)
from features.client.results import (
    HistoricalResult,
    HistoricalRow,
    OnlineResult,
    ServedVector,
    parse_historical_line,
    parse_online,
    parse_vector,
)

if TYPE_CHECKING:
    import pandas as pd

T = TypeVar("T")

STREAM_READ_BYTES = 256 * 1024


def _read_all(response: HTTPResponse) -> bytes:
    return response.read()


def _read_table(response: HTTPResponse, rows: int) -> Any:
    return read_table(response, rows)  # record batches decoded as they arrive


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


class HearthClient(ClientBase):
    """Blocking client on the standard library (no extra dependency)."""

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
        content_type: str = "application/json",
    ) -> T:
        """Send with retries; ``consume`` reads a successful response (a failure while reading
        retries the whole request, as a failure before the response would)."""
        headers = {
            "Authorization": f"Bearer {self._token}",
            **self._headers(accept, body, content_type),
        }
        attempts = self._attempts()
        for delay in attempts:
            if delay:
                time.sleep(delay)
            # S310: base_url is checked to be http(s) in ClientBase.__init__.
            request = urllib.request.Request(  # noqa: S310
                self.base_url + path, data=body, headers=headers, method=method
            )
            try:
                with urllib.request.urlopen(request, timeout=self.timeout_s) as response:  # noqa: S310
                    return consume(response)
            except urllib.error.HTTPError as exc:
                attempts.refused(exc.code, exc.read())
            except (urllib.error.URLError, ConnectionError, TimeoutError) as exc:
                attempts.unreachable(exc)
        attempts.give_up()

    def get_features(self, user_id: str, as_of: datetime | None = None) -> ServedVector:
        return parse_vector(json.loads(self._request("GET", features_path(user_id, as_of))))

    def online(
        self,
        user_ids: Sequence[str],
        as_of: datetime | None = None,
        features: Sequence[str] | None = None,
    ) -> OnlineResult:
        """Vectors of ``user_ids`` (the latest snapshot, or as of ``as_of``); ``features``
        selects which (default all)."""
        body = online_body(user_ids, as_of, features)
        return parse_online(json.loads(self._request("POST", "/v1/features/online", body)))

    def historical(
        self,
        rows: Iterable[tuple[str, datetime]] | pd.DataFrame,
        *,
        mode: Mode = "exact",
        max_age: timedelta = timedelta(days=1),
        features: Sequence[str] | None = None,
        include_coverage: bool = False,
    ) -> pd.DataFrame:
        """Point-in-time features of (user_id, as_of) rows — tuples, or a DataFrame with those
        columns — as a DataFrame: one row per input row, in order, built from Arrow record
        batches (no Python object per row or cell). ``mode="snapshot"``: the latest snapshot
        at most ``max_age`` older than as_of (reason ``no_snapshot`` when none);
        ``"exact"``: the vector as of as_of. ``features`` selects columns (default all);
        ``include_coverage`` adds ``<name>__coverage`` columns. Batched past 100,000 rows."""
        options = historical_options(mode, max_age, features, include_coverage)
        tables = [
            self._exchange(
                "POST",
                "/v1/features/historical",
                body,
                ARROW_STREAM,
                functools.partial(_read_table, rows=count),
                content_type=ARROW_STREAM,
            )
            for body, count in request_bodies(rows, options)
        ]
        return to_frame(tables)

    def historical_rows(
        self,
        rows: Iterable[tuple[str, datetime]],
        *,
        mode: Mode = "exact",
        max_age: timedelta = timedelta(days=1),
        features: Sequence[str] | None = None,
    ) -> HistoricalResult:
        """The same rows as typed results parsed from NDJSON (cells with their reasons)."""
        options = historical_options(mode, max_age, features, True)
        out: list[HistoricalRow] = []
        for body in historical_batches(rows, options):
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
        return definitions_of(json.loads(self._request("GET", "/v1/feature-definitions")))

    def ready(self) -> bool:
        try:
            self._request("GET", READY_PATH)
        except NOT_READY:
            return False
        return True
