"""Which Dask cluster a run uses: a running one by its scheduler's address, or a local one.

A real deployment runs the scheduler and the workers as separate commands (docs/operations.md,
"Feature computation on a Dask cluster")::

    dask scheduler --port 8786
    HEARTH_DATABASE_URL=… HEARTH_DATABASE_READ_URL=… dask worker tcp://scheduler:8786 --nthreads 2

and commands join it with ``--scheduler tcp://scheduler:8786`` or ``HEARTH_DASK_SCHEDULER``.
``--workers N`` starts N local worker processes for the length of one run instead (a laptop, a
test, one big machine); they get the command's own database settings.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator, Mapping
from concurrent.futures import Executor
from dataclasses import dataclass

from distributed import Client, LocalCluster

from hearth.errors import Invalid, Unavailable
from hearth.settings import Settings, check_dask_scheduler

CONNECT_TIMEOUT_S = 10.0  # reaching the scheduler
WORKERS_TIMEOUT_S = 60.0  # a scheduler with no worker at all after this fails the run
# Settings a local worker needs to reach the same database as the command (they may come from
# the command's TOML file or its overrides, not only its environment).
_WORKER_SETTINGS = {
    "HEARTH_DATABASE_URL": "database_url",
    "HEARTH_DATABASE_READ_URL": "database_read_url",
    "HEARTH_REPLICA_MAX_WAIT_S": "replica_max_wait_s",
    "HEARTH_MAX_CLOCK_SKEW_S": "max_clock_skew_s",
    "HEARTH_LOG_LEVEL": "log_level",
}


@dataclass(frozen=True)
class ClusterOptions:
    """``--scheduler`` / ``--workers`` as given (``HEARTH_DASK_SCHEDULER`` when neither)."""

    scheduler: str | None = None
    workers: int | None = None
    # Two chunks at a time per worker process: one's database reads overlap the other's
    # computing, as the in-process path's loader connections do.
    threads_per_worker: int = 2

    @classmethod
    def resolve(
        cls, scheduler: str | None, workers: int | None, settings: Settings
    ) -> ClusterOptions | None:
        """The cluster to use, or None for the in-process path."""
        if scheduler and workers is not None:
            raise Invalid("--scheduler and --workers exclude each other")
        if workers is not None:
            if workers < 1:
                raise Invalid("--workers must be at least 1")
            return cls(workers=workers)
        if scheduler:
            try:
                return cls(scheduler=check_dask_scheduler(scheduler))
            except ValueError as exc:
                raise Invalid(f"--scheduler: {exc}") from None
        if settings.dask_scheduler:
            return cls(scheduler=settings.dask_scheduler)
        return None

    def describe(self) -> str:
        if self.workers is not None:
            return f"a local Dask cluster of {self.workers} worker process(es)"
        return f"the Dask cluster at {self.scheduler}"


def local_worker_env(settings: Settings) -> dict[str, str]:
    """Environment for local worker processes: the command's database settings, whatever
    their source, and its configuration file."""
    env = {
        var: str(getattr(settings, field))
        for var, field in _WORKER_SETTINGS.items()
        if getattr(settings, field) is not None
    }
    if os.environ.get("HEARTH_CONFIG"):
        env["HEARTH_CONFIG"] = os.environ["HEARTH_CONFIG"]
    return env


@contextlib.contextmanager
def dask_client(options: ClusterOptions, env: Mapping[str, str]) -> Iterator[Client]:
    """A connected client with at least one worker; the local cluster, if started, is shut
    down on exit. :class:`Unavailable` when the scheduler cannot be reached or has no worker."""
    with contextlib.ExitStack() as stack:
        if options.workers is not None:
            # The local scheduler and nannies run in this process: their INFO lines (workers
            # starting, leaving) are not the command's output.
            logging.getLogger("distributed").setLevel(logging.WARNING)
            cluster = stack.enter_context(
                LocalCluster(
                    n_workers=options.workers,
                    threads_per_worker=options.threads_per_worker,
                    processes=True,
                    dashboard_address=":0",  # the HTTP server (health, metrics) on a free port
                    silence_logs=logging.ERROR,
                    env=dict(env),
                )
            )
            client = stack.enter_context(Client(cluster))
        else:
            assert options.scheduler is not None
            try:
                client = stack.enter_context(Client(options.scheduler, timeout=CONNECT_TIMEOUT_S))
            except (OSError, TimeoutError) as exc:
                raise Unavailable(
                    f"HEARTH_DASK_SCHEDULER: cannot reach the Dask scheduler at "
                    f"{options.scheduler}: {exc}",
                    hint="start it with `dask scheduler`, or run with --workers N",
                ) from None
        try:
            client.wait_for_workers(1, timeout=WORKERS_TIMEOUT_S)
        except TimeoutError:
            raise Unavailable(
                f"{options.describe()} has no worker after {WORKERS_TIMEOUT_S:.0f}s",
                hint="start workers with `dask worker <scheduler address>`",
            ) from None
        yield client


@contextlib.contextmanager
def cluster_executor(options: ClusterOptions, env: Mapping[str, str]) -> Iterator[Executor]:
    """The cluster as a ``concurrent.futures`` executor (the book's export and scoring parts
    run on any executor), shut down on exit."""
    with dask_client(options, env) as client:
        executor: Executor = client.get_executor()
        try:
            yield executor
        finally:
            executor.shutdown(wait=True)
