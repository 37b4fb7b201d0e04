"""Reading from the streaming replica that ``scripts/services up --replica`` runs (issue 16 §2):
the same snapshots as from the primary, a replica whose replay is paused makes a computation
wait and then refuse, and ``/readyz`` reports the replica's lag."""

from __future__ import annotations

import json
import os
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest

from features.report.data import features_from_engine, features_from_snapshots
from features.snapshots.materialize import materialize
from hearth.errors import ConfigError
from hearth.replica import (
    Position,
    ReplicaBehind,
    catch_up,
    primary_position,
    replay_state,
    wait_for_replay,
)
from hearth.settings import get_settings, load_settings
from tests.conftest import _with_dbname
from tests.integration.population import populate
from tests.integration.private_db import private_database
from tests.support.book import fit_model
from tests.support.service import serve_in_thread

AS_OF = datetime(2026, 5, 1, tzinfo=UTC)
REPLICA_BASE_URL = os.environ.get(
    "HEARTH_TEST_REPLICA_URL", "postgresql://hearth:hearth@127.0.0.1:5433/hearth"
)
TOKEN = "replica-test-token-0123456789"
WAIT_S = 1.5  # HEARTH_REPLICA_MAX_WAIT_S in these tests


@pytest.fixture(scope="module")
def urls() -> Iterator[tuple[str, str, list[str]]]:
    """(primary URL, replica URL, user ids) of a populated database of this module's own."""
    with private_database() as (url, name), psycopg.connect(url, autocommit=True) as conn:
        users = populate(conn, "rep", 24, AS_OF)
        yield url, _on_replica(conn, name), users


