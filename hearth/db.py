"""Database connections with errors a person can read.

Every process gets its connections here so that a wrong ``HEARTH_DATABASE_URL`` or a stopped
server becomes one :class:`DatabaseUnavailable` line naming the target (without the password).
"""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg.rows import TupleRow
from psycopg_pool import AsyncConnectionPool, ConnectionPool


class DatabaseUnavailable(Exception):
    """The database cannot be reached or refused us; the message is one line."""


def redact_url(url: str) -> str:
    """The URL with its password replaced, for messages and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


def describe_error(url: str, exc: BaseException) -> str:
    first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return f"HEARTH_DATABASE_URL: cannot use {redact_url(url)}: {first_line}"


def connect(
    url: str, *, autocommit: bool = False, timeout_s: float = 5.0
) -> psycopg.Connection[TupleRow]:
    try:
        return psycopg.connect(url, autocommit=autocommit, connect_timeout=max(1, int(timeout_s)))
    except psycopg.Error as exc:
        raise DatabaseUnavailable(describe_error(url, exc)) from exc


async def connect_async(
    url: str, *, autocommit: bool = False, timeout_s: float = 5.0
) -> psycopg.AsyncConnection[TupleRow]:
    try:
        return await psycopg.AsyncConnection.connect(
            url, autocommit=autocommit, connect_timeout=max(1, int(timeout_s))
        )
    except psycopg.Error as exc:
        raise DatabaseUnavailable(describe_error(url, exc)) from exc


def make_pool(url: str, *, min_size: int = 1, max_size: int = 4) -> ConnectionPool:
    return ConnectionPool(url, min_size=min_size, max_size=max_size, open=False)


def make_async_pool(url: str, *, min_size: int = 1, max_size: int = 8) -> AsyncConnectionPool:
    return AsyncConnectionPool(url, min_size=min_size, max_size=max_size, open=False)
