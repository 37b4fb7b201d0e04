"""End-to-end simulator benchmark (issue 4): a fleet from ``device_sim run`` into a live collector.

On a private Mosquitto (the shipped configuration, authentication on through the
dynamic-security plugin) and one collector replica (``--collectors N``: N replicas in one
shared-subscription group):

1. ``python -m device_sim run`` generates the fleet, registers devices and consent through
   ``python -m collector devices add|consent grant`` (which makes each device's account in
   this broker), publishes every message with each device's own credentials and waits for
   every PUBACK;
2. the clock stops when the collector has acknowledged (= committed) as many messages as the
   simulator published.

The database is a throwaway copy of ``hearth_template`` (dropped at the end) unless
``--database-url`` names one (it is migrated, never dropped; use a fresh one per run: the fleet's
devices are registered into it). Load average is sampled every second: the box is shared.

    .venv/bin/python bench/simulate.py --households 1000 --days 90 --seed 42
Target (issue 4, at 1,000 households x 90 days): total_s <= 600. Last line (bench/_common.py):
``households=… messages=… generate_s=… publish_s=… publish_rate=… sim_s=…
total_s=… stored_rows=… dead_letters=… load_avg=… consistent=1 load_start=… load_end=…``
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import secrets
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import suppress
from pathlib import Path

import psutil
import psycopg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench._common import BASE_URL, Bench, with_db  # noqa: E402
from collector.broker.local_setup import mqtt_url  # noqa: E402
from hearth.broker import COLLECTOR_USERNAME  # noqa: E402
from hearth.migrate import migrate  # noqa: E402
from tests.conftest import free_port  # noqa: E402
from tests.integration.auth_broker import AuthBroker, start_auth_broker  # noqa: E402
from tests.integration.fleet import CollectorProcess, wait_until  # noqa: E402

PSEUDONYM_KEY = "bench-pseudonym-key-0123456789abcdef"
TABLES = ("numeric_readings", "categorical_readings", "dead_letters")


class Sampler(threading.Thread):
    """Every second: the 1-minute load average and the collector's committed-message count."""

    def __init__(self, collectors: list[CollectorProcess]) -> None:
        super().__init__(daemon=True)
        self.collectors = collectors
        self.started = time.monotonic()
        self.samples: list[tuple[float, float, float]] = []  # (seconds, load, acked)
        self.stop_flag = threading.Event()

    def run(self) -> None:
        while not self.stop_flag.is_set():
            acked = acked_total(self.collectors)
            if acked is None:  # a scrape timed out on a busy box
                acked = self.samples[-1][2] if self.samples else 0.0
            self.samples.append((time.monotonic() - self.started, os.getloadavg()[0], acked))
            self.stop_flag.wait(1.0)

    def stop(self) -> tuple[float, float]:
        self.stop_flag.set()
        self.join()
        loads = [load for _, load, _ in self.samples]
        return sum(loads) / max(1, len(loads)), max(loads, default=0.0)

    def timeline(self, every_s: float) -> list[tuple[float, float, float]]:
        out, next_t = [], 0.0
        for t, load, acked in self.samples:
            if t >= next_t:
                out.append((t, load, acked))
                next_t = t + every_s
        return out


def merged_metrics(collectors: list[CollectorProcess]) -> dict[str, float] | None:
    """The replicas' metrics summed; None if one of them did not answer."""
    total: dict[str, float] = {}
    for c in collectors:
        m = c.metrics()
        if not m:
            return None
        for k, v in m.items():
            total[k] = total.get(k, 0.0) + v
    return total


def acked_total(collectors: list[CollectorProcess]) -> float | None:
    m = merged_metrics(collectors)
    return None if m is None else m.get("hearth_collector_messages_acked_total", 0.0)


def backend_cpu_s(dbname: str) -> float:
    """CPU seconds of the PostgreSQL backends serving ``dbname`` (the collector's connections)."""
    total = 0.0
    for p in psutil.process_iter(["name", "cmdline"]):
        with suppress(psutil.Error):
            cmd = " ".join(p.info["cmdline"] or [])
            if cmd.startswith("postgres:") and f" {dbname} " in cmd:
                t = p.cpu_times()
                total += t.user + t.system
    return total


def cpu_s(pid: int) -> float:
    t = psutil.Process(pid).cpu_times()
    return t.user + t.system


def stored_rows(url: str) -> dict[str, int]:
    with psycopg.connect(url) as conn:
        out = {}
        for table in TABLES:
            row = conn.execute(f"SELECT count(*) FROM {table}").fetchone()
            out[table] = int(row[0]) if row else 0
        return out


