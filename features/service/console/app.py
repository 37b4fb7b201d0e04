"""Mounting the console on the feature service: routes, static files, its own small pool.

The console's reads run in a worker thread on a connection of its own pool (two connections,
``HEARTH_SERVICE_STATEMENT_TIMEOUT_MS`` per statement), so a page never takes a connection the
feature endpoints need; export and erasure use the admin pool and threads, like the admin API.
Console routes carry no scope in the route table: the console checks its own cookie
(:mod:`.session`), and the API's bearer tokens play no part in it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

from aiohttp import web
from psycopg_pool import ConnectionPool

from features.service.console import pages
from features.service.console.session import ConsoleAuth
from features.service.console.state import CONSOLE, ConsoleState
from features.service.resolve.store import statement_timeout_sql
from hearth.db import Conn
from hearth.settings import Settings

STATIC_DIR = Path(__file__).resolve().parent / "static"
POOL_SIZE = 2  # pages at once; more wait their turn


ROUTES = (
    ("GET", "/console", pages.index, "index_bare"),
    ("GET", "/console/", pages.index, "index"),
    ("GET", "/console/login", pages.login_form, "login_form"),
    ("POST", "/console/login", pages.login, "login"),
    ("POST", "/console/logout", pages.logout, "logout"),
    ("GET", "/console/fleet", pages.fleet, "fleet"),
    ("GET", "/console/ingest", pages.ingest, "ingest"),
    ("GET", "/console/consent", pages.consent, "consent"),
    ("GET", "/console/features", pages.features, "features"),
    ("GET", "/console/person", pages.person, "person"),
    ("GET", "/console/person/export", pages.export, "export"),
    ("POST", "/console/person/erase", pages.erase, "erase"),
)


def setup_console(app: web.Application, settings: Settings) -> None:
    """Add the console's routes and state to the feature service's application."""
    timeout_sql = statement_timeout_sql(settings.service_statement_timeout_ms)

    def configure(conn: Conn) -> None:
        conn.execute(timeout_sql)

    pool = ConnectionPool(
        settings.database_url,
        min_size=1,
        max_size=POOL_SIZE,
        open=False,
        kwargs={"autocommit": True},
        configure=configure,
    )
    app[CONSOLE] = ConsoleState(settings, ConsoleAuth(settings.api_tokens), pool)
    for method, path, handler, name in ROUTES:
        app.router.add_route(method, path, handler, name=f"console.{name}")
    app.router.add_static("/console/static/", STATIC_DIR, name="console.static")
    app.cleanup_ctx.append(_lifecycle)


async def _lifecycle(app: web.Application) -> AsyncIterator[None]:
    pool = app[CONSOLE].pool
    pool.open(wait=False)
    yield
    pool.close()
