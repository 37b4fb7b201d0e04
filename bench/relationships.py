"""Benchmark: what the relationships family adds to a single-date materialisation (issue 18 §4).

Builds the 10,000-user x 90-day raw readings of ``bench/features.py`` (the engine's own
benchmark) in a throwaway database, adds the household graph's inputs as raw readings — users
in households of 2-3 members in one zone, spread over different chunks (members i,
i ± 5·N/11.6, ...), each member's phone on the home's Wi-Fi access point at 23:00 and 02:00
local on ~85 % of nights, 40 % of them on a shared office access point at 10:00 local on
weekdays (about 4 per office) — and consent to ``relationships`` for everyone, rebuilds the
rollups and network sightings, then materialises every user as of one date, alternately
without the graph (``features.engine.runner.load_sightings`` replaced by one returning
nothing: the family then computes nothing) and with it, twice each. The figure is the best
run with over the best run without; the target is ≤ 1.20.

    .venv/bin/python bench/relationships.py                # 10,000 users
    .venv/bin/python bench/relationships.py --users 1000   # a quick check while developing

Real figures only from a quiet machine: ``/work/shared/tools/measure .venv/bin/python
bench/relationships.py``. Last line: ``users=… without_s=… with_s=… added=… graph_s=…
peak_rss_mb=… load_start=… load_end=…`` (+ a warning token when the load at start was above
1.5), printed through ``bench/_common.py``.
"""

from __future__ import annotations

import argparse
import os
import secrets
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import BASE_URL, Bench, peak_rss_mb, scratch_database
from bench.features import AS_OF, DAYS, synthesise
from features.engine import DEFAULT_CHUNK_USERS, runner
from features.rollups import refresh_rollups
from features.snapshots.materialize import materialize
from hearth.ledger import CURRENT_NOTICE_VERSION
from hearth.migrate import migrate

TARGET_ADDED = 0.20
LATE_SHARE = 0.05  # bench/features.py's default: readings ingested after T
MEMBERS = 2.32  # mean household size (device_sim/README.md)


def add_households(conn: psycopg.Connection[tuple[object, ...]], url: str, n_users: int) -> int:
    """Relationships consent, home and office access points as raw readings of the phones,
    then the rollup job again (full: the network sightings are its output); returns the raw
    readings written."""
    start = AS_OF - timedelta(days=DAYS)
    conn.execute(
        """INSERT INTO consent_events (user_id, purpose, category, notice_version, action, at)
           SELECT user_id, 'credit_scoring', 'relationships', %s, 'grant', %s FROM users""",
        (CURRENT_NOTICE_VERSION, start - timedelta(days=1)),
    )
    # Members share a zone (bench/features.py: zone i % 5) and sit in different chunks.
    households = max(1, round(n_users / 5 / MEMBERS))
    offices = max(1, round(n_users * 0.4 / 4 / 5))
    cur = conn.execute(
        """INSERT INTO categorical_readings (time, device_id, user_id, signal, value, ingested_at)
           SELECT b + INTERVAL '5 minutes', user_id || '-phone', user_id, 'wifi_bssid_hash', v,
                  b + INTERVAL '7 minutes'
             FROM (SELECT u.user_id,
                          date_trunc('hour', ((%(start)s::date + d) + h) AT TIME ZONE u.tz) AS b,
                          md5('home-' || (i %% 5) || '-' || (i / 5 %% %(households)s)) AS v
                     FROM (SELECT user_id, tz,
                                  (substr(user_id, 2))::int AS i FROM users) u,
                          generate_series(0, %(days)s) d,
                          unnest(ARRAY[INTERVAL '23 hours', INTERVAL '26 hours']) h
                    WHERE random() < 0.85
                   UNION ALL
                   SELECT u.user_id,
                          date_trunc('hour', ((%(start)s::date + d) + INTERVAL '10 hours')
                                             AT TIME ZONE u.tz),
                          md5('office-' || (i %% 5) || '-' || (i / 35 %% %(offices)s))
                     FROM (SELECT user_id, tz, (substr(user_id, 2))::int AS i FROM users) u,
                          generate_series(0, %(days)s) d
                    WHERE i %% 5 < 2 AND extract(isodow FROM %(start)s::date + d) <= 5
                      AND random() < 0.8) x
            WHERE b >= %(start)s AND b < %(as_of)s - INTERVAL '1 hour'
           ON CONFLICT DO NOTHING""",
        {
            "start": start,
            "as_of": AS_OF,
            "days": DAYS,
            "households": households,
            "offices": offices,
        },
    )
    refresh_rollups(conn, full=True, database_url=url, jobs=2)
    conn.execute("VACUUM ANALYZE")
    return cur.rowcount


