"""Versioned, ordered, idempotent schema migrations recorded in ``schema_migrations``.

Migrations are the SQL files ``hearth/migrations/NNNN_name.sql``, applied in order, each in its
own transaction, under an advisory lock so that replicas starting together do not race. An
applied file whose text changed is an error: history is never rewritten, only added to.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from importlib import resources

import psycopg

from hearth.db import Conn, DatabaseUnavailable

_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
_LOCK_KEY = 0x4845415254  # "HEART"


class MigrationError(Exception):
    """The schema cannot be brought up to date; the message is one line."""


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


@dataclass(frozen=True)
class MigrateResult:
    applied: list[Migration]
    current_version: int
    timescaledb_version: str
    edition: str  # "apache" or "timescale" (Community/TSL)


def available_migrations() -> list[Migration]:
    found = []
    for entry in resources.files("hearth.migrations").iterdir():
        match = _NAME.match(entry.name)
        if match:
            found.append(Migration(int(match[1]), match[2], entry.read_text()))
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if len(versions) != len(set(versions)):
        raise MigrationError(f"two migration files share a version number: {versions}")
    return found


def timescaledb_info(conn: Conn) -> tuple[str, str]:
    row = conn.execute(
        "SELECT extversion FROM pg_extension WHERE extname = 'timescaledb'"
    ).fetchone()
    if row is None:
        raise MigrationError("TimescaleDB extension is not installed in this database")
    license_row = conn.execute("SHOW timescaledb.license").fetchone()
    edition = str(license_row[0]) if license_row else "unknown"
    return str(row[0]), edition


def migrate(conn: Conn) -> MigrateResult:
    """Apply every pending migration. ``conn`` must be in autocommit mode."""
    try:
        conn.execute("CREATE EXTENSION IF NOT EXISTS timescaledb")
    except psycopg.errors.InsufficientPrivilege:
        raise MigrationError(
            "TimescaleDB extension missing and this role may not create it; run "
            "'CREATE EXTENSION timescaledb' as a superuser (scripts/services up does)"
        ) from None
    except psycopg.errors.FeatureNotSupported as exc:
        raise MigrationError(f"TimescaleDB not loadable: {str(exc).splitlines()[0]}") from None
    ts_version, edition = timescaledb_info(conn)
    conn.execute("SELECT pg_advisory_lock(%s)", (_LOCK_KEY,))
    try:
        conn.execute(
            """CREATE TABLE IF NOT EXISTS schema_migrations (
                   version    integer PRIMARY KEY,
                   name       text NOT NULL,
                   checksum   text NOT NULL,
                   applied_at timestamptz NOT NULL DEFAULT now())"""
        )
        applied: dict[int, str] = {
            int(str(v)): str(c)
            for v, c in conn.execute("SELECT version, checksum FROM schema_migrations").fetchall()
        }
        done: list[Migration] = []
        for migration in available_migrations():
            if migration.version in applied:
                if applied[migration.version] != migration.checksum:
                    raise MigrationError(
                        f"migration {migration.version:04d}_{migration.name} was changed after "
                        "it was applied; add a new migration instead"
                    )
                continue
            with conn.transaction():
                conn.execute(migration.sql.encode())
                conn.execute(
                    "INSERT INTO schema_migrations (version, name, checksum) VALUES (%s, %s, %s)",
                    (migration.version, migration.name, migration.checksum),
                )
            done.append(migration)
        row = conn.execute("SELECT coalesce(max(version), 0) FROM schema_migrations").fetchone()
        current = int(str(row[0])) if row else 0
    except psycopg.OperationalError as exc:
        raise DatabaseUnavailable(f"database connection lost during migration: {exc}") from exc
    finally:
        if not conn.closed:
            conn.execute("SELECT pg_advisory_unlock(%s)", (_LOCK_KEY,))
    return MigrateResult(done, current, ts_version, edition)
