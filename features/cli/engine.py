"""Sub-commands of ``python -m features`` for the engine: ``materialize`` and ``rollup``."""

from __future__ import annotations

import argparse
import functools
import logging
import re
import signal
import threading
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from types import FrameType
from typing import TypedDict

from features.engine import DEFAULT_CHUNK_USERS, DEFAULT_SPAN_USERS, as_of_problem, latest_as_of
from features.rollups import DEFAULT_JOBS, refresh_rollups, rollup_progress
from features.service.console.summary import refresh_console_summaries
from features.snapshots.materialize import MaterializeResult, as_of_range, backfill, materialize
from hearth.db import Conn, connect
from hearth.errors import Invalid
from hearth.settings import get_settings
from hearth.times import parse_rfc3339

log = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add this family's sub-commands."""
    m = sub.add_parser(
        "materialize",
        help="compute and store feature snapshots as of a date, or of every date of a range",
        description="Refresh rollups, sync definitions, then write one snapshot per user "
        "for (as_of, feature-set version). With --from/--to (a backfill) every as_of of the "
        "range is computed from one read of each chunk of users. Resumable: snapshots already "
        "stored are skipped.",
    )
    when = m.add_mutually_exclusive_group(required=True)
    when.add_argument("--as-of", help="YYYY-MM-DD (midnight UTC) or RFC 3339 timestamp")
    when.add_argument("--from", dest="start", metavar="D1", help="first as_of of a backfill")
    m.add_argument("--to", dest="end", metavar="D2", help="last as_of of a backfill (included)")
    m.add_argument(
        "--every", default="1d", help="step between as_ofs: <n>d, <n>h or <n>m (default 1d)"
    )
    who = m.add_mutually_exclusive_group()
    who.add_argument("--users", help="comma-separated user ids (default: every user)")
    who.add_argument("--users-file", type=Path, help="file with one user id per line")
    m.add_argument(
        "--chunk-size",
        type=int,
        help=f"users per chunk (memory bound; default {DEFAULT_CHUNK_USERS}, "
        f"a backfill {DEFAULT_SPAN_USERS})",
    )
    m.add_argument("--force", action="store_true", help="recompute users already materialised")
    m.add_argument(
        "--processes",
        type=int,
        default=1,
        help="backfill: worker processes computing chunks at once (one per core; default 1)",
    )
    m.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_cluster_arguments(m)
    m.set_defaults(func=_materialize)

    r = sub.add_parser(
        "rollup",
        help="refresh hourly rollups from newly ingested rows",
        description="Recompute the hourly buckets touched by rows ingested since the watermark, "
        "then the operator console's summary tables (ingest per minute, devices' last readings).",
    )
    r.add_argument("--loop", type=float, metavar="SECONDS", help="run every SECONDS until SIGTERM")
    r.add_argument(
        "--full", action="store_true", help="rebuild every bucket (ignores the watermark)"
    )
    r.add_argument(
        "--jobs",
        type=int,
        default=DEFAULT_JOBS,
        help=f"database connections recomputing week slices side by side (default {DEFAULT_JOBS})",
    )
    r.add_argument("--no-progress", action="store_true", help="no progress bar")
    r.set_defaults(func=_rollup)


def add_cluster_arguments(parser: argparse.ArgumentParser) -> None:
    """``--scheduler`` / ``--workers``: where the user chunks run (features.distributed)."""
    where = parser.add_mutually_exclusive_group()
    where.add_argument(
        "--scheduler",
        metavar="tcp://HOST:8786",
        help="run the user chunks as tasks on this Dask cluster (default: HEARTH_DASK_SCHEDULER; "
        "neither: in this process)",
    )
    where.add_argument(
        "--workers",
        type=int,
        metavar="N",
        help="run the user chunks on a local Dask cluster of N worker processes",
    )


def wants_cluster(args: argparse.Namespace) -> bool:
    return bool(args.scheduler or args.workers is not None or get_settings().dask_scheduler)


def parse_as_of(
    text: str, max_clock_skew_s: float | None = None, *, what: str = "--as-of"
) -> datetime:
    """YYYY-MM-DD means midnight UTC; otherwise RFC 3339 with an explicit offset. Within
    the as_of rule's bounds (features.engine.as_of): not before 2000, not after now plus the
    clock-skew allowance (default: HEARTH_MAX_CLOCK_SKEW_S)."""
    value = parse_rfc3339(text, what=what, date_is_midnight=True)
    if max_clock_skew_s is None:
        max_clock_skew_s = get_settings().max_clock_skew_s
    problem = as_of_problem(value, latest_as_of(max_clock_skew_s))
    if problem is not None:
        raise Invalid(f"{what} {text.strip()}: {problem}")
    return value


def _users(args: argparse.Namespace) -> list[str] | None:
    if args.users:
        return [u.strip() for u in args.users.split(",") if u.strip()]
    if args.users_file:
        try:
            lines = args.users_file.read_text().splitlines()
        except OSError as exc:
            raise Invalid(f"--users-file: {exc.strerror}: {args.users_file}") from None
        return [u.strip() for u in lines if u.strip() and not u.startswith("#")]
    return None


_STEP = re.compile(r"^\s*(\d+)\s*([dhm])\s*$")
_UNITS = {"d": timedelta(days=1), "h": timedelta(hours=1), "m": timedelta(minutes=1)}


