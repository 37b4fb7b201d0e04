"""Materialisation: one ``feature_snapshots`` row per (user, as_of, feature-set version).

Chunked by users (memory is bounded by the chunk, not the fleet), idempotent (upsert) and
resumable: (user, as_of) pairs that already have a snapshot for this version are skipped
unless ``force``. Rollups are refreshed and the definitions synced first, so what is stored can
always be explained by the catalogue of the same version.

Two drivers share the write path:

* :func:`materialize` — one as_of: chunks read by loader threads while one is computed;
* :func:`backfill` — every as_of of a range: each chunk of users is read **once** for the range
  plus the longest window (:func:`features.engine.load_span`) and every as_of computed from
  that read, the next chunk read meanwhile.

:func:`materialize_chunk` is the unit of work underneath, for a scheduler of its own (one
user chunk, one or many as_ofs, given a connection factory; see its docstring).
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import logging
import multiprocessing
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import numpy as np
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from features.catalogue import FEATURE_SET_VERSION, sync_definitions
from features.engine import (
    DEFAULT_CHUNK_USERS,
    DEFAULT_SPAN_USERS,
    ChunkResults,
    Knowledge,
    Span,
    Timings,
    as_of_problem,
    compute_span,
    iter_chunk_results,
    latest_as_of,
    load_span,
)
from features.rollups import read_watermark, refresh_rollups
from features.snapshots.codec import LAYOUT, pack_results
from features.snapshots.store import (
    SnapshotBatch,
    existing_snapshots,
    users_with_snapshot,
    write_snapshots,
)
from hearth import ledger
from hearth.db import Conn, connect
from hearth.replica import catch_up
from hearth.settings import get_settings

log = logging.getLogger(__name__)
# Loader connections reading the next chunks while one is computed: two keep both cores of a
# small machine busy (one backend may scan while the other ships its arrays) without holding
# more than three chunks in memory.
LOADER_CONNECTIONS = 2
# Computes and writes a planned run's chunks somewhere else (features.distributed: as tasks on a
# Dask cluster): given the users left to do, the as_of, the chunk size and the run's timings to
# add to, it returns how many snapshots it wrote.
ChunkRunner = Callable[[Sequence[str], datetime, int, Timings], int]


@dataclass(frozen=True)
class MaterializeResult:
    as_of: datetime
    feature_set_version: str
    requested: int
    skipped: int
    written: int
    seconds: float
    timings: Timings


def _fixed_mmap_threshold() -> None:
    """Keep big numpy buffers in mmap'd memory that is returned to the OS when freed.

    glibc raises its mmap threshold after each freed large block, after which chunk-sized
    arrays come from the heap, fragment it and peak RSS creeps up with the number of chunks
    (two threads make two heaps). Setting the threshold explicitly turns that off. Linux/glibc
    only; elsewhere a no-op.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 1 << 20)  # M_MMAP_THRESHOLD = 1 MiB
    except (OSError, AttributeError):
        pass


def _all_users(conn: Conn) -> list[str]:
    return [str(r[0]) for r in conn.execute("SELECT user_id FROM users ORDER BY user_id")]


def _check_as_of(as_of: datetime) -> datetime:
    """``as_of`` in UTC; a snapshot "as of" the future would be served as the latest while its
    data still arrives, so it is refused."""
    as_of = as_of.astimezone(UTC)
    problem = as_of_problem(as_of, latest_as_of(get_settings().max_clock_skew_s))
    if problem is not None:
        raise ValueError(f"as_of {as_of.isoformat()}: {problem}")
    return as_of


