"""Benchmark: a training set through the feature service, on the Feast anchor's workload.

10,000 users x 90 daily snapshots, materialised by the backfill (``features materialize --from
--to``'s code, from rollups this bench synthesises with bench/features.py's ``synthesise``);
100,000 random (user, t) rows inside those 90 days; retrieved through ``python -m features
serve`` (a subprocess) by the Python client (another one) into a pandas DataFrame in ``mode
snapshot`` (the latest snapshot at most a day before t: Feast's TTL semantics), once with 24
selected features and once with all of them; then ``mode exact`` on 10,000 rows (vectors
computed at each t). Feast 0.67's ``get_historical_features`` (duckdb offline store) answers
the same 100,000 rows x 24 features in 1.8-2.1 s at ~480 MB on this kind of machine.

    .venv/bin/python bench/historical.py                    # 10,000 users x 90 days
    .venv/bin/python bench/historical.py --users 300 --days 5 --rows 5000 --exact-rows 200

The database (``hearth_bench_hist_<users>x<days>``) is kept and reused: its snapshots take a
while to backfill (resumable: an interrupted build continues), retrieval is what is measured.
``--fresh`` rebuilds it; ``--build-only`` builds it and stops (before a quiet-machine run).
Each retrieval runs ``--repeat`` times after a warm-up; the best time counts. Peak RSS: the
service sampled from outside (``RssSampler``), the client its own ``ru_maxrss``. Targets (issue
15): 24 features <= 1 s, all <= 2 s, <= 500 MB each for service and client. The table, targets,
load average and last line come from bench/_common.py (``Bench``; the load at start is taken
before the database is built or reused). Last line: ``historical_24_s=… historical_all_s=…
exact_rows_s=… service_rss_mb=… client_rss_mb=… load_start=… load_end=…`` (and the harness's
warning token when the load at start was above 1.5).
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import json
import os
import random
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import BASE_URL, Bench, RssSampler, drop_database, peak_rss_mb, with_db
from features.catalogue import DEFINITIONS, FEATURE_SET_VERSION
from features.snapshots.materialize import as_of_range, materialize_chunk, prepare
from hearth.migrate import migrate

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "bench-historical-token-0123456789"
FEAST_S = (1.8, 2.1)  # the anchor: Feast 0.67, duckdb offline store, same workload
TARGET_24_S = 1.0
TARGET_ALL_S = 2.0
TARGET_RSS_MB = 500.0
SELECTED = [d.name for d in DEFINITIONS[:24]]


def _bench_features() -> Any:
    """bench/features.py (the synthesiser of rollups), loaded by path: its module name would
    be the ``features`` package's."""
    spec = importlib.util.spec_from_file_location("bench_features", ROOT / "bench" / "features.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _as_ofs(days: int) -> list[datetime]:
    last = _bench_features().AS_OF
    return as_of_range(last - timedelta(days=days - 1), last, timedelta(days=1))


def _chunk(url: str, users: list[str], as_ofs: list[datetime]) -> int:
    connect = functools.partial(psycopg.connect, url, autocommit=True)
    return materialize_chunk(connect, users, as_ofs).written


def ensure_database(users: int, days: int, fresh: bool, workers: int, chunk: int) -> str:
    """The database with ``users`` x ``days`` snapshots of the current feature set: built,
    resumed (the backfill skips what is stored) or reused as it is."""
    name = f"hearth_bench_hist_{users}x{days}"
    url = with_db(BASE_URL, name)
    with psycopg.connect(BASE_URL, autocommit=True) as admin:
        exists = admin.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
    if exists and fresh:
        drop_database(name)
        exists = None
    if not exists:
        with psycopg.connect(BASE_URL, autocommit=True) as admin:
            admin.execute(f'CREATE DATABASE "{name}" TEMPLATE hearth_template')
    as_ofs = _as_ofs(days)
    with psycopg.connect(url, autocommit=True) as conn:
        migrate(conn)
        have_users = conn.execute("SELECT count(*) FROM users").fetchone()
        if not have_users or not have_users[0]:
            t0 = time.perf_counter()
            bench = _bench_features()
            rows = bench.synthesise(conn, url, users, 0.0, bench.DAYS + days - 1)
            print(f"synthesised {rows:,} raw readings and their rollups in "
                  f"{time.perf_counter() - t0:.0f}s",
                  file=sys.stderr, flush=True)  # fmt: skip
        prepare(conn, refresh=False)
        stored = conn.execute(
            "SELECT count(*) FROM feature_snapshots WHERE feature_set_version = %s",
            (FEATURE_SET_VERSION,),
        ).fetchone()
        ids = [str(r[0]) for r in conn.execute("SELECT user_id FROM users ORDER BY 1")]
    if stored and stored[0] == users * days:
        return url
    t0 = time.perf_counter()
    parts = [ids[i : i + chunk] for i in range(0, len(ids), chunk)]
    written = 0
    with ProcessPoolExecutor(max_workers=workers) as pool:
        for n in pool.map(_chunk, [url] * len(parts), parts, [as_ofs] * len(parts)):
            written += n
            print(f"\rbackfill: {written:,} snapshots written in {time.perf_counter() - t0:.0f}s",
                  end="", file=sys.stderr, flush=True)  # fmt: skip
    print(file=sys.stderr)
    return url


# --- the client (a process of its own, so that its peak RSS is its own) ------------------------


def child_client(url: str, users: int, days: int, rows: int, exact_rows: int, repeat: int) -> None:
    import pandas as pd

    from features.client import HearthClient

    rng = random.Random(15)
    as_ofs = _as_ofs(days)
    first = as_ofs[0]
    span_s = (as_ofs[-1] - first).total_seconds() + 86_400  # up to a day after the last

    def frame(n: int) -> pd.DataFrame:
        ids = [f"u{rng.randrange(users):06d}" for _ in range(n)]
        times = [first + timedelta(seconds=rng.random() * span_s) for _ in range(n)]
        return pd.DataFrame({"user_id": ids, "as_of": pd.to_datetime(times, utc=True)})

    training, exact = frame(rows), frame(exact_rows)
    client = HearthClient(url, TOKEN, timeout_s=600)
    client.historical(training.head(1000), mode="snapshot", features=SELECTED)  # warm-up
    out: dict[str, Any] = {}
    for label, features in (("24", SELECTED), ("all", None)):
        best = float("inf")
        for _ in range(repeat):
            t0 = time.perf_counter()
            result = client.historical(training, mode="snapshot", features=features)
            best = min(best, time.perf_counter() - t0)
        assert len(result) == rows, "a different number of rows came back"
        out[f"historical_{label}_s"] = best
        out[f"columns_{label}"] = len(result.columns)
        out[f"reasons_{label}"] = int(result["reason"].notna().sum())
        del result
    t0 = time.perf_counter()
    result = client.historical(exact, mode="exact", features=SELECTED)
    out["exact_s"] = time.perf_counter() - t0
    out["exact_computed"] = int((result["source"] == "computed").sum())
    out["client_rss_mb"] = peak_rss_mb()
    print(json.dumps(out))


# --- orchestration -----------------------------------------------------------------------------


def _serve(db_url: str, port: int) -> subprocess.Popen[bytes]:
    from tests.support.service import tokens_env

    env = {**os.environ, "HEARTH_DATABASE_URL": db_url,
           "HEARTH_API_TOKENS": tokens_env({TOKEN: ["features:read"]})}  # fmt: skip
    return subprocess.Popen(
        [sys.executable, "-m", "features", "serve", "--host", "127.0.0.1", "--port", str(port)],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
    )  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=10_000)
    parser.add_argument("--days", type=int, default=90, help="daily snapshots per user")
    parser.add_argument("--rows", type=int, default=100_000, help="training rows")
    parser.add_argument("--exact-rows", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=2, help="runs per retrieval (best counts)")
    parser.add_argument("--workers", type=int, default=2, help="backfill processes")
    parser.add_argument("--chunk-size", type=int, default=250)
    parser.add_argument("--fresh", action="store_true", help="rebuild the database")
    parser.add_argument("--build-only", action="store_true", help="build the database, no run")
    args = parser.parse_args()

    bench = Bench()
    db_url = ensure_database(args.users, args.days, args.fresh, args.workers, args.chunk_size)
    if args.build_only:
        return 0
    from tests.conftest import free_port
    from tests.support.service import wait_ready

    port = free_port()
    service = _serve(db_url, port)
    url = f"http://127.0.0.1:{port}"
    sampler: RssSampler | None = None
    try:
        wait_ready(url, deadline_s=60)
        sampler = RssSampler([service.pid])
        sampler.start()
        child = subprocess.run(
            [sys.executable, __file__, "_client", url, str(args.users), str(args.days),
             str(args.rows), str(args.exact_rows), str(args.repeat)],
            cwd=ROOT, capture_output=True, text=True, check=False,
        )  # fmt: skip
    finally:
        service_mb = sampler.stop() if sampler is not None else float("nan")
        service.terminate()
        try:
            service.wait(timeout=30)
        except subprocess.TimeoutExpired:  # a request still computing: the figures come first
            service.kill()
            service.wait()
    if child.returncode != 0:
        print(child.stderr, file=sys.stderr)
        bench.finish(error="client_failed", returncode=child.returncode)
        return 1
    r = json.loads(child.stdout.strip().splitlines()[-1])
    report(bench, args, r, service_mb)
    return 0


