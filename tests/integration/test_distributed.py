"""Feature computation on a Dask cluster (issue 16 §1): the same snapshots as in process, a
worker lost mid-run changes nothing, a worker without the database fails the run at once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import psycopg
import pytest
from distributed import Client, LocalCluster, get_task_stream

from features import distributed
from features.report.data import features_from_engine
from features.snapshots.materialize import MaterializeResult, materialize
from hearth.db import DatabaseUnavailable
from hearth.errors import ConfigError, Invalid, Unavailable
from hearth.settings import load_settings
from tests.conftest import free_port
from tests.integration.population import populate
from tests.integration.private_db import private_database

AS_OF = datetime(2026, 5, 1, tzinfo=UTC)
ROOT = Path(__file__).resolve().parents[2]
N_USERS = 120
CHUNK = 4  # many small tasks: both workers busy, a kill lands mid-run


@pytest.fixture(scope="module")
def population() -> Iterator[tuple[str, list[str]]]:
    """(URL, user ids) of a database of this module's own, populated once."""
    with private_database() as (url, _), psycopg.connect(url, autocommit=True) as conn:
        yield url, populate(conn, "dask", N_USERS, AS_OF)


@pytest.fixture(scope="module")
def reference(population: tuple[str, list[str]]) -> list[tuple[str, str]]:
    """The single-process run's snapshots, (user, vector text), sorted."""
    url, users = population
    with psycopg.connect(url, autocommit=True) as conn:
        materialize(conn, AS_OF, users=users, force=True, progress=False, database_url=url)
        return _snapshots(conn)


@pytest.fixture(scope="module")
def client(population: tuple[str, list[str]]) -> Iterator[Client]:
    url, _ = population
    options = distributed.ClusterOptions(workers=2)
    with distributed.dask_client(options, {"HEARTH_DATABASE_URL": url}) as c:
        yield c


def _snapshots(conn: psycopg.Connection) -> list[tuple[object, ...]]:
    rows = conn.execute(
        "SELECT user_id, vals, covs, withheld FROM feature_snapshots WHERE as_of = %s ORDER BY 1",
        (AS_OF,),
    ).fetchall()
    return [tuple(r) for r in rows]  # packed bytes: equal only if bit for bit


def _on_cluster(client: Client, url: str, users: list[str]) -> MaterializeResult:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("DELETE FROM feature_snapshots WHERE as_of = %s", (AS_OF,))
        runner = distributed.chunk_runner(
            client, distributed.DatabaseIdentity.of(conn), progress=False
        )
        return materialize(conn, AS_OF, users=users, chunk_size=CHUNK, chunk_runner=runner)


def test_two_workers_write_the_same_snapshots_as_one_process(
    population: tuple[str, list[str]], reference: list[tuple[str, str]], client: Client
) -> None:
    url, users = population
    assert len(reference) == N_USERS
    assert len({v for _, v in reference}) > N_USERS // 2  # varied vectors, not one repeated
    with get_task_stream(client) as stream:
        result = _on_cluster(client, url, users)
    assert result.written == N_USERS
    with psycopg.connect(url, autocommit=True) as conn:
        assert _snapshots(conn) == reference  # byte for byte (jsonb text)
    assert len(stream.data) == N_USERS // CHUNK  # one task per chunk
    assert len({t["worker"] for t in stream.data}) == 2  # both workers took chunks


def test_report_vectors_on_the_cluster_equal_in_process(
    population: tuple[str, list[str]], client: Client
) -> None:
    url, users = population
    rows = [(u, AS_OF) for u in users[:40]]
    with psycopg.connect(url, autocommit=True) as conn:
        expect = distributed.DatabaseIdentity.of(conn)
    here = features_from_engine(url, rows)
    there = features_from_engine(url, rows, compute=distributed.historical_runner(client, expect))
    assert here.names == there.names
    assert here.values.tobytes() == there.values.tobytes()
    assert here.coverage.tobytes() == there.coverage.tobytes()
    assert here.scored.all() and there.scored.all()