def materialize(
    conn: Conn,
    as_of: datetime,
    *,
    users: Sequence[str] | None = None,
    chunk_size: int = DEFAULT_CHUNK_USERS,
    force: bool = False,
    refresh: bool = True,
    progress: bool = True,
    database_url: str | None = None,
    before_write: Callable[[Sequence[str]], None] | None = None,
    read_url: str | None = None,
    chunk_runner: ChunkRunner | None = None,
) -> MaterializeResult:
    """Compute and store snapshots as of ``as_of`` for ``users`` (default: every user).

    With ``database_url`` loader connections (:data:`LOADER_CONNECTIONS`) read the next
    chunks while this one is computed and written. With ``read_url`` (a streaming replica of
    ``conn``'s database, ``HEARTH_DATABASE_READ_URL``) they read there instead, once it has
    replayed everything ``conn`` had committed (hearth.replica); writes stay on ``conn``.
    ``before_write`` is called with each chunk's users between computing and writing it (tests
    use it to race a withdrawal). With ``chunk_runner`` the chunks are computed and written by
    it (features.distributed), after the same planning here.
    """
    started = time.monotonic()
    _fixed_mmap_threshold()
    as_of = _check_as_of(as_of)
    if refresh:
        refresh_rollups(conn)
    sync_definitions(conn)
    wanted = list(dict.fromkeys(users)) if users is not None else _all_users(conn)
    todo = wanted
    if not force:
        done = users_with_snapshot(conn, wanted, as_of)
        todo = [u for u in wanted if u not in done]
    timings = Timings()
    if chunk_runner is not None:
        written = chunk_runner(todo, as_of, chunk_size, timings) if todo else 0
    else:
        written = _compute_and_write(
            conn, todo, as_of, chunk_size, timings, progress, database_url, before_write, read_url
        )
    result = MaterializeResult(
        as_of,
        FEATURE_SET_VERSION,
        len(wanted),
        len(wanted) - len(todo),
        written,
        time.monotonic() - started,
        timings,
    )
    log.info(
        "materialised %d users as of %s (%d skipped) in %.1fs",
        written,
        as_of.isoformat(),
        result.skipped,
        result.seconds,
    )
    return result


def snapshot_batch(
    users: Sequence[str],
    as_ofs: Sequence[datetime],
    parts: Sequence[tuple[int, ChunkResults, Sequence[int]]],
) -> SnapshotBatch:
    """The snapshots of computed chunks, packed: per part, (index of its as_of in
    ``as_ofs``, the chunk's results for all ``users``, the user indexes to keep)."""
    if not parts:
        empty = np.zeros(0, dtype=np.int32)
        none = np.zeros((0, LAYOUT.width))
        return SnapshotBatch(users, as_ofs, empty, empty, none, none, [])
    user_idx: list[np.ndarray] = []
    as_of_idx: list[np.ndarray] = []
    values: list[np.ndarray] = []
    coverage: list[np.ndarray] = []
    withheld: list[str] = []
    links: list[tuple[int, int, str, str]] = []
    for t, results, keep in parts:
        v, c, w = pack_results(results, len(users))
        rows = np.asarray(keep, dtype=np.int64)
        user_idx.append(rows.astype(np.int32))
        as_of_idx.append(np.full(rows.size, t, dtype=np.int32))
        values.append(v[rows])
        coverage.append(c[rows])
        withheld.extend(w[i] for i in rows.tolist())
        if results.links:  # the relationship features' link ends (features.engine.graph)
            links.extend(
                (i, t, other, category)
                for i in rows.tolist()
                for other, category in results.links[i]
            )
    return SnapshotBatch(
        users,
        as_ofs,
        np.concatenate(user_idx),
        np.concatenate(as_of_idx),
        np.concatenate(values),
        np.concatenate(coverage),
        withheld,
        links,
    )


def _compute_and_write(
    conn: Conn,
    todo: Sequence[str],
    as_of: datetime,
    chunk_size: int,
    timings: Timings,
    progress: bool,
    database_url: str | None,
    before_write: Callable[[Sequence[str]], None] | None,
    read_url: str | None = None,
) -> int:
    """Compute the snapshots of ``todo`` chunk by chunk and write each chunk as it comes;
    how many were written. Reads go through loader connections to ``read_url`` (a replica) or
    ``database_url`` when either is given, writes through ``conn``."""
    written = 0
    bar = _progress(progress)
    with bar as p, contextlib.ExitStack() as stack:
        reads = read_url or database_url
        loaders = [
            stack.enter_context(_loader(reads, conn, replica=read_url is not None))
            for _ in range(LOADER_CONNECTIONS if reads and todo else 0)
        ]
        task = p.add_task("materialise", total=len(todo)) if p else None
        # The watermark is read where the rollups are read (the first loader before the loader
        # threads start), so a replica is never asked for rollups past its own watermark.
        for known, results in iter_chunk_results(
            loaders[0] if loaders else conn,
            todo,
            as_of,
            chunk_size=chunk_size,
            timings=timings,
            loaders=loaders,
        ):
            t0 = time.perf_counter()
            batch = snapshot_batch(known, [as_of], [(0, results, range(len(known)))])
            timings.add(python_s=time.perf_counter() - t0)
            if before_write is not None:
                before_write(known)
            t0 = time.perf_counter()
            write_snapshots(conn, batch)
            timings.add(sql_s=time.perf_counter() - t0)
            written += len(known)
            if p is not None and task is not None:
                p.update(task, completed=written)
    return written


