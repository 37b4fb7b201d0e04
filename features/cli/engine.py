"""Sub-commands of ``python -m features`` for the engine: ``materialize`` and ``rollup``."""

from __future__ import annotations

import argparse
import signal
import threading
from datetime import datetime
from pathlib import Path
from types import FrameType

from features.engine import DEFAULT_CHUNK_USERS, as_of_problem, latest_as_of
from features.rollups import refresh_rollups
from features.service.console.summary import refresh_console_summaries
from features.snapshots.materialize import materialize
from hearth.db import connect
from hearth.errors import Invalid
from hearth.settings import get_settings
from hearth.times import parse_rfc3339


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add this family's sub-commands."""
    m = sub.add_parser(
        "materialize",
        help="compute and store feature snapshots as of a date",
        description="Refresh rollups, sync definitions, then write one snapshot per user "
        "for (as_of, feature-set version). Resumable: users already done are skipped.",
    )
    m.add_argument("--as-of", required=True, help="YYYY-MM-DD (midnight UTC) or RFC 3339 timestamp")
    who = m.add_mutually_exclusive_group()
    who.add_argument("--users", help="comma-separated user ids (default: every user)")
    who.add_argument("--users-file", type=Path, help="file with one user id per line")
    m.add_argument("--chunk-size", type=int, help="users per chunk (memory bound; default 250)")
    m.add_argument("--force", action="store_true", help="recompute users already materialised")
    m.add_argument("--no-progress", action="store_true", help="no progress bar")
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
    r.set_defaults(func=_rollup)


def parse_as_of(text: str, max_clock_skew_s: float | None = None) -> datetime:
    """YYYY-MM-DD means midnight UTC; otherwise RFC 3339 with an explicit offset. Within
    the as_of rule's bounds (features.engine.as_of): not before 2000, not after now plus the
    clock-skew allowance (default: HEARTH_MAX_CLOCK_SKEW_S)."""
    value = parse_rfc3339(text, what="--as-of", date_is_midnight=True)
    if max_clock_skew_s is None:
        max_clock_skew_s = get_settings().max_clock_skew_s
    problem = as_of_problem(value, latest_as_of(max_clock_skew_s))
    if problem is not None:
        raise Invalid(f"--as-of {text.strip()}: {problem}")
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


def _materialize(args: argparse.Namespace) -> int:
    as_of = parse_as_of(args.as_of)
    chunk_size = DEFAULT_CHUNK_USERS if args.chunk_size is None else args.chunk_size
    if chunk_size < 1:
        raise Invalid("--chunk-size must be at least 1")
    users = _users(args)
    url = get_settings().database_url
    with connect(url, autocommit=True) as conn:
        result = materialize(
            conn,
            as_of,
            users=users,
            chunk_size=chunk_size,
            force=args.force,
            progress=not args.no_progress,
            database_url=url,
        )
    print(
        f"as_of={result.as_of.isoformat()} version={result.feature_set_version} "
        f"requested={result.requested} skipped={result.skipped} written={result.written} "
        f"seconds={result.seconds:.1f}"
    )
    return 0


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
    with connect(get_settings().database_url, autocommit=True) as conn:
        while True:
            result = refresh_rollups(conn, full=full)
            console = refresh_console_summaries(conn, full=full)  # the console's summaries
            full = False  # a rebuild once, then incremental
            print(
                f"numeric_buckets={result.numeric_buckets} "
                f"categorical_buckets={result.categorical_buckets} "
                f"watermark={result.watermark.isoformat()} seconds={result.seconds:.2f} "
                f"console_minutes={console.minutes} console_seconds={console.seconds:.2f}",
                flush=True,
            )
            if args.loop is None or stop.wait(args.loop):
                return 0
