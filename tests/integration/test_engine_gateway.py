"""The service's on-demand engine (features.service.resolve.engine_gateway): a batch with more
than one chunk of users at an as_of borrows a second pool connection to read the next chunk
while one is computed, never waits for one, and gives the vectors of a plain engine pass."""

from __future__ import annotations

import random
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from psycopg_pool import ConnectionPool

from features.engine import compute_historical
from features.rollups import refresh_rollups
from features.service.resolve import engine_gateway
from features.service.resolve.engine_gateway import EngineGateway
from features.snapshots.codec import pack_vector
from tests.support.builders import add_device, add_user, insert_numeric

AS_OF = datetime(2026, 6, 1, 12, tzinfo=UTC)
USERS = [f"gw-{i}" for i in range(5)]


@pytest.fixture
def fleet(own_database: tuple[str, str]) -> Iterator[str]:
    url, _ = own_database
    rng = random.Random(7)
    with psycopg.connect(url, autocommit=True) as conn:
        rows = []
        for user in USERS:
            add_user(conn, user, granted_at=AS_OF - timedelta(days=200))
            add_device(conn, f"{user}-phone", user, "phone")
            for h in range(0, 40 * 24, 3):
                t = AS_OF - timedelta(days=40) + timedelta(hours=h, minutes=rng.randrange(60))
                value = rng.uniform(5, 100)
                rows.append((t, f"{user}-phone", user, "battery_pct", value, t))
        insert_numeric(conn, rows)
        refresh_rollups(conn, full=True)
    yield url


def _pool(url: str, size: int) -> ConnectionPool:
    return ConnectionPool(url, min_size=1, max_size=size, kwargs={"autocommit": True}, open=True)


def test_a_batch_of_several_chunks_reads_ahead_on_a_second_connection(
    fleet: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    rows = [(u, AS_OF) for u in USERS] + [("nobody", AS_OF)]
    with psycopg.connect(fleet, autocommit=True) as conn:
        expected = compute_historical(conn, rows)
    monkeypatch.setattr(engine_gateway, "DEFAULT_CHUNK_USERS", 2)  # 5 users: several chunks
    for size, loaders in ((2, 1), (1, 0)):  # a pool with a connection to spare, one without
        with _pool(fleet, size) as pool:
            got = EngineGateway(pool)._historical(rows)
            stats = pool.get_stats()
            assert stats["requests_num"] == 2  # the batch's connection and its loader's
            assert stats.get("requests_errors", 0) == 1 - loaders  # none to spare: not waited
            assert stats["pool_available"] == stats["pool_size"]  # both given back
        assert got[-1] is None
        for vector, computed in zip(expected[:-1], got[:-1], strict=True):
            assert vector is not None and computed is not None
            assert computed.vector == pack_vector(vector)


def test_a_batch_of_one_chunk_takes_no_loader(fleet: str) -> None:
    with _pool(fleet, 2) as pool:
        EngineGateway(pool)._historical([(u, AS_OF) for u in USERS])
        assert pool.get_stats()["requests_num"] == 1