def _loader(database_url: str | None, primary: Conn, *, replica: bool = False) -> Conn:
    """A connection of our own that reads chunks. JIT off: the chunk queries are planned as
    expensive enough to JIT-compile, which costs ~0.1 s per query and saves nothing (their
    time goes into index scans and array building, not expression evaluation). On a replica it
    is returned once the replica has replayed what ``primary`` had committed (a no-op on the
    primary itself)."""
    variable = "HEARTH_DATABASE_READ_URL" if replica else "HEARTH_DATABASE_URL"
    loader = connect(database_url or "", autocommit=True, variable=variable)
    try:
        loader.execute("SET jit = off")
        catch_up(primary, loader, get_settings().replica_max_wait_s)
    except BaseException:
        loader.close()
        raise
    return loader


class _RateColumn(ProgressColumn):
    """Completed units per second, e.g. ``312 users/s``."""

    def __init__(self, unit: str) -> None:
        super().__init__()
        self._unit = unit

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text("" if speed is None else f"{speed:,.0f} {self._unit}/s")


def _progress(
    enabled: bool, unit: str | None = None
) -> contextlib.AbstractContextManager[Progress | None]:
    """A rich progress bar (done of total, and the rate in ``unit`` when given), or nothing."""
    if not enabled:
        return contextlib.nullcontext()
    columns: list[ProgressColumn] = [
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
    ]
    if unit is not None:
        columns.append(_RateColumn(unit))
    columns += [TimeElapsedColumn(), TimeRemainingColumn()]
    return Progress(*columns, transient=False)


# --- many as_ofs ------------------------------------------------------------------------------


def as_of_range(first: datetime, last: datetime, every: timedelta) -> list[datetime]:
    """``first``, ``first + every``, … up to ``last`` included (UTC)."""
    if every <= timedelta(0):
        raise ValueError("the step between as_ofs must be positive")
    first, last = first.astimezone(UTC), last.astimezone(UTC)
    if last < first:
        raise ValueError(f"the range ends ({last.isoformat()}) before it starts")
    out = []
    at = first
    while at <= last:
        out.append(at)
        at += every
    return out


@dataclass
class ChunkReport:
    """What :func:`materialize_chunk` did for one chunk of users."""

    users: int  # the chunk's known users (unknown ids are skipped)
    as_ofs: int  # as_ofs computed (those with at least one snapshot to write)
    skipped: int  # (user, as_of) pairs already stored
    written: int  # snapshots written
    sql_s: float = 0.0  # where the time went (features.engine.Timings), as plain numbers
    python_s: float = 0.0


@dataclass(frozen=True)
class _Plan:
    """One chunk's work: its known users and their zones, and per as_of the users whose
    snapshot is to be written (users without anything to write have no as_of listed)."""

    users: list[str]
    tzs: list[str]
    todo: dict[datetime, list[int]]
    skipped: int


def _plan(conn: Conn, users: Sequence[str], as_ofs: Sequence[datetime], force: bool) -> _Plan:
    part = list(dict.fromkeys(users))
    tz = ledger.user_timezones(conn, part)
    known = [u for u in part if u in tz]
    done = set() if force else existing_snapshots(conn, known, as_ofs)
    todo: dict[datetime, list[int]] = {}
    for t in as_ofs:
        rows = [i for i, u in enumerate(known) if (u, t) not in done]
        if rows:
            todo[t] = rows
    skipped = len(known) * len(as_ofs) - sum(len(r) for r in todo.values())
    return _Plan(known, [tz[u] for u in known], todo, skipped)


