"""Benchmark: materialise every feature for N users x 90 days of hourly rollups.

Creates a throwaway database from ``hearth_template`` (like tests/conftest.py), migrates it,
synthesises users, devices, consent and ~30 rollup rows per user per day server-side (one
INSERT … SELECT over generate_series per table: the database writes the rows itself, nothing
crosses the wire), then times ``features.snapshots.materialize`` for growing user counts and
drops the database.

    .venv/bin/python bench/features.py                 # 2,500 / 5,000 / 10,000 users
    .venv/bin/python bench/features.py --users 500     # quick run while developing
    .venv/bin/python bench/features.py --workers 1,2   # also on local Dask clusters of 1 and 2

Last line: ``users=N seconds=… users_per_s=… peak_rss_mb=…`` for the largest N (with
``--workers``: and ``dask_users_per_s_<N>=…`` per worker count and ``dask_speedup_2=…``, the
2-worker rate over the 1-worker rate).
"""

from __future__ import annotations

import argparse
import importlib
import os
import resource
import secrets
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from features import distributed
from features.engine import DEFAULT_CHUNK_USERS
from features.snapshots.materialize import materialize
from hearth.ledger import CURRENT_NOTICE_VERSION
from hearth.migrate import migrate

BASE_URL = os.environ.get("HEARTH_DATABASE_URL", "postgresql://hearth:hearth@127.0.0.1:5432/hearth")
AS_OF = datetime(2026, 9, 1, tzinfo=UTC)
DAYS = 90
ZONES = ["Asia/Shanghai", "Europe/Berlin", "America/New_York", "Asia/Kolkata", "UTC"]
CELLS = ["wtw3sj", "wtw3sm", "wtw3sq", "wtw3sr", "wtw3e8", "wtw3ex", "wtw37z", "wtw3dp",
         "wtw3g0", "wtw3u2", "wtw6h5", "wtw2fz"]  # fmt: skip

# (signal, device suffix, local-ish hours of the day with a reading, value expression)
# ``s`` is the user's stability in [0, 1): unstable users jitter more and drain batteries.
NUMERIC = [
    ("battery_pct", "phone", [2, 6, 10, 14, 18, 21],
     "greatest(1, 95 - h * 3.5 - (1 - s) * random() * 40)"),
    ("charging", "phone", [7, 23], "CASE WHEN h = 23 THEN 1 ELSE 0 END"),
    ("uptime_s", "phone", [12], "d * 86400 + 3600"),
    ("online", "router", [0, 12], "CASE WHEN random() < 0.02 * (1 - s) THEN 0 ELSE 1 END"),
    ("uptime_s", "router", [6], "d * 86400"),
    ("rssi_dbm", "router", [18], "-50 - random() * 20"),
    ("power_w", "plug", [8, 13, 19], "random() * 200 * (2 - s)"),
    ("energy_total_kwh", "plug", [9, 21], "100 + d * 2 + h / 24.0 * 2 + (1 - s) * random()"),
    ("contact_open", "door", [7, 10, 17, 21], "CASE WHEN h IN (7, 17) THEN 1 ELSE 0 END"),
    ("occupancy", "motion", [6, 11, 20], "1"),
    ("setpoint_c", "thermo", [5], "20 + round(((1 - s) * random() * 4)::numeric, 1)"),
    ("temperature_c", "thermo", [15], "19 + random() * 3"),
]  # fmt: skip
CATEGORICAL = [
    ("geohash", "phone", [1, 9, 14, 20]),
    ("net_type", "phone", [10, 22]),
]
DEVICES = {"phone": "phone", "router": "router", "plug": "plug", "door": "contact",
           "motion": "motion", "thermo": "thermostat"}  # fmt: skip


def _with_db(url: str, name: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path=f"/{name}"))


