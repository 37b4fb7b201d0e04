"""A database of a test's own, for tests that change the schema or the database itself.

The session database (tests/conftest.py) is shared by every test of a run; a test that adds a
constraint, plants ledger rows no build understands or refuses connections works on a fresh,
migrated copy of ``hearth_template`` instead, dropped at the end.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg

from hearth.migrate import migrate
from tests.conftest import BASE_DATABASE_URL, _with_dbname, drop_database


@contextmanager
def private_database() -> Iterator[tuple[str, str]]:
    """(URL, database name) of a fresh migrated database; dropped (forcibly) on exit."""
    name = f"hearth_private_{secrets.token_hex(4)}"
    with psycopg.connect(BASE_DATABASE_URL, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}" TEMPLATE hearth_template')
    url = _with_dbname(BASE_DATABASE_URL, name)
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            migrate(conn)
        yield url, name
    finally:
        with psycopg.connect(BASE_DATABASE_URL, autocommit=True) as admin:
            admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
        drop_database(name)