def _read(
    conn: Conn,
    plan: _Plan,
    watermark: datetime | None,
    knowledge: Knowledge,
    timings: Timings,
) -> Span | None:
    if not plan.todo:
        return None
    return load_span(conn, plan.users, plan.tzs, list(plan.todo), watermark, timings, knowledge)


def _compute_write(
    conn: Conn,
    plan: _Plan,
    span: Span | None,
    timings: Timings,
    before_write: Callable[[Sequence[str]], None] | None,
) -> ChunkReport:
    """Compute every as_of of the plan from the span's one read and write the chunk's
    snapshots in one transaction."""
    report = ChunkReport(len(plan.users), len(plan.todo), plan.skipped, 0)
    if span is None:
        return report
    as_ofs = sorted(plan.todo)
    index = {t: i for i, t in enumerate(as_ofs)}
    parts = [
        (index[t], results, plan.todo[t])
        for t, results in compute_span(conn, span, as_ofs, timings)
    ]
    t0 = time.perf_counter()
    batch = snapshot_batch(plan.users, as_ofs, parts)
    del parts
    timings.add(python_s=time.perf_counter() - t0)
    if before_write is not None:
        before_write(plan.users)
    t0 = time.perf_counter()
    write_snapshots(conn, batch)
    timings.add(sql_s=time.perf_counter() - t0)
    report.written = len(batch)
    return report


def _reported(report: ChunkReport, timings: Timings) -> ChunkReport:
    """``report`` with the chunk's timings (a chunk's own Timings, not a run's shared one)."""
    report.sql_s, report.python_s = timings.sql_s, timings.python_s
    return report


def materialize_chunk(
    connect: Callable[[], Conn],
    users: Sequence[str],
    as_ofs: Sequence[datetime],
    *,
    force: bool = False,
    knowledge: Knowledge = Knowledge.INGESTED,
    before_write: Callable[[Sequence[str]], None] | None = None,
) -> ChunkReport:
    """Compute and write the snapshots of one chunk of ``users`` at every one of ``as_ofs``:
    the unit of work of a backfill, for any scheduler (a Dask task, a process pool).

    ``connect`` opens an autocommit connection (e.g. ``functools.partial(psycopg.connect,
    url, autocommit=True)``); it is closed before returning. The chunk's rollups are read
    once for all ``as_ofs``; the snapshots are written in one transaction under the consent
    gate (a crash loses this chunk only); pairs already stored are skipped unless ``force``.
    Idempotent, so a task that runs twice writes the same rows. It neither refreshes rollups
    nor syncs definitions: the caller does that once (:func:`prepare`). Memory is about
    120 MB per 250 users over 90 as_ofs.
    """
    times = sorted({_check_as_of(t) for t in as_ofs})
    timings = Timings()
    with connect() as conn:
        conn.execute("SET jit = off")
        plan = _plan(conn, users, times, force)
        span = _read(conn, plan, read_watermark(conn), knowledge, timings)
        return _reported(_compute_write(conn, plan, span, timings, before_write), timings)


def prepare(conn: Conn, *, refresh: bool = True) -> None:
    """What a run does once before its chunks: refresh the rollups, sync the definitions."""
    if refresh:
        refresh_rollups(conn)
    sync_definitions(conn)


@dataclass(frozen=True)
class BackfillResult:
    as_ofs: list[datetime]
    feature_set_version: str
    users: int  # known users
    skipped: int  # (user, as_of) pairs already stored
    written: int
    seconds: float
    timings: Timings


