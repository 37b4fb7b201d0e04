"""Feature service benchmark: single-user GET latency/throughput vs a bare aiohttp handler, and
historical retrieval of 100,000 stored snapshots.

    .venv/bin/python bench/serve.py [--users 10000] [--rate 500] [--seconds 10]

A throwaway database (from template ``hearth_template``) gets N users with consent to every
category and one snapshot each of the real feature set (every definition of the catalogue,
random values and coverage, some nulls), written by the materialiser's own binary COPY
(``features.snapshots.store.write_snapshots``). The service runs as a subprocess; the load
generator is another process on loopback (aiohttp client): first a fixed offered load
(requests started on a fixed schedule, latency measured from the scheduled time so queueing
counts), then max throughput with a fixed number of concurrent connections. The same load runs
against a bare aiohttp handler returning a constant (the ceiling). Then the Python client reads
100,000 (user, as_of) rows of those snapshots into a DataFrame (Arrow) — stored vectors at one
as_of; the training-set workload, random times against daily snapshots, is
bench/historical.py; the service's peak RSS meanwhile is sampled by bench/_common.py's
``RssSampler``. Targets (issue 6): p99 <= 10 ms at 500 req/s, max throughput >= 50 % of the bare
handler, historical <= 5 s and <= 500 MB. The table, targets, load average and last line come
from bench/_common.py (``Bench``). Last line: ``p50_ms=… p99_ms=… rps=… ratio_vs_bare=…
historical_100k_s=… errors=… load_start=… load_end=…`` (and the harness's warning token when the
load at start was above 1.5).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench._common import (  # noqa: E402
    BASE_URL,
    Bench,
    RssSampler,
    offer_at_rate,
    scratch_database,
)

TOKEN = "bench-token-0123456789abcdef"
AS_OF = datetime(2026, 1, 1, tzinfo=UTC)
TARGET_P99_MS = 10.0
TARGET_RATIO = 0.5
TARGET_HISTORICAL_S = 5.0
TARGET_RSS_MB = 500.0


# --- child processes --------------------------------------------------------------------------


def child_serve(port: int) -> None:
    from features.service.app import run_service
    from hearth.settings import load_settings

    run_service(load_settings(), "127.0.0.1", port)


def child_bare(port: int) -> None:
    from aiohttp import web

    async def constant(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    app = web.Application()
    app.router.add_get("/v1/users/{user_id}/features", constant)
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)


async def _load(
    url: str, users: int, rate: float, seconds: float, workers: int
) -> dict[str, float]:
    import aiohttp

    headers = {"Authorization": f"Bearer {TOKEN}"}
    latencies: list[float] = []
    errors = 0
    connector = aiohttp.TCPConnector(limit=256)
    async with aiohttp.ClientSession(connector=connector, headers=headers) as session:

        async def one(scheduled: float) -> None:
            nonlocal errors
            user = f"b{random.randrange(users):06d}"
            async with session.get(f"{url}/v1/users/{user}/features") as resp:
                await resp.read()
                if resp.status != 200:
                    errors += 1
            latencies.append(time.perf_counter() - scheduled)

        for _ in range(50):  # warm-up: connections, prepared statements
            await one(time.perf_counter())
        latencies.clear()
        start = time.perf_counter()
        if rate > 0:
            await offer_at_rate(one, rate, int(rate * seconds))
        else:
            end = start + seconds

            async def worker() -> None:
                while time.perf_counter() < end:
                    await one(time.perf_counter())

            await asyncio.gather(*(worker() for _ in range(workers)))
        elapsed = time.perf_counter() - start
    latencies.sort()
    return {
        "n": len(latencies),
        "errors": errors,
        "rps": len(latencies) / elapsed,
        "p50_ms": latencies[len(latencies) // 2] * 1000,
        "p99_ms": latencies[int(len(latencies) * 0.99)] * 1000,
    }


def child_load(url: str, users: int, rate: float, seconds: float, workers: int) -> None:
    print(json.dumps(asyncio.run(_load(url, users, rate, seconds, workers))))


# --- orchestration ----------------------------------------------------------------------------


def _spawn(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, __file__, *args], cwd=ROOT, env={**os.environ, **(env or {})}
    )


def _run_load(
    url: str, users: int, rate: float, seconds: float, workers: int = 32
) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, __file__, "_load", url, str(users), str(rate), str(seconds), str(workers)],
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    result: dict[str, float] = json.loads(out.strip().splitlines()[-1])
    return result


def _seed(url: str, users: int) -> None:
    """Users with consent to every category, one snapshot each of the real feature set."""
    import numpy as np
    import psycopg

    from features.catalogue import sync_definitions
    from features.snapshots.codec import LAYOUT
    from features.snapshots.store import SnapshotBatch, write_snapshots
    from hearth.ledger import CURRENT_NOTICE_VERSION
    from hearth.migrate import migrate
    from hearth.signals import Category

    ids = [f"b{i:06d}" for i in range(users)]
    rng = np.random.default_rng(7)
    with psycopg.connect(url, autocommit=True) as conn:
        migrate(conn)
        sync_definitions(conn)
        with conn.cursor() as cur:
            with cur.copy("COPY users (user_id, tz) FROM STDIN") as copy:
                for user in ids:
                    copy.write_row((user, "UTC"))
            with cur.copy(
                "COPY consent_events (user_id, category, notice_version, action, at) FROM STDIN"
            ) as copy:
                for user in ids:
                    for category in Category:
                        copy.write_row(
                            (user, category.value, CURRENT_NOTICE_VERSION, "grant",
                             AS_OF - timedelta(days=200))
                        )  # fmt: skip
        values = rng.random((users, LAYOUT.width)) * 10
        values[rng.random(values.shape) < 0.1] = np.nan
        coverage = np.round(rng.random((users, LAYOUT.width)), 6)
        index = np.arange(users, dtype=np.int32)
        batch = SnapshotBatch(
            ids, [AS_OF], index, np.zeros(users, dtype=np.int32), values, coverage,
            ["{}"] * users,
        )  # fmt: skip
        write_snapshots(conn, batch)
        conn.execute("ANALYZE")


def _wait(url: str) -> None:
    from tests.support.service import wait_ready

    wait_ready(url)


def _historical(url: str, users: int, rows: int, pid: int) -> tuple[float, float]:
    """(seconds, service peak RSS in MB) of ``rows`` rows into a DataFrame via Arrow."""
    from features.client import HearthClient

    body_rows = [(f"b{random.randrange(users):06d}", AS_OF) for _ in range(rows)]
    client = HearthClient(url, TOKEN, timeout_s=120)
    client.historical(body_rows[:1000])  # warm-up: imports, connections, statements
    sampler = RssSampler([pid])
    sampler.start()
    start = time.perf_counter()
    try:
        frame = client.historical(body_rows)
        elapsed = time.perf_counter() - start
    finally:
        peak_mb = sampler.stop()
    assert len(frame) == rows, "historical returned a different number of rows"
    assert frame["reason"].isna().all(), "rows came back without a vector"
    return elapsed, peak_mb


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=10_000)
    parser.add_argument("--rate", type=float, default=500.0)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--historical-rows", type=int, default=100_000)
    args = parser.parse_args()

    from tests.conftest import free_port
    from tests.support.service import tokens_env

    bench = Bench()
    procs: list[subprocess.Popen[bytes]] = []
    with scratch_database(BASE_URL) as url:
        try:
            t0 = time.perf_counter()
            _seed(url, args.users)
            print(f"seeded {args.users} users in {time.perf_counter() - t0:.1f}s", file=sys.stderr)
            env = {
                "HEARTH_DATABASE_URL": url,
                "HEARTH_API_TOKENS": tokens_env({TOKEN: ["features:read"]}),
            }
            port, bare_port = free_port(), free_port()
            service = _spawn("_serve", str(port), env=env)
            bare = _spawn("_bare", str(bare_port))
            procs += [service, bare]
            svc_url, bare_url = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{bare_port}"
            _wait(svc_url)
            _wait_bare(bare_url)
            rows = []
            fixed = _run_load(svc_url, args.users, args.rate, args.seconds)
            rows.append((f"service @{args.rate:.0f} req/s", fixed))
            bare_fixed = _run_load(bare_url, args.users, args.rate, args.seconds)
            rows.append((f"bare @{args.rate:.0f} req/s", bare_fixed))
            svc_max = _run_load(svc_url, args.users, 0, args.seconds / 2)
            rows.append(("service max", svc_max))
            bare_max = _run_load(bare_url, args.users, 0, args.seconds / 2)
            rows.append(("bare max", bare_max))
            hist_s, hist_mb = _historical(svc_url, args.users, args.historical_rows, service.pid)
        finally:
            for p in procs:
                p.terminate()
                p.wait(timeout=10)

    bench.table(
        ["run", "requests", "errors", "rps", "p50 ms", "p99 ms"],
        [
            [label, f"{r['n']:.0f}", f"{r['errors']:.0f}", f"{r['rps']:.0f}",
             f"{r['p50_ms']:.2f}", f"{r['p99_ms']:.2f}"]
            for label, r in rows
        ],
    )  # fmt: skip
    ratio = svc_max["rps"] / bare_max["rps"]
    errors = int(fixed["errors"] + svc_max["errors"])
    print(f"historical {args.historical_rows:,} rows into a DataFrame: {hist_s:.2f}s, service peak "
          f"RSS {hist_mb:.0f} MB")  # fmt: skip
    print(f"errors (non-200 answers of the service): {errors}")
    bench.target(f"p99 at {args.rate:.0f} req/s", fixed["p99_ms"], "<=", TARGET_P99_MS, "ms")
    bench.target("max throughput / bare handler", ratio, ">=", TARGET_RATIO)
    bench.target(f"historical {args.historical_rows:,} rows", hist_s, "<=", TARGET_HISTORICAL_S,
                 "s")  # fmt: skip
    bench.target("service peak RSS during historical", hist_mb, "<=", TARGET_RSS_MB, "MB")
    bench.finish(
        p50_ms=f"{fixed['p50_ms']:.2f}",
        p99_ms=f"{fixed['p99_ms']:.2f}",
        rps=f"{svc_max['rps']:.0f}",
        ratio_vs_bare=f"{ratio:.2f}",
        historical_100k_s=f"{hist_s:.2f}",
        errors=errors,
    )


def _wait_bare(url: str, deadline_s: float = 10.0) -> None:
    import urllib.request

    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        try:
            with urllib.request.urlopen(url + "/v1/users/x/features", timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError("bare server did not start")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_serve":
        child_serve(int(sys.argv[2]))
    elif len(sys.argv) > 1 and sys.argv[1] == "_bare":
        child_bare(int(sys.argv[2]))
    elif len(sys.argv) > 1 and sys.argv[1] == "_load":
        child_load(
            sys.argv[2], int(sys.argv[3]), float(sys.argv[4]), float(sys.argv[5]), int(sys.argv[6])
        )
    else:
        main()