@contextmanager
def without_graph() -> Iterator[None]:
    """The engine as it was before the family: no sightings loaded (the family is null)."""
    loader = runner.load_sightings

    def nothing(*args: Any, **kwargs: Any) -> None:
        return None

    runner.load_sightings = nothing  # type: ignore[assignment]
    try:
        yield
    finally:
        runner.load_sightings = loader


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=10_000)
    parser.add_argument("--chunk-size", type=int, default=DEFAULT_CHUNK_USERS)
    parser.add_argument("--rounds", type=int, default=2, help="runs of each kind, alternated")
    parser.add_argument("--keep", action="store_true", help="do not drop the database")
    args = parser.parse_args()
    # Stored snapshots name their link ends by keyed hash (hearth.ledger.link_end_ref).
    os.environ.setdefault("HEARTH_PSEUDONYM_KEY", secrets.token_hex(16))
    bench = Bench()
    runs: list[tuple[str, float, float]] = []  # (kind, seconds, graph seconds)
    with (
        scratch_database(BASE_URL, keep=args.keep) as url,
        psycopg.connect(url, autocommit=True) as conn,
    ):
        migrate(conn)
        t0 = time.perf_counter()
        rows = synthesise(conn, url, args.users, LATE_SHARE)
        rows += add_households(conn, url, args.users)
        print(f"synthesised {rows:,} raw readings for {args.users:,} users x {DAYS} days "
              f"in {time.perf_counter() - t0:.1f}s", flush=True)  # fmt: skip
        users = [str(r[0]) for r in conn.execute("SELECT user_id FROM users ORDER BY 1")]
        for _ in range(args.rounds):
            for kind in ("without", "with"):
                with without_graph() if kind == "without" else _nothing():
                    result = materialize(
                        conn, AS_OF, users=users, chunk_size=args.chunk_size, force=True,
                        progress=False, database_url=url,
                    )  # fmt: skip
                runs.append((kind, result.seconds, result.timings.graph_s))
                print(f"  {kind:>7} graph: {result.seconds:6.1f}s", flush=True)
        linked = conn.execute(
            """SELECT count(*) FILTER (WHERE (hearth_snapshot_vector(feature_set_version,
                                              vals, covs, withheld)
                                              -> 'household_size_30d' ->> 'value')::float > 1),
                      count(*) FROM feature_snapshots"""
        ).fetchone()
    best = {k: min(s for kind, s, _ in runs if kind == k) for k in ("without", "with")}
    graph_s = min(g for kind, _, g in runs if kind == "with")
    added = best["with"] / best["without"] - 1
    rss = peak_rss_mb()
    print()
    bench.table(
        ["run", "seconds", "users/s", "vs without", "peak RSS MB"],
        [
            (f"{kind} graph", f"{secs:.1f}", f"{args.users / secs:.0f}",
             f"{secs / best['without']:.2f}", f"{rss:.0f}")
            for kind, secs, _ in runs
        ],
    )  # fmt: skip
    assert linked is not None
    print(f"users with a household (size_30d > 1): {linked[0]} of {linked[1]}")
    bench.target("relationship features add", 100 * added, "<=", 100 * TARGET_ADDED, "%")
    bench.finish(
        users=args.users,
        without_s=f"{best['without']:.1f}",
        with_s=f"{best['with']:.1f}",
        added=f"{added:.3f}",
        graph_s=f"{graph_s:.1f}",
        peak_rss_mb=f"{rss:.0f}",
    )
    return 0


@contextmanager
def _nothing() -> Iterator[None]:
    yield


if __name__ == "__main__":
    raise SystemExit(main())
