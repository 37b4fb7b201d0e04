"""A simulated fleet ingested through the collector, built once and reused by the benches.

``python -m device_sim run`` publishes ``households x days`` of history ending at a fixed
``end`` into a private Mosquitto (authentication on, the dynamic-security plugin) and one
collector replica stores it, exactly as bench/simulate.py does; the database is kept and named
after its size, seed and end (``hearth_fleet_<households>x<days>_s<seed>_<end>``), so the next
bench run with the same key reuses it instead of ingesting again. A built fleet is a template
that accepts no connections (a comment marks it complete; a half-built one is dropped and
rebuilt): each bench works on a clone (:func:`clone_fleet`), so rollups built or rebuilt by
one run never leak into the next.

The end is fixed (default :data:`DEFAULT_END`) so a reused fleet stays the same fleet; the
collector is told to accept events back to the start of the history
(``HEARTH_MAX_EVENT_AGE_DAYS``) however long ago that now is.

    .venv/bin/python bench/fleet.py --households 400 --days 90     # build (or say it exists)
    .venv/bin/python bench/fleet.py --drop                          # drop the default fleet
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import re
import secrets
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench._common import BASE_URL, drop_database, with_db  # noqa: E402
from collector.broker.local_setup import mqtt_url  # noqa: E402
from hearth.broker import COLLECTOR_USERNAME  # noqa: E402
from hearth.migrate import migrate  # noqa: E402
from hearth.times import parse_rfc3339  # noqa: E402
from tests.conftest import free_port  # noqa: E402
from tests.integration.auth_broker import AuthBroker, start_auth_broker  # noqa: E402
from tests.integration.fleet import CollectorProcess, wait_until  # noqa: E402

DEFAULT_HOUSEHOLDS = 400
DEFAULT_DAYS = 90
DEFAULT_SEED = 42
DEFAULT_END = datetime(2026, 11, 30, tzinfo=UTC)
COMPLETE = "hearth bench fleet: complete"
PSEUDONYM_KEY = "bench-pseudonym-key-0123456789abcdef"


@dataclass(frozen=True)
class Fleet:
    name: str
    households: int
    days: int
    seed: int
    end: datetime
    users: int
    raw_rows: int
    build_s: float | None  # None: reused

    def describe(self) -> str:
        how = "reused" if self.build_s is None else f"built in {self.build_s:.0f}s"
        return (
            f"fleet {self.name}: {self.households} households x {self.days} days to "
            f"{self.end.date().isoformat()} (seed {self.seed}), {self.users} users, "
            f"{self.raw_rows:,} raw rows, {how}"
        )


def fleet_name(households: int, days: int, seed: int, end: datetime) -> str:
    return f"hearth_fleet_{households}x{days}_s{seed}_{end.strftime('%Y%m%d%H')}"


def _is_complete(admin: psycopg.Connection, name: str) -> bool | None:
    """True: built; False: exists but half-built; None: absent."""
    row = admin.execute(
        "SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = %s",
        (name,),
    ).fetchone()
    if row is None:
        return None
    return str(row[0] or "").startswith(COMPLETE)


def _end_sessions(name: str) -> None:
    """End the sessions left on a database that takes no more connections (TimescaleDB's
    scheduler keeps one), so it can be copied: like scripts/services does for hearth_template,
    as the postgres superuser."""
    sql = f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'"
    cmd = ["psql", "-q", "-At", "-c", sql]
    if os.geteuid() == 0:
        cmd = ["su", "postgres", "-c", shlex.join(cmd)]
    else:
        cmd = ["sudo", "-n", "-u", "postgres", *cmd]
    if subprocess.run(cmd, capture_output=True, check=False).returncode != 0:
        print(f"could not end the sessions on {name}: copying it may fail", file=sys.stderr)


def _count(conn: psycopg.Connection, table: str) -> int:
    row = conn.execute(f"SELECT count(*) FROM {table}").fetchone()
    return int(row[0]) if row else 0


@contextlib.contextmanager
def clone_fleet(fleet: Fleet, base_url: str = BASE_URL, keep: bool = False) -> Iterator[str]:
    """A migrated scratch copy of the fleet (a file copy: seconds); its URL. Dropped after."""
    name = f"hearth_bench_{secrets.token_hex(4)}"
    with psycopg.connect(base_url, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{fleet.name}" STRATEGY FILE_COPY')
    url = with_db(base_url, name)
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            migrate(conn)  # the fleet gains migrations added since it was built
        yield url
    finally:
        if keep:
            print(f"kept database {name}", file=sys.stderr)
        else:
            drop_database(name, base_url)


def ensure_fleet(
    households: int = DEFAULT_HOUSEHOLDS,
    days: int = DEFAULT_DAYS,
    seed: int = DEFAULT_SEED,
    end: datetime = DEFAULT_END,
    base_url: str = BASE_URL,
    log: bool = True,
) -> Fleet:
    """The fleet of this key: reused when a complete one exists, else built now."""
    name = fleet_name(households, days, seed, end)
    url = with_db(base_url, name)
    build_s: float | None = None
    state: bool | None
    with psycopg.connect(base_url, autocommit=True) as admin:
        state = _is_complete(admin, name)
        if state is False:
            admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        if state is not True:
            admin.execute(f'CREATE DATABASE "{name}" TEMPLATE hearth_template')
    if state is not True:
        if log:
            print(f"building fleet {name} (device_sim run into a collector)...", flush=True)
        t0 = time.monotonic()
        _build(url, households, days, seed, end)
        build_s = time.monotonic() - t0
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(
                f'COMMENT ON DATABASE "{name}" IS '
                f"'{COMPLETE}; users %s; raw rows %s'"
                % (
                    _count(conn, "users"),
                    _count(conn, "numeric_readings") + _count(conn, "categorical_readings"),
                )
            )
        with psycopg.connect(base_url, autocommit=True) as admin:
            admin.execute(f'ALTER DATABASE "{name}" WITH IS_TEMPLATE true ALLOW_CONNECTIONS false')
        _end_sessions(name)
    with psycopg.connect(base_url, autocommit=True) as admin:
        row = admin.execute(
            "SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = %s",
            (name,),
        ).fetchone()
    counts = dict(re.findall(r"(users|raw rows) (\d+)", str(row[0] if row else "")))
    fleet = Fleet(
        name, households, days, seed, end, int(counts.get("users", 0)),
        int(counts.get("raw rows", 0)), build_s,
    )  # fmt: skip
    if log:
        print(fleet.describe(), flush=True)
    return fleet


def _build(url: str, households: int, days: int, seed: int, end: datetime) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        migrate(conn)
    # Events back to the history's start must still be accepted, however long ago that is.
    age = math.ceil((datetime.now(UTC) - (end - timedelta(days=days))) / timedelta(days=1)) + 2
    tmp = Path(tempfile.mkdtemp(prefix="hearth-fleet-"))
    env = {
        **os.environ,
        "HEARTH_DATABASE_URL": url,
        "HEARTH_CONFIG": str(ROOT / "tests" / "empty.toml"),
        "HEARTH_PSEUDONYM_KEY": PSEUDONYM_KEY,
        "HEARTH_LOG_LEVEL": "WARNING",
        "HEARTH_MAX_EVENT_AGE_DAYS": str(max(age, 90)),
        "HEARTH_RETENTION_DAYS": str(max(age, 90)),
    }
    ab: AuthBroker | None = None
    collector: CollectorProcess | None = None
    try:
        ab = start_auth_broker(tmp / "state", url)
        env.update(ab.env())
        accounts = ab.accounts
        collector = CollectorProcess(
            database_url=url,
            mqtt_url=mqtt_url(
                COLLECTOR_USERNAME, accounts[COLLECTOR_USERNAME], ab.broker.host, ab.broker.port
            ),
            client_id=f"fleet-{seed}",
            share_group="fleet",
            http_port=free_port(),
            log_path=tmp / "collector.log",
            extra_env={
                k: env[k]
                for k in (
                    "HEARTH_CONFIG",
                    "HEARTH_PSEUDONYM_KEY",
                    "HEARTH_MAX_EVENT_AGE_DAYS",
                    "HEARTH_RETENTION_DAYS",
                )
            },
        )
        collector.start()
        sim = subprocess.run(
            [
                sys.executable, "-m", "device_sim", "run",
                "--households", str(households), "--days", str(days), "--seed", str(seed),
                "--end", end.isoformat(), "--out", str(tmp / "sim"),
                "--mqtt-url", f"mqtt://{ab.broker.host}:{ab.broker.port}",
            ],
            env=env, cwd=ROOT, capture_output=True, text=True,
        )  # fmt: skip
        if sim.returncode != 0:
            sys.stderr.write(sim.stderr[-3000:])
            raise SystemExit(f"device_sim run exited {sim.returncode}")
        last = sim.stdout.strip().splitlines()[-1]
        published = int(dict(kv.split("=", 1) for kv in last.split() if "=" in kv)["published"])
        c = collector
        wait_until(lambda: c.acked() >= published, 3600, "collector caught up", 0.5)
    finally:
        if collector is not None:
            collector.stop()
        if ab is not None:
            ab.stop()
        subprocess.run(["rm", "-rf", str(tmp)], check=False)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--households", type=int, default=DEFAULT_HOUSEHOLDS)
    parser.add_argument("--days", type=int, default=DEFAULT_DAYS)
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    parser.add_argument("--end", default=DEFAULT_END.isoformat(), help="RFC 3339")
    parser.add_argument("--drop", action="store_true", help="drop this fleet's database")
    args = parser.parse_args()
    end = parse_rfc3339(args.end, what="--end")
    if args.drop:
        name = fleet_name(args.households, args.days, args.seed, end)
        with psycopg.connect(BASE_URL, autocommit=True) as admin:
            admin.execute(f'ALTER DATABASE "{name}" IS_TEMPLATE false')
        drop_database(name)
        print(f"dropped {name}")
        return 0
    ensure_fleet(args.households, args.days, args.seed, end)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