@pytest.mark.slow
def test_killing_a_worker_mid_run_still_gives_identical_snapshots(
    population: tuple[str, list[str]], reference: list[tuple[str, str]]
) -> None:
    url, users = population
    options = distributed.ClusterOptions(workers=2)
    with distributed.dask_client(options, {"HEARTH_DATABASE_URL": url}) as client:
        pids = client.run(os.getpid)  # worker address -> pid
        outcome: dict[str, object] = {}

        def run() -> None:
            try:
                outcome["result"] = _on_cluster(client, url, users)
            except BaseException as exc:
                outcome["error"] = exc

        thread = threading.Thread(target=run)
        thread.start()
        victim, left = _wait_mid_run(client)
        os.kill(pids[victim], signal.SIGKILL)
        thread.join(timeout=300)
        assert not thread.is_alive()
        assert "error" not in outcome, outcome.get("error")
        result = outcome["result"]
        assert isinstance(result, MaterializeResult) and result.written == N_USERS
        assert left > 0  # the kill came with chunks still to do
        with pytest.raises(ProcessLookupError):
            os.kill(pids[victim], 0)
    with psycopg.connect(url, autocommit=True) as conn:
        assert _snapshots(conn) == reference


def _wait_mid_run(client: Client) -> tuple[str, int]:
    """(a worker running a chunk, chunks not yet finished) once some chunk is finished."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        state = client.run_on_scheduler(_materialize_state)
        done, running = state["done"], state["running"]
        if done and running and state["left"] > CHUNK:
            return running[0], state["left"]
        time.sleep(0.01)
    raise AssertionError("the run never reached the middle")


def _materialize_state(dask_scheduler: object) -> dict[str, object]:
    tasks = [
        ts
        for key, ts in dask_scheduler.tasks.items()  # type: ignore[attr-defined]
        if str(key).startswith("materialize-")
    ]
    return {
        "done": sum(ts.state in ("memory", "released", "forgotten") for ts in tasks),
        "left": sum(ts.state not in ("memory", "released", "forgotten") for ts in tasks),
        "running": [ts.processing_on.address for ts in tasks if ts.state == "processing"],
    }


def test_a_worker_that_cannot_reach_the_database_fails_the_run_clearly(
    population: tuple[str, list[str]],
) -> None:
    url, users = population
    dead = f"postgresql://hearth:secret-pw@127.0.0.1:{free_port()}/nowhere"
    started = time.monotonic()
    with (
        distributed.dask_client(
            distributed.ClusterOptions(workers=1), {"HEARTH_DATABASE_URL": dead}
        ) as client,
        psycopg.connect(url, autocommit=True) as conn,
    ):
        runner = distributed.chunk_runner(
            client, distributed.DatabaseIdentity.of(conn), progress=False
        )
        with pytest.raises(DatabaseUnavailable) as caught:
            materialize(conn, AS_OF, users=users[:8], force=True, chunk_size=CHUNK,
                        chunk_runner=runner)  # fmt: skip
    assert time.monotonic() - started < 60  # not a hang
    message = str(caught.value)
    assert message.startswith("HEARTH_DATABASE_URL: cannot use postgresql://hearth:***@127.0.0.1")
    assert "secret-pw" not in message


def test_a_worker_on_another_database_refuses_the_chunk(
    population: tuple[str, list[str]], client: Client
) -> None:
    url, users = population
    with psycopg.connect(url, autocommit=True) as conn:
        elsewhere = distributed.DatabaseIdentity(
            distributed.DatabaseIdentity.of(conn).system_identifier, "another_database"
        )
        runner = distributed.chunk_runner(client, elsewhere, progress=False)
        with pytest.raises(ConfigError, match="planned on 'another_database'"):
            materialize(conn, AS_OF, users=users[:4], force=True, chunk_runner=runner)


def test_cluster_options() -> None:
    settings = load_settings(dask_scheduler="tcp://sched:8786")
    assert distributed.ClusterOptions.resolve(None, None, load_settings()) is None
    assert distributed.ClusterOptions.resolve(None, None, settings) == distributed.ClusterOptions(
        scheduler="tcp://sched:8786"
    )
    assert distributed.ClusterOptions.resolve(None, 3, settings) == distributed.ClusterOptions(
        workers=3
    )
    with pytest.raises(Invalid, match="--workers must be at least 1"):
        distributed.ClusterOptions.resolve(None, 0, settings)
    with pytest.raises(Invalid, match="--scheduler: must be tcp://"):
        distributed.ClusterOptions.resolve("sched:8786", None, settings)
    env = distributed.local_worker_env(
        load_settings(database_url="postgresql://u:p@h/db", database_read_url="postgresql://r/db")
    )
    assert env["HEARTH_DATABASE_URL"] == "postgresql://u:p@h/db"
    assert env["HEARTH_DATABASE_READ_URL"] == "postgresql://r/db"


def _cli(url: str, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "features", *args],
        cwd=ROOT,
        env={**os.environ, "HEARTH_DATABASE_URL": url, **env},
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.slow
def test_materialize_command_on_a_local_cluster_and_a_scheduler(
    population: tuple[str, list[str]], reference: list[tuple[str, str]]
) -> None:
    url, users = population
    users_arg = ",".join(users)
    proc = _cli(url, "materialize", "--as-of", AS_OF.isoformat(), "--users", users_arg,
                "--force", "--workers", "2", "--chunk-size", "10", "--no-progress")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert f"written={N_USERS}" in proc.stdout
    with psycopg.connect(url, autocommit=True) as conn:
        assert _snapshots(conn) == reference

    # Workers of a running cluster, started with a database they cannot reach: the command
    # joins by the scheduler's address (HEARTH_DASK_SCHEDULER) and exits 69 with one line.
    dead = f"postgresql://hearth:hearth@127.0.0.1:{free_port()}/nowhere"
    with LocalCluster(
        n_workers=1, processes=True, dashboard_address=":0", env={"HEARTH_DATABASE_URL": dead}
    ) as cluster:
        proc = _cli(url, "materialize", "--as-of", AS_OF.isoformat(), "--users", users_arg,
                    "--force", "--no-progress",
                    HEARTH_DASK_SCHEDULER=cluster.scheduler_address)  # fmt: skip
    assert proc.returncode == 69, proc.stderr
    assert "error: HEARTH_DATABASE_URL: cannot use postgresql://hearth:***@127.0.0.1" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_a_scheduler_without_workers_fails_instead_of_waiting(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(distributed.cluster, "WORKERS_TIMEOUT_S", 1.0)
    with LocalCluster(n_workers=0, processes=True, dashboard_address=":0") as cluster:
        options = distributed.ClusterOptions(scheduler=cluster.scheduler_address)
        started = time.monotonic()
        with (
            pytest.raises(Unavailable, match="has no worker after 1s"),
            distributed.dask_client(options, {}),
        ):
            pass
        assert time.monotonic() - started < 30


@pytest.mark.slow
def test_a_run_whose_workers_all_leave_fails_instead_of_waiting(
    population: tuple[str, list[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    url, users = population
    monkeypatch.setattr(distributed.run, "NO_WORKERS_S", 2.0)
    with (
        LocalCluster(
            n_workers=1, processes=True, dashboard_address=":0", env={"HEARTH_DATABASE_URL": url}
        ) as cluster,
        Client(cluster) as client,
    ):
        outcome: dict[str, BaseException] = {}

        def run() -> None:
            try:
                _on_cluster(client, url, users)
            except BaseException as exc:
                outcome["error"] = exc

        thread = threading.Thread(target=run)
        thread.start()
        _wait_mid_run(client)
        cluster.scale(0)
        thread.join(timeout=120)
        assert not thread.is_alive()
    error = outcome.get("error")
    assert isinstance(error, Unavailable), error
    assert "has had no worker for 2s" in str(error)
