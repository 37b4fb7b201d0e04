"""Assemble and run the feature service (``python -m features serve``).

Middleware order, outermost first: metrics (sees the final status), JSON errors, auth. Pools
open on startup and close on cleanup; the consent listener runs only when the cache is on.
Three pools: snapshot reads (async), the engine's on-demand computations, and admin
operations, so a long purge never holds a connection a read needs. Every read connection
bounds its statements (``HEARTH_SERVICE_STATEMENT_TIMEOUT_MS``).
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import os
import signal
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

from aiohttp import web
from psycopg_pool import AsyncConnectionPool, ConnectionPool

from features.book.score_log import GroupAppender
from features.book.scoring import ScoringModel
from features.service.auth import TokenAuthenticator, auth_middleware
from features.service.cache import ConsentListener, VectorCache
from features.service.console.app import setup_console
from features.service.errors import error_middleware
from features.service.handlers.features import historical_max_body
from features.service.header_timeout import HeaderTimeoutRunner
from features.service.metrics import ServiceMetrics
from features.service.openapi import build_openapi
from features.service.resolve.bulk import BulkResolver
from features.service.resolve.engine_gateway import EngineGateway, feature_set_version
from features.service.resolve.replica import ReplicaGate
from features.service.resolve.store import (
    SnapshotStore,
    configure_connection,
    statement_timeout_sql,
)
from features.service.resolve.vectors import Outcome, VectorResolver
from features.service.routes import ENDPOINTS
from features.service.state import STATE, ServiceState
from features.service.tabular import warm_up
from hearth.db import AsyncConn, Conn
from hearth.errors import ConfigError, Unavailable
from hearth.settings import Settings

log = logging.getLogger("features.service")

DEFAULT_CACHE_ENTRIES = 100_000
DEFAULT_CACHE_TTL_S = 5.0
ADMIN_CONNECTIONS = 2  # admin operations at once; more wait their turn
# How long the score log's writer, once woken, waits at most for requests still scoring to add
# their rows (features.book.score_log.GroupAppender: alone, a score is written at once). Each
# statement is a wake-up of the database, the largest cost of POST /v1/scores on 2 cores.
SCORE_LOG_LINGER_S = 0.001


def create_app(
    settings: Settings,
    *,
    cache_entries: int = DEFAULT_CACHE_ENTRIES,
    cache_ttl_s: float = DEFAULT_CACHE_TTL_S,
    pool_size: int = 8,
) -> web.Application:
    state = _service_state(settings, cache_entries, cache_ttl_s, pool_size)
    app = web.Application(
        client_max_size=historical_max_body(settings),
        middlewares=[
            state.metrics.middleware(),
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
    setup_console(app, settings)  # /console/: the operator's console, its own cookie login
    return app


def _service_state(
    settings: Settings, cache_entries: int, cache_ttl_s: float, pool_size: int
) -> ServiceState:
    async_pool, sync_pool, admin_pool = _pools(settings, pool_size)
    primary_pool, gate = _replica_gate(settings)
    cache: VectorCache[Outcome] = VectorCache(cache_entries, cache_ttl_s)
    store = SnapshotStore(async_pool, max_clock_skew_s=settings.max_clock_skew_s, gate=gate)
    engine = EngineGateway(sync_pool, gate)
    metrics = ServiceMetrics()
    # One writer connection, on the primary even when reads go to a replica.
    score_log_pool = AsyncConnectionPool(
        settings.database_url, min_size=1, max_size=1, open=False, kwargs={"autocommit": True}
    )
    metrics.watch_cache(lambda: (cache.hits, cache.misses))
    listener = ConsentListener(settings.database_url, cache) if cache_entries > 0 else None
    return ServiceState(
        settings=settings,
        async_pool=async_pool,
        sync_pool=sync_pool,
        admin_pool=admin_pool,
        admin_executor=ThreadPoolExecutor(ADMIN_CONNECTIONS, thread_name_prefix="hearth-admin"),
        store=store,
        engine=engine,
        cache=cache,
        listener=listener,
        resolver=VectorResolver(
            store, engine, cache, timedelta(seconds=settings.snapshot_stale_after_s)
        ),
        bulk=BulkResolver(async_pool, engine, settings.max_clock_skew_s, gate),
        metrics=metrics,
        score_log=GroupAppender(score_log_pool.connection, linger_s=SCORE_LOG_LINGER_S),
        score_log_pool=score_log_pool,
        openapi_json=json.dumps(build_openapi(ENDPOINTS)),
        primary_pool=primary_pool,
        replica_gate=gate,
        book_model=_book_model(settings),
    )


def _replica_gate(settings: Settings) -> tuple[AsyncConnectionPool | None, ReplicaGate | None]:
    """With a read URL: a small pool on the primary for WAL positions, and the gate that makes
    replica reads wait for them (features.service.resolve.replica)."""
    if settings.database_read_url is None:
        return None, None
    pool = AsyncConnectionPool(
        settings.database_url, min_size=1, max_size=2, open=False, kwargs={"autocommit": True}
    )
    return pool, ReplicaGate(pool, settings.replica_max_wait_s)


def _book_model(settings: Settings) -> ScoringModel | None:
    """The model of ``HEARTH_SCORE_MODEL``; one that may not be loaded stops the service
    (exit 78) rather than serve without it."""
    if settings.score_model is None:
        return None
    # Imported only when a model is configured: scikit-learn and skops take seconds to import,
    # which every service start would otherwise pay.
    from features.book.model import ModelRefused, load_model

    try:
        model = load_model(settings.score_model)
    except ModelRefused as exc:
        raise ConfigError(f"HEARTH_SCORE_MODEL: {exc.message}") from None
    log.info(
        "event=score_model_loaded model_version=%s feature_set_version=%s",
        model.model_version,
        model.feature_set_version,
    )
    return model


def _pools(
    settings: Settings, pool_size: int
) -> tuple[AsyncConnectionPool, ConnectionPool, ConnectionPool]:
    """(snapshot reads, engine computations, admin operations); none open yet. Reads go to
    the replica when there is one (``HEARTH_DATABASE_READ_URL``); admin operations write."""
    timeout_sql = statement_timeout_sql(settings.service_statement_timeout_ms)

    async def configure_reads(conn: AsyncConn) -> None:
        await configure_connection(conn)
        await conn.execute(timeout_sql)

    def configure_engine(conn: Conn) -> None:
        conn.execute(timeout_sql)

    # Autocommit: reads need no BEGIN/COMMIT round trips, and hearth.admin manages its own
    # transactions (it commits between purge passes).
    async_pool = AsyncConnectionPool(
        settings.read_url,
        min_size=2,
        max_size=pool_size,
        open=False,
        kwargs={"autocommit": True},
        configure=configure_reads,
    )
    sync_pool = ConnectionPool(
        settings.read_url,
        min_size=1,
        max_size=4,
        open=False,
        kwargs={"autocommit": True},
        configure=configure_engine,
    )
    # No statement timeout here: a withdrawal's purge may rightly take longer than a read.
    admin_pool = ConnectionPool(
        settings.database_url,
        min_size=1,
        max_size=ADMIN_CONNECTIONS,
        open=False,
        kwargs={"autocommit": True},
    )
    return async_pool, sync_pool, admin_pool


async def _lifecycle(app: web.Application) -> AsyncIterator[None]:
    state = app[STATE]
    if state.primary_pool is not None:
        await state.primary_pool.open(wait=False)
    await asyncio.to_thread(warm_up)  # the Arrow path's one-time imports, before serving
    await state.async_pool.open(wait=False)
    state.sync_pool.open(wait=False)
    state.admin_pool.open(wait=False)
    await state.score_log_pool.open(wait=False)
    state.score_log.start()
    if state.listener is not None:
        state.listener.start()
    yield
    await state.score_log.close()  # after the last request: what it logged is written
    await state.score_log_pool.close()
    if state.listener is not None:
        await state.listener.stop()
    await state.async_pool.close()
    if state.primary_pool is not None:
        await state.primary_pool.close()
    state.sync_pool.close()
    state.admin_executor.shutdown(wait=False, cancel_futures=True)
    state.admin_pool.close()


def make_runner(app: web.Application, settings: Settings) -> web.AppRunner:
    """The runner every way of serving uses. No access log: request lines carry user ids."""
    return HeaderTimeoutRunner(app, settings.http_header_timeout_s, access_log=None)


def run_service(
    settings: Settings,
    host: str,
    port: int,
    *,
    cache_entries: int = DEFAULT_CACHE_ENTRIES,
    cache_ttl_s: float = DEFAULT_CACHE_TTL_S,
) -> None:
    """Serve until SIGTERM or SIGINT. A port that cannot be bound is Unavailable."""
    if not settings.api_tokens:
        log.warning("HEARTH_API_TOKENS is empty: every scoped endpoint will answer 401")
    app = create_app(settings, cache_entries=cache_entries, cache_ttl_s=cache_ttl_s)
    asyncio.run(_serve(app, settings, host, port))


async def _serve(app: web.Application, settings: Settings, host: str, port: int) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    runner = make_runner(app, settings)
    await runner.setup()
    try:
        try:
            await web.TCPSite(runner, host, port).start()
        except OSError as exc:
            # asyncio rewords bind errors ("error while attempting to bind on address ...");
            # the errno's own text is the short one. Resolver errors have a negative errno.
            reason = os.strerror(exc.errno) if exc.errno and exc.errno > 0 else exc.strerror
            raise Unavailable(f"cannot listen on {host}:{port}: {reason or exc}") from None
        # What is loaded by now (the catalogue, a scoring model's scikit-learn objects: ~200 k
        # objects) lives as long as the process. Frozen, a full garbage collection no longer
        # walks it in the middle of a request (~100 ms each time: the p99 of POST /v1/scores).
        gc.collect()
        gc.freeze()
        log.info(
            "event=service_started address=http://%s:%d feature_set_version=%s",
            host,
            port,
            feature_set_version(),
        )
        await stop.wait()
        log.info("event=service_stopping")
    finally:
        await runner.cleanup()
