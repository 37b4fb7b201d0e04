"""What every benchmark prints (issue 15 §4), in one place.

On a 2-core machine a figure taken while something else runs measures the contention, not
Hearth, so every bench prints, besides its table:

- each target next to its figure, PASS or FAIL;
- the 1-minute load average at start and at end;
- a ``key=value`` last line for scripts, which always ends ``load_start=… load_end=…`` and, when
  the load at start was above 1.5, ``warning=load_start_above_1.5:figures_measure_contention``
  (one token, so ``dict(kv.split("=", 1) for kv in line.split())`` still parses it).

Usage::

    from bench._common import Bench

    bench = Bench()                                   # notes the load average now
    ...                                               # run the workload
    bench.table(["run", "msgs/s", "vs sub", "peak RSS MB"], rows)
    bench.target("one collector", rate, ">=", 50_000, "msg/s")
    bench.finish(rate_msgs_s=f"{rate:.0f}", peak_rss_mb=f"{peak:.0f}")

Real figures come only from a quiet machine: run the bench through ``/work/shared/tools/measure``
(it waits for load < 1 and keeps benchmarks from overlapping), or leave it to whoever can.
Helpers shared by several benches live here too: peak RSS of this process or of others, and a
scratch database cloned from ``hearth_template``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import secrets
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Literal
from urllib.parse import urlsplit, urlunsplit

import psutil
import psycopg

from tests.support.database import drop_database as drop_throwaway_database

CONTENDED_LOAD = 1.5
WARNING = "warning=load_start_above_1.5:figures_measure_contention"
BASE_URL = os.environ.get(
    "HEARTH_BENCH_DATABASE_URL",
    os.environ.get("HEARTH_DATABASE_URL", "postgresql://hearth:hearth@127.0.0.1:5432/hearth"),
)


QUIET_LOAD = 1.0  # as /work/shared/tools/measure waits for


def load_1m() -> float:
    return os.getloadavg()[0]


def settle(max_wait_s: float = 300.0) -> None:
    """Wait (bounded) for a setup's after-effects — written pages reaching the disk, the
    server's checkpoint and autovacuum — to pass, so that what follows is measured on a machine
    as quiet as the one the setup found."""
    os.sync()
    deadline = time.monotonic() + max_wait_s
    while load_1m() >= QUIET_LOAD and time.monotonic() < deadline:
        time.sleep(5)


@dataclass(frozen=True)
class Target:
    name: str
    value: float
    op: Literal[">=", "<="]
    bound: float
    unit: str = ""

    @property
    def passed(self) -> bool:
        return self.value >= self.bound if self.op == ">=" else self.value <= self.bound

    def line(self) -> str:
        verdict = "PASS" if self.passed else "FAIL"
        unit = f" {self.unit}" if self.unit else ""
        return (
            f"  {verdict}  {self.name}: {_num(self.value)}{unit} "
            f"(target {self.op} {_num(self.bound)}{unit})"
        )


class Bench:
    """One benchmark run: the load at start, its targets, and the closing lines."""

    def __init__(self) -> None:
        self.load_start = load_1m()
        self.started = time.monotonic()
        self.targets: list[Target] = []

    @property
    def contended(self) -> bool:
        return self.load_start > CONTENDED_LOAD

    def target(
        self,
        name: str,
        value: float,
        op: Literal[">=", "<="],
        bound: float,
        unit: str = "",
    ) -> Target:
        """Record a target (``value op bound`` passes); printed by ``finish``."""
        t = Target(name, float(value), op, float(bound), unit)
        self.targets.append(t)
        return t

    def table(self, headers: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
        """Print rows under headers: the first column left-aligned, the others right-aligned."""
        cells = [[_cell(v) for v in row] for row in rows]
        widths = [
            max([len(h), *(len(r[i]) for r in cells if i < len(r))]) for i, h in enumerate(headers)
        ]

        def fmt(row: Sequence[str]) -> str:
            return " ".join(
                c.ljust(w) if i == 0 else c.rjust(w)
                for i, (c, w) in enumerate(zip(row, widths, strict=False))
            )

        print(fmt(list(headers)))
        for row in cells:
            print(fmt(row))

    def finish(self, **figures: object) -> str:
        """Print the targets, the load at start and end, and the ``key=value`` last line."""
        load_end = load_1m()
        if self.targets:
            print("targets:")
            for t in self.targets:
                print(t.line())
        print(
            f"load average (1 min): {self.load_start:.2f} at start, {load_end:.2f} at end"
            f" ({time.monotonic() - self.started:.0f} s)"
        )
        if self.contended:
            print(
                f"WARNING: load at start {self.load_start:.2f} > {CONTENDED_LOAD}: on 2 cores "
                "these figures measure contention, not Hearth; rerun through "
                "/work/shared/tools/measure on a quiet machine",
                file=sys.stderr,
            )
        pairs = [f"{k}={_plain(v)}" for k, v in figures.items()]
        pairs += [f"load_start={self.load_start:.2f}", f"load_end={load_end:.2f}"]
        if self.contended:
            pairs.append(WARNING)
        line = " ".join(pairs)
        print(line, flush=True)
        return line


def parse_last_line(text: str) -> dict[str, str]:
    """The ``key=value`` pairs of a bench's last line (for benches that run other benches)."""
    last = text.strip().splitlines()[-1]
    return dict(item.split("=", 1) for item in last.split() if "=" in item)


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, MB (Linux reports KB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


class RssSampler(threading.Thread):
    """Peak RSS over some other processes (each one's own peak), sampled every 20 ms; with
    ``tree``, of each process and its descendants together (a command and its workers)."""

    def __init__(self, pids: Sequence[int], tree: bool = False) -> None:
        super().__init__(daemon=True)
        self.procs = [psutil.Process(p) for p in pids]
        self.tree = tree
        self.peak = 0
        self.stop_flag = threading.Event()

    def _rss(self, p: psutil.Process) -> int:
        total = 0
        for q in [p, *(p.children(recursive=True) if self.tree else ())]:
            with contextlib.suppress(psutil.Error):
                total += q.memory_info().rss
        return total

    def run(self) -> None:
        while not self.stop_flag.is_set():
            for p in self.procs:
                with contextlib.suppress(psutil.Error):
                    self.peak = max(self.peak, self._rss(p))
            self.stop_flag.wait(0.02)

    def stop(self) -> float:
        """Stop sampling; the peak in MB."""
        self.stop_flag.set()
        self.join()
        return self.peak / 2**20


async def offer_at_rate(one: Callable[[float], Awaitable[None]], rate: float, n: int) -> float:
    """An open-loop load: ``n`` calls of ``one(scheduled)`` started at ``rate`` per second
    whatever the answers' latency (latency counts from the scheduled time, so queueing counts);
    the seconds until the last one finished."""
    start = time.perf_counter()
    tasks = []
    for i in range(n):
        scheduled = start + i / rate
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(scheduled)))
    await asyncio.gather(*tasks)
    return time.perf_counter() - start