def synthesise(conn: psycopg.Connection, n_users: int) -> int:
    """Users, devices, consent and hourly rollups; returns rollup rows written."""
    start = AS_OF - timedelta(days=DAYS)
    conn.execute(
        """CREATE TEMP TABLE bench_users AS
           SELECT format('u%%s', lpad(i::text, 6, '0')) AS user_id, i,
                  (%(zones)s::text[])[1 + i %% %(nz)s] AS tz,
                  ((i * 7919) %% 1000) / 1000.0 AS s
             FROM generate_series(0, %(n)s - 1) i""",
        {"zones": ZONES, "nz": len(ZONES), "n": n_users},
    )
    conn.execute("INSERT INTO users (user_id, tz) SELECT user_id, tz FROM bench_users")
    for suffix, kind in DEVICES.items():
        conn.execute(
            """INSERT INTO devices (device_id, user_id, kind, format, external_id)
               SELECT user_id || '-' || %(sfx)s, user_id, %(kind)s, 'hearth',
                      user_id || '-' || %(sfx)s FROM bench_users""",
            {"sfx": suffix, "kind": kind},
        )
    conn.execute(
        """INSERT INTO consent_events (user_id, purpose, category, notice_version, action, at)
           SELECT user_id, 'credit_scoring', c, %s, 'grant', %s
             FROM bench_users, unnest(ARRAY['location','connectivity','device_health','energy',
                                            'presence','climate','usage']) c""",
        (CURRENT_NOTICE_VERSION, start - timedelta(days=1)),
    )
    rows = 0
    # Bulk load without the primary keys, then build them once (much faster than per row).
    for table in ("rollup_numeric_hourly", "rollup_categorical_hourly"):
        conn.execute(f"ALTER TABLE {table} DROP CONSTRAINT {table}_pkey")
    for signal, dev, hours, expr in NUMERIC:
        params = {"dev": dev, "sig": signal, "start": start, "days": DAYS, "hours": hours}
        params["as_of"] = AS_OF
        cur = conn.execute(
            f"""INSERT INTO rollup_numeric_hourly
                SELECT b, user_id || '-' || %(dev)s, user_id, %(sig)s, 1, v, v * v, v, v, v, v,
                       b + off, b + off, b + off + INTERVAL '2 minutes'
                  FROM (SELECT u.user_id, %(start)s::timestamptz + d * INTERVAL '1 day'
                               + (h + (random() * (1 - u.s))::int) * INTERVAL '1 hour'
                               AS b,
                               ({expr})::float8 AS v,
                               (random() * 3000)::int * INTERVAL '1 second' AS off
                          FROM bench_users u, generate_series(0, %(days)s - 1) d,
                               unnest(%(hours)s::int[]) h) x
                 WHERE b < %(as_of)s""",
            {
                "dev": dev,
                "sig": signal,
                "start": start,
                "days": DAYS,
                "hours": hours,
                "as_of": AS_OF,
            },
        )
        rows += cur.rowcount
    for signal, dev, hours in CATEGORICAL:
        value = (
            f"(ARRAY[{', '.join(repr(c) for c in CELLS)}])"
            f"[1 + CASE WHEN h IN (1, 20) OR random() < u.s THEN u.i %% {len(CELLS)}"
            f" ELSE (random() * {len(CELLS) - 1})::int END]"
            if signal == "geohash"
            else "CASE WHEN h = 22 THEN 'wifi' ELSE 'mobile' END"
        )
        cur = conn.execute(
            f"""INSERT INTO rollup_categorical_hourly
                SELECT %(start)s::timestamptz + d * INTERVAL '1 day' + h * INTERVAL '1 hour',
                       u.user_id || '-' || %(dev)s, u.user_id, %(sig)s, {value}, 1.0, 1,
                       %(start)s::timestamptz + d * INTERVAL '1 day' + h * INTERVAL '1 hour'
                         + INTERVAL '5 minutes'
                  FROM bench_users u, generate_series(0, %(days)s - 1) d,
                       unnest(%(hours)s::int[]) h""",
            {"dev": dev, "sig": signal, "start": start, "days": DAYS, "hours": hours},
        )
        rows += cur.rowcount
    for table, include in (
        ("rollup_numeric_hourly", "n, sum, min, max, first, last, first_time, last_time"),
        ("rollup_categorical_hourly", "value, share, n"),
    ):  # the same keys as migrations 0030 + 0031
        conn.execute(
            f"ALTER TABLE {table} ADD PRIMARY KEY (device_id, signal, bucket, user_id)"
            f" INCLUDE ({include}, max_ingested_at)"
        )
    conn.execute(
        "INSERT INTO rollup_watermarks (name, watermark) VALUES ('hourly', now())"
        " ON CONFLICT (name) DO UPDATE SET watermark = excluded.watermark"
    )
    conn.execute("VACUUM ANALYZE")  # visibility map: index-only scans (autovacuum in production)
    return rows


