"""Benchmark: render times of the operator console's pages on a demo-sized database (issue 19:
every page in under 300 ms on the 2,000-household demo, quiet machine).

    .venv/bin/python bench/console.py                      # 2,000 households x 90 days
    .venv/bin/python bench/console.py --households 200     # a quick run while developing
    .venv/bin/python bench/console.py --url postgresql://…/hearth   # an existing database

A throwaway database (from ``hearth_template``) gets what the demo leaves behind, written
server-side: households with a phone, a router, a plug, a door and a motion sensor (a thermostat
in one of four), ~97 raw readings per household per day (the demo's 17.5 M rows at 2,000 x 90),
a few devices gone silent or retired, hourly rollups (``features rollup``'s own job), consent
for everyone, withdrawals and erasures done through ``hearth.admin`` (real purges and audit
records), 20,000 dead letters, refused-reading counts, two collector replicas, and feature
snapshots materialised by the engine on two dates. Then ``features rollup``'s console hook
builds the summary tables (timed: first run and an incremental one), the feature service starts
as a subprocess, a client logs in and fetches each page ``--repeat`` times after a warm-up.
Printed: per page the client's wall time (median, p95, max) and the server's split
(``Server-Timing``: queries, template), the targets, the load average, and a ``key=value`` last
line.

Real figures only from a quiet machine. Building the database takes a quarter of an hour; build
it first, then measure it alone::

    .venv/bin/python bench/console.py --prepare          # prints --url postgresql://…
    /work/shared/tools/measure .venv/bin/python bench/console.py --url postgresql://…
"""

from __future__ import annotations

import argparse
import http.cookiejar
import json
import os
import re
import secrets
import statistics
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psutil
import psycopg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench._common import BASE_URL, Bench, scratch_database, with_db  # noqa: E402
from features.rollups import refresh_rollups  # noqa: E402
from features.service.console.summary import refresh_console_summaries  # noqa: E402
from features.snapshots.materialize import materialize  # noqa: E402
from hearth import admin  # noqa: E402
from hearth.ledger import CURRENT_NOTICE_VERSION  # noqa: E402
from hearth.migrate import migrate  # noqa: E402
from hearth.settings import get_settings  # noqa: E402
from hearth.signals import Category  # noqa: E402

TOKEN = "bench-console-" + secrets.token_hex(12)
TARGET_MS = 300.0

# (device suffix, kind, format, share of households that have one)
DEVICES = [
    ("phone", "phone", "owntracks", 1),
    ("router", "router", "hearth", 1),
    ("plug", "plug", "tasmota", 1),
    ("door", "contact", "zigbee2mqtt", 1),
    ("motion", "motion", "zigbee2mqtt", 1),
    ("thermo", "thermostat", "zigbee2mqtt", 4),  # one household in four
]
# (signal, device suffix, hours of the day with a reading, value)
NUMERIC = [
    ("battery_pct", "phone", list(range(24)), "greatest(1, 95 - h * 3.5 - random() * 20)"),
    ("charging", "phone", [7, 23], "CASE WHEN h = 23 THEN 1 ELSE 0 END"),
    ("online", "router", [0, 4, 8, 12, 16, 20], "CASE WHEN random() < 0.02 THEN 0 ELSE 1 END"),
    ("rssi_dbm", "router", [2, 10, 18], "-50 - random() * 20"),
    ("power_w", "plug", list(range(0, 24, 2)), "random() * 200"),
    ("energy_total_kwh", "plug", [6, 12, 18, 23], "100 + d * 2 + h / 12.0"),
    ("contact_open", "door", [7, 8, 12, 17, 18, 19, 21, 22], "mod(h, 2)::float8"),
    ("occupancy", "motion", [6, 7, 8, 12, 18, 19, 20, 22], "1"),
    ("temperature_c", "thermo", [0, 4, 8, 12, 16, 20], "19 + random() * 3"),
    ("setpoint_c", "thermo", [6, 22], "20 + round((random() * 2)::numeric, 1)"),
]  # fmt: skip
CATEGORICAL = [
    ("geohash", "phone", list(range(24)),
     "(ARRAY['wtw3sjq','wtw3sjr','wtw3smx','wtw3e8k','wtw37zz'])[1 + mod(u.i + h / 8, 5)]"),
    ("net_type", "phone", [8, 12, 18, 22], "CASE WHEN h = 22 THEN 'wifi' ELSE 'mobile' END"),
]  # fmt: skip
REASONS = [
    ("schema", 50),
    ("bad_json", 20),
    ("too_old", 15),
    ("no_consent", 10),
    ("unknown_device", 5),
]


def _step(what: str, started: float) -> None:
    print(f"  {what}: {time.perf_counter() - started:.1f}s", flush=True)


