"""What the console's handlers share, stored once on the aiohttp application."""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web
from psycopg_pool import ConnectionPool

from features.service.console.session import ConsoleAuth
from hearth.settings import Settings


@dataclass
class ConsoleState:
    settings: Settings
    auth: ConsoleAuth
    pool: ConnectionPool  # the console's reads (two connections, statement timeout)


CONSOLE = web.AppKey("console", ConsoleState)