def drop_database(name: str) -> None:
    """Drop the throwaway database; an autovacuum worker may hold it for a moment."""
    deadline = time.monotonic() + 30
    with psycopg.connect(BASE_URL, autocommit=True) as admin:
        while True:
            try:
                admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
                return
            except psycopg.errors.InsufficientPrivilege:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=10_000, help="largest user count")
    parser.add_argument("--chunk-size", type=int, default=DEFAULT_CHUNK_USERS)
    parser.add_argument("--keep", action="store_true", help="do not drop the database")
    parser.add_argument(
        "--workers", help="also materialise the largest N on local Dask clusters, e.g. 1,2"
    )
    args = parser.parse_args()
    dask_figures: dict[str, str] = {}
    steps = sorted({max(1, args.users // 4), max(1, args.users // 2), args.users})

    name = f"hearth_bench_{secrets.token_hex(4)}"
    with psycopg.connect(BASE_URL, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}" TEMPLATE hearth_template')
    url = _with_db(BASE_URL, name)
    results = []
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            migrate(conn)
            t0 = time.perf_counter()
            rows = synthesise(conn, args.users)
            print(f"synthesised {rows:,} rollup rows for {args.users:,} users x {DAYS} days "
                  f"in {time.perf_counter() - t0:.1f}s", flush=True)  # fmt: skip
            users = [str(r[0]) for r in conn.execute("SELECT user_id FROM users ORDER BY 1")]
            for n in steps:
                result = materialize(
                    conn, AS_OF, users=users[:n], chunk_size=args.chunk_size,
                    force=True, progress=False, database_url=url,
                )  # fmt: skip
                results.append((n, result.seconds, result.timings.sql_s, result.timings.python_s))
                print(f"  {n:>6} users: {result.seconds:6.1f}s", flush=True)
            if args.workers:
                counts = [int(w) for w in args.workers.split(",")]
                dask_figures = dask_runs(conn, url, users, counts, args.chunk_size)
    finally:
        if not args.keep:
            drop_database(name)
    rss = peak_rss_mb()
    print()
    print(f"{'users':>8} {'seconds':>8} {'users/s':>9} {'sql_s':>7} {'python_s':>9}")
    for n, secs, sql_s, py_s in results:
        print(f"{n:>8} {secs:>8.1f} {n / secs:>9.0f} {sql_s:>7.1f} {py_s:>9.1f}")
    print(f"peak RSS {rss:.0f} MB")
    n, secs, _, _ = results[-1]
    extra = "".join(f" {k}={v}" for k, v in dask_figures.items())
    print(f"users={n} seconds={secs:.1f} users_per_s={n / secs:.0f} peak_rss_mb={rss:.0f}{extra}")
    return 0


def dask_runs(
    conn: psycopg.Connection, url: str, users: list[str], counts: list[int], chunk_size: int
) -> dict[str, str]:
    """Materialise ``users`` on a local Dask cluster of each worker count (issue 16 §1): the
    clock runs from planning to the last chunk written, not the cluster's start-up nor the
    workers' imports. Prints
    users/s overall and per worker; returns the last line's figures."""
    env = {"HEARTH_DATABASE_URL": url}
    rates: dict[int, float] = {}
    print(f"{'dask workers':>12} {'seconds':>8} {'users/s':>9} {'per worker':>11}")
    for n_workers in counts:
        with distributed.dask_client(distributed.ClusterOptions(workers=n_workers), env) as c:
            c.run(importlib.import_module, "features.distributed.tasks")  # imports: not timed
            runner = distributed.chunk_runner(
                c, distributed.DatabaseIdentity.of(conn), progress=False
            )
            result = materialize(conn, AS_OF, users=users, chunk_size=chunk_size, force=True,
                                 progress=False, chunk_runner=runner)  # fmt: skip
        rates[n_workers] = len(users) / result.seconds
        print(
            f"{n_workers:>12} {result.seconds:>8.1f} {rates[n_workers]:>9.0f} "
            f"{rates[n_workers] / n_workers:>11.0f}",
            flush=True,
        )
    figures = {f"dask_users_per_s_{n}": f"{r:.0f}" for n, r in rates.items()}
    if 1 in rates and 2 in rates:
        figures["dask_speedup_2"] = f"{rates[2] / rates[1]:.2f}"
        print(f"2-worker speed-up over 1 worker: {rates[2] / rates[1]:.2f}x (on 2 cores with the "
              "database beside them, expect well under 2x)")  # fmt: skip
    return figures


if __name__ == "__main__":
    raise SystemExit(main())
