"""The asyncio client, on aiohttp; use as ``async with AsyncHearthClient(...) as client``."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

import aiohttp

from features.client.arrow import ARROW_STREAM, read_table, request_bodies, to_frame
from features.client.base import (
    NOT_READY,
    READY_PATH,
    ClientBase,
    Mode,
    RetryPolicy,
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


class AsyncHearthClient(ClientBase):
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
        super().__init__(base_url, token, timeout_s=timeout_s, retry=retry)
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
        if self._session is None:
            self._session = aiohttp.ClientSession()
        return self._session

    async def _request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        accept: str = "application/json",
        content_type: str = "application/json",
    ) -> bytes:
        session = self._get_session()
        # Token and timeout per request: a session the caller passed in carries neither.
        headers = {
            **self._headers(accept, body, content_type),
            "Authorization": f"Bearer {self._token}",
        }
        timeout = aiohttp.ClientTimeout(total=self.timeout_s)
        attempts = self._attempts()
        for delay in attempts:
            if delay:
                await asyncio.sleep(delay)
            try:
                async with session.request(
                    method, self.base_url + path, data=body, headers=headers, timeout=timeout
                ) as response:
                    data = await response.read()
                    if response.status < 400:
                        return data
                    attempts.refused(response.status, data)
            except (aiohttp.ClientConnectionError, TimeoutError) as exc:
                attempts.unreachable(exc)
        attempts.give_up()

    async def get_features(self, user_id: str, as_of: datetime | None = None) -> ServedVector:
        data = await self._request("GET", features_path(user_id, as_of))
        return parse_vector(json.loads(data))

    async def online(
        self,
        user_ids: Sequence[str],
        as_of: datetime | None = None,
        features: Sequence[str] | None = None,
    ) -> OnlineResult:
        body = online_body(user_ids, as_of, features)
        data = await self._request("POST", "/v1/features/online", body)
        return parse_online(json.loads(data))

    async def historical(
        self,
        rows: Iterable[tuple[str, datetime]] | pd.DataFrame,
        *,
        mode: Mode = "exact",
        max_age: timedelta = timedelta(days=1),
        features: Sequence[str] | None = None,
        include_coverage: bool = False,
    ) -> pd.DataFrame:
        """As :meth:`features.client.HearthClient.historical`: a DataFrame from Arrow."""
        options = historical_options(mode, max_age, features, include_coverage)
        tables = []
        for body, count in request_bodies(rows, options):
            data = await self._request(
                "POST", "/v1/features/historical", body, ARROW_STREAM, ARROW_STREAM
            )
            tables.append(read_table(data, count))
        return to_frame(tables)

    async def historical_rows(
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
            data = await self._request(
                "POST", "/v1/features/historical", body, "application/x-ndjson"
            )
            offset = len(out)
            out.extend(parse_historical_line(line, offset) for line in data.splitlines() if line)
        return HistoricalResult(out)

    async def feature_definitions(self) -> list[dict[str, Any]]:
        return definitions_of(json.loads(await self._request("GET", "/v1/feature-definitions")))

    async def ready(self) -> bool:
        try:
            await self._request("GET", READY_PATH)
        except NOT_READY:
            return False
        return True
