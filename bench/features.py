"""Benchmark: materialise every feature for N users x 90 days, on synthetic data and on a
simulated fleet ingested through the collector, side by side (issue 15 §1, §4).

Synthetic: a throwaway database from ``hearth_template``, with users, devices, consent and
~40 raw readings per user per day written server-side (one INSERT … SELECT over
generate_series per signal: nothing crosses the wire), 1-3 readings per hourly bucket and a
share of readings (``--late-share``) ingested after T; the rollup job then builds the rollups,
so buckets hold n > 1 readings and the late ones are recomputed from raw at T. Times
``features.snapshots.materialize`` for growing user counts, and the engine alone at T counting
ingest times (late buckets recomputed) against counting event times (none late).

Real fleet: bench/fleet.py's fleet (built once through ``device_sim run`` and a collector,
then reused; ``--fleet-households`` x 90 days), its rollups rebuilt on a copy; materialise
every user at ``as_of = now``, and one on-demand batch (``compute_vectors``, one engine pass).

    .venv/bin/python bench/features.py                 # 2,500 / 5,000 / 10,000 users + fleet
    .venv/bin/python bench/features.py --users 500 --no-fleet   # quick run while developing
    .venv/bin/python bench/features.py --backfill-days 90   # and a 90-day backfill
    .venv/bin/python bench/features.py --workers 1,2   # and on local Dask clusters of 1 and 2

Last line: ``users=N seconds=… users_per_s=… fleet_users_per_s=… online_users_per_s=…
late_ratio=… peak_rss_mb=… load_start=… load_end=…`` (N: the largest synthetic count); with
``--backfill-days`` also ``backfill_s=… backfill_ratio=…`` (see :func:`run_backfill`); with
``--workers`` also ``dask_users_per_s_<N>=…`` per worker count and ``dask_speedup_2=…`` (the
2-worker rate over the 1-worker rate, :func:`dask_runs`).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import secrets
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import BASE_URL, Bench, RssSampler, drop_database, peak_rss_mb, with_db
from bench.fleet import DEFAULT_DAYS, DEFAULT_HOUSEHOLDS, clone_fleet, ensure_fleet
from features import distributed
from features.engine import (
    DEFAULT_CHUNK_USERS,
    DEFAULT_SPAN_USERS,
    Knowledge,
    compute_vectors,
    iter_chunk_results,
)
from features.rollups import refresh_rollups
from features.snapshots.materialize import materialize
from hearth.ledger import CURRENT_NOTICE_VERSION
from hearth.migrate import migrate

ROOT = Path(__file__).resolve().parent.parent
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


def synthesise(
    conn: psycopg.Connection, url: str, n_users: int, late_share: float, days: int = DAYS
) -> int:
    """Users, devices, consent and ``days`` of raw readings, then the rollups; returns readings
    written."""
    start = AS_OF - timedelta(days=days)
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
    # Bulk load without the natural keys, then build them once (much faster than per row).
    for table in ("numeric_readings", "categorical_readings"):
        conn.execute(f"DROP INDEX {table}_key")
    # Per (user, day, hour of a signal): 1 reading, 2 (25 %) or 3 (8 %), minutes apart; each
    # ingested two minutes after it happened, or (``late``) a day after T.
    readings = """
        SELECT u.*, b, b + off + k * INTERVAL '6 minutes' AS t,
               CASE WHEN random() < %(late)s THEN %(as_of)s::timestamptz + INTERVAL '1 day'
                    ELSE b + off + k * INTERVAL '6 minutes' + INTERVAL '2 minutes' END AS ing
          FROM (SELECT u.user_id, u.i, u.s, d, h,
                       %(start)s::timestamptz + d * INTERVAL '1 day'
                       + (h + (random() * (1 - u.s))::int) * INTERVAL '1 hour' AS b,
                       (random() * 2400)::int * INTERVAL '1 second' AS off,
                       1 + (random() < 0.25)::int + (random() < 0.08)::int AS cnt
                  FROM bench_users u, generate_series(0, %(days)s - 1) d,
                       unnest(%(hours)s::int[]) h) u,
               generate_series(0, u.cnt - 1) k
    """
    rows = 0
    for signal, dev, hours, expr in NUMERIC:
        params = {"dev": dev, "sig": signal, "start": start, "days": days, "hours": hours,
                  "as_of": AS_OF, "late": late_share}  # fmt: skip
        cur = conn.execute(
            f"""INSERT INTO numeric_readings (time, device_id, user_id, signal, value,
                                              ingested_at)
                SELECT t, user_id || '-' || %(dev)s, user_id, %(sig)s, ({expr})::float8, ing
                  FROM ({readings}) x WHERE t < %(as_of)s""",
            params,
        )
        rows += cur.rowcount
    for signal, dev, hours in CATEGORICAL:
        value = (
            f"(ARRAY[{', '.join(repr(c) for c in CELLS)}])"
            f"[1 + CASE WHEN h IN (1, 20) OR random() < x.s THEN x.i %% {len(CELLS)}"
            f" ELSE (random() * {len(CELLS) - 1})::int END]"
            if signal == "geohash"
            else "CASE WHEN h = 22 THEN 'wifi' ELSE 'mobile' END"
        )
        cur = conn.execute(
            f"""INSERT INTO categorical_readings (time, device_id, user_id, signal, value,
                                                  ingested_at)
                SELECT t, user_id || '-' || %(dev)s, user_id, %(sig)s, {value}, ing
                  FROM ({readings}) x WHERE t < %(as_of)s""",
            {"dev": dev, "sig": signal, "start": start, "days": days, "hours": hours,
             "as_of": AS_OF, "late": late_share},
        )  # fmt: skip
        rows += cur.rowcount
    for table in ("numeric_readings", "categorical_readings"):  # as in migration 0001
        conn.execute(f"CREATE UNIQUE INDEX {table}_key ON {table} (device_id, signal, time)")
    conn.execute("VACUUM ANALYZE")
    refresh_rollups(conn, full=True, database_url=url, jobs=2)
    conn.execute("VACUUM ANALYZE")  # visibility map and statistics (autovacuum in production)
    return rows


def engine_pass(url: str, users: Sequence[str], as_of: datetime, knowledge: Knowledge) -> float:
    """Seconds to compute (not store) every feature of ``users`` at ``as_of``, with loader
    connections as materialise uses them."""
    with contextlib.ExitStack() as stack:
        conn = stack.enter_context(psycopg.connect(url, autocommit=True))
        loaders = [stack.enter_context(psycopg.connect(url, autocommit=True)) for _ in range(2)]
        for c in (conn, *loaders):
            c.execute("SET jit = off")
        t0 = time.perf_counter()
        for _ in iter_chunk_results(conn, users, as_of, loaders=loaders, knowledge=knowledge):
            pass
        return time.perf_counter() - t0


BACKFILL_TARGET_RATIO = 10.0  # issue 15 §2: 90 daily as_ofs in at most 10x one as_of
BACKFILL_TARGET_RSS_MB = 1024.0


def run_backfill(
    url: str, users: list[str], days: int, chunk_size: int | None, processes: int
) -> tuple[float, float]:
    """Backfill ``days`` daily snapshots (ending at AS_OF) of ``users`` on a fresh table as an
    operator runs it, ``python -m features materialize --from … --to … --processes N`` in a
    process of its own: (its ``seconds=``, the peak RSS in MB of that process and its workers,
    sampled every 20 ms). Its own process, because this one still holds what the single-date
    runs before it allocated (~600 MB that is not the backfill's)."""
    import subprocess
    import tempfile

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("TRUNCATE feature_snapshots")
    first = AS_OF - timedelta(days=days - 1)
    env = dict(os.environ, HEARTH_DATABASE_URL=url)
    with tempfile.TemporaryDirectory() as tmp:
        listing, out, err = (Path(tmp) / name for name in ("users.txt", "out.txt", "err.txt"))
        listing.write_text("\n".join(users))
        command = [sys.executable, "-m", "features", "materialize", "--from", first.isoformat(),
                   "--to", AS_OF.isoformat(), "--every", "1d", "--users-file", str(listing),
                   "--processes", str(processes), "--force", "--no-progress"]  # fmt: skip
        if chunk_size is not None:  # else the command's own default (DEFAULT_SPAN_USERS)
            command += ["--chunk-size", str(chunk_size)]
        with out.open("w") as stdout, err.open("w") as stderr:
            run = subprocess.Popen(command, cwd=ROOT, env=env, stdout=stdout, stderr=stderr)
            sampler = RssSampler([run.pid], tree=True)
            sampler.start()
            run.wait()
            peak_mb = sampler.stop()
        if run.returncode != 0:
            raise SystemExit(f"the backfill command failed ({run.returncode}): "
                             f"{err.read_text().strip()[-2000:]}")  # fmt: skip
        said = dict(f.split("=", 1) for f in out.read_text().split() if "=" in f)
    if int(said["written"]) != len(users) * days:
        raise SystemExit(f"the backfill wrote {said['written']} snapshots, not {len(users) * days}")
    return float(said["seconds"]), peak_mb


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


def synthetic_run(
    args: argparse.Namespace,
) -> tuple[list[tuple[int, float, float, float]], float, tuple[float, float] | None]:
    """Materialise growing user counts of synthetic data; (n, seconds, sql_s, python_s) each,
    the late ratio (engine at T counting ingest times / counting event times), and with
    ``--backfill-days`` the backfill's (seconds, peak RSS MB); with ``--workers`` the Dask
    figures land in ``args.dask_figures``."""
    steps = sorted({max(1, args.users // 4), max(1, args.users // 2), args.users})
    name = f"hearth_bench_{secrets.token_hex(4)}"
    with psycopg.connect(BASE_URL, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}" TEMPLATE hearth_template')
    url = with_db(BASE_URL, name)
    results = []
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            migrate(conn)
            t0 = time.perf_counter()
            days = DAYS + max(args.backfill_days - 1, 0)  # every backfilled as_of: 90 days
            rows = synthesise(conn, url, args.users, args.late_share, days)
            took = time.perf_counter() - t0
            print(f"synthesised {rows:,} raw readings and their rollups for {args.users:,} "
                  f"users x {days} days in {took:.1f}s", flush=True)  # fmt: skip
            users = [str(r[0]) for r in conn.execute("SELECT user_id FROM users ORDER BY 1")]
            for n in steps:
                result = materialize(
                    conn, AS_OF, users=users[:n], chunk_size=args.chunk_size,
                    force=True, progress=False, database_url=url,
                )  # fmt: skip
                results.append((n, result.seconds, result.timings.sql_s, result.timings.python_s))
                print(f"  {n:>6} users: {result.seconds:6.1f}s", flush=True)
            backfilled = None
            if args.workers:
                counts = [int(w) for w in args.workers.split(",")]
                args.dask_figures = dask_runs(conn, url, users, counts, args.chunk_size)
            if args.backfill_days:
                backfilled = run_backfill(url, users[: steps[-1]], args.backfill_days,
                                          args.backfill_chunk_size,
                                          args.backfill_processes)  # fmt: skip
        some = users[: min(len(users), 2_500)]
        event_s = engine_pass(url, some, AS_OF, Knowledge.EVENT)
        ingested_s = engine_pass(url, some, AS_OF, Knowledge.INGESTED)
        print(
            f"  engine, {len(some)} users: {event_s:.1f}s none late (event times), "
            f"{ingested_s:.1f}s with late buckets recomputed (ingest times)",
            flush=True,
        )
    finally:
        if not args.keep:
            drop_database(name)
    return results, ingested_s / event_s, backfilled


def fleet_run(args: argparse.Namespace) -> dict[str, float]:
    """The collector-ingested fleet: materialise every user at now, and one online batch."""
    fleet = ensure_fleet(args.fleet_households, args.fleet_days)
    out: dict[str, float] = {"households": fleet.households, "raw_rows": fleet.raw_rows}
    with clone_fleet(fleet) as url, psycopg.connect(url, autocommit=True) as conn:
        refresh_rollups(conn, full=True, database_url=url, jobs=2)
        conn.execute("VACUUM ANALYZE")
        users = [str(r[0]) for r in conn.execute("SELECT user_id FROM users ORDER BY 1")]
        now = datetime.now(UTC)
        result = materialize(conn, now, users=users, force=True, progress=False,
                             database_url=url)  # fmt: skip
        out["users"] = len(users)
        out["materialize_s"] = result.seconds
        batch = users[: min(len(users), 500)]
        # As the service computes a batch of more than one chunk: with a second pool
        # connection reading the next chunk (features.service.resolve.engine_gateway).
        with psycopg.connect(url, autocommit=True) as loader:
            t0 = time.perf_counter()
            vectors = compute_vectors(conn, batch, now, loaders=[loader])
            out["online_s"] = time.perf_counter() - t0
        out["online_users"] = len(vectors)
        past = fleet.end - timedelta(days=10)  # replayed: every bucket ingested after it
        out["replayed_s"] = engine_pass(url, users, past, Knowledge.INGESTED)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=10_000, help="largest synthetic user count")
    parser.add_argument("--chunk-size", type=int, default=DEFAULT_CHUNK_USERS)
    parser.add_argument("--late-share", type=float, default=0.05,
                        help="share of synthetic readings ingested after T")  # fmt: skip
    parser.add_argument("--fleet-households", type=int, default=DEFAULT_HOUSEHOLDS)
    parser.add_argument("--fleet-days", type=int, default=DEFAULT_DAYS)
    parser.add_argument("--no-fleet", action="store_true", help="synthetic data only")
    parser.add_argument("--keep", action="store_true", help="do not drop the database")
    parser.add_argument("--backfill-chunk-size", type=int,
                        help="the backfill's users per chunk (default: the command's, "
                        f"{DEFAULT_SPAN_USERS})")  # fmt: skip
    parser.add_argument("--backfill-processes", type=int, default=2,
                        help="the backfill's worker processes (a core each)")  # fmt: skip
    parser.add_argument("--backfill-days", type=int, default=0,
                        help="also backfill this many daily as_ofs of the largest user count "
                        "(its ratio to the single-date run is the backfill target)")  # fmt: skip
    parser.add_argument(
        "--workers", help="also materialise the largest N on local Dask clusters, e.g. 1,2"
    )
    args = parser.parse_args()
    args.dask_figures = {}
    fleet = None if args.no_fleet else ensure_fleet(args.fleet_households, args.fleet_days)
    targets = Bench()  # building a fleet is not measured
    results, late_ratio, backfilled = synthetic_run(args)
    real = fleet_run(args) if fleet is not None else {}
    rss = peak_rss_mb()
    print()
    print(f"{'data':24} {'users':>8} {'seconds':>8} {'users/s':>9} {'sql_s':>7} {'python_s':>9}")
    for n, secs, sql_s, py_s in results:
        print(f"{'synthetic (rollups+raw)':24} {n:>8} {secs:>8.1f} {n / secs:>9.0f} "
              f"{sql_s:>7.1f} {py_s:>9.1f}")  # fmt: skip
    n, secs, _, _ = results[-1]
    synthetic_rate = n / secs
    fleet_rate = online_rate = float("nan")
    if real:
        fleet_rate = real["users"] / real["materialize_s"]
        online_rate = real["online_users"] / real["online_s"]
        print(f"{'fleet, as_of now':24} {real['users']:>8.0f} {real['materialize_s']:>8.1f} "
              f"{fleet_rate:>9.0f}")  # fmt: skip
        print(f"{'fleet, online batch':24} {real['online_users']:>8.0f} {real['online_s']:>8.1f} "
              f"{online_rate:>9.0f}")  # fmt: skip
        print(f"{'fleet, replayed past T':24} {real['users']:>8.0f} {real['replayed_s']:>8.1f} "
              f"{real['users'] / real['replayed_s']:>9.0f}")  # fmt: skip
        print(
            f"fleet: {real['households']:.0f} households x {args.fleet_days} days, "
            f"{real['raw_rows']:,.0f} raw readings (bench/fleet.py)"
        )
    print(f"peak RSS {rss:.0f} MB")
    targets.target("synthetic users/s", synthetic_rate, ">=", 500, "users/s")
    if real:
        targets.target("fleet users/s at as_of now", fleet_rate, ">=", 500, "users/s")
        targets.target("fleet online batch", online_rate, ">=", 500, "users/s")
    targets.target("late buckets recomputed / none late", late_ratio, "<=", 3.0, "x")
    extra: dict[str, object] = {}
    if backfilled is not None:
        backfill_s, backfill_rss = backfilled
        ratio = backfill_s / secs
        print(f"backfill (materialize --from/--to) {n} users x {args.backfill_days} as_ofs "
              f"({args.backfill_processes} processes): {backfill_s:.1f}s, "
              f"{n * args.backfill_days / backfill_s:,.0f} snapshots/s")  # fmt: skip
        targets.target("backfill / one as_of", ratio, "<=", BACKFILL_TARGET_RATIO, "x")
        targets.target("backfill peak RSS", backfill_rss, "<=", BACKFILL_TARGET_RSS_MB, "MB")
        extra = {"backfill_s": f"{backfill_s:.1f}", "backfill_ratio": f"{ratio:.1f}"}
    targets.finish(
        users=n,
        seconds=f"{secs:.1f}",
        users_per_s=f"{synthetic_rate:.0f}",
        fleet_users_per_s=f"{fleet_rate:.0f}",
        online_users_per_s=f"{online_rate:.0f}",
        late_ratio=f"{late_ratio:.2f}",
        peak_rss_mb=f"{rss:.0f}",
        **extra,
        **args.dask_figures,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
