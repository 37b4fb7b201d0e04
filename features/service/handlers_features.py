"""Feature endpoints: one user, many users (online), training rows (historical), definitions."""

from __future__ import annotations

import asyncio
import contextlib
import csv
import io
import json
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime

from aiohttp import web
from pydantic import TypeAdapter, ValidationError

from features.service import engine_gateway
from features.service.errors import ApiError, read_model
from features.service.models import (
    USER_ID_PATTERN,
    HistoricalRequest,
    Instant,
    OnlineRequest,
)
from features.service.state import state_of
from features.service.vectors import (
    Outcome,
    csv_header,
    csv_record,
    historical_lines,
    vector_json,
)

ONLINE_MAX_BODY = 256 * 1024
HISTORICAL_MAX_BODY = 16 * 1024 * 1024  # 100,000 rows of ~70 bytes, with room to spare
HISTORICAL_CHUNK_ROWS = 5_000  # rows per database round trip while streaming
HISTORICAL_MEMO_ENTRIES = 20_000  # resolved (user, as_of) pairs kept per request

_AS_OF = TypeAdapter(Instant)
_USER_ID = re.compile(USER_ID_PATTERN)


def _json(text: str, status: int = 200) -> web.Response:
    return web.Response(text=text, status=status, content_type="application/json")


def parse_as_of(raw: str | None) -> datetime | None:
    """RFC 3339 with an offset. A '+' sent unencoded arrives as a space: accept that too."""
    if raw is None:
        return None
    for candidate in (raw, raw.replace(" ", "+")):
        try:
            return _AS_OF.validate_python(candidate)
        except ValidationError as exc:
            error = exc.errors(include_url=False)[0]["msg"]
    raise ApiError(400, "invalid_request", "invalid query parameter", [("as_of", error)])


def _check_user_id(user_id: str) -> None:
    if not _USER_ID.fullmatch(user_id):
        raise ApiError(
            400,
            "invalid_request",
            "invalid path parameter",
            [("user_id", f"must match {USER_ID_PATTERN}")],
        )


_REASON_MESSAGES = {
    "unknown_user": "no such user",
    "no_active_consent": "the user has no active credit-scoring consent",
    "no_consent_at_as_of": "the user had no active consent at as_of",
    "not_computed": "no snapshot and no vector could be computed",
}


async def get_user_features(request: web.Request) -> web.Response:
    state = state_of(request)
    user_id = request.match_info["user_id"]
    _check_user_id(user_id)
    as_of = parse_as_of(request.query.get("as_of"))
    version = engine_gateway.feature_set_version()
    (outcome,) = await state.resolver.resolve([(user_id, as_of)], version)
    state.metrics.count_vector(outcome.reason or outcome.source or "?")
    if outcome.reason is not None:
        raise ApiError(404, outcome.reason, _REASON_MESSAGES[outcome.reason])
    stale = state.resolver.is_stale(outcome, datetime.now(UTC))
    return _json(vector_json(outcome, version, stale))


async def post_online(request: web.Request) -> web.Response:
    state = state_of(request)
    body = await read_model(request, OnlineRequest, ONLINE_MAX_BODY)
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
    """Exactly one output row per input row, in input order, streamed chunk by chunk."""
    state = state_of(request)
    body = await read_model(request, HistoricalRequest, HISTORICAL_MAX_BODY)
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
    counter = state.metrics.historical_rows
    if as_csv:
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
            if as_csv:
                text = _csv_text(
                    csv_record(start + i, o, version, names) for i, o in enumerate(outcomes)
                )
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
    await response.write_eof()
    return response


def _csv_text(records: Iterable[Sequence[object]]) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows(records)
    return buffer.getvalue()


async def get_definitions(request: web.Request) -> web.Response:
    version = engine_gateway.feature_set_version()
    body = {"feature_set_version": version, "definitions": engine_gateway.definitions_json()}
    return _json(json.dumps(body, default=str))
