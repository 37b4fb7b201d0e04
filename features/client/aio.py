"""The asyncio client, on aiohttp; use as ``async with AsyncHearthClient(...) as client``."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterable, Sequence
from datetime import datetime
from types import TracebackType
from typing import Any, Self

import aiohttp

from features.client.base import (
    NOT_READY,
    READY_PATH,
    ClientBase,
    RetryPolicy,
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
        self, method: str, path: str, body: bytes | None = None, accept: str = "application/json"
    ) -> bytes:
        session = self._get_session()
        # Token and timeout per request: a session the caller passed in carries neither.
        headers = {**self._headers(accept, body), "Authorization": f"Bearer {self._token}"}
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

    async def online(self, user_ids: Sequence[str], as_of: datetime | None = None) -> OnlineResult:
        data = await self._request("POST", "/v1/features/online", online_body(user_ids, as_of))
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
        return definitions_of(json.loads(await self._request("GET", "/v1/feature-definitions")))

    async def ready(self) -> bool:
        try:
            await self._request("GET", READY_PATH)
        except NOT_READY:
            return False
        return True
