"""Materialisation: one ``feature_snapshots`` row per (user, as_of, feature-set version).

Chunked by users (memory is bounded by the chunk, not the fleet), idempotent (upsert) and
resumable: users that already have a snapshot for this version and as_of are skipped unless
``force``. Rollups are refreshed and the definitions synced first, so what is stored can always
be explained by the catalogue of the same version.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
import psycopg
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from features.catalogue import DEFINITIONS, FEATURE_SET_VERSION, sync_definitions
from features.engine import (
    DEFAULT_CHUNK_USERS,
    REASON_CODES,
    ChunkResults,
    Timings,
    as_of_problem,
    iter_chunk_results,
    latest_as_of,
)
from features.rollups import refresh_rollups
from hearth.ledger import (
    GATE_DERIVED,
    gate_sql,
    withdrawn_categories_sql,
    withhold_features_sql,
)
from hearth.settings import get_settings
from hearth.vectors import reason_suffix

log = logging.getLogger(__name__)
Conn = psycopg.Connection[tuple[object, ...]]
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


_REASON_TEXT = [reason_suffix(r) for r in REASON_CODES]


def vector_json(results: dict[str, tuple[np.ndarray, np.ndarray]], n_users: int) -> list[str]:
    """The snapshot ``vector`` document of each user of a chunk, serialised: exactly what
    ``json.dumps`` gives for {name: hearth.vectors.cell(value, coverage, reason)} (floats by
    ``repr``, non-finite values as null), written column by column instead of a dict per
    user."""
    reasons = results.reasons if isinstance(results, ChunkResults) else {}
    columns = []
    for d in DEFINITIONS:
        values, coverage = results[d.name]
        finite = np.isfinite(values).tolist()
        shown = [repr(v) if ok else "null" for v, ok in zip(values.tolist(), finite, strict=True)]
        codes = reasons.get(d.name)
        why = [_REASON_TEXT[k] for k in codes.tolist()] if codes is not None else [""] * len(shown)
        head = json.dumps(d.name) + ': {"value": '
        columns.append(
            [
                f'{head}{v}, "coverage": {c!r}{r}}}'
                for v, c, r in zip(shown, np.round(coverage, 6).tolist(), why, strict=True)
            ]
        )
    return ["{" + ", ".join(row) + "}" for row in zip(*columns, strict=True)][:n_users]


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


def all_users(conn: Conn) -> list[str]:
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
    wanted = list(dict.fromkeys(users)) if users is not None else all_users(conn)
    todo = wanted
    if not force:
        done = {
            str(r[0])
            for r in conn.execute(
                """SELECT user_id FROM feature_snapshots
                    WHERE as_of = %s AND feature_set_version = %s AND user_id = ANY(%s)""",
                (as_of, FEATURE_SET_VERSION, wanted),
            )
        }
        todo = [u for u in wanted if u not in done]
    timings = Timings()
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
            docs = vector_json(results, len(known))
            timings.add(python_s=time.perf_counter() - t0)
            if before_write is not None:
                before_write(known)
            t0 = time.perf_counter()
            _write(conn, known, as_of, docs)
            timings.add(sql_s=time.perf_counter() - t0)
            written += len(known)
            if p is not None and task is not None:
                p.update(task, completed=written)
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


def _loader(database_url: str | None) -> Conn:
    """A connection of our own that reads chunks. JIT off: the chunk queries are planned as
    expensive enough to JIT-compile, which costs ~0.1 s per query and saves nothing (their
    time goes into index scans and array building, not expression evaluation)."""
    loader = psycopg.connect(database_url or "", autocommit=True)
    loader.execute("SET jit = off")
    return loader


# The write re-checks consent in its own transaction, under the shared DERIVED gate that a
# purge takes exclusively (hearth.ledger): features of a category withdrawn before the commit
# are withheld even though the chunk was computed from data loaded before the withdrawal, and
# users erased meanwhile are not written (invariant 8).
_UPSERT_SQL = f"""
    INSERT INTO feature_snapshots (user_id, as_of, feature_set_version, vector)
    SELECT s.user_id, %(as_of)s, %(version)s,
           {withhold_features_sql("s.vector", "%(version)s", withdrawn_categories_sql("s.user_id"))}
      FROM snapshot_stage s JOIN users u ON u.user_id = s.user_id
    ON CONFLICT (user_id, as_of, feature_set_version) DO UPDATE
       SET vector = excluded.vector, computed_at = now()
"""


def _write(conn: Conn, users: Sequence[str], as_of: datetime, docs: Sequence[str]) -> None:
    """Upsert one chunk's snapshots in one transaction (a crash loses at most this chunk)."""
    with conn.transaction(), conn.cursor() as cur:
        cur.execute(
            """CREATE TEMP TABLE IF NOT EXISTS snapshot_stage
                   (user_id text, vector jsonb) ON COMMIT DELETE ROWS"""
        )
        with cur.copy("COPY snapshot_stage (user_id, vector) FROM STDIN") as copy:
            for user, doc in zip(users, docs, strict=True):
                copy.write_row((user, doc))
        cur.execute(gate_sql(GATE_DERIVED))  # before the upsert reads consent_state
        cur.execute(_UPSERT_SQL, {"as_of": as_of, "version": FEATURE_SET_VERSION})


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
