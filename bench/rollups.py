"""Benchmark: hourly rollups of a collector-ingested fleet — full rebuild speed, one incremental
hour, and bytes per household-day raw and rolled up (issue 16 §3).

On a copy of the fleet of bench/fleet.py (built once, ``device_sim run`` into a collector;
default 400 households x 90 days, seed 42, ending 2026-11-30):

1. the readings of the busiest hour of the fleet's last day are set aside (they become the
   incremental hour);
2. ``refresh_rollups(full=True)`` over ``--jobs`` connections: raw readings per second;
3. bytes (heap + indexes) of the raw tables and of the rollup tables after the first rebuild,
   per household-day;
4. the set-aside hour is written back as the collector writes (``ingested_at = now()``) and an
   incremental ``refresh_rollups`` is timed.

    .venv/bin/python bench/rollups.py                      # default fleet, 2 connections
    ../shared/tools/measure .venv/bin/python bench/rollups.py --jobs 1,2

Last line: ``full_rows_s=… incremental_hour_s=… rollup_bytes_ratio=… load_start=… load_end=…``
"""

from __future__ import annotations

import argparse
import sys
import time
from datetime import datetime, timedelta
from pathlib import Path

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import Bench
from bench.fleet import (
    DEFAULT_DAYS,
    DEFAULT_END,
    DEFAULT_HOUSEHOLDS,
    DEFAULT_SEED,
    clone_fleet,
    ensure_fleet,
)
from features.rollups import refresh_rollups
from hearth.times import parse_rfc3339

RAW = ("numeric_readings", "categorical_readings")
ROLLUPS = ("rollup_numeric_hourly", "rollup_categorical_hourly")
FULL_TARGET = 200_000  # raw readings/s, full rebuild (issue 16 §3)
INCREMENTAL_TARGET = 5.0  # seconds for one hour of fleet ingest
RATIO_TARGET = 0.5  # rollup bytes / raw bytes


def table_bytes(conn: psycopg.Connection, table: str) -> tuple[int, int]:
    """(heap, indexes) bytes of a hypertable, chunks included."""
    row = conn.execute(
        "SELECT sum(table_bytes + coalesce(toast_bytes, 0)), sum(index_bytes)"
        " FROM hypertable_detailed_size(%s::regclass)",
        (table,),
    ).fetchone()
    return (int(row[0] or 0), int(row[1] or 0)) if row else (0, 0)


def set_aside_busiest_hour(conn: psycopg.Connection, end: datetime) -> int:
    """Move the readings of the busiest hour of the fleet's last day (event time, the day
    before its ``end``) into temp tables; how many."""
    row = conn.execute(
        """SELECT time_bucket(INTERVAL '1 hour', time) FROM numeric_readings
            WHERE time >= %(end)s - INTERVAL '1 day' AND time < %(end)s
            GROUP BY 1 ORDER BY count(*) DESC LIMIT 1""",
        {"end": end},
    ).fetchone()
    assert row is not None, "the fleet has no readings"
    moved = 0
    for table in RAW:
        conn.execute(
            f"""CREATE TEMP TABLE held_{table} AS SELECT * FROM {table}
                 WHERE time >= %(h)s AND time < %(h)s + INTERVAL '1 hour'""",
            {"h": row[0]},
        )
        cur = conn.execute(f"DELETE FROM {table} r USING held_{table} h WHERE r.time = h.time"
                           " AND r.device_id = h.device_id AND r.signal = h.signal")  # fmt: skip
        moved += max(cur.rowcount, 0)
    return moved


def ingest_held_hour(conn: psycopg.Connection) -> None:
    """Write the set-aside readings back as the collector does: ingested now."""
    for table in RAW:
        conn.execute(
            f"""INSERT INTO {table} (time, device_id, user_id, signal, value, ingested_at,
                                     time_received)
                SELECT time, device_id, user_id, signal, value, now(), time_received
                  FROM held_{table}"""
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--households", type=int, default=DEFAULT_HOUSEHOLDS)
    parser.add_argument("--days", type=int, default=DEFAULT_DAYS)
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    parser.add_argument("--end", default=DEFAULT_END.isoformat(), help="fleet end, RFC 3339")
    parser.add_argument("--jobs", default="2", help="connections for the rebuild, e.g. 1,2")
    args = parser.parse_args()
    jobs = [int(j) for j in args.jobs.split(",")]
    fleet = ensure_fleet(
        args.households, args.days, args.seed, parse_rfc3339(args.end, what="--end")
    )
    targets = Bench()  # the load once the fleet exists: building it is not measured
    household_days = fleet.households * fleet.days
    rebuilds: list[tuple[int, float, int]] = []
    with clone_fleet(fleet) as url, psycopg.connect(url, autocommit=True) as conn:
        held = set_aside_busiest_hour(conn, fleet.end)
        conn.execute("VACUUM ANALYZE")
        raw = rolled = {}
        for j in jobs:
            result = refresh_rollups(conn, full=True, database_url=url, jobs=j)
            if not rolled:  # what one rebuild writes (a second one leaves free space behind)
                conn.execute("VACUUM ANALYZE")
                raw = {t: table_bytes(conn, t) for t in RAW}
                rolled = {t: table_bytes(conn, t) for t in ROLLUPS}
            rebuilds.append((j, result.seconds, result.readings))
            print(f"  full rebuild, {j} connection(s): {result.readings:,} readings in "
                  f"{result.seconds:.1f}s = {result.readings_per_s:,.0f}/s")  # fmt: skip
        conn.execute("VACUUM ANALYZE")
        ingest_held_hour(conn)
        t0 = time.perf_counter()
        incremental = refresh_rollups(conn, grace=timedelta(0), database_url=url, jobs=max(jobs))
        incremental_s = time.perf_counter() - t0
    raw_total = sum(h + i for h, i in raw.values())
    rolled_total = sum(h + i for h, i in rolled.values())
    ratio = rolled_total / raw_total if raw_total else float("nan")
    print()
    print(fleet.describe())
    print(f"{'table':28} {'heap MB':>9} {'index MB':>9} {'bytes/household-day':>20}")
    for table, (heap, index) in {**raw, **rolled}.items():
        print(f"{table:28} {heap / 2**20:>9.1f} {index / 2**20:>9.1f} "
              f"{(heap + index) / household_days:>20,.0f}")  # fmt: skip
    print(f"{'raw total':28} {'':>9} {'':>9} {raw_total / household_days:>20,.0f}")
    print(f"{'rollups total':28} {'':>9} {'':>9} {rolled_total / household_days:>20,.0f}")
    print()
    print(f"{'run':34} {'seconds':>8} {'readings/s':>11}")
    for j, secs, readings in rebuilds:
        print(f"{f'full rebuild, {j} connection(s)':34} {secs:>8.1f} {readings / secs:>11,.0f}")
    print(f"{'incremental, one hour of ingest':34} {incremental_s:>8.2f} "
          f"{incremental.readings / max(incremental_s, 1e-9):>11,.0f}"
          f"   ({held:,} readings set aside, {incremental.readings:,} re-read)")  # fmt: skip
    best = max(readings / secs for _, secs, readings in rebuilds)
    targets.target("full rebuild", best, ">=", FULL_TARGET, "readings/s")
    targets.target("incremental hour", incremental_s, "<=", INCREMENTAL_TARGET, "s")
    targets.target("rollup bytes / raw bytes", ratio, "<=", RATIO_TARGET)
    targets.finish(
        full_rows_s=f"{best:.0f}",
        incremental_hour_s=f"{incremental_s:.2f}",
        rollup_bytes_ratio=f"{ratio:.3f}",
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
