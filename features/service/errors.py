"""JSON errors everywhere: one shape (``ErrorResponse``) for every 4xx/5xx the service writes.

The middleware turns aiohttp's own HTTP exceptions (404 no route, 405, 413 body too large),
:class:`ApiError` raised by handlers and any unexpected exception into that shape. Logs name the
route *pattern* and the exception type only, never the path, query or body: those carry user ids.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import TypeVar

from aiohttp import web
from pydantic import BaseModel, ValidationError

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


def validation_details(exc: ValidationError) -> list[tuple[str, str]]:
    out = []
    for err in exc.errors(include_url=False, include_input=False)[:MAX_ERROR_DETAILS]:
        field = ".".join(str(p) for p in err["loc"]) or "body"
        out.append((field, str(err["msg"])))
    return out


async def read_model(request: web.Request, model: type[M], max_bytes: int) -> M:
    """The request body validated against ``model``; 413 past ``max_bytes``, 400 when invalid."""
    if request.content_length is not None and request.content_length > max_bytes:
        raise ApiError(413, "body_too_large", f"request body exceeds {max_bytes} bytes")
    body = await request.read()
    if len(body) > max_bytes:
        raise ApiError(413, "body_too_large", f"request body exceeds {max_bytes} bytes")
    try:
        return model.model_validate_json(body)
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
}


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiError as exc:
        return error_response(exc.status, exc.code, exc.message, exc.details, exc.headers)
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
        route = request.match_info.route.resource
        pattern = route.canonical if route is not None else "?"
        # No str(exc): driver messages can quote parameter values (user ids).
        log.error("unhandled %s on %s %s", type(exc).__name__, request.method, pattern)
        return error_response(500, "internal_error", "internal server error")
