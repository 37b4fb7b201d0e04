"""JSON errors everywhere: one shape (``ErrorResponse``) for every 4xx/5xx the service writes.

The middleware turns aiohttp's own HTTP exceptions (404 no route, 405, 413 body too large),
:class:`ApiError` raised by handlers, the typed domain errors of :mod:`hearth.errors` (mapped by
class: ``http_status`` and ``code``; their CLI ``hint`` never reaches a body) and any unexpected
exception into that shape. Logs name the route *pattern* and the exception type only, never the
path, query or body: those carry user ids.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import TypeVar

import psycopg
from aiohttp import web
from psycopg_pool import PoolTimeout
from pydantic import BaseModel, ValidationError

from hearth.errors import HearthError, Unavailable
from hearth.times import FORMAT_HINT

log = logging.getLogger("features.service")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
M = TypeVar("M", bound=BaseModel)

MAX_ERROR_DETAILS = 20


class ApiError(Exception):
    """An error the client can act on; becomes a JSON error response with ``status``."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        details: Iterable[tuple[str, str]] = (),
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = list(details)
        self.headers = headers or {}


def error_response(
    status: int,
    code: str,
    message: str,
    details: Iterable[tuple[str, str]] = (),
    headers: dict[str, str] | None = None,
) -> web.Response:
    body = {
        "error": {
            "code": code,
            "message": message,
            "details": [{"field": f, "reason": r} for f, r in details],
        }
    }
    return web.Response(
        body=json.dumps(body).encode(),
        status=status,
        content_type="application/json",
        headers=headers,
    )


# pydantic's own words for these say what is wrong, not what is expected ("Input should have
# timezone info"): say the rule instead.
_DATETIME_ERRORS = frozenset(
    {"timezone_aware", "datetime_parsing", "datetime_from_date_parsing", "datetime_type"}
)


def validation_details(exc: ValidationError) -> list[tuple[str, str]]:
    out = []
    for err in exc.errors(include_url=False, include_input=False)[:MAX_ERROR_DETAILS]:
        field = ".".join(str(p) for p in err["loc"]) or "body"
        message = str(err["msg"])
        if err["type"] in _DATETIME_ERRORS:
            message = f"must be {FORMAT_HINT}"
        out.append((field, message))
    return out


# Bodies larger than this are validated in a worker thread: a 100,000-row historical body
# takes a few hundred milliseconds to parse, which would stall every other request.
INLINE_PARSE_BYTES = 64 * 1024


async def read_body(request: web.Request, max_bytes: int) -> bytes:
    """The request body; 413 past ``max_bytes``."""
    if request.content_length is not None and request.content_length > max_bytes:
        raise ApiError(413, "body_too_large", f"request body exceeds {max_bytes} bytes")
    body = await request.read()
    if len(body) > max_bytes:
        raise ApiError(413, "body_too_large", f"request body exceeds {max_bytes} bytes")
    return body


async def read_model(
    request: web.Request,
    model: type[M],
    max_bytes: int,
    context: dict[str, object] | None = None,
) -> M:
    """The request body validated against ``model``; 413 past ``max_bytes``, 400 when invalid."""
    body = await read_body(request, max_bytes)
    try:
        if len(body) > INLINE_PARSE_BYTES:
            return await asyncio.to_thread(model.model_validate_json, body, context=context)
        return model.model_validate_json(body, context=context)
    except ValidationError as exc:
        raise ApiError(
            400, "invalid_request", "request body is invalid", validation_details(exc)
        ) from None


_STATUS_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "body_too_large",
    415: "unsupported_media_type",
    503: "unavailable",
}


def database_error(exc: Exception) -> ApiError | None:
    """The 503 a database failure becomes (None: not one the client could retry)."""
    if isinstance(exc, psycopg.errors.QueryCanceled):
        return ApiError(
            503,
            "statement_timeout",
            "the request's database work exceeded HEARTH_SERVICE_STATEMENT_TIMEOUT_MS",
        )
    if isinstance(exc, PoolTimeout | psycopg.OperationalError):
        return ApiError(503, "database_unavailable", "the database is unavailable or busy")
    return None


# Set on the request by a handler once its streamed response is prepared: from then on an
# error must end that stream (the handler writes a final error record), never start a second
# response on the same connection.
STREAM_STARTED = web.RequestKey("stream_started", web.StreamResponse)


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiError as exc:
        if STREAM_STARTED in request:
            return _abandon(request, exc)
        return error_response(exc.status, exc.code, exc.message, exc.details, exc.headers)
    except HearthError as exc:
        if STREAM_STARTED in request:
            return _abandon(request, exc)
        if exc.http_status >= 500 and not isinstance(exc, Unavailable):
            log_failed(request, exc)
        return error_response(exc.http_status, exc.code, exc.message)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        headers = {k: v for k, v in exc.headers.items() if k.lower() == "allow"}
        return error_response(
            exc.status,
            _STATUS_CODES.get(exc.status, "http_error"),
            exc.reason,
            headers=headers,
        )
    except Exception as exc:
        if STREAM_STARTED in request:
            return _abandon(request, exc)
        mapped = database_error(exc)
        if mapped is not None:
            return error_response(mapped.status, mapped.code, mapped.message)
        log_unhandled(request, exc)
        return error_response(500, "internal_error", "internal server error")


def _route_pattern(request: web.Request) -> str:
    route = request.match_info.route.resource
    return route.canonical if route is not None else "?"


def log_unhandled(request: web.Request, exc: BaseException) -> None:
    # No str(exc): driver messages can quote parameter values (user ids).
    log.error("unhandled %s on %s %s", type(exc).__name__, request.method, _route_pattern(request))


def log_failed(request: web.Request, exc: HearthError) -> None:
    """A domain error the client cannot fix (a purge left rows, configuration): by type and
    code, not message (it may name a user)."""
    log.error(
        "%s (%s) on %s %s", type(exc).__name__, exc.code, request.method, _route_pattern(request)
    )


def _abandon(request: web.Request, exc: BaseException) -> web.StreamResponse:
    """A streaming handler let an error escape after its response started: hand back that
    response (nothing more is written to it) and drop the connection, so the client sees a
    truncated stream rather than a second response inside the first."""
    if not isinstance(exc, ConnectionResetError):  # a client that left is not our error
        log_unhandled(request, exc)
    response = request[STREAM_STARTED]
    response.force_close()
    if request.transport is not None:
        request.transport.close()
    return response