def _on_replica(primary: psycopg.Connection, name: str) -> str:
    """The replica's URL for database ``name``, once the replica has replayed its creation."""
    try:
        replica = psycopg.connect(REPLICA_BASE_URL, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        pytest.fail(
            f"no streaming replica at {REPLICA_BASE_URL} ({exc}); run scripts/services up "
            "--replica",
            pytrace=False,
        )
    with replica:
        assert replica.execute("SELECT pg_is_in_recovery()").fetchone() == (True,)
        catch_up(primary, replica, 60)
    return _with_dbname(REPLICA_BASE_URL, name)


@pytest.fixture
def short_wait(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("HEARTH_REPLICA_MAX_WAIT_S", str(WAIT_S))
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


@pytest.fixture
def paused(urls: tuple[str, str, list[str]]) -> Iterator[psycopg.Connection]:
    """The replica with its replay paused (resumed afterwards, whatever happens); yields a
    connection to it."""
    _, replica_url, _ = urls
    with psycopg.connect(replica_url, autocommit=True) as replica:
        replica.execute("SELECT pg_wal_replay_pause()")
        try:
            yield replica
        finally:
            replica.execute("SELECT pg_wal_replay_resume()")


def _snapshots(conn: psycopg.Connection, as_of: datetime) -> list[tuple[object, ...]]:
    rows = conn.execute(
        "SELECT user_id, vals, covs, withheld FROM feature_snapshots WHERE as_of = %s ORDER BY 1",
        (as_of,),
    ).fetchall()
    return [tuple(r) for r in rows]  # packed bytes: equal only if bit for bit


def _materialize(primary_url: str, users: list[str], as_of: datetime, read_url: str | None) -> None:
    with psycopg.connect(primary_url, autocommit=True) as conn:
        materialize(conn, as_of, users=users, force=True, progress=False,
                    database_url=primary_url, read_url=read_url)  # fmt: skip


def test_materialise_from_the_replica_equals_materialise_from_the_primary(
    urls: tuple[str, str, list[str]],
) -> None:
    primary_url, replica_url, users = urls
    _materialize(primary_url, users, AS_OF, None)
    with psycopg.connect(primary_url, autocommit=True) as conn:
        from_primary = _snapshots(conn, AS_OF)
        conn.execute("DELETE FROM feature_snapshots")
    with psycopg.connect(replica_url, autocommit=True) as replica:
        before = _replica_reads(replica)
    _materialize(primary_url, users, AS_OF, replica_url)
    with psycopg.connect(primary_url, autocommit=True) as conn:
        assert _snapshots(conn, AS_OF) == from_primary
    assert len(from_primary) == len(users)
    # The rows were read on the replica: its own statistics count them.
    deadline = time.monotonic() + 20
    with psycopg.connect(replica_url, autocommit=True) as replica:
        while _replica_reads(replica) - before < 1000:
            assert time.monotonic() < deadline, "the replica read nothing"
            time.sleep(0.2)


def test_the_report_reads_the_replica_with_the_same_result(
    urls: tuple[str, str, list[str]],
) -> None:
    primary_url, replica_url, users = urls
    rows = [(u, AS_OF + timedelta(hours=i)) for i, u in enumerate(users)]
    here = features_from_engine(primary_url, rows)
    there = features_from_engine(primary_url, rows, read_url=replica_url)
    assert here.scored.all() and here.names == there.names
    assert here.values.tobytes() == there.values.tobytes()
    _materialize(primary_url, users, AS_OF, None)
    at_as_of = [(u, AS_OF) for u in users]
    stored = features_from_snapshots(primary_url, at_as_of, read_url=replica_url)
    assert stored.scored.all()
    direct = features_from_snapshots(primary_url, at_as_of)
    assert stored.values.tobytes() == direct.values.tobytes()


def _replica_reads(replica: psycopg.Connection) -> int:
    replica.execute("SELECT pg_stat_clear_snapshot()")
    row = replica.execute(
        "SELECT tup_returned + tup_fetched FROM pg_stat_database WHERE datname = current_database()"
    ).fetchone()
    assert row is not None
    return int(row[0])


@pytest.mark.usefixtures("short_wait")
def test_a_computation_after_a_replay_pause_waits_then_refuses(
    urls: tuple[str, str, list[str]], paused: psycopg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    primary_url, replica_url, users = urls
    with psycopg.connect(primary_url, autocommit=True) as conn:
        # A reading ingested after the pause: the primary has it, the replica cannot.
        conn.execute(
            """INSERT INTO numeric_readings (time, device_id, user_id, signal, value, ingested_at)
               VALUES (now() - INTERVAL '1 hour', %s, %s, 'battery_pct', 3, now())""",
            (f"{users[0]}-phone", users[0]),
        )
        behind = replay_state(paused, primary_position(conn))
    assert behind.lag_bytes > 0 and not behind.caught_up and behind.pause_state == "paused"
    as_of = datetime.now(UTC).replace(microsecond=0)  # after the pause
    started = time.monotonic()
    with pytest.raises(ReplicaBehind) as refused:
        _materialize(primary_url, users[:3], as_of, replica_url)
    waited = time.monotonic() - started
    assert WAIT_S <= waited < WAIT_S + 10
    assert "refusing to compute on incomplete data" in str(refused.value)
    assert "(replay is paused)" in str(refused.value)
    with psycopg.connect(primary_url, autocommit=True) as conn:
        assert _snapshots(conn, as_of) == []  # nothing computed from incomplete data

    # Resumed while a computation waits: it goes ahead, on complete data. (A longer bound: the
    # replica has the pause's backlog of the whole shared cluster to replay first.)
    monkeypatch.setenv("HEARTH_REPLICA_MAX_WAIT_S", "120")
    get_settings.cache_clear()
    resume = threading.Timer(0.5, lambda: paused.execute("SELECT pg_wal_replay_resume()"))
    resume.start()
    try:
        _materialize(primary_url, users[:3], as_of, replica_url)
    finally:
        resume.join()
    with psycopg.connect(primary_url, autocommit=True) as conn:
        from_replica = _snapshots(conn, as_of)
        _materialize(primary_url, users[:3], as_of, None)
        assert _snapshots(conn, as_of) == from_replica
    assert len(from_replica) == 3


def test_a_read_url_of_another_cluster_is_refused(urls: tuple[str, str, list[str]]) -> None:
    primary_url, _, _ = urls
    with psycopg.connect(primary_url, autocommit=True) as conn:
        position = primary_position(conn)
        state = wait_for_replay(conn, position, 0)  # the primary itself: nothing to wait for
        assert not state.in_recovery and state.caught_up and state.lag_bytes == 0
        elsewhere = Position(position.lsn, position.system_identifier + 1)
        with pytest.raises(ConfigError, match="not a streaming replica of HEARTH_DATABASE_URL"):
            wait_for_replay(conn, elsewhere, 0)


def _get(url: str) -> tuple[int, dict[str, object]]:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {TOKEN}"})
    try:
        with urllib.request.urlopen(request, timeout=30) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


@pytest.mark.usefixtures("short_wait")
def test_the_service_reads_the_replica_and_reports_its_lag(
    urls: tuple[str, str, list[str]],
) -> None:
    primary_url, replica_url, users = urls
    settings = load_settings(
        database_url=primary_url,
        database_read_url=replica_url,
        replica_max_wait_s=WAIT_S,
        api_tokens=json.dumps({TOKEN: ["features:read"]}),
    )
    as_of = (AS_OF + timedelta(days=1)).isoformat()
    feature_url = f"/v1/users/{users[1]}/features?as_of={as_of}"
    with serve_in_thread(settings, cache_entries=0) as base:
        status, body = _get(base + "/readyz")
        assert status == 200, body
        replica = body["replica"]
        assert isinstance(replica, dict)
        assert replica["in_recovery"] is True and replica["replay_paused"] is False
        # Streaming: at most a little behind (the shared cluster has other databases' writes).
        assert isinstance(replica["lag_bytes"], int) and replica["lag_bytes"] >= 0
        assert replica["caught_up"] is (replica["lag_bytes"] == 0)
        status, body = _get(base + feature_url)
        assert status == 200, body
        served = body

        with psycopg.connect(replica_url, autocommit=True) as paused:
            paused.execute("SELECT pg_wal_replay_pause()")
            try:
                with psycopg.connect(primary_url, autocommit=True) as conn:
                    conn.execute(
                        "UPDATE users SET tz = tz WHERE user_id = %s", (users[1],)
                    )  # a commit the paused replica has not replayed
                status, body = _get(base + "/readyz")
                assert status == 200, body
                replica = body["replica"]
                assert isinstance(replica, dict)
                assert replica["replay_paused"] is True and replica["caught_up"] is False
                assert isinstance(replica["lag_bytes"], int) and replica["lag_bytes"] > 0
                started = time.monotonic()
                status, body = _get(base + feature_url)
                assert status == 503 and body["error"]["code"] == "replica_behind"
                assert time.monotonic() - started >= WAIT_S
            finally:
                paused.execute("SELECT pg_wal_replay_resume()")
        # Resumed: answers again once the replica has replayed the pause's backlog.
        deadline = time.monotonic() + 60
        while (answer := _get(base + feature_url))[0] == 503:
            assert time.monotonic() < deadline, answer
        status, body = answer
        assert status == 200
        assert body["features"] == served["features"] and body["as_of"] == served["as_of"]


def test_online_scores_read_the_replica_and_log_on_the_primary(
    urls: tuple[str, str, list[str]], tmp_path: Path
) -> None:
    """The score log is written on the primary: a replica refuses writes, and until the
    group-committed writer got its own primary connection the append went to the read pool."""
    primary_url, replica_url, users = urls
    _materialize(primary_url, users[:3], AS_OF, None)
    settings = load_settings(
        database_url=primary_url,
        database_read_url=replica_url,
        replica_max_wait_s=30,
        api_tokens=json.dumps({TOKEN: ["scores:read"]}),
        score_model=str(fit_model(tmp_path / "model")),
    )
    rows = [{"user_id": u, "as_of": (AS_OF + timedelta(hours=1)).isoformat()} for u in users[:3]]
    with serve_in_thread(settings) as base:
        request = urllib.request.Request(
            base + "/v1/scores",
            data=json.dumps({"rows": rows}).encode(),
            headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=60) as resp:
            body = json.loads(resp.read())
    assert sorted(s["user_id"] for s in body["scores"]) == users[:3], body
    with psycopg.connect(primary_url, autocommit=True) as conn:
        logged = conn.execute(
            "SELECT user_id FROM score_log WHERE channel = 'online' ORDER BY 1"
        ).fetchall()
    assert [r[0] for r in logged] == users[:3]
