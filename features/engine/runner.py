"""Running the engine over many users: chunk by chunk, with loader threads reading the next
chunks while one is computed; :func:`compute_vectors` and :func:`compute_historical` on top."""

from __future__ import annotations

import queue
import time
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import UTC, datetime
from itertools import islice

from features.catalogue.library.base import Chunk
from features.engine.as_of import Knowledge
from features.engine.compute import ChunkResults, chunk_vectors, compute_chunk
from features.engine.graph import load_sightings
from features.engine.load import load_chunk
from features.engine.types import FeatureVector, Timings
from features.rollups import read_watermark
from hearth import ledger
from hearth.db import Conn

# Users per chunk: bounds memory (a chunk's [users, hours] matrices, times the chunks in flight)
DEFAULT_CHUNK_USERS = 250

_Loaded = tuple[list[str], Chunk]  # a chunk's known users and their loaded bins


class _ChunkLoader:
    """Loads the chunk of ``user_ids`` that starts at an index: on a given connection, or on
    an idle loader connection borrowed for the load (from a background thread)."""

    def __init__(
        self,
        user_ids: Sequence[str],
        as_of: datetime,
        chunk_size: int,
        watermark: datetime | None,
        timings: Timings | None,
        knowledge: Knowledge,
        loaders: Sequence[Conn],
    ) -> None:
        self._user_ids = user_ids
        self._as_of = as_of
        self._chunk_size = chunk_size
        self._watermark = watermark
        self._timings = timings
        self._knowledge = knowledge
        self._public: set[tuple[str, str]] = set()  # networks too public to link (graph)
        self._idle: queue.SimpleQueue[Conn] = queue.SimpleQueue()
        for c in loaders:
            self._idle.put(c)

    def load(self, start: int, db: Conn) -> _Loaded | None:
        """The chunk's known users and bins; None when it has no known user."""
        part = list(dict.fromkeys(self._user_ids[start : start + self._chunk_size]))
        tz = ledger.user_timezones(db, part)
        known = [u for u in part if u in tz]
        if not known:
            return None
        tzs = [tz[u] for u in known]
        chunk = load_chunk(
            db, known, tzs, self._as_of, self._watermark, self._timings, self._knowledge
        )
        t0 = time.perf_counter()
        chunk.sightings = load_sightings(
            db, known, tzs, chunk, self._as_of, self._watermark, self._knowledge, self._public
        )
        if self._timings is not None:
            self._timings.add(graph_s=time.perf_counter() - t0)
        return known, chunk

    def load_borrowed(self, start: int) -> _Loaded | None:
        borrowed = self._idle.get()
        try:
            return self.load(start, borrowed)
        finally:
            self._idle.put(borrowed)


def _compute(chunk: Chunk, timings: Timings | None) -> ChunkResults:
    t0 = time.perf_counter()
    results = compute_chunk(chunk)
    if timings is not None:
        timings.add(python_s=time.perf_counter() - t0)
    return results


def iter_chunk_results(
    conn: Conn,
    user_ids: Sequence[str],
    as_of: datetime,
    *,
    chunk_size: int = DEFAULT_CHUNK_USERS,
    timings: Timings | None = None,
    loaders: Sequence[Conn] = (),
    knowledge: Knowledge = Knowledge.INGESTED,
) -> Iterator[tuple[list[str], ChunkResults]]:
    """(known users of the chunk, feature arrays) per chunk, in order; unknown users are
    skipped.

    With ``loaders`` (connections of their own) the next chunks are read in background
    threads, one per loader, while this one is computed: the database works on up to
    ``len(loaders)`` chunks at once (a backend per loader, so on more than one core) while
    numpy computes; at most ``len(loaders) + 1`` chunks are in memory.
    """
    as_of = as_of.astimezone(UTC)
    watermark = read_watermark(conn)
    loader = _ChunkLoader(user_ids, as_of, chunk_size, watermark, timings, knowledge, loaders)
    starts = list(range(0, len(user_ids), chunk_size))
    if not loaders:
        for start in starts:
            loaded = loader.load(start, conn)
            if loaded is not None:
                known = loaded[0]
                results = _compute(loaded[1], timings)
                del loaded
                yield known, results
        return
    with ThreadPoolExecutor(max_workers=len(loaders)) as pool:
        pending: deque[Future[_Loaded | None]] = deque()
        ahead = iter(starts)
        for start in islice(ahead, len(loaders)):
            pending.append(pool.submit(loader.load_borrowed, start))
        while pending:
            loaded = pending.popleft().result()
            for start in islice(ahead, 1):
                pending.append(pool.submit(loader.load_borrowed, start))
            if loaded is not None:
                known = loaded[0]
                results = _compute(loaded[1], timings)
                del loaded
                yield known, results


def compute_vectors(
    conn: Conn,
    user_ids: Sequence[str],
    as_of: datetime,
    *,
    chunk_size: int = DEFAULT_CHUNK_USERS,
    knowledge: Knowledge = Knowledge.INGESTED,
    loaders: Sequence[Conn] = (),
) -> list[FeatureVector]:
    """On-demand vectors of the known users among ``user_ids`` as of ``as_of``; with
    ``loaders``, the next chunks are read while one is computed (:func:`iter_chunk_results`).

    Unknown users are omitted (the caller decides what that means).
    """
    computed_at = datetime.now(UTC)
    out: list[FeatureVector] = []
    chunks = iter_chunk_results(
        conn, user_ids, as_of, chunk_size=chunk_size, knowledge=knowledge, loaders=loaders
    )
    for known, results in chunks:
        out.extend(chunk_vectors(known, as_of.astimezone(UTC), results, computed_at))
    return out


def compute_historical(
    conn: Conn,
    rows: Sequence[tuple[str, datetime]],
    *,
    knowledge: Knowledge = Knowledge.INGESTED,
    loaders: Sequence[Conn] = (),
) -> list[FeatureVector | None]:
    """One vector per (user, as_of) row, in order; None where the user is unknown. With
    ``loaders``, an as_of's next chunks are read while one is computed."""
    by_time = users_by_as_of(rows)
    found: dict[tuple[str, datetime], FeatureVector] = {}
    for at, users in by_time.items():
        for vec in compute_vectors(conn, users, at, knowledge=knowledge, loaders=loaders):
            found[(vec.user_id, at)] = vec
    return [found.get((u, at.astimezone(UTC))) for u, at in rows]


def users_by_as_of(rows: Sequence[tuple[str, datetime]]) -> dict[datetime, list[str]]:
    """The users of (user, as_of) rows per as_of (UTC), in order: one engine pass each."""
    by_time: dict[datetime, list[str]] = {}
    for user, at in rows:
        by_time.setdefault(at.astimezone(UTC), []).append(user)
    return by_time
