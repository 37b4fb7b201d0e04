"""User chunks as tasks on a Dask distributed cluster (issue 16 §1).

``materialize`` and ``report`` compute features chunk by chunk, and chunks of users are
independent: each is one task. The client (the command) plans the run as it does in process —
rollups refreshed, definitions synced, users already done skipped — then submits one task per
chunk to the cluster and shows one progress bar for the whole run:

* :mod:`.cluster` — which cluster: ``--scheduler tcp://host:8786`` (or
  ``HEARTH_DASK_SCHEDULER``) joins a running one, ``--workers N`` starts a local one for the
  run; with neither the command runs in process, unchanged;
* :mod:`.tasks` — what a worker runs: it opens its own database connections from its own
  settings (``HEARTH_DATABASE_URL`` for writes, ``HEARTH_DATABASE_READ_URL`` for reads,
  hearth.replica), checks that they reach the database the client plans against, and computes
  and writes one chunk (the same engine and the same consent-gated upsert as in process);
* :mod:`.run` — submitting the tasks and gathering them: a task on a worker that dies is
  rescheduled by Dask on another worker (the upsert makes a rerun harmless, so the run ends
  with the same snapshots); a task that fails (the database unreachable from a worker, say)
  fails the run with its own typed error; a cluster without workers fails it after a bound.
"""

from features.distributed.cluster import (
    ClusterOptions,
    cluster_executor,
    dask_client,
    local_worker_env,
)
from features.distributed.run import chunk_runner, historical_runner
from features.distributed.tasks import DatabaseIdentity

__all__ = [
    "ClusterOptions",
    "DatabaseIdentity",
    "chunk_runner",
    "cluster_executor",
    "dask_client",
    "historical_runner",
    "local_worker_env",
]
