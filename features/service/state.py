"""What handlers share, stored once on the aiohttp application."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from aiohttp import web
from psycopg_pool import AsyncConnectionPool, ConnectionPool

from features.book.population import PopulationCache
from features.book.score_log import GroupAppender
from features.book.scoring import ScoringModel
from features.service.cache import ConsentListener, VectorCache
from features.service.metrics import ServiceMetrics
from features.service.resolve.bulk import BulkResolver
from features.service.resolve.engine_gateway import EngineGateway
from features.service.resolve.replica import ReplicaGate
from features.service.resolve.store import SnapshotStore
from features.service.resolve.vectors import Outcome, VectorResolver
from hearth.settings import Settings


@dataclass
class ServiceState:
    settings: Settings
    async_pool: AsyncConnectionPool
    sync_pool: ConnectionPool  # the engine's on-demand computations
    admin_pool: ConnectionPool  # admin operations only (see handlers.admin)
    admin_executor: ThreadPoolExecutor
    store: SnapshotStore
    engine: EngineGateway
    cache: VectorCache[Outcome]
    listener: ConsentListener | None
    resolver: VectorResolver
    bulk: BulkResolver  # historical requests, in columns
    metrics: ServiceMetrics
    score_log: GroupAppender  # POST /v1/scores' appends, group-committed on the primary
    score_log_pool: AsyncConnectionPool
    openapi_json: str  # /openapi.json, rendered once from the route table
    # With HEARTH_DATABASE_READ_URL: primary connections for WAL positions (resolve.replica);
    # the snapshot and engine pools then read the replica.
    primary_pool: AsyncConnectionPool | None = None
    replica_gate: ReplicaGate | None = None  # with a read URL: replica reads wait for it
    book_model: ScoringModel | None = None  # HEARTH_SCORE_MODEL, loaded at start
    populations: PopulationCache = field(default_factory=PopulationCache)  # for percentiles


STATE = web.AppKey("state", ServiceState)


def state_of(request: web.Request) -> ServiceState:
    return request.app[STATE]
