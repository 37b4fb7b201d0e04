"""The blocking client, on the standard library's ``urllib`` (one connection per request).

with HearthClient("http://127.0.0.1:8080", token) as client:
    frame = client.historical([("u1", datetime(2026, 1, 1, tzinfo=UTC))]).to_frame()
"""

from __future__ import annotations

import functools
import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from http.client import HTTPResponse
from typing import Any, Self, TypeVar

from features.client.base import (
    NOT_READY,
    READY_PATH,
    ClientBase,
    definitions_of,
    features_path,
    historical_batches,
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

T = TypeVar("T")

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
    ) -> T:
        """Send with retries; ``consume`` reads a successful response (a failure while reading
        retries the whole request, as a failure before the response would)."""
        headers = {"Authorization": f"Bearer {self._token}", **self._headers(accept, body)}
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

    def online(self, user_ids: Sequence[str], as_of: datetime | None = None) -> OnlineResult:
        body = online_body(user_ids, as_of)
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
        return definitions_of(json.loads(self._request("GET", "/v1/feature-definitions")))

    def ready(self) -> bool:
        try:
            self._request("GET", READY_PATH)
        except NOT_READY:
            return False
        return True
