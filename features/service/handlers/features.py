"""Feature endpoints: one user, many users (online), training rows (historical), definitions."""

from __future__ import annotations

import asyncio
import contextlib
import csv
import io
import json
from collections import Counter
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime

from aiohttp import web

from features.service.errors import (
    STREAM_STARTED,
    ApiError,
    database_error,
    log_unhandled,
    read_model,
)
from features.service.handlers.params import as_of_context, parse_as_of, path_id
from features.service.models import HistoricalRequest, OnlineRequest
from features.service.resolve import engine_gateway
from features.service.resolve.vectors import (
    Outcome,
    csv_header,
    csv_records,
    historical_lines,
    vector_json,
)
from features.service.state import state_of
from features.snapshots.codec import CATALOGUE_COLUMNS
from hearth.settings import Settings

# Request bodies are bounded by bytes as well as by rows: the byte bound follows the row
# limit (a row is at most ~170 bytes: a 64-character id, an as_of and JSON punctuation).
ONLINE_BYTES_PER_USER = 256
HISTORICAL_BYTES_PER_ROW = 168
MIN_MAX_BODY = 64 * 1024
HISTORICAL_CHUNK_ROWS = 5_000  # rows per database round trip while streaming
HISTORICAL_MEMO_ENTRIES = 20_000  # resolved (user, as_of) pairs kept per request


def online_max_body(settings: Settings) -> int:
    return max(MIN_MAX_BODY, settings.online_max_users * ONLINE_BYTES_PER_USER)


def historical_max_body(settings: Settings) -> int:
    return max(MIN_MAX_BODY, settings.historical_max_rows * HISTORICAL_BYTES_PER_ROW)


def _json(text: str, status: int = 200) -> web.Response:
    return web.Response(text=text, status=status, content_type="application/json")


def _check_rows(count: int, limit: int, what: str, setting: str) -> None:
    if count > limit:
        raise ApiError(
            413, "too_many_rows", f"{count} {what} in one request; at most {limit} ({setting})"
        )


_REASON_MESSAGES = {
    "unknown_user": "no such user",
    "no_active_consent": "the user has no active credit-scoring consent",
    "no_consent_at_as_of": "the user had no active consent at as_of",
    "not_computed": "no snapshot and no vector could be computed",
}


async def get_user_features(request: web.Request) -> web.Response:
    state = state_of(request)
    user_id = path_id(request, "user_id")
    as_of = parse_as_of(request.query.get("as_of"), state.settings)
    version = engine_gateway.feature_set_version()
    (outcome,) = await state.resolver.resolve([(user_id, as_of)], version)
    state.metrics.count_vector(outcome.reason or outcome.source or "?")
    if outcome.reason is not None:
        raise ApiError(404, outcome.reason, _REASON_MESSAGES[outcome.reason])
    stale = state.resolver.is_stale(outcome, datetime.now(UTC))
    return _json(vector_json(outcome, version, stale))


async def post_online(request: web.Request) -> web.Response:
    state = state_of(request)
    settings = state.settings
    body = await read_model(
        request, OnlineRequest, online_max_body(settings), as_of_context(settings)
    )
    _check_rows(
        len(body.user_ids), settings.online_max_users, "user ids", "HEARTH_ONLINE_MAX_USERS"
    )
    version = engine_gateway.feature_set_version()
    user_ids = list(dict.fromkeys(body.user_ids))  # each user once, first-seen order
    outcomes = await state.resolver.resolve([(u, body.as_of) for u in user_ids], version)
    now = datetime.now(UTC)
    vectors, missing = [], []
    for outcome in outcomes:
        state.metrics.count_vector(outcome.reason or outcome.source or "?")
        if outcome.reason is None:
            vectors.append(vector_json(outcome, version, state.resolver.is_stale(outcome, now)))
        else:
            missing.append(json.dumps({"user_id": outcome.user_id, "reason": outcome.reason}))
    text = (
        f'{{"feature_set_version":{json.dumps(version)},'
        f'"vectors":[{",".join(vectors)}],"missing":[{",".join(missing)}]}}'
    )
    return _json(text)


def _wants_csv(request: web.Request) -> bool:
    accept = request.headers.get("Accept", "")
    return "text/csv" in accept and "application/x-ndjson" not in accept


