"""Admin endpoints (scope ``admin``): thin HTTP wrappers around :mod:`hearth.admin`.

The admin functions are synchronous and each runs its own transaction, so they run in a worker
thread on an autocommit connection. Both are the admin's own (``ServiceState.admin_pool`` and
``admin_executor``): a purge of 100,000 rows or an erasure that waits for older transactions
holds them for seconds, and must never take a connection or a thread a read needs. Their
typed errors (:mod:`hearth.errors`) become JSON errors by class in the error middleware: an
unknown user → 404 ``unknown_user`` (the code the feature endpoints use), an unknown device →
404 ``unknown_device``, an id already taken → 409 ``conflict``, anything else the caller got
wrong → 400, the broker a registration needs unreachable → 503.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any, TypeVar

import psycopg
from aiohttp import web

from features.service.errors import ApiError, read_model
from features.service.handlers.params import path_id
from features.service.models import (
    ConsentGrantRequest,
    ConsentWithdrawRequest,
    CreateUserRequest,
    RegisterDeviceRequest,
)
from features.service.state import state_of
from hearth import admin
from hearth.db import Conn

ADMIN_MAX_BODY = 64 * 1024

T = TypeVar("T")


async def _run(request: web.Request, call: Callable[[Conn], T]) -> T:
    state = state_of(request)
    pool = state.admin_pool

    def work() -> T:
        with pool.connection() as conn:
            return call(conn)

    try:
        return await asyncio.get_running_loop().run_in_executor(state.admin_executor, work)
    except psycopg.errors.IntegrityError:
        raise ApiError(409, "conflict", "the change conflicts with existing data") from None


def _json(body: object, status: int = 200) -> web.Response:
    return web.Response(
        text=json.dumps(body, default=str), status=status, content_type="application/json"
    )


async def create_user(request: web.Request) -> web.Response:
    body = await read_model(request, CreateUserRequest, ADMIN_MAX_BODY)
    created = await _run(request, lambda conn: admin.add_user(conn, body.user_id, body.tz))
    # Idempotent: 201 when created, 200 when the same user and zone existed (409 if the
    # zone differs).
    return _json({"user_id": body.user_id, "tz": body.tz}, status=201 if created else 200)


async def register_device(request: web.Request) -> web.Response:
    body = await read_model(request, RegisterDeviceRequest, ADMIN_MAX_BODY)
    creds = await _run(request, lambda conn: admin.register_device(conn, **body.model_dump()))
    return _json(creds.to_json(), status=200 if creds.rotated else 201)


async def retire_device(request: web.Request) -> web.Response:
    device_id = path_id(request, "device_id")
    info = await _run(request, lambda conn: admin.retire_device(conn, device_id))
    return _json(info.to_json())


async def grant_consent(request: web.Request) -> web.Response:
    body = await read_model(request, ConsentGrantRequest, ADMIN_MAX_BODY)
    kwargs: dict[str, Any] = body.model_dump(exclude_none=True)
    kwargs["category"] = body.category.value
    event = await _run(request, lambda conn: admin.grant_consent(conn, **kwargs))
    return _json(event.to_json(), status=201)


async def withdraw_consent(request: web.Request) -> web.Response:
    body = await read_model(request, ConsentWithdrawRequest, ADMIN_MAX_BODY)
    kwargs: dict[str, Any] = body.model_dump(exclude_none=True)
    kwargs["category"] = body.category.value
    report = await _run(request, lambda conn: admin.withdraw_consent(conn, **kwargs))
    return _json(report.to_json())


async def consent_history(request: web.Request) -> web.Response:
    user_id = path_id(request, "user_id")
    events = await _run(request, lambda conn: admin.consent_history(conn, user_id))
    return _json({"user_id": user_id, "events": [e.to_json() for e in events]})


async def export_user(request: web.Request) -> web.Response:
    user_id = path_id(request, "user_id")
    return _json(await _run(request, lambda conn: admin.export_user(conn, user_id)))


async def erase_user(request: web.Request) -> web.Response:
    user_id = path_id(request, "user_id")
    report = await _run(request, lambda conn: admin.erase_user(conn, user_id))
    return _json(report.to_json())
