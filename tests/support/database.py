"""Dropping a throwaway database, for the tests and the benchmarks alike."""

from __future__ import annotations

import time

import psycopg


def drop_database(name: str, base_url: str, deadline_s: float = 30.0) -> None:
    """Drop database ``name``, closing its sessions. A session this role may not end — an
    autovacuum worker, or TimescaleDB's scheduler for a database just created — can hold it for
    a moment and make a forced drop fail: try again until it has gone."""
    deadline = time.monotonic() + deadline_s
    with psycopg.connect(base_url, autocommit=True) as admin:
        while True:
            try:
                admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
                return
            except psycopg.errors.InsufficientPrivilege:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
