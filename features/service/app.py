"""Assemble and run the feature service (``python -m features serve``).

Middleware order, outermost first: metrics (sees the final status), JSON errors, auth. Pools
open on startup and close on cleanup; the consent listener runs only when the cache is on.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from datetime import timedelta

from aiohttp import web
from psycopg_pool import AsyncConnectionPool, ConnectionPool

from features.service.auth import TokenAuthenticator, auth_middleware
from features.service.cache import ConsentListener, VectorCache
from features.service.engine_gateway import EngineGateway
from features.service.errors import error_middleware
from features.service.handlers_features import HISTORICAL_MAX_BODY
from features.service.metrics import ServiceMetrics
from features.service.routes import ENDPOINTS
from features.service.state import STATE, ServiceState
from features.service.store import SnapshotStore, configure_connection
from features.service.vectors import Outcome, VectorResolver
from hearth.settings import Settings

log = logging.getLogger("features.service")

DEFAULT_CACHE_ENTRIES = 100_000
DEFAULT_CACHE_TTL_S = 5.0


def create_app(
    settings: Settings,
    *,
    cache_entries: int = DEFAULT_CACHE_ENTRIES,
    cache_ttl_s: float = DEFAULT_CACHE_TTL_S,
    pool_size: int = 8,
) -> web.Application:
    # Autocommit: reads need no BEGIN/COMMIT round trips, and hearth.admin manages its own
    # transactions (it commits between purge passes).
    async_pool = AsyncConnectionPool(
        settings.database_url,
        min_size=2,
        max_size=pool_size,
        open=False,
        kwargs={"autocommit": True},
        configure=configure_connection,
    )
    sync_pool = ConnectionPool(
        settings.database_url, min_size=1, max_size=4, open=False, kwargs={"autocommit": True}
    )
    cache: VectorCache[Outcome] = VectorCache(cache_entries, cache_ttl_s)
    store = SnapshotStore(async_pool)
    engine = EngineGateway(sync_pool)
    metrics = ServiceMetrics()
    metrics.watch_cache(lambda: (cache.hits, cache.misses))
    listener = (
        ConsentListener(settings.database_url, cache)  # type: ignore[arg-type]
        if cache_entries > 0
        else None
    )
    state = ServiceState(
        settings=settings,
        async_pool=async_pool,
        sync_pool=sync_pool,
        store=store,
        engine=engine,
        cache=cache,
        listener=listener,
        resolver=VectorResolver(
            store, engine, cache, timedelta(seconds=settings.snapshot_stale_after_s)
        ),
        metrics=metrics,
    )

    app = web.Application(
        client_max_size=HISTORICAL_MAX_BODY,
        middlewares=[
            metrics.middleware(),
            error_middleware,
            auth_middleware(
                TokenAuthenticator(settings.api_tokens),
                {ep.operation_id: ep.scope for ep in ENDPOINTS if ep.scope is not None},
            ),
        ],
    )
    app[STATE] = state
    for ep in ENDPOINTS:
        app.router.add_route(ep.method, ep.path, ep.handler, name=ep.operation_id)
    app.cleanup_ctx.append(_lifecycle)
    return app


async def _lifecycle(app: web.Application) -> AsyncIterator[None]:
    state = app[STATE]
    await state.async_pool.open(wait=False)
    state.sync_pool.open(wait=False)
    if state.listener is not None:
        state.listener.start()
    yield
    if state.listener is not None:
        await state.listener.stop()
    await state.async_pool.close()
    state.sync_pool.close()


def run_service(
    settings: Settings,
    host: str,
    port: int,
    *,
    cache_entries: int = DEFAULT_CACHE_ENTRIES,
    cache_ttl_s: float = DEFAULT_CACHE_TTL_S,
) -> None:
    if not settings.api_tokens:
        log.warning("HEARTH_API_TOKENS is empty: every scoped endpoint will answer 401")
    app = create_app(settings, cache_entries=cache_entries, cache_ttl_s=cache_ttl_s)
    # No access log: request lines carry user ids in paths.
    web.run_app(app, host=host, port=port, access_log=None, print=None)