async def post_historical(request: web.Request) -> web.StreamResponse:
    """Exactly one output row per input row, in input order, streamed chunk by chunk.

    An error once the stream has started cannot change the status any more: the stream then
    ends with one error record (NDJSON: a ``HistoricalErrorLine``; CSV: a row starting with
    ``#error``) and the rows it did not reach are missing.
    """
    state = state_of(request)
    settings = state.settings
    body = await read_model(
        request, HistoricalRequest, historical_max_body(settings), as_of_context(settings)
    )
    _check_rows(len(body.rows), settings.historical_max_rows, "rows", "HEARTH_HISTORICAL_MAX_ROWS")
    version = engine_gateway.feature_set_version()  # fail with 503 before streaming starts
    as_csv = _wants_csv(request)
    names = engine_gateway.feature_names() if as_csv else []
    rows: list[tuple[str, datetime | None]] = [(r.user_id, r.as_of) for r in body.rows]
    del body

    response = web.StreamResponse(
        headers={"Content-Type": "text/csv" if as_csv else "application/x-ndjson"}
    )
    response.enable_chunked_encoding()
    await response.prepare(request)
    request[STREAM_STARTED] = response
    try:
        await _stream_rows(request, response, rows, version, names if as_csv else None)
    except ConnectionResetError:  # the client left: nobody to tell
        raise
    except Exception as exc:  # the status line is gone: end the stream with the error
        api_error = exc if isinstance(exc, ApiError) else database_error(exc)
        if api_error is None:
            log_unhandled(request, exc)
            api_error = ApiError(500, "internal_error", "internal server error")
        await response.write(_error_record(api_error, as_csv).encode())
    await response.write_eof()
    return response


def _error_record(error: ApiError, as_csv: bool) -> str:
    if as_csv:
        return _csv_text([["#error", error.code, error.message]])
    return json.dumps({"error": {"code": error.code, "message": error.message}}) + "\n"


async def _stream_rows(
    request: web.Request,
    response: web.StreamResponse,
    rows: list[tuple[str, datetime | None]],
    version: str,
    names: list[str] | None,
) -> None:
    """Write one record per row to the prepared ``response`` (CSV when ``names`` is given)."""
    state = state_of(request)
    counter = state.metrics.historical_rows
    if names is not None:
        await response.write(_csv_text([csv_header(names)]).encode())
    resolver = state.resolver
    # Outcomes already resolved in this request, by (user, as_of): a training set often asks
    # for the same pair more than once. Bounded so memory stays flat whatever the input.
    memo: dict[tuple[str, datetime | None], Outcome] = {}

    async def resolve(chunk: list[tuple[str, datetime | None]]) -> list[Outcome]:
        todo = list(dict.fromkeys(pair for pair in chunk if pair not in memo))
        if todo:
            outcomes = await resolver.resolve(todo, version, use_cache=False)
            if len(outcomes) != len(todo):  # never misalign rows: abort the stream instead
                raise RuntimeError("resolver returned a different number of outcomes")
            fresh = dict(zip(todo, outcomes, strict=True))
            result = [fresh.get(pair) or memo[pair] for pair in chunk]
            if len(memo) + len(fresh) > HISTORICAL_MEMO_ENTRIES:
                memo.clear()
            memo.update(fresh)
            return result
        return [memo[pair] for pair in chunk]

    # The database works on the next chunk while this one is rendered and written.
    starts = range(0, len(rows), HISTORICAL_CHUNK_ROWS)
    pending = asyncio.ensure_future(resolve(rows[:HISTORICAL_CHUNK_ROWS]))
    try:
        for start in starts:
            outcomes = await pending
            following = start + HISTORICAL_CHUNK_ROWS
            if following < len(rows):
                chunk = rows[following : following + HISTORICAL_CHUNK_ROWS]
                pending = asyncio.ensure_future(resolve(chunk))
            if names is not None:
                text = _csv_text(csv_records(start, outcomes, version, CATALOGUE_COLUMNS))
            else:
                text = historical_lines(start, outcomes, version)
            for label, n in Counter(o.reason or o.source or "?" for o in outcomes).items():
                counter.labels(label).inc(n)
            await response.write(text.encode())
    finally:
        if not pending.done():
            pending.cancel()
            with contextlib.suppress(BaseException):
                await pending


def _csv_text(records: Iterable[Sequence[object]]) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows(records)
    return buffer.getvalue()


async def get_definitions(request: web.Request) -> web.Response:
    version = engine_gateway.feature_set_version()
    body = {"feature_set_version": version, "definitions": engine_gateway.definitions_json()}
    return _json(json.dumps(body, default=str))