def synthesise(conn: psycopg.Connection, households: int, days: int) -> dict[str, object]:
    """The demo's leftovers; returns what the page fetches need (a user, a prefix)."""
    end = datetime.now(UTC).replace(second=0, microsecond=0)
    start = end - timedelta(days=days)
    t = time.perf_counter()
    conn.execute(
        """CREATE TEMP TABLE bench_users AS
           SELECT format('u%%s', lpad(i::text, 6, '0')) AS user_id, i
             FROM generate_series(0, %s - 1) i""",
        (households,),
    )
    conn.execute("INSERT INTO users (user_id, tz) SELECT user_id, 'Europe/Berlin' FROM bench_users")
    for suffix, kind, fmt, every in DEVICES:
        external = (
            "user_id || '/' || %(sfx)s" if fmt == "owntracks" else "user_id || '-' || %(sfx)s"
        )
        conn.execute(
            f"""INSERT INTO devices (device_id, user_id, kind, format, external_id, registered_at,
                                     bound_at)
                SELECT user_id || '-' || %(sfx)s, user_id, %(kind)s, %(fmt)s, {external},
                       %(start)s, %(start)s
                  FROM bench_users WHERE i %% %(every)s = 0""",
            {"sfx": suffix, "kind": kind, "fmt": fmt, "every": every, "start": start},
        )
    conn.execute(
        """INSERT INTO consent_events (user_id, purpose, category, notice_version, action, at)
           SELECT user_id, 'credit_scoring', c, %s, 'grant', %s
             FROM bench_users, unnest(%s::text[]) c""",
        (CURRENT_NOTICE_VERSION, start - timedelta(days=1), [c.value for c in Category]),
    )
    _step("registry and consent", t)

    t = time.perf_counter()
    conn.execute("DROP INDEX numeric_readings_key")
    conn.execute("DROP INDEX categorical_readings_key")
    # One device in 33 went silent two days before the end.
    silent = (
        "NOT ((hashtext(u.user_id || %(sfx)s) & 1023) < 31 AND x.t > %(end)s - INTERVAL '2 days')"
    )
    rows = 0
    for table, specs in (("numeric_readings", NUMERIC), ("categorical_readings", CATEGORICAL)):
        for signal, suffix, hours, value in specs:
            every = next(e for s, _, _, e in DEVICES if s == suffix)
            cur = conn.execute(
                f"""INSERT INTO {table} (time, device_id, user_id, signal, value, ingested_at)
                    SELECT x.t, u.user_id || '-' || %(sfx)s, u.user_id, %(sig)s, x.v,
                           x.t + (1 + random() * 4) * INTERVAL '1 second'
                      FROM bench_users u,
                           LATERAL (SELECT %(start)s::timestamptz + d * INTERVAL '1 day'
                                           + h * INTERVAL '1 hour'
                                           + (random() * 3599)::int * INTERVAL '1 second' AS t,
                                           ({value}) AS v
                                      FROM generate_series(0, %(days)s - 1) d,
                                           unnest(%(hours)s::int[]) h) x
                     WHERE u.i %% %(every)s = 0 AND x.t < %(end)s AND {silent}""",
                {"sfx": suffix, "sig": signal, "start": start, "end": end, "days": days,
                 "hours": hours, "every": every},
            )  # fmt: skip
            rows += cur.rowcount
    conn.execute(
        "CREATE UNIQUE INDEX numeric_readings_key ON numeric_readings (device_id, signal, time)"
    )
    conn.execute(
        "CREATE UNIQUE INDEX categorical_readings_key "
        "ON categorical_readings (device_id, signal, time)"
    )
    _step(f"{rows:,} raw readings", t)

    t = time.perf_counter()
    conn.execute("VACUUM ANALYZE")
    url = with_db(BASE_URL, conn.info.dbname)
    refresh_rollups(conn, database_url=url)  # the rollup job itself: week slices, --jobs 2
    _step("hourly rollups (features rollup)", t)

    t = time.perf_counter()
    latest = end.replace(hour=0, minute=0)
    reference = latest - timedelta(days=28)
    for as_of in (reference, latest):
        materialize(
            conn,
            as_of,
            refresh=False,
            progress=False,
            database_url=url,
        )
    _step(f"snapshots on {reference.date()} and {latest.date()}", t)

    t = time.perf_counter()
    users = [str(r[0]) for r in conn.execute("SELECT user_id FROM users ORDER BY user_id")]
    for user in users[7::50]:  # 2 %: withdraw location (a real purge and audit record)
        admin.withdraw_consent(conn, user_id=user, category=Category.LOCATION)
    for user in users[13::200]:  # 0.5 %: erased
        admin.erase_user(conn, user)
    conn.execute(
        "UPDATE devices SET retired_at = %s - INTERVAL '3 days' WHERE device_id IN "
        "(SELECT device_id FROM devices WHERE kind = 'plug' ORDER BY device_id LIMIT %s)",
        (end, max(1, households // 100)),
    )
    _step("withdrawals, erasures, retirements", t)

    t = time.perf_counter()
    reasons = [r for r, w in REASONS for _ in range(w)]
    conn.execute(
        """INSERT INTO dead_letters (received_at, topic, reason, detail, payload, payload_bytes,
                                    digest, device_id)
           SELECT %(end)s - random() * INTERVAL '14 days',
                  CASE WHEN r = 'no_consent' THEN '' ELSE 'owntracks/' || u || '/phone' END, r,
                  CASE WHEN r = 'no_consent' THEN ''
                       ELSE 'location.lat: Input should be a valid number' END,
                  CASE WHEN r = 'no_consent' THEN NULL ELSE convert_to(
                      '{"_type":"location","lat":"<redacted>","lon":"<redacted>","tst":' || i
                      || ',"batt":' || mod(i, 100) || ',"SSID":"<redacted>"}', 'UTF8') END,
                  120 + mod(i, 200), sha256(convert_to(i::text || %(salt)s, 'UTF8')),
                  u || '-phone'
             FROM (SELECT i, (%(reasons)s::text[])[1 + i %% %(n)s] AS r,
                          format('u%%s', lpad((i %% %(h)s)::text, 6, '0')) AS u
                     FROM generate_series(1, 20000) i) x""",
        {"end": end, "reasons": reasons, "n": len(reasons), "h": households,
         "salt": secrets.token_hex(4)},
    )  # fmt: skip
    conn.execute(
        """INSERT INTO dropped_readings_daily (day, category, readings)
           SELECT %s::date - d, c, 10 + d * 3
             FROM generate_series(0, 13) d, unnest(%s::text[]) c""",
        (end.date(), [c.value for c in Category]),
    )
    conn.execute(
        """INSERT INTO collector_sessions (client_id, share_group, host, pid, session_expiry_s,
                                          started_at, last_seen, stopped_at)
           VALUES ('hearth-collector-1', 'hearth', 'host-a', 101, 604800, %s, now(), NULL),
                  ('hearth-collector-2', 'hearth', 'host-b', 102, 604800, %s, %s, %s)""",
        (end - timedelta(days=2), end - timedelta(days=2), end - timedelta(hours=5),
         end - timedelta(hours=5)),
    )  # fmt: skip
    conn.execute("VACUUM ANALYZE")
    _step("dead letters, refused readings, replicas", t)
    return {"user": users[1], "prefix": users[1][:5], "reference": reference}


# --- the client ------------------------------------------------------------------------------


class Client:
    """A browser's worth: one cookie jar, the login form, timed GETs."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.jar = http.cookiejar.CookieJar()
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(self.jar))

    def login(self) -> None:
        with self.opener.open(self.base + "/console/login") as resp:
            form = resp.read().decode()
        found = re.search(r'name="csrf" value="([^"]+)"', form)
        assert found is not None
        body = urllib.parse.urlencode({"token": TOKEN, "csrf": found.group(1), "next": "/console/"})
        with self.opener.open(self.base + "/console/login", data=body.encode()) as resp:
            assert "/console/fleet" in resp.url, resp.url

    def get(self, path: str) -> tuple[float, float, float, int]:
        """(wall ms, server query ms, server template ms, bytes)."""
        t0 = time.perf_counter()
        with self.opener.open(self.base + path) as resp:
            body = resp.read()
            timing = resp.headers.get("Server-Timing", "")
        wall = (time.perf_counter() - t0) * 1000
        parts = dict(re.findall(r"(\w+);dur=([\d.]+)", timing))
        return wall, float(parts.get("db", "nan")), float(parts.get("render", "nan")), len(body)


@contextmanager
def service(url: str) -> Iterator[tuple[str, int]]:
    port = _free_port()
    env = {
        **os.environ,
        "HEARTH_DATABASE_URL": url,
        "HEARTH_API_TOKENS": json.dumps({TOKEN: ["admin"]}),
        "HEARTH_LOG_LEVEL": "WARNING",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "features", "serve", "--port", str(port)], cwd=ROOT, env=env
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(base + "/readyz", timeout=1) as r:
                    if r.status == 200:
                        break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        yield base, proc.pid
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]


def run_pages(
    url: str, pages: list[tuple[str, str]], repeat: int
) -> tuple[list[list[object]], float, float]:
    rows: list[list[object]] = []
    with service(url) as (base, pid):
        client = Client(base)
        client.login()
        worst_p95 = 0.0
        for name, path in pages:
            for _ in range(2):  # warm-up: connection, plans, the report's lazy import
                client.get(path)
            samples = [client.get(path) for _ in range(repeat)]
            walls = [s[0] for s in samples]
            p95 = _p95(walls)
            worst_p95 = max(worst_p95, p95)
            rows.append(
                [name, statistics.median(walls), p95, max(walls),
                 statistics.median(s[1] for s in samples), statistics.median(s[2] for s in samples),
                 samples[-1][3] // 1024]
            )  # fmt: skip
        rss = psutil.Process(pid).memory_info().rss / 2**20
    return rows, worst_p95, rss


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--households", type=int, default=2000)
    parser.add_argument("--days", type=int, default=90)
    parser.add_argument("--repeat", type=int, default=15, help="timed fetches per page")
    parser.add_argument("--url", help="an existing database to measure (migrated; nothing else "
                        "is written but the console's summaries)")  # fmt: skip
    parser.add_argument("--keep", action="store_true", help="keep the scratch database")
    parser.add_argument(
        "--prepare",
        action="store_true",
        help="only build the database and keep it (then measure it with --url)",
    )
    args = parser.parse_args()
    bench = Bench()
    os.environ.setdefault("HEARTH_PSEUDONYM_KEY", "bench-pseudonym-key-" + secrets.token_hex(8))
    get_settings.cache_clear()

    @contextmanager
    def database() -> Iterator[str]:
        if args.url:
            yield args.url
            return
        keep = args.keep or args.prepare
        with scratch_database(prefix="hearth_bench_console", keep=keep) as url:
            yield url

    with database() as url, psycopg.connect(url, autocommit=True) as conn:
        migrate(conn)
        if args.url:
            user = str(conn.execute("SELECT min(user_id) FROM users").fetchone()[0])  # type: ignore[index]
            facts: dict[str, object] = {"user": user, "prefix": user[:3], "reference": None}
        else:
            print(f"synthesising {args.households:,} households x {args.days} days", flush=True)
            facts = synthesise(conn, args.households, args.days)
            if args.prepare:
                print(f"prepared: --url {url}", flush=True)
                return 0
        raw = conn.execute(
            "SELECT (SELECT count(*) FROM numeric_readings) "
            "+ (SELECT count(*) FROM categorical_readings)"
        ).fetchone()[0]  # type: ignore[index]
        devices = conn.execute("SELECT count(*) FROM devices").fetchone()[0]  # type: ignore[index]
        first = refresh_console_summaries(conn, full=True)
        conn.execute(  # a minute of new readings, as a live fleet sends them
            """INSERT INTO numeric_readings (time, device_id, user_id, signal, value)
               SELECT now() - random() * INTERVAL '1 minute', device_id, user_id, 'battery_pct', 50
                 FROM devices WHERE kind = 'phone' AND retired_at IS NULL
               ON CONFLICT DO NOTHING"""
        )
        second = refresh_console_summaries(conn, grace=timedelta(seconds=-60))
        print(f"summaries: first refresh {first.seconds:.1f}s ({first.device_signals:,} device "
              f"signals, {first.feature_dates} snapshot dates), incremental "
              f"{second.seconds:.2f}s", flush=True)  # fmt: skip
        user, prefix = str(facts["user"]), str(facts["prefix"])
        pages = [
            ("fleet", "/console/fleet"),
            ("ingest", "/console/ingest"),
            ("consent", "/console/consent"),
            ("features", "/console/features"),
            ("person", f"/console/person?user_id={user}"),
            ("person search", f"/console/person?user_id={prefix}"),
        ]
        rows, worst, rss = run_pages(url, pages, args.repeat)

    print(f"\n{args.households:,} households, {raw:,} raw readings, {devices:,} devices; "
          f"{args.repeat} fetches per page after 2 warm-ups (ms)")  # fmt: skip
    bench.table(["page", "median", "p95", "max", "queries", "template", "KB"], rows)
    print(f"service peak RSS after the run: {rss:.0f} MB")
    for name, _, p95, *_ in rows:
        bench.target(f"{name} p95", float(p95), "<=", TARGET_MS, "ms")  # type: ignore[arg-type]
    figures: dict[str, object] = {
        "households": args.households,
        "raw_rows": raw,
        "worst_p95_ms": f"{worst:.0f}",
    }
    figures.update({f"{str(r[0]).replace(' ', '_')}_p95_ms": f"{float(r[2]):.0f}" for r in rows})  # type: ignore[arg-type]
    figures.update(
        summary_first_s=f"{first.seconds:.1f}",
        summary_incremental_s=f"{second.seconds:.2f}",
        service_rss_mb=f"{rss:.0f}",
    )
    bench.finish(**figures)
    return 0 if worst < TARGET_MS else 1


if __name__ == "__main__":
    raise SystemExit(main())