def backfill(
    conn: Conn,
    as_ofs: Sequence[datetime],
    *,
    users: Sequence[str] | None = None,
    chunk_size: int = DEFAULT_SPAN_USERS,
    force: bool = False,
    refresh: bool = True,
    progress: bool = True,
    database_url: str | None = None,
    knowledge: Knowledge = Knowledge.INGESTED,
    before_write: Callable[[Sequence[str]], None] | None = None,
    processes: int = 1,
) -> BackfillResult:
    """Compute and store snapshots at every one of ``as_ofs`` for ``users`` (default: every
    user), chunk by chunk (:func:`materialize_chunk`'s work); with ``database_url`` a loader
    connection plans and reads the next chunk while this one is computed and written, or,
    with ``processes`` > 1, that many worker processes run whole chunks at once (the features
    are computed per as_of, so a backfill is bound by arithmetic: one process per core)."""
    started = time.monotonic()
    _fixed_mmap_threshold()
    times = sorted({_check_as_of(t) for t in as_ofs})
    if not times:
        raise ValueError("no as_of to compute")
    if processes > 1 and (database_url is None or before_write is not None):
        raise ValueError("worker processes need database_url (and take no before_write)")
    prepare(conn, refresh=refresh)
    wanted = list(dict.fromkeys(users)) if users is not None else _all_users(conn)
    watermark = read_watermark(conn)
    timings = Timings()
    known = skipped = written = 0
    chunks = [wanted[i : i + chunk_size] for i in range(0, len(wanted), chunk_size)]
    with _progress(progress, "users") as p, contextlib.ExitStack() as stack:
        task = p.add_task(f"backfill {len(times)} as_ofs", total=len(wanted)) if p else None
        done_users = 0
        if processes > 1:
            assert database_url is not None
            reports = _in_processes(database_url, chunks, times, force, knowledge, processes)
        else:
            loader = stack.enter_context(_loader(database_url, conn)) if database_url else conn
            planned = _prefetched(loader, chunks, times, force, watermark, knowledge, timings,
                                  threaded=bool(database_url))  # fmt: skip
            reports = (
                (part, _compute_write(conn, plan, span, timings, before_write))
                for part, plan, span in planned
            )
        for part, report in reports:
            known += report.users
            skipped += report.skipped
            written += report.written
            if processes > 1:  # the workers' own timings; in process, already in `timings`
                timings.add(sql_s=report.sql_s, python_s=report.python_s)
            done_users += len(part)
            if p is not None and task is not None:
                p.update(task, completed=done_users)
    result = BackfillResult(
        times,
        FEATURE_SET_VERSION,
        known,
        skipped,
        written,
        time.monotonic() - started,
        timings,
    )
    log.info(
        "backfilled %d snapshots at %d as_ofs (%d skipped) in %.1fs",
        written,
        len(times),
        skipped,
        result.seconds,
    )
    return result


def _in_processes(
    database_url: str,
    chunks: Sequence[Sequence[str]],
    as_ofs: Sequence[datetime],
    force: bool,
    knowledge: Knowledge,
    processes: int,
) -> Iterator[tuple[Sequence[str], ChunkReport]]:
    """(chunk, report) as worker processes finish chunks (spawned: a fork would copy this
    process's connections and threads)."""
    connect_ = functools.partial(connect, database_url, autocommit=True)
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=processes, mp_context=context) as pool:
        futures = {
            pool.submit(materialize_chunk, connect_, list(part), list(as_ofs), force=force,
                        knowledge=knowledge): part
            for part in chunks
        }  # fmt: skip
        for future in as_completed(futures):
            yield futures[future], future.result()


def _prefetched(
    loader: Conn,
    chunks: Sequence[Sequence[str]],
    as_ofs: Sequence[datetime],
    force: bool,
    watermark: datetime | None,
    knowledge: Knowledge,
    timings: Timings,
    *,
    threaded: bool,
) -> Iterator[tuple[Sequence[str], _Plan, Span | None]]:
    """(chunk, plan, span) per chunk, in order; threaded, the next chunk is planned and read
    on ``loader`` in a background thread while the caller works on this one (two chunks in
    memory at most)."""

    def read(part: Sequence[str]) -> tuple[Sequence[str], _Plan, Span | None]:
        plan = _plan(loader, part, as_ofs, force)
        return part, plan, _read(loader, plan, watermark, knowledge, timings)

    if not threaded:
        for part in chunks:
            yield read(part)
        return
    with ThreadPoolExecutor(max_workers=1) as pool:
        ahead: Future[tuple[Sequence[str], _Plan, Span | None]] | None = None
        for i in range(len(chunks)):
            current = ahead.result() if ahead is not None else read(chunks[i])
            ahead = pool.submit(read, chunks[i + 1]) if i + 1 < len(chunks) else None
            yield current
            del current
