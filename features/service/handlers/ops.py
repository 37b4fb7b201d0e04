"""Operational endpoints: liveness, readiness (database reachable; with a read replica, its
replay lag), metrics, OpenAPI."""

from __future__ import annotations

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from features.service.state import state_of


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    state = state_of(request)
    ok = await state.store.ping()
    body: dict[str, object] = {"database": ok}
    if state.primary_pool is not None:  # reads go to a replica: how far behind is it?
        replica = await state.store.replica_state()
        body["replica"] = None if replica is None else replica.to_json()
        ok = ok and replica is not None
    return web.json_response(
        {"status": "ready" if ok else "unavailable", **body}, status=200 if ok else 503
    )


async def metrics(request: web.Request) -> web.Response:
    body = generate_latest(state_of(request).metrics.registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def openapi(request: web.Request) -> web.Response:
    """The document ``create_app`` rendered from the route table (handlers never import it)."""
    return web.Response(text=state_of(request).openapi_json, content_type="application/json")
