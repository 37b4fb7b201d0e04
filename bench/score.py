"""Scores benchmark: batch scoring of an export, and POST /v1/scores for one user at a time.

    .venv/bin/python bench/score.py [--users 200000] [--online-users 10000] [--rate 500]
                                    [--seconds 10]

A throwaway database (from template ``hearth_template``) gets the users; the reference model is
fitted on synthetic applicants (tests/support/book.py). Batch: an export of ``--users`` users
(written straight as Parquet parts, as ``features export`` writes them) is scored by
``features.book.batch.score_export`` in this process — probabilities, points, reason codes with
percentiles, the Parquet files and every score appended to the score log — against the named
baseline, scikit-learn's ``predict_proba`` of the same model on the same matrix (the model
alone: no reasons, no files, no log). Online: ``--online-users`` users get consent and a
snapshot; ``python -m features serve`` (a subprocess) answers ``POST /v1/scores`` for one user
per request at a fixed offered load from another process (latency from the scheduled time, so
queueing counts; one second of the same load first, not counted, opens the service's
connections and prepares its statements; the client is bench/_common.py's ``KeepAliveClient``,
0.27 ms of CPU a request where aiohttp's client session took 0.43 ms, CPU the service being
measured would otherwise lose on 2 cores: p99 8 - 10 ms with it, 11 ms with aiohttp's, same
code), against the named baseline
``GET /v1/users/{id}/features`` at the same load (the latest snapshot, which is what the score
reads; with ``as_of`` it would ask for a snapshot at exactly that time, find none, and compute
every vector on demand). The online load starts once the batch's writes are on disk and the
load average is below 1 again (at most 5 minutes: bench/_common.py's ``settle``).
Peak RSS of the batch is sampled by bench/_common.py's ``RssSampler`` (MB = 2**20 bytes).
Targets (issue 17): batch >= 20,000 users/s per process; online p99 <= 10 ms at 500 req/s with no
errors, on a quiet machine. The table, targets, load average and last line come from
bench/_common.py (``Bench``). Last line: ``batch_users_s=… p99_ms=… load_start=… load_end=…``
(and the harness's warning token when the load at start was above 1.5).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench._common import (  # noqa: E402
    BASE_URL,
    Bench,
    KeepAliveClient,
    RssSampler,
    offer_at_rate,
    scratch_database,
    settle,
)

TOKEN = "bench-score-token-0123456789"
AS_OF = datetime(2026, 1, 1, tzinfo=UTC)
BATCH_TARGET = 20_000.0
P99_TARGET_MS = 10.0
WARM_UP_S = 1.0  # seconds of load before the measured ones


# --- the online load (a child process) ----------------------------------------------------------


async def _load(url: str, users: int, rate: float, seconds: float, mode: str) -> dict[str, float]:
    client = KeepAliveClient(
        url, {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
    )
    latencies: list[float] = []
    errors = 0
    as_of = AS_OF.isoformat()

    async def one(scheduled: float) -> None:
        nonlocal errors
        user = f"s{random.randrange(users):07d}"
        if mode == "scores":
            body = json.dumps({"rows": [{"user_id": user, "as_of": as_of}]}).encode()
            request = client.prepare("POST", "/v1/scores", body)
        else:
            request = client.prepare("GET", f"/v1/users/{user}/features")
        status, _ = await client.send(request)
        errors += status != 200
        latencies.append(time.perf_counter() - scheduled)

    try:
        # Warm-up at the offered rate, not counted: the service's connections are opened and
        # its statements prepared as concurrency needs them (one at a time would use one).
        await offer_at_rate(one, rate, int(rate * WARM_UP_S))
        latencies.clear()
        errors = 0
        elapsed = await offer_at_rate(one, rate, int(rate * seconds))
    finally:
        await client.close()
    latencies.sort()
    return {
        "n": len(latencies),
        "errors": errors,
        "rps": len(latencies) / elapsed,
        "p50_ms": latencies[len(latencies) // 2] * 1000,
        "p99_ms": latencies[int(len(latencies) * 0.99)] * 1000,
    }


def _run_load(url: str, users: int, rate: float, seconds: float, mode: str) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, __file__, "_load", url, str(users), str(rate), str(seconds), mode],
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    result: dict[str, float] = json.loads(out.strip().splitlines()[-1])
    return result


# --- setup --------------------------------------------------------------------------------------


def _seed(url: str, users: int, online_users: int) -> None:
    """Users (all), consent and a snapshot for the first ``online_users``."""
    import numpy as np
    import psycopg

    from features.catalogue import FEATURE_SET_VERSION
    from hearth.ledger import CURRENT_NOTICE_VERSION
    from hearth.migrate import migrate
    from tests.support.book import MODEL_FEATURES, draw_features, packed

    x = draw_features(np.random.default_rng(3), online_users)
    with psycopg.connect(url, autocommit=True) as conn:
        migrate(conn)
        with conn.cursor() as cur:
            with cur.copy("COPY users (user_id) FROM STDIN") as copy:
                for i in range(users):
                    copy.write_row((f"s{i:07d}",))
            with cur.copy(
                "COPY consent_events (user_id, category, notice_version, action, at) FROM STDIN"
            ) as copy:
                for i in range(online_users):
                    for category in ("location", "connectivity", "device_health", "energy"):
                        copy.write_row(
                            (
                                f"s{i:07d}",
                                category,
                                CURRENT_NOTICE_VERSION,
                                "grant",
                                AS_OF - timedelta(days=200),
                            )
                        )
            with cur.copy(
                "COPY feature_snapshots (user_id, as_of, feature_set_version, vals, covs)"
                " FROM STDIN"
            ) as copy:
                for i in range(online_users):
                    row = {
                        f: None if np.isnan(x[i, j]) else float(x[i, j])
                        for j, f in enumerate(MODEL_FEATURES)
                    }
                    copy.write_row(
                        (
                            f"s{i:07d}",
                            AS_OF - timedelta(hours=2),
                            FEATURE_SET_VERSION,
                            *packed(row),
                        )
                    )
        conn.execute("ANALYZE")


def _synthetic_export(directory: Path, users: int, part_users: int) -> None:
    """An export of ``users`` users as ``features export`` writes it (parts, population,
    manifest), without the database: the batch benchmark measures scoring, not the export."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from features.book import vectors
    from features.book.export import CONSENT_PREFIX, COVERAGE_SUFFIX, POPULATION_FILE, schema
    from features.book.files import sha256_of
    from features.book.population import build_population, sample_step
    from features.catalogue import FEATURE_SET_VERSION
    from tests.support.book import MODEL_FEATURES, draw_features

    directory.mkdir(parents=True)
    rng = np.random.default_rng(5)
    files = []
    sampled: dict[str, list[np.ndarray]] = {f: [] for f in MODEL_FEATURES}
    step = sample_step(users)
    for index, start in enumerate(range(0, users, part_users)):
        n = min(part_users, users - start)
        x = draw_features(rng, n)
        columns: dict[str, pa.Array] = {
            "user_id": pa.array([f"s{i:07d}" for i in range(start, start + n)]),
            "snapshot_as_of": pa.array(
                [AS_OF - timedelta(hours=2)] * n, pa.timestamp("us", tz="UTC")
            ),
        }
        for category in vectors.CATEGORIES:
            columns[CONSENT_PREFIX + category] = pa.array(np.ones(n, dtype=np.bool_))
        for name in vectors.NAMES:
            j = MODEL_FEATURES.index(name) if name in MODEL_FEATURES else -1
            values = x[:, j] if j >= 0 else np.full(n, np.nan)
            columns[name] = pa.array(values, pa.float64(), mask=np.isnan(values))
            columns[name + COVERAGE_SUFFIX] = pa.array(np.ones(n, dtype=np.float32))
            if j >= 0:
                sampled[name].append(values[(-start) % step :: step])
        path = directory / f"part-{index:05d}.parquet"
        pq.write_table(pa.table(columns, schema=schema()), path)
        files.append({"file": path.name, "rows": n, "sha256": sha256_of(path)})
    population = build_population(
        AS_OF, FEATURE_SET_VERSION, users, {f: np.concatenate(v) for f, v in sampled.items()}
    )
    (directory / POPULATION_FILE).write_text(json.dumps(population.to_json()))
    manifest = {
        "format": "hearth-export/1",
        "feature_set_version": FEATURE_SET_VERSION,
        "as_of": AS_OF.isoformat(),
        "rows": users,
        "files": files,
        "population": {"file": POPULATION_FILE, "n_users": users},
        "columns": {"features": list(vectors.NAMES)},
    }
    (directory / "manifest.json").write_text(json.dumps(manifest))
    return None


