"""The client's side of a run on a Dask cluster: one task per chunk, one progress bar, errors.

Failure handling, by cause:

* a worker process dies (killed, out of memory, its machine gone): the scheduler reschedules its
  tasks on the remaining workers (up to ``distributed.scheduler.allowed-failures`` deaths per
  task, then :class:`Unavailable`); chunks it had already written are written again with the
  same vectors, so the run ends as if nothing had happened;
* a task raises (a worker cannot reach the database, the replica is too far behind): the run
  stops at the first such error, cancels what is left and raises that error, typed
  (hearth.errors), so the command exits with its code and one line;
* no worker at all for :data:`NO_WORKERS_S` (every worker gone, none coming back): the run fails
  with :class:`Unavailable` instead of waiting forever.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime
from typing import TypeVar

from distributed import CancelledError, Client, Future, as_completed
from distributed.scheduler import KilledWorker
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from features.distributed.tasks import (
    ChunkDone,
    DatabaseIdentity,
    historical_chunk,
    materialize_chunk,
)
from features.engine import FeatureVector, Knowledge, Timings
from features.snapshots.materialize import ChunkRunner
from hearth.errors import Unavailable

log = logging.getLogger(__name__)
T = TypeVar("T")
POLL_S = 1.0  # how often the client looks at the cluster while no task finishes
NO_WORKERS_S = 60.0  # a run with no worker for this long fails

HistoricalRunner = Callable[
    [Sequence[Sequence[tuple[str, datetime]]], Knowledge, Callable[[int, int], None] | None],
    list[list[FeatureVector | None]],
]


def chunk_runner(client: Client, expect: DatabaseIdentity, *, progress: bool = True) -> ChunkRunner:
    """Runs a planned materialisation's chunks as tasks (``materialize(chunk_runner=…)``)."""

    def run(todo: Sequence[str], as_of: datetime, chunk_size: int, timings: Timings) -> int:
        chunks = [list(todo[i : i + chunk_size]) for i in range(0, len(todo), chunk_size)]
        run_id = secrets.token_hex(4)
        futures = client.map(
            materialize_chunk,
            chunks,
            [[as_of]] * len(chunks),
            [expect] * len(chunks),
            key=[f"materialize-{run_id}-{i}" for i in range(len(chunks))],
        )
        with _bar("materialise", len(todo), progress) as advance:
            done: list[ChunkDone] = gather(client, futures, [len(c) for c in chunks], advance)
        for d in done:
            timings.add(sql_s=d.sql_s, python_s=d.python_s)
        log.info(
            "materialised %d chunk(s) as of %s on %d worker(s)",
            len(done),
            as_of.isoformat(),
            len({d.worker for d in done}),
        )
        return sum(d.written for d in done)

    return run


def historical_runner(client: Client, expect: DatabaseIdentity) -> HistoricalRunner:
    """Runs the report's batches of (user, time) rows as tasks; vectors in batch order."""

    def run(
        batches: Sequence[Sequence[tuple[str, datetime]]],
        knowledge: Knowledge,
        progress: Callable[[int, int], None] | None,
    ) -> list[list[FeatureVector | None]]:
        run_id = secrets.token_hex(4)
        futures = client.map(
            historical_chunk,
            [list(rows) for rows in batches],
            [knowledge] * len(batches),
            [expect] * len(batches),
            key=[f"historical-{run_id}-{i}" for i in range(len(batches))],
        )
        total = sum(len(b) for b in batches)
        count = [0]

        def advance(n: int) -> None:
            count[0] += n
            if progress is not None:
                progress(count[0], total)

        return gather(client, futures, [len(b) for b in batches], advance)

    return run


def gather(
    client: Client,
    futures: Sequence[Future[T]],
    weights: Sequence[int],
    advance: Callable[[int], None],
) -> list[T]:
    """The futures' results in order, calling ``advance(weight)`` as each one completes; on
    the first failure the rest are cancelled and the failure raised (see the module)."""
    weight = {f.key: w for f, w in zip(futures, weights, strict=True)}
    results: dict[object, T] = {}
    watchdog = _NoWorkers(client, futures)
    watchdog.start()
    try:
        for f in as_completed(futures):
            if watchdog.reason is not None:
                raise watchdog.reason
            try:
                results[f.key] = _result(f)
            except Unavailable:
                if watchdog.reason is None and f.cancelled():
                    # Not by this run: workers leaving the cluster can have their tasks
                    # cancelled before the watchdog's verdict. Wait for it, so such a run fails
                    # with its reason and hint; any other cancellation fails once it is over.
                    watchdog.join(NO_WORKERS_S + 2 * POLL_S)
                if watchdog.reason is not None:
                    raise watchdog.reason from None
                raise
            advance(weight[f.key])
    except BaseException:
        client.cancel(list(futures))
        raise
    finally:
        watchdog.stop()
    return [results[f.key] for f in futures]


class _NoWorkers(threading.Thread):
    """Cancels the run when the cluster has had no worker for :data:`NO_WORKERS_S` (every
    worker gone, none coming back), so the client never waits forever."""

    def __init__(self, client: Client, futures: Sequence[Future[T]]) -> None:
        super().__init__(name="hearth-dask-watchdog", daemon=True)
        self._client = client
        self._futures = list(futures)
        self._stop = threading.Event()
        self.reason: Unavailable | None = None

    def run(self) -> None:
        since: float | None = None
        while not self._stop.wait(POLL_S):
            if self._client.nthreads():
                since = None
                continue
            since = since or time.monotonic()
            if time.monotonic() - since > NO_WORKERS_S:
                left = sum(not f.done() for f in self._futures)
                self.reason = Unavailable(
                    f"the Dask cluster has had no worker for {NO_WORKERS_S:.0f}s; "
                    f"{left} chunk(s) were not computed",
                    hint="start workers (`dask worker <scheduler>`) and run the command again: "
                    "chunks already written are kept",
                )
                self._client.cancel(self._futures)  # wakes the gathering loop
                return

    def stop(self) -> None:
        self._stop.set()


def _result(future: Future[T]) -> T:
    try:
        value: T = future.result()
    except KilledWorker as exc:
        raise Unavailable(
            f"Dask: chunk task {future.key} was on workers that died repeatedly ({exc}); "
            "it may itself kill them (memory: try a smaller --chunk-size)"
        ) from None
    except CancelledError:
        raise Unavailable(f"Dask: chunk task {future.key} was cancelled") from None
    return value


@contextlib.contextmanager
def _bar(label: str, total: int, enabled: bool) -> Iterator[Callable[[int], None]]:
    """One rich progress bar (users done of total, rate, ETA) for the whole run."""
    if not enabled:
        yield lambda n: None
        return
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TaskProgressColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    ) as p:
        task = p.add_task(label, total=total, rate="")
        started = time.monotonic()
        done = [0]

        def advance(n: int) -> None:
            done[0] += n
            rate = done[0] / max(1e-9, time.monotonic() - started)
            p.update(task, advance=n, rate=f"{rate:,.0f} users/s")

        yield advance
