"""Feature service benchmark: single-user GET latency/throughput vs a bare aiohttp handler, and
historical retrieval of 100,000 rows.

    .venv/bin/python bench/serve.py [--users 10000] [--rate 500] [--seconds 10]

A throwaway database (from template ``hearth_template``) gets N users with consent and one
24-feature snapshot each, loaded with COPY. The service runs as a subprocess; the load
generator is another process on loopback (aiohttp client): first a fixed offered load
(requests started on a fixed schedule, latency measured from the scheduled time so queueing
counts), then max throughput with a fixed number of concurrent connections. The same load runs
against a bare aiohttp handler returning a constant (the ceiling). Last line:
``p50_ms=… p99_ms=… rps=… ratio_vs_bare=… historical_100k_s=…``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import secrets
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

TOKEN = "bench-token-0123456789abcdef"
AS_OF = datetime(2026, 1, 1, tzinfo=UTC)
N_FEATURES = 24


def _version() -> str:
    try:
        from features.catalogue import (  # type: ignore[import-untyped,unused-ignore]
            FEATURE_SET_VERSION,
        )
    except ImportError:
        return "bench-v1"
    return str(FEATURE_SET_VERSION)


# --- child processes --------------------------------------------------------------------------


def child_serve(port: int, version: str) -> None:
    from features.service.app import run_service
    from features.service.resolve import engine_gateway
    from hearth.settings import load_settings

    if version == "bench-v1":  # engine not installed: stand-in version and catalogue
        engine_gateway.feature_set_version = lambda: version  # type: ignore[assignment]
        names = [f"f{i:02d}" for i in range(N_FEATURES)]
        engine_gateway.feature_names = lambda: names  # type: ignore[assignment]
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
            tasks = []
            n = int(rate * seconds)
            for i in range(n):
                scheduled = start + i / rate
                delay = scheduled - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                tasks.append(asyncio.create_task(one(scheduled)))
            await asyncio.gather(*tasks)
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


def _seed(url: str, users: int, version: str) -> None:
    import psycopg

    from hearth.ledger import CURRENT_NOTICE_VERSION
    from hearth.migrate import migrate

    rng = random.Random(7)
    with psycopg.connect(url, autocommit=True) as conn:
        migrate(conn)
        with conn.cursor() as cur:
            with cur.copy("COPY users (user_id, tz) FROM STDIN") as copy:
                for i in range(users):
                    copy.write_row((f"b{i:06d}", "UTC"))
            with cur.copy(
                "COPY consent_events (user_id, category, notice_version, action, at) FROM STDIN"
            ) as copy:
                for i in range(users):
                    copy.write_row(
                        (
                            f"b{i:06d}",
                            "energy",
                            CURRENT_NOTICE_VERSION,
                            "grant",
                            AS_OF - timedelta(days=200),
                        )
                    )
            with cur.copy(
                "COPY feature_snapshots (user_id, as_of, feature_set_version, vector) FROM STDIN"
            ) as copy:
                for i in range(users):
                    vector = {
                        f"f{j:02d}": {"value": rng.random() * 10, "coverage": rng.random()}
                        for j in range(N_FEATURES)
                    }
                    copy.write_row((f"b{i:06d}", AS_OF, version, json.dumps(vector)))
        conn.execute("ANALYZE")


def _wait(url: str) -> None:
    from tests.support.service import wait_ready

    wait_ready(url)


def _historical(url: str, users: int, rows: int, pid: int) -> tuple[float, float]:
    import psutil

    from features.client import HearthClient

    body_rows = [(f"b{random.randrange(users):06d}", AS_OF) for _ in range(rows)]
    proc = psutil.Process(pid)
    peak = proc.memory_info().rss
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, proc.memory_info().rss)
            time.sleep(0.02)

    sampler = threading.Thread(target=sample)
    sampler.start()
    start = time.perf_counter()
    result = HearthClient(url, TOKEN, timeout_s=120).historical(body_rows)
    elapsed = time.perf_counter() - start
    done.set()
    sampler.join()
    assert len(result.rows) == rows, "historical returned a different number of rows"
    return elapsed, peak / 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=10_000)
    parser.add_argument("--rate", type=float, default=500.0)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--historical-rows", type=int, default=100_000)
    args = parser.parse_args()

    import psycopg

    from tests.conftest import free_port
    from tests.support.service import tokens_env

    base = os.environ.get("HEARTH_DATABASE_URL", "postgresql://hearth:hearth@127.0.0.1:5432/hearth")
    name = f"hearth_bench_{secrets.token_hex(3)}"
    url = urlunsplit(urlsplit(base)._replace(path=f"/{name}"))
    version = _version()
    with psycopg.connect(base, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}" TEMPLATE hearth_template')
    procs: list[subprocess.Popen[bytes]] = []
    try:
        t0 = time.perf_counter()
        _seed(url, args.users, version)
        print(f"seeded {args.users} users in {time.perf_counter() - t0:.1f}s", file=sys.stderr)
        env = {
            "HEARTH_DATABASE_URL": url,
            "HEARTH_API_TOKENS": tokens_env({TOKEN: ["features:read"]}),
        }
        port, bare_port = free_port(), free_port()
        service = _spawn("_serve", str(port), version, env=env)
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
        with psycopg.connect(base, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    print(f"{'run':<22}{'requests':>10}{'errors':>8}{'rps':>10}{'p50 ms':>10}{'p99 ms':>10}")
    for label, r in rows:
        print(
            f"{label:<22}{r['n']:>10.0f}{r['errors']:>8.0f}{r['rps']:>10.0f}"
            f"{r['p50_ms']:>10.2f}{r['p99_ms']:>10.2f}"
        )
    print(
        f"historical {args.historical_rows} rows: {hist_s:.2f}s, service peak RSS {hist_mb:.0f} MB"
    )
    ratio = svc_max["rps"] / bare_max["rps"]
    print(
        f"p50_ms={fixed['p50_ms']:.2f} p99_ms={fixed['p99_ms']:.2f} rps={svc_max['rps']:.0f} "
        f"ratio_vs_bare={ratio:.2f} historical_100k_s={hist_s:.2f}"
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
        child_serve(int(sys.argv[2]), sys.argv[3])
    elif len(sys.argv) > 1 and sys.argv[1] == "_bare":
        child_bare(int(sys.argv[2]))
    elif len(sys.argv) > 1 and sys.argv[1] == "_load":
        child_load(
            sys.argv[2], int(sys.argv[3]), float(sys.argv[4]), float(sys.argv[5]), int(sys.argv[6])
        )
    else:
        main()
