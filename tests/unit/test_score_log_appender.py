"""The score log's group commit (features.book.score_log.GroupAppender), as a pure unit: a
stand-in connection records each append statement's rows and can be held or made to fail.
The statement itself is tested against the database in tests/integration/test_book.py."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

import pytest

from features.book.score_log import ONLINE, GroupAppender, LogRow


def _row(user: str) -> LogRow:
    return LogRow(user, datetime(2026, 1, 1, tzinfo=UTC), "m", "fs", 600, 0.1, [], "t", ONLINE)


class StandIn:
    """A connection whose every statement's users are recorded; ``hold`` keeps a statement
    waiting, ``error`` makes them fail."""

    def __init__(self) -> None:
        self.statements: list[list[str]] = []
        self.started = asyncio.Event()  # a statement has been sent
        self.hold = asyncio.Event()
        self.hold.set()
        self.error: Exception | None = None

    async def execute(self, _sql: str, params: tuple[int, str]) -> None:
        self.statements.append([r["user_id"] for r in json.loads(params[1])])
        self.started.set()
        await self.hold.wait()
        if self.error is not None:
            raise self.error

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[Any]:
        yield self


async def test_rows_that_arrive_while_a_write_runs_share_the_next_one() -> None:
    db = StandIn()
    appender = GroupAppender(db.connection)
    appender.start()
    db.hold.clear()
    first = asyncio.create_task(appender.append([_row("a")]))
    await db.started.wait()  # the first write has started and is held
    rest = [asyncio.create_task(appender.append([_row(f"u{i}")])) for i in range(9)]
    await asyncio.sleep(0)
    assert not any(t.done() for t in [first, *rest])  # none answered before its commit
    db.hold.set()
    await asyncio.gather(first, *rest)
    assert db.statements == [["a"], [f"u{i}" for i in range(9)]]
    await appender.close()


async def test_a_failed_write_fails_every_request_in_it() -> None:
    db = StandIn()
    db.error = RuntimeError("database gone")
    appender = GroupAppender(db.connection, linger_s=0.01)  # all three in one write
    appender.start()
    results = await asyncio.gather(
        *(appender.append([_row(u)]) for u in "xyz"), return_exceptions=True
    )
    assert [str(r) for r in results] == ["database gone"] * 3
    assert db.statements == [["x", "y", "z"]]
    db.error = None
    await appender.append([_row("w")])  # the writer outlives a failed write
    await appender.close()


async def test_close_writes_what_is_pending_and_then_refuses() -> None:
    db = StandIn()
    appender = GroupAppender(db.connection, writers=2)
    appender.start()
    pending = [asyncio.create_task(appender.append([_row(u)])) for u in "pq"]
    await asyncio.sleep(0)
    await appender.close()
    await asyncio.gather(*pending)
    assert sorted(u for s in db.statements for u in s) == ["p", "q"]
    with pytest.raises(RuntimeError, match="not running"):
        await appender.append([_row("late")])


async def test_a_request_that_goes_away_still_has_its_score_logged() -> None:
    db = StandIn()
    appender = GroupAppender(db.connection)
    appender.start()
    db.hold.clear()
    request = asyncio.create_task(appender.append([_row("gone")]))
    await db.started.wait()
    request.cancel()  # the client disconnected while its score was being logged
    with pytest.raises(asyncio.CancelledError):
        await request
    db.hold.set()
    await appender.close()
    assert db.statements == [["gone"]]


async def test_the_writer_waits_for_requests_still_scoring_and_no_longer() -> None:
    db = StandIn()
    appender = GroupAppender(db.connection, linger_s=30.0)
    appender.start()
    # Alone, a request's rows are written at once, not after the linger.
    await asyncio.wait_for(appender.append([_row("alone")]), 5.0)
    with appender.coming():  # a request still scoring
        first = asyncio.create_task(appender.append([_row("a")]))
        await asyncio.sleep(0.05)  # room for a wrong early write
        assert db.statements == [["alone"]]
        second = appender.submit([_row("b")])
    await asyncio.wait_for(asyncio.gather(first, second), 5.0)  # leaving coming() ends the wait
    assert db.statements == [["alone"], ["a", "b"]]
    await appender.close()