class KeepAliveClient:
    """The load generator's HTTP/1.1 client: requests written as prepared bytes on connections
    kept open and reused (one request at a time each, as a browser's or a scoring service's
    pool), answers read by their Content-Length. It costs about a quarter of the CPU per request
    of aiohttp's client session, which on a 2-core machine takes that CPU from the service
    being measured."""

    def __init__(self, url: str, headers: dict[str, str]) -> None:
        parts = urlsplit(url)
        self._host, self._port = parts.hostname or "127.0.0.1", parts.port or 80
        self._head = "".join(f"{k}: {v}\r\n" for k, v in {"Host": parts.netloc, **headers}.items())
        self._idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        self._open: list[asyncio.StreamWriter] = []

    def prepare(self, method: str, path: str, body: bytes = b"") -> bytes:
        """One request's bytes."""
        length = f"Content-Length: {len(body)}\r\n" if body or method != "GET" else ""
        return f"{method} {path} HTTP/1.1\r\n{self._head}{length}\r\n".encode() + body

    async def send(self, request: bytes) -> tuple[int, bytes]:
        """(status, body) of a prepared request, on an idle connection or a new one."""
        if self._idle:
            reader, writer = self._idle.pop()
        else:
            reader, writer = await asyncio.open_connection(self._host, self._port)
            self._open.append(writer)
        writer.write(request)
        head = await reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
            elif name.strip().lower() == b"transfer-encoding":
                raise RuntimeError("a chunked answer: KeepAliveClient reads Content-Length only")
        body = await reader.readexactly(length)
        self._idle.append((reader, writer))
        return status, body

    async def close(self) -> None:
        for writer in self._open:
            writer.close()
        for writer in self._open:
            with contextlib.suppress(OSError):
                await writer.wait_closed()


def with_db(url: str, name: str) -> str:
    """``url`` pointing at database ``name``."""
    return urlunsplit(urlsplit(url)._replace(path=f"/{name}"))


def drop_database(name: str, base_url: str = BASE_URL) -> None:
    """Drop a scratch database (tests.support.database: retried while a session holds it)."""
    drop_throwaway_database(name, base_url)


@contextlib.contextmanager
def scratch_database(
    base_url: str = BASE_URL, prefix: str = "hearth_bench", keep: bool = False
) -> Iterator[str]:
    """A throwaway database cloned from ``hearth_template``; yields its URL, drops it after."""
    name = f"{prefix}_{secrets.token_hex(4)}"
    with psycopg.connect(base_url, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}" TEMPLATE hearth_template')
    try:
        yield with_db(base_url, name)
    finally:
        if keep:
            print(f"kept database {name}", file=sys.stderr)
        else:
            drop_database(name, base_url)


def _num(v: float) -> str:
    if v == int(v):
        return f"{int(v):,}"
    if abs(v) >= 100:
        return f"{v:,.0f}"
    return f"{v:.3g}" if abs(v) < 1 else f"{v:.2f}"


def _plain(v: object) -> str:
    """A value for the last line: no thousands separators, at most 3 decimals."""
    if isinstance(v, float):
        return f"{v:.3f}".rstrip("0").rstrip(".")
    return str(v)


def _cell(v: object) -> str:
    if isinstance(v, float):
        return _num(v)
    return str(v)
