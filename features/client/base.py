"""What the sync and the async client share: the URL check, the retry policy and its loop's
rules, request paths and bodies, and ``ready()``'s reading of the answer.

Both clients retry with exponential backoff and jitter on connection errors and on
500/502/503/504; every call is a read, so a retry cannot do harm. :class:`Attempts` holds that
rule once; each client only supplies its transport (blocking ``urllib`` or ``aiohttp``) and its
way of sleeping.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal, NoReturn
from urllib.parse import quote, urlencode

from features.client.results import HearthError, parse_error

RETRY_STATUSES = frozenset({500, 502, 503, 504})
HISTORICAL_BATCH_ROWS = 100_000  # the service's per-request limit
READY_PATH = "/readyz"
NOT_READY = (HearthError, ConnectionError)  # what ready() reads as "not ready"


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    attempts: int = 4
    backoff_s: float = 0.2
    max_backoff_s: float = 5.0

    def delay(self, attempt: int) -> float:
        base: float = min(self.max_backoff_s, self.backoff_s * 2**attempt)
        return base * (0.5 + random.random() / 2)


class Attempts:
    """One request's attempts under a :class:`RetryPolicy`; both clients loop the same way::

    attempts = Attempts(policy, base_url)
    for delay in attempts:  # 0 before the first attempt
        sleep(delay)
        try: return send()
        except <HTTP error answer>: attempts.refused(status, body)
        except <connection error>: attempts.unreachable(exc)
    attempts.give_up()
    """

    def __init__(self, policy: RetryPolicy, base_url: str) -> None:
        self._policy = policy
        self._base_url = base_url
        self._last: Exception | None = None

    def __iter__(self) -> Iterator[float]:
        for attempt in range(self._policy.attempts):
            yield self._policy.delay(attempt - 1) if attempt else 0.0

    def refused(self, status: int, body: bytes) -> None:
        """An error answer: raised at once unless its status is worth another attempt."""
        error = parse_error(status, body)
        if status not in RETRY_STATUSES:
            raise error from None
        self._last = error

    def unreachable(self, exc: Exception) -> None:
        self._last = exc

    def give_up(self) -> NoReturn:
        """After the last attempt: the last error answer, or ConnectionError."""
        assert self._last is not None
        if isinstance(self._last, HearthError):
            raise self._last
        raise ConnectionError(f"feature service unreachable at {self._base_url}: {self._last}")


class ClientBase:
    """Settings and request building of both clients."""

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

    def _attempts(self) -> Attempts:
        return Attempts(self.retry, self.base_url)

    @staticmethod
    def _headers(
        accept: str, body: bytes | None, content_type: str = "application/json"
    ) -> dict[str, str]:
        headers = {"Accept": accept}
        if body is not None:
            headers["Content-Type"] = content_type
        return headers


def _iso(t: datetime) -> str:
    if t.tzinfo is None:
        raise ValueError(f"as_of {t.isoformat()} has no time zone; use an aware datetime")
    return t.isoformat()


def features_path(user_id: str, as_of: datetime | None) -> str:
    path = f"/v1/users/{quote(user_id, safe='')}/features"
    return path + ("?" + urlencode({"as_of": _iso(as_of)}) if as_of is not None else "")


def online_body(
    user_ids: Sequence[str], as_of: datetime | None, features: Sequence[str] | None = None
) -> bytes:
    body: dict[str, Any] = {"user_ids": list(user_ids)}
    if as_of is not None:
        body["as_of"] = _iso(as_of)
    if features is not None:
        body["features"] = list(features)
    return json.dumps(body).encode()


Mode = Literal["exact", "snapshot"]


def historical_options(
    mode: Mode, max_age: timedelta, features: Sequence[str] | None, include_coverage: bool
) -> dict[str, Any]:
    """The fields of a historical request besides its rows (``HistoricalOptions``)."""
    seconds = max_age.total_seconds()
    if seconds < 1 or seconds != int(seconds):
        raise ValueError(f"max_age must be a positive whole number of seconds, got {max_age}")
    options: dict[str, Any] = {
        "mode": mode,
        "max_age_s": int(seconds),
        "include_coverage": include_coverage,
    }
    if features is not None:
        options["features"] = list(features)
    return options


def historical_batches(
    rows: Iterable[tuple[str, datetime]], options: dict[str, Any] | None = None
) -> list[bytes]:
    """JSON request bodies of at most HISTORICAL_BATCH_ROWS rows each."""
    batch: list[dict[str, str]] = []
    bodies = []
    for user_id, as_of in rows:
        batch.append({"user_id": user_id, "as_of": _iso(as_of)})
        if len(batch) == HISTORICAL_BATCH_ROWS:
            bodies.append(json.dumps({**(options or {}), "rows": batch}).encode())
            batch = []
    if batch:
        bodies.append(json.dumps({**(options or {}), "rows": batch}).encode())
    return bodies


def definitions_of(doc: dict[str, Any]) -> list[dict[str, Any]]:
    definitions: list[dict[str, Any]] = doc["definitions"]
    return definitions
