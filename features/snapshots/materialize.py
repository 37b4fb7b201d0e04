"""Materialisation: one ``feature_snapshots`` row per (user, as_of, feature-set version).

Chunked by users (memory is bounded by the chunk, not the fleet), idempotent (upsert) and
resumable: users that already have a snapshot for this version and as_of are skipped unless
``force``. Rollups are refreshed and the definitions synced first, so what is stored can always
be explained by the catalogue of the same version.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import psycopg
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from features.catalogue import FEATURE_SET_VERSION, sync_definitions
from features.engine import (
    DEFAULT_CHUNK_USERS,
    Timings,
    as_of_problem,
    iter_chunk_results,
    latest_as_of,
)
from features.rollups import refresh_rollups
from features.snapshots.codec import chunk_cells_json
from features.snapshots.store import users_with_snapshot, write_snapshots
from hearth.db import Conn
from hearth.settings import get_settings

log = logging.getLogger(__name__)
# Loader connections reading the next chunks while one is computed: two keep both cores of a
# small machine busy (one backend may scan while the other ships its arrays) without holding
# more than three chunks in memory.
LOADER_CONNECTIONS = 2


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
) -> MaterializeResult:
    """Compute and store snapshots as of ``as_of`` for ``users`` (default: every user).

    With ``database_url`` loader connections (:data:`LOADER_CONNECTIONS`) read the next
    chunks while this one is computed and written. ``before_write`` is called with each
    chunk's users between computing and writing it (tests use it to race a withdrawal).
    """
    started = time.monotonic()
    _fixed_mmap_threshold()
    as_of = as_of.astimezone(UTC)
    # A snapshot "as of" the future would be served as the latest while its data still arrives.
    problem = as_of_problem(as_of, latest_as_of(get_settings().max_clock_skew_s))
    if problem is not None:
        raise ValueError(f"as_of {as_of.isoformat()}: {problem}")
    if refresh:
        refresh_rollups(conn)
    sync_definitions(conn)
    wanted = list(dict.fromkeys(users)) if users is not None else _all_users(conn)
    todo = wanted
    if not force:
        done = users_with_snapshot(conn, wanted, as_of)
        todo = [u for u in wanted if u not in done]
    timings = Timings()
    written = _compute_and_write(
        conn, todo, as_of, chunk_size, timings, progress, database_url, before_write
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


def _compute_and_write(
    conn: Conn,
    todo: Sequence[str],
    as_of: datetime,
    chunk_size: int,
    timings: Timings,
    progress: bool,
    database_url: str | None,
    before_write: Callable[[Sequence[str]], None] | None,
) -> int:
    """Compute the snapshots of ``todo`` chunk by chunk and write each chunk as it comes;
    how many were written."""
    written = 0
    bar = _progress(progress)
    with bar as p, contextlib.ExitStack() as stack:
        loaders = [
            stack.enter_context(_loader(database_url))
            for _ in range(LOADER_CONNECTIONS if database_url and todo else 0)
        ]
        task = p.add_task("materialise", total=len(todo)) if p else None
        for known, results in iter_chunk_results(
            conn, todo, as_of, chunk_size=chunk_size, timings=timings, loaders=loaders
        ):
            t0 = time.perf_counter()
            docs = chunk_cells_json(results, len(known))
            timings.add(python_s=time.perf_counter() - t0)
            if before_write is not None:
                before_write(known)
            t0 = time.perf_counter()
            write_snapshots(conn, known, as_of, docs, results.links)
            timings.add(sql_s=time.perf_counter() - t0)
            written += len(known)
            if p is not None and task is not None:
                p.update(task, completed=written)
    return written


def _loader(database_url: str | None) -> Conn:
    """A connection of our own that reads chunks. JIT off: the chunk queries are planned as
    expensive enough to JIT-compile, which costs ~0.1 s per query and saves nothing (their
    time goes into index scans and array building, not expression evaluation)."""
    loader = psycopg.connect(database_url or "", autocommit=True)
    loader.execute("SET jit = off")
    return loader


def _progress(enabled: bool) -> contextlib.AbstractContextManager[Progress | None]:
    """A rich progress bar (users done of total), or nothing."""
    if not enabled:
        return contextlib.nullcontext()
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        transient=False,
    )