def _peak_rss_during(work: Callable[[], object]) -> tuple[float, float]:
    """(seconds, peak RSS in MB of this process) while ``work()`` runs."""
    sampler = RssSampler([os.getpid()])
    sampler.start()
    start = time.perf_counter()
    try:
        work()
        seconds = time.perf_counter() - start
    finally:
        peak_mb = sampler.stop()
    return seconds, peak_mb


def _baseline_rate(model_dir: Path, export_dir: Path) -> float:
    """Users/s of scikit-learn's predict_proba of the same model on the same matrix."""
    import numpy as np
    import pyarrow.parquet as pq

    from features.report.model import ReferenceModel
    from tests.support.book import MODEL_FEATURES

    model = ReferenceModel.load(model_dir)
    tables = [
        pq.read_table(p, columns=list(MODEL_FEATURES))
        for p in sorted(export_dir.glob("part-*.parquet"))
    ]
    x = np.vstack(
        [
            np.column_stack([t.column(f).to_numpy(zero_copy_only=False) for f in MODEL_FEATURES])
            for t in tables
        ]
    )
    start = time.perf_counter()
    model.predict_proba(x)
    return int(x.shape[0]) / (time.perf_counter() - start)


def _wait(url: str) -> None:
    from tests.support.service import wait_ready

    wait_ready(url, deadline_s=60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=200_000)
    parser.add_argument("--online-users", type=int, default=10_000)
    parser.add_argument("--part-users", type=int, default=50_000)
    parser.add_argument("--rate", type=float, default=500.0)
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()

    import psycopg

    from features.book.batch import score_export
    from features.book.population import Population, save_population
    from tests.conftest import free_port
    from tests.support.book import fit_model
    from tests.support.service import tokens_env

    bench = Bench()
    service: subprocess.Popen[bytes] | None = None
    with scratch_database(BASE_URL) as url, tempfile.TemporaryDirectory() as tmp:
        try:
            work = Path(tmp)
            t0 = time.perf_counter()
            _seed(url, args.users, min(args.online_users, args.users))
            model_dir = fit_model(work / "model")
            _synthetic_export(work / "export", args.users, args.part_users)
            population = Population.from_json(
                json.loads((work / "export" / "population.json").read_text())
            )
            with psycopg.connect(url, autocommit=True) as conn:
                save_population(conn, population)
            print(f"set up in {time.perf_counter() - t0:.1f}s", file=sys.stderr)

            baseline = _baseline_rate(model_dir, work / "export")
            batch_s, batch_mb = _peak_rss_during(
                lambda: score_export(
                    model_dir,
                    work / "export",
                    work / "scores",
                    as_of=AS_OF,
                    database_url=url,
                    requested_by="bench",
                    progress=False,
                )
            )
            batch_rate = args.users / batch_s
            settle()  # the batch's writes (score log, files) are not the online load's weather

            port = free_port()
            env = {
                **os.environ,
                "HEARTH_DATABASE_URL": url,
                "HEARTH_API_TOKENS": tokens_env({TOKEN: ["features:read", "scores:read"]}),
                "HEARTH_SCORE_MODEL": str(model_dir),
            }
            service = subprocess.Popen(
                [sys.executable, "-m", "features", "serve", "--port", str(port)],
                cwd=ROOT,
                env=env,
            )
            svc = f"http://127.0.0.1:{port}"
            _wait(svc)
            online_users = min(args.online_users, args.users)
            online = _run_load(svc, online_users, args.rate, args.seconds, "scores")
            features = _run_load(svc, online_users, args.rate, args.seconds, "features")
        finally:
            if service is not None:
                service.terminate()
                service.wait(timeout=10)

    rate = f"{args.rate:.0f}"
    bench.table(
        ["run", "rate", "ratio", "p50 ms", "p99 ms", "peak MB"],
        [
            ["batch score (reasons, files, log)", f"{batch_rate:.0f} u/s",
             f"{batch_rate / baseline:.2f}", "", "", f"{batch_mb:.0f}"],
            ["  baseline: sklearn predict_proba", f"{baseline:.0f} u/s", "1.00", "", "", ""],
            [f"POST /v1/scores 1 user @{rate} req/s", f"{online['rps']:.0f} req/s",
             f"{online['p99_ms'] / features['p99_ms']:.2f}", f"{online['p50_ms']:.2f}",
             f"{online['p99_ms']:.2f}", ""],
            [f"  baseline: GET features @{rate} req/s", f"{features['rps']:.0f} req/s", "1.00",
             f"{features['p50_ms']:.2f}", f"{features['p99_ms']:.2f}", ""],
        ],
    )  # fmt: skip
    print(f"errors: scores {online['errors']:.0f}, features {features['errors']:.0f}")
    bench.target("batch users/s per process", batch_rate, ">=", BATCH_TARGET, "users/s")
    bench.target(f"POST /v1/scores p99 at {rate} req/s", online["p99_ms"], "<=", P99_TARGET_MS,
                 "ms")  # fmt: skip
    bench.target("POST /v1/scores errors", online["errors"], "<=", 0)
    bench.finish(batch_users_s=f"{batch_rate:.0f}", p99_ms=f"{online['p99_ms']:.2f}")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_load":
        result = asyncio.run(
            _load(
                sys.argv[2], int(sys.argv[3]), float(sys.argv[4]), float(sys.argv[5]), sys.argv[6]
            )
        )
        print(json.dumps(result))
    else:
        main()
