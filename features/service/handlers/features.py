"""Feature endpoints: one user, many users (online), training rows (historical), definitions."""

from __future__ import annotations

import asyncio
import contextlib
import csv
import io
import itertools
import json
from collections import Counter, deque
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta

import numpy as np
from aiohttp import web

from features.engine import latest_as_of
from features.service.errors import (
    STREAM_STARTED,
    ApiError,
    database_error,
    log_unhandled,
    read_body,
    read_model,
)
from features.service.handlers.params import as_of_context, parse_as_of, path_id
from features.service.models import HistoricalOptions, HistoricalRequest, OnlineRequest
from features.service.resolve import engine_gateway
from features.service.resolve.bulk import REASONS, SOURCES, ResolvedRows, to_us
from features.service.resolve.vectors import features_json, vector_json
from features.service.state import state_of
from features.service.tabular import (
    ARROW_END,
    ARROW_STREAM,
    CSV,
    NDJSON,
    arrow_batch,
    arrow_request,
    arrow_schema,
    csv_header,
    csv_rows,
    ndjson_lines,
    response_format,
    selected_columns,
)
from hearth.settings import Settings

# Request bodies are bounded by bytes as well as by rows: the byte bound follows the row
# limit (a row is at most ~170 bytes: a 64-character id, an as_of and JSON punctuation).
ONLINE_BYTES_PER_USER = 256
HISTORICAL_BYTES_PER_ROW = 168
MIN_MAX_BODY = 64 * 1024
HISTORICAL_CHUNK_ROWS = 5_000  # rows per database round trip while streaming
HISTORICAL_AHEAD = 2  # chunks the database works on while one is written (2 cores)


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
    columns = selected_columns(body.features)
    user_ids = list(dict.fromkeys(body.user_ids))  # each user once, first-seen order
    outcomes = await state.resolver.resolve([(u, body.as_of) for u in user_ids], version)
    now = datetime.now(UTC)
    cells = features_json(outcomes, columns)
    vectors, missing = [], []
    for outcome, text in zip(outcomes, cells, strict=True):
        state.metrics.count_vector(outcome.reason or outcome.source or "?")
        if outcome.reason is None:
            stale = state.resolver.is_stale(outcome, now)
            vectors.append(vector_json(outcome, version, stale, text))
        else:
            missing.append(json.dumps({"user_id": outcome.user_id, "reason": outcome.reason}))
    text = (
        f'{{"feature_set_version":{json.dumps(version)},'
        f'"vectors":[{",".join(vectors)}],"missing":[{",".join(missing)}]}}'
    )
    return _json(text)


async def _historical_input(
    request: web.Request, settings: Settings
) -> tuple[list[str], np.ndarray, HistoricalOptions]:
    """(user ids, t in µs, options) of a JSON or an Arrow request body; 400/413 when invalid."""
    if request.content_type == ARROW_STREAM:
        body = await read_body(request, historical_max_body(settings))
        return arrow_request(body, latest_as_of(settings.max_clock_skew_s))
    model = await read_model(
        request, HistoricalRequest, historical_max_body(settings), as_of_context(settings)
    )
    users = [r.user_id for r in model.rows]
    as_of = np.array([to_us(r.as_of) for r in model.rows], dtype=np.int64)
    options = HistoricalOptions.model_validate(model.model_dump(exclude={"rows"}))
    return users, as_of, options


async def post_historical(request: web.Request) -> web.StreamResponse:
    """Exactly one output row per input row, in input order, streamed chunk by chunk, as
    NDJSON, CSV or an Arrow IPC stream (:mod:`features.service.tabular`).

    An error once the stream has started cannot change the status any more: an NDJSON or CSV
    stream then ends with one error record (NDJSON: a ``HistoricalErrorLine``; CSV: a row
    starting with ``#error``) and the rows it did not reach are missing; an Arrow stream is
    cut off without its end-of-stream marker (readers fail on it).
    """
    state = state_of(request)
    settings = state.settings
    users, as_of_us, options = await _historical_input(request, settings)
    _check_rows(len(users), settings.historical_max_rows, "rows", "HEARTH_HISTORICAL_MAX_ROWS")
    version = engine_gateway.feature_set_version()  # fail with 503 before streaming starts
    columns = selected_columns(options.features)
    kind = response_format(request.headers.get("Accept", ""))
    consent = (await state.bulk.population(users, as_of_us)).reasons()

    response = web.StreamResponse(headers={"Content-Type": kind})
    response.enable_chunked_encoding()
    await response.prepare(request)
    request[STREAM_STARTED] = response
    stream = _Stream(kind, version, columns, options.include_coverage)
    try:
        await response.write(stream.begin())
        await _stream_rows(request, response, stream, users, as_of_us, consent, options)
        await response.write(stream.end())
    except ConnectionResetError:  # the client left: nobody to tell
        raise
    except Exception as exc:  # the status line is gone: end the stream with the error
        api_error = exc if isinstance(exc, ApiError) else database_error(exc)
        if api_error is None:
            log_unhandled(request, exc)
            api_error = ApiError(500, "internal_error", "internal server error")
        if kind == ARROW_STREAM:  # no error record in an Arrow stream: cut it short
            if request.transport is not None:
                request.transport.close()
            raise
        await response.write(_error_record(api_error, kind == CSV).encode())
    await response.write_eof()
    return response


