"""What a Dask worker runs: one chunk of users, on the worker's own database connections.

A task is "one user chunk, one or many dates": :func:`materialize_chunk` computes and writes
the snapshots of one chunk as of each of its dates, :func:`historical_chunk` computes the
vectors of one batch of (user, time) rows for the report. Both run the engine exactly as the
in-process path does; the materialising task writes through the same consent-gated upsert
(:func:`features.snapshots.store.write_snapshots`: consent re-checked at commit under the
DERIVED gate), so a chunk written twice — its worker died after the commit, Dask reran it —
ends with the same vectors.

Connections belong to the worker thread and live across tasks: the primary
(``HEARTH_DATABASE_URL``, for writes) and, when the worker has ``HEARTH_DATABASE_READ_URL``, a
replica for reads, caught up with the primary at the start of every task (hearth.replica). The
worker's settings come from its own environment: credentials never travel in the task graph.
The client sends the identity of the database it planned against (:class:`DatabaseIdentity`)
and a worker connected elsewhere refuses the task.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from distributed import get_worker

from features.engine import FeatureVector, Knowledge, Timings, compute_historical
from features.engine import iter_chunk_results as engine_chunks
from features.snapshots.materialize import snapshot_batch
from features.snapshots.store import write_snapshots
from hearth.db import Conn, connect
from hearth.errors import ConfigError
from hearth.replica import catch_up
from hearth.settings import get_settings

IDENTITY_SQL = "SELECT (SELECT system_identifier FROM pg_control_system()), current_database()"


@dataclass(frozen=True, slots=True)
class DatabaseIdentity:
    """Which database: its cluster's system identifier and its name (a replica shares both)."""

    system_identifier: int
    database: str

    @classmethod
    def of(cls, conn: Conn) -> DatabaseIdentity:
        row = conn.execute(IDENTITY_SQL).fetchone()
        assert row is not None
        return cls(int(str(row[0])), str(row[1]))


@dataclass(frozen=True, slots=True)
class ChunkDone:
    """What one materialising task did."""

    users: int  # users in the chunk
    written: int  # snapshots written (known users x dates)
    sql_s: float
    python_s: float
    worker: str  # the worker's address, for the record


@dataclass
class _Connections:
    primary: Conn
    read: Conn  # the primary itself without a read URL
    identity: DatabaseIdentity

    def usable(self) -> bool:
        return not (self.primary.closed or self.primary.broken or self.read.closed)

    def close(self) -> None:
        for conn in {id(self.primary): self.primary, id(self.read): self.read}.values():
            conn.close()


_local = threading.local()


def _connections(expect: DatabaseIdentity) -> _Connections:
    """This worker thread's connections, opened on first use (again after a failure)."""
    conns: _Connections | None = getattr(_local, "conns", None)
    if conns is not None and not conns.usable():
        conns.close()
        conns = None
    if conns is None:
        settings = get_settings()
        primary = connect(settings.database_url, autocommit=True)
        read = primary
        try:
            if settings.database_read_url:
                read = connect(
                    settings.database_read_url,
                    autocommit=True,
                    variable="HEARTH_DATABASE_READ_URL",
                )
            # JIT costs ~0.1 s per chunk query and saves nothing (features.snapshots.materialize)
            read.execute("SET jit = off")
            conns = _Connections(primary, read, DatabaseIdentity.of(primary))
        except BaseException:
            primary.close()
            read.close()
            raise
        _local.conns = conns
    if conns.identity != expect:
        raise ConfigError(
            f"Dask worker: HEARTH_DATABASE_URL reaches database {conns.identity.database!r} of "
            f"cluster {conns.identity.system_identifier}, but the run is planned on "
            f"{expect.database!r} of cluster {expect.system_identifier}"
        )
    return conns


def _worker_address() -> str:
    try:
        return str(get_worker().address)
    except ValueError:  # not in a worker (tests call tasks directly)
        return "local"


def _caught_up(conns: _Connections) -> None:
    if conns.read is not conns.primary:
        catch_up(conns.primary, conns.read, get_settings().replica_max_wait_s)


def materialize_chunk(
    users: Sequence[str], as_ofs: Sequence[datetime], expect: DatabaseIdentity
) -> ChunkDone:
    """Compute and write the snapshots of one chunk of users as of each date in ``as_ofs``.

    Single-date runs pass one date; a backfill's chunks run through
    :func:`features.snapshots.materialize.materialize_chunk` (its own connections, one read for
    every date), in worker processes (``--processes``), not on Dask.
    """
    conns = _connections(expect)
    timings = Timings()
    written = 0
    try:
        _caught_up(conns)
        for as_of in as_ofs:
            chunks = engine_chunks(conns.read, users, as_of, chunk_size=len(users), timings=timings)
            for known, results in chunks:
                t0 = time.perf_counter()
                batch = snapshot_batch(known, [as_of], [(0, results, range(len(known)))])
                t1 = time.perf_counter()
                write_snapshots(conns.primary, batch)
                timings.add(python_s=t1 - t0, sql_s=time.perf_counter() - t1)
                written += len(known)
    except BaseException:
        conns.close()  # a connection in an unknown state is not reused
        _local.conns = None
        raise
    return ChunkDone(len(users), written, timings.sql_s, timings.python_s, _worker_address())


def historical_chunk(
    rows: Sequence[tuple[str, datetime]], knowledge: Knowledge, expect: DatabaseIdentity
) -> list[FeatureVector | None]:
    """One vector per (user, as_of) row, in order (None: unknown user): the report's batch."""
    conns = _connections(expect)
    try:
        _caught_up(conns)
        return compute_historical(conns.read, rows, knowledge=knowledge)
    except BaseException:
        conns.close()
        _local.conns = None
        raise
