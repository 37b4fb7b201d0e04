"""States of a replica id in the registry (collector/sessions.py), on the database clock."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

from collector.sessions import SessionRecord

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
WEEK_S = 7 * 86400
STALE_S = 300.0


def record(seen_ago_s: float, **changes: object) -> SessionRecord:
    base = SessionRecord(
        client_id="hearth-collector-2",
        share_group="hearth",
        host="h",
        pid=1,
        session_expiry_s=WEEK_S,
        started_at=NOW - timedelta(days=1),
        last_seen=NOW - timedelta(seconds=seen_ago_s),
        stopped_at=None,
        drained_at=None,
        now=NOW,
    )
    return replace(base, **changes)  # type: ignore[arg-type]


def test_states_follow_heartbeat_stop_drain_and_expiry() -> None:
    assert record(5).state(STALE_S) == "running"
    assert record(STALE_S + 1).state(STALE_S) == "stale"  # killed: no clean stop
    stopped = record(10, stopped_at=NOW - timedelta(seconds=10))
    assert stopped.state(STALE_S) == "stopped"  # its session still takes a share
    assert record(10, drained_at=NOW).state(STALE_S) == "drained"
    assert record(WEEK_S + 1).state(STALE_S) == "expired"  # the broker dropped it
    assert [r.may_queue(STALE_S) for r in (record(5), record(400), stopped)] == [False, True, True]


def test_json_says_when_the_session_expires_and_that_queue_counts_are_unknown() -> None:
    out = record(400).to_json(STALE_S)
    assert out["state"] == "stale" and out["queued"] is None
    assert out["session_expires_at"] == (NOW - timedelta(seconds=400 - WEEK_S)).isoformat()
    assert record(5).to_json(STALE_S)["session_expires_at"] is None