class _Stream:
    """How one response renders its chunks of resolved rows."""

    def __init__(
        self, kind: str, version: str, columns: np.ndarray, include_coverage: bool
    ) -> None:
        self.kind = kind
        self.version = version
        self.columns = columns
        self.include_coverage = include_coverage
        self.schema = arrow_schema(columns, include_coverage, version)
        # NDJSON cells always carry their coverage; CSV and Arrow only when asked.
        self.shows_coverage = include_coverage or kind == NDJSON

    def begin(self) -> bytes:
        if self.kind == ARROW_STREAM:
            return bytes(self.schema.serialize())
        if self.kind == CSV:
            return csv_header(self.columns, self.include_coverage).encode()
        return b""

    def chunk(self, rows: ResolvedRows) -> bytes:
        if self.kind == ARROW_STREAM:
            return arrow_batch(rows, self.columns, self.include_coverage, self.schema)
        if self.kind == CSV:
            return csv_rows(rows, self.version, self.columns, self.include_coverage).encode()
        return ndjson_lines(rows, self.version, self.columns).encode()

    def end(self) -> bytes:
        return ARROW_END if self.kind == ARROW_STREAM else b""


def _error_record(error: ApiError, as_csv: bool) -> str:
    if as_csv:
        return _csv_text([["#error", error.code, error.message]])
    return json.dumps({"error": {"code": error.code, "message": error.message}}) + "\n"


async def _stream_rows(
    request: web.Request,
    response: web.StreamResponse,
    stream: _Stream,
    users: list[str],
    as_of_us: np.ndarray,
    consent: np.ndarray,
    options: HistoricalOptions,
) -> None:
    """Resolve the rows chunk by chunk and write each chunk as it comes; the database works
    on the next :data:`HISTORICAL_AHEAD` chunks while one is rendered and written."""
    state = state_of(request)
    counter = state.metrics.historical_rows
    max_age = timedelta(seconds=options.max_age_s)

    def resolve(start: int) -> asyncio.Future[ResolvedRows]:
        end = start + HISTORICAL_CHUNK_ROWS
        return asyncio.ensure_future(
            state.bulk.resolve(
                start, users[start:end], as_of_us[start:end], consent[start:end],
                mode=options.mode, max_age=max_age, version=stream.version,
                columns=stream.columns, coverage=stream.shows_coverage,
            )
        )  # fmt: skip

    starts = iter(range(0, len(users), HISTORICAL_CHUNK_ROWS))
    pending = deque(resolve(s) for s in itertools.islice(starts, HISTORICAL_AHEAD))
    try:
        while pending:
            rows = await pending.popleft()
            pending.extend(resolve(s) for s in itertools.islice(starts, 1))
            await response.write(stream.chunk(rows))
            for label, n in _labels(rows).items():
                counter.labels(label).inc(n)
    finally:
        for future in pending:
            future.cancel()
            with contextlib.suppress(BaseException):
                await future


def _labels(rows: ResolvedRows) -> Counter[str]:
    """Rows per outcome (a reason, else the vector's source), for the metrics."""
    codes = np.where(rows.reason > 0, rows.reason.astype(np.int64), -rows.source.astype(np.int64))
    found, counts = np.unique(codes, return_counts=True)
    out: Counter[str] = Counter()
    for code, n in zip(found.tolist(), counts.tolist(), strict=True):
        label = REASONS[code] if code > 0 else SOURCES[-code]
        out[label or "?"] += n
    return out


def _csv_text(records: Iterable[Sequence[object]]) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows(records)
    return buffer.getvalue()


async def get_definitions(request: web.Request) -> web.Response:
    version = engine_gateway.feature_set_version()
    body = {"feature_set_version": version, "definitions": engine_gateway.definitions_json()}
    return _json(json.dumps(body, default=str))