def report(bench: Bench, args: argparse.Namespace, r: dict[str, Any], service_mb: float) -> None:
    client_mb = float(r["client_rss_mb"])
    rows, exact_rows = args.rows, args.exact_rows
    feast = sum(FEAST_S) / 2
    print(f"\n{args.users:,} users x {args.days} daily snapshots; {rows:,} training rows "
          f"(mode snapshot, max_age 1 day); best of {args.repeat}")  # fmt: skip
    table: list[list[str]] = []
    for label, key, target in (
        ("24 features", "historical_24_s", TARGET_24_S),
        (f"all {len(DEFINITIONS)} features", "historical_all_s", TARGET_ALL_S),
    ):
        s = float(r[key])
        table.append([label, f"{s:.2f}", f"{rows / s:,.0f}", f"{feast / s:.2f}"])
        bench.target(f"{label}, {rows:,} rows", s, "<=", target, "s")
    exact_rate = exact_rows / float(r["exact_s"])
    table.append([f"mode exact, {exact_rows:,} rows", f"{float(r['exact_s']):.2f}",
                  f"{exact_rate:,.0f}", ""])  # fmt: skip
    bench.table(["run", "seconds", "rows/s", "x Feast"], table)
    print(f"computed by the engine: {r['exact_computed']:,} of {exact_rows:,} exact rows; "
          f"training rows with a reason: {r['reasons_24']} / {r['reasons_all']}")  # fmt: skip
    print(f"peak RSS: service {service_mb:.0f} MB, client {client_mb:.0f} MB")
    print(f"Feast 0.67 on the same workload (24 features): {FEAST_S[0]}-{FEAST_S[1]} s, ~480 MB")
    bench.target("service peak RSS", service_mb, "<=", TARGET_RSS_MB, "MB")
    bench.target("client peak RSS", client_mb, "<=", TARGET_RSS_MB, "MB")
    bench.finish(
        historical_24_s=f"{float(r['historical_24_s']):.2f}",
        historical_all_s=f"{float(r['historical_all_s']):.2f}",
        exact_rows_s=f"{exact_rate:.0f}",
        service_rss_mb=f"{service_mb:.0f}",
        client_rss_mb=f"{client_mb:.0f}",
    )


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_client":
        child_client(sys.argv[2], *(int(a) for a in sys.argv[3:8]))
    else:
        raise SystemExit(main())