def key_values(stdout: str) -> dict[str, str]:
    last = stdout.strip().splitlines()[-1]
    return dict(item.split("=", 1) for item in last.split() if "=" in item)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--households", type=int, default=1000)
    parser.add_argument("--days", type=int, default=90)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--database-url", default=None, help="default: a throwaway database")
    parser.add_argument("--collectors", type=int, default=1, help="collector replicas")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    parser.add_argument(
        "sim_args", nargs="*", help="more `device_sim run` arguments (after --), e.g. --window 400"
    )
    args = parser.parse_args()
    bench = Bench()

    throwaway = args.database_url is None
    if throwaway:
        name = f"hearth_bench_{secrets.token_hex(4)}"
        with psycopg.connect(BASE_URL, autocommit=True) as admin:
            admin.execute(f'CREATE DATABASE "{name}" TEMPLATE hearth_template')
        url = with_db(BASE_URL, name)
    else:
        url = args.database_url
    dbname = url.rpartition("/")[2].split("?")[0]
    tmp = Path(tempfile.mkdtemp(prefix="hearth-simbench-"))
    state = tmp / "state"
    env = {
        **os.environ,
        "HEARTH_DATABASE_URL": url,
        "HEARTH_CONFIG": str(ROOT / "tests" / "empty.toml"),
        "HEARTH_PSEUDONYM_KEY": PSEUDONYM_KEY,
        "HEARTH_LOG_LEVEL": "WARNING",
    }
    collectors: list[CollectorProcess] = []
    ab: AuthBroker | None = None
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            migrate(conn)
            row = conn.execute("SELECT count(*) FROM devices").fetchone()
            if row and row[0]:  # also keeps a shared database (e.g. `hearth`) out of this
                raise SystemExit(f"{dbname} already has {row[0]} devices: use a fresh database")
        ab = start_auth_broker(state, url)
        env.update(ab.env())  # `devices add` makes each account through this broker's plugin
        broker, accounts = ab.broker, ab.accounts
        collector_url = mqtt_url(
            COLLECTOR_USERNAME, accounts[COLLECTOR_USERNAME], broker.host, broker.port
        )
        tag = secrets.token_hex(2)
        for i in range(args.collectors):
            collector = CollectorProcess(
                database_url=url,
                mqtt_url=collector_url,
                client_id=f"simbench-{tag}-{i}",
                share_group="simbench",
                http_port=free_port(),
                log_path=tmp / f"collector-{i}.log",
                extra_env={k: env[k] for k in ("HEARTH_CONFIG", "HEARTH_PSEUDONYM_KEY")},
            )
            collectors.append(collector)
            collector.start()
        load_before = os.getloadavg()
        sampler = Sampler(collectors)
        sim_cmd = [
            sys.executable, "-m", "device_sim", "run",
            "--households", str(args.households), "--days", str(args.days),
            "--seed", str(args.seed), "--out", str(tmp / "sim"),
            "--mqtt-url", f"mqtt://{broker.host}:{broker.port}",
            *args.sim_args,
        ]  # fmt: skip
        cpu_children0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        collector_cpu0 = sum(cpu_s(c.pid) for c in collectors)
        broker_cpu0 = cpu_s(broker.process.pid)
        db_cpu0 = backend_cpu_s(dbname)
        started = time.monotonic()
        sampler.start()
        sim = subprocess.run(sim_cmd, env=env, cwd=ROOT, capture_output=True, text=True)
        sim_s = time.monotonic() - started
        ru = resource.getrusage(resource.RUSAGE_CHILDREN)
        sim_cpu = (ru.ru_utime - cpu_children0.ru_utime) + (ru.ru_stime - cpu_children0.ru_stime)
        if sim.returncode != 0:
            sys.stderr.write(sim.stderr[-3000:])
            raise SystemExit(f"device_sim run exited {sim.returncode}")
        kv = key_values(sim.stdout)
        published = int(kv["published"])

        wait_until(
            lambda: (acked_total(collectors) or 0.0) >= published, 3600, "collectors caught up", 0.2
        )
        total_s = time.monotonic() - started
        load_mean, load_max = sampler.stop()
        load_after = os.getloadavg()
        m = merged_metrics(collectors) or {}
        collector_cpu = sum(cpu_s(c.pid) for c in collectors) - collector_cpu0
        broker_cpu = cpu_s(broker.process.pid) - broker_cpu0
        db_cpu = backend_cpu_s(dbname) - db_cpu0
        rows = stored_rows(url)
        dead = sum(v for k, v in m.items() if k.startswith("hearth_collector_dead_lettered_total"))
    finally:
        for c in collectors:
            c.stop()
        if ab is not None:
            ab.stop()
        if throwaway:
            with psycopg.connect(BASE_URL, autocommit=True) as admin:
                admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        if not args.keep:
            subprocess.run(["rm", "-rf", str(tmp)], check=False)

    sys.stderr.write(re.sub(r"\n{2,}", "\n", sim.stderr[-4000:]) + "\n")
    gen_s, reg_s, pub_s = (
        float(kv.get(k, "nan")) for k in ("generate_s", "register_s", "publish_s")
    )
    rate = published / pub_s if pub_s > 0 else 0.0
    acked = m.get("hearth_collector_messages_acked_total", 0.0)
    received = m.get("hearth_collector_messages_received_total", 0.0)
    rows_inserted = sum(
        v for k, v in m.items() if k.startswith("hearth_collector_rows_stored_total")
    )
    duplicates = sum(
        v for k, v in m.items() if k.startswith("hearth_collector_duplicates_skipped_total")
    )
    # Every message the simulator generated was PUBACKed by the broker, received by the
    # collector and acknowledged after its batch committed (stored, or dead-lettered).
    consistent = int(kv["messages"]) == published == int(kv["acked"]) == received == acked
    reasons = {
        k.split('reason="')[1].rstrip('"}'): v
        for k, v in m.items()
        if k.startswith("hearth_collector_dead_lettered_total{") and v
    }
    stored = rows["numeric_readings"] + rows["categorical_readings"]  # same for the same fleet
    every = max(5.0, round(total_s / 20 / 5) * 5)
    print(f"{'t (s)':>6} {'load 1m':>8} {'collector committed':>20}")
    for t, load, done in sampler.timeline(every):
        print(f"{t:>6.0f} {load:>8.2f} {done:>20,.0f}")
    lines = [
        ("households x days", f"{args.households} x {args.days}"),
        ("collector replicas", str(args.collectors)),
        ("messages (simulator)", f"{int(kv['messages']):,}"),
        ("published / PUBACKed", f"{published:,} / {int(kv['acked']):,}"),
        ("collector received", f"{received:,.0f}"),
        ("collector acked (committed)", f"{acked:,.0f}"),
        ("summary consistent", "yes" if consistent else "NO"),
        ("rows inserted (collector)", f"{rows_inserted:,.0f}"),
        ("rows skipped as duplicates", f"{duplicates:,.0f}"),
        ("dead letters", f"{dead:,.0f}"),
        *((f"  reason {r}", f"{v:,.0f}") for r, v in sorted(reasons.items())),
        ("stored rows numeric", f"{rows['numeric_readings']:,}"),
        ("stored rows categorical", f"{rows['categorical_readings']:,}"),
        ("generate s", f"{gen_s:.1f}"),
        ("register s", f"{reg_s:.1f}"),
        ("publish s", f"{pub_s:.1f}"),
        ("publish msg/s", f"{rate:,.0f}"),
        ("simulator wall s", f"{sim_s:.1f}"),
        ("total s (until collector caught up)", f"{total_s:.1f}"),
        ("CPU s simulator (all processes)", f"{sim_cpu:.0f}"),
        ("CPU s collector", f"{collector_cpu:.0f}"),
        ("CPU s mosquitto", f"{broker_cpu:.0f}"),
        ("CPU s postgres backends (this db)", f"{db_cpu:.0f}"),
        ("load avg before (1/5/15 min)", "/".join(f"{x:.2f}" for x in load_before)),
        ("load avg 1-min during (mean/max)", f"{load_mean:.2f}/{load_max:.2f}"),
        ("load avg after (1/5/15 min)", "/".join(f"{x:.2f}" for x in load_after)),
    ]
    bench.table(["what", "value"], lines)
    if (args.households, args.days) == (1000, 90):
        bench.target("1,000 households x 90 days end to end", total_s, "<=", 600, "s")
    bench.finish(
        households=args.households,
        days=args.days,
        messages=kv["messages"],
        published=published,
        collector_acked=f"{acked:.0f}",
        collectors=args.collectors,
        generate_s=f"{gen_s:.1f}",
        publish_s=f"{pub_s:.1f}",
        publish_rate=f"{rate:.0f}",
        sim_s=f"{sim_s:.1f}",
        total_s=f"{total_s:.1f}",
        stored_rows=stored,
        dead_letters=rows["dead_letters"],
        load_avg=f"{load_mean:.2f}",
        consistent=int(consistent),
    )


if __name__ == "__main__":
    main()