def parse_every(text: str) -> timedelta:
    """``<n>d``, ``<n>h`` or ``<n>m`` (n ≥ 1) as a step between as_ofs."""
    match = _STEP.match(text)
    if match is None or int(match[1]) < 1:
        raise Invalid(f"--every {text.strip()}: use <n>d, <n>h or <n>m with n at least 1")
    return int(match[1]) * _UNITS[match[2]]


def backfill_as_ofs(start: str, end: str | None, every: str) -> list[datetime]:
    """The as_ofs of ``--from D1 --to D2 --every STEP``: D1, D1 + STEP, … up to D2."""
    if end is None:
        raise Invalid("--from needs --to (the last as_of of the range)")
    first, last = parse_as_of(start, what="--from"), parse_as_of(end, what="--to")
    if last < first:
        raise Invalid(f"--to {end.strip()} is before --from {start.strip()}")
    return as_of_range(first, last, parse_every(every))


def _materialize(args: argparse.Namespace) -> int:
    if args.as_of is None:
        return _backfill(args)
    if args.end is not None:
        raise Invalid("--to goes with --from (a backfill), not with --as-of")
    as_of = parse_as_of(args.as_of)
    options = _run_options(args)
    with connect(options["database_url"], autocommit=True) as conn:
        run = functools.partial(materialize, conn, as_of, **options)
        if wants_cluster(args):
            result = _materialize_on_cluster(args, conn, run)
        else:
            result = run(read_url=get_settings().database_read_url)
    print(
        f"as_of={result.as_of.isoformat()} version={result.feature_set_version} "
        f"requested={result.requested} skipped={result.skipped} written={result.written} "
        f"seconds={result.seconds:.1f}"
    )
    return 0


class _RunOptions(TypedDict):
    users: list[str] | None
    chunk_size: int
    force: bool
    progress: bool
    database_url: str


def _run_options(args: argparse.Namespace, default_chunk: int = DEFAULT_CHUNK_USERS) -> _RunOptions:
    """What a single-date run and a backfill both take from the command line."""
    chunk_size = default_chunk if args.chunk_size is None else int(args.chunk_size)
    if chunk_size < 1:
        raise Invalid("--chunk-size must be at least 1")
    return _RunOptions(
        users=_users(args),
        chunk_size=chunk_size,
        force=bool(args.force),
        progress=not args.no_progress,
        database_url=get_settings().database_url,
    )


def _backfill(args: argparse.Namespace) -> int:
    if args.scheduler or args.workers is not None:  # HEARTH_DASK_SCHEDULER alone: ignored
        raise Invalid(
            "a backfill (--from/--to) runs its chunks in worker processes (--processes N), "
            "not on a Dask cluster; leave out --workers/--scheduler"
        )
    as_ofs = backfill_as_ofs(args.start, args.end, args.every)
    if args.processes < 1:
        raise Invalid("--processes must be at least 1")
    options = _run_options(args, DEFAULT_SPAN_USERS)
    with connect(options["database_url"], autocommit=True) as conn:
        result = backfill(conn, as_ofs, processes=args.processes, **options)
    print(
        f"from={result.as_ofs[0].isoformat()} to={result.as_ofs[-1].isoformat()} "
        f"as_ofs={len(result.as_ofs)} version={result.feature_set_version} "
        f"users={result.users} skipped={result.skipped} written={result.written} "
        f"seconds={result.seconds:.1f}"
    )
    return 0


def _materialize_on_cluster(
    args: argparse.Namespace, conn: Conn, run: Callable[..., MaterializeResult]
) -> MaterializeResult:
    # Imported when a cluster is asked for: Dask's import costs about a second (features.cli).
    from features import distributed

    settings = get_settings()
    options = distributed.ClusterOptions.resolve(args.scheduler, args.workers, settings)
    assert options is not None
    with distributed.dask_client(options, distributed.local_worker_env(settings)) as client:
        log.info("materialising on %s", options.describe())
        runner = distributed.chunk_runner(
            client, distributed.DatabaseIdentity.of(conn), progress=not args.no_progress
        )
        result: MaterializeResult = run(chunk_runner=runner)
    return result


def _rollup(args: argparse.Namespace) -> int:
    stop = threading.Event()

    def _on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    if args.loop is not None:
        if args.loop <= 0:
            raise Invalid("--loop needs a positive number of seconds")
        signal.signal(signal.SIGTERM, _on_signal)
        signal.signal(signal.SIGINT, _on_signal)
    full = bool(args.full)
    if args.jobs < 1:
        raise Invalid("--jobs must be at least 1")
    url = get_settings().database_url
    with connect(url, autocommit=True) as conn:
        while True:
            with rollup_progress(enabled=not args.no_progress) as progress:
                result = refresh_rollups(
                    conn, full=full, database_url=url, jobs=args.jobs, progress=progress
                )
            console = refresh_console_summaries(conn, full=full)  # the console's summaries
            full = False  # a rebuild once, then incremental
            print(
                f"numeric_buckets={result.numeric_buckets} "
                f"categorical_buckets={result.categorical_buckets} "
                f"rows={result.rows} readings={result.readings} "
                f"readings_per_s={result.readings_per_s:.0f} "
                f"watermark={result.watermark.isoformat()} seconds={result.seconds:.2f} "
                f"console_minutes={console.minutes} console_seconds={console.seconds:.2f}",
                flush=True,
            )
            if args.loop is None or stop.wait(args.loop):
                return 0
