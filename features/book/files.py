"""What the export and the batch scorer share on disk: a run's plan, a journal of finished
parts (resumability), checksums, atomic writes, a progress bar and an executor.

A run writes its plan (``plan.json``) first and appends one JSON line per finished part to
``journal.jsonl``; a part's files are written under a temporary name and renamed when whole,
so a run stopped anywhere leaves only whole parts, and running it again does the rest. Parts are
independent: they run one after another, on local processes (``--workers``), or on any
:class:`concurrent.futures.Executor` — ``distributed.Client(address).get_executor()`` runs them
on a Dask cluster.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Callable, Iterable
from concurrent.futures import Executor, Future, ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pyarrow as pa
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from hearth.errors import Conflict

PLAN_FILE = "plan.json"
JOURNAL_FILE = "journal.jsonl"
MANIFEST_FILE = "manifest.json"

J = TypeVar("J")
R = TypeVar("R")


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def floats(values: np.ndarray) -> pa.Array:
    """float64 values with NaN as null."""
    return pa.array(values, pa.float64(), mask=np.isnan(values))


def write_atomically(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def write_json(path: Path, data: Any) -> None:
    write_atomically(path, (json.dumps(data, indent=2, allow_nan=False) + "\n").encode())


def temporary(path: Path) -> Path:
    """Where a file is written before it is renamed to ``path``."""
    return path.with_name(f".{path.name}.tmp")


class Journal:
    """The finished parts of a run, one JSON object per line, by ``index``."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def done(self) -> dict[int, dict[str, Any]]:
        out: dict[int, dict[str, Any]] = {}
        if not self.path.exists():
            return out
        for line in self.path.read_text().splitlines():
            try:
                entry = json.loads(line)
            except ValueError:  # a line cut by a crash: that part is simply done again
                continue
            out[int(entry["index"])] = entry
        return out

    def record(self, entry: dict[str, Any]) -> None:
        with self.path.open("a") as handle:
            handle.write(json.dumps(entry, allow_nan=False) + "\n")
            handle.flush()
            os.fsync(handle.fileno())


def start_run(out: Path, plan: dict[str, Any], identity: Iterable[str], force: bool) -> bool:
    """Prepare ``out`` for a run of ``plan``; True when it resumes a run of the same identity
    (the keys ``identity`` of both plans agree). Another run's directory is refused unless
    ``force``, which removes that run's files first."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / PLAN_FILE
    if path.exists():
        old = json.loads(path.read_text())
        same = all(old.get(k) == plan.get(k) for k in identity)
        if same and not force:
            return True
        if not force:
            differs = ", ".join(k for k in identity if old.get(k) != plan.get(k))
            raise Conflict(
                f"{out} holds another run ({differs} differ): use another directory or --force"
            )
        for name in os.listdir(out):
            if name.endswith((".parquet", ".json", ".jsonl", ".tmp")):
                (out / name).unlink()
    write_json(path, plan)
    return False


# Parts in flight in this process without an executor: while one waits on the database (its
# query or its COPY, in the server's process), the other computes; numpy, Arrow and psycopg's
# waits release the GIL.
IN_PROCESS_THREADS = 2


def run_parts(
    work: Callable[[J], R],
    jobs: list[J],
    executor: Executor | None,
    on_done: Callable[[R], None],
) -> None:
    """Run ``work`` on every job and hand each result to ``on_done`` as it finishes (without an
    executor: :data:`IN_PROCESS_THREADS` threads of this process); the first failure stops the
    run (finished parts stay)."""
    if executor is None:
        with ThreadPoolExecutor(IN_PROCESS_THREADS, thread_name_prefix="book-part") as threads:
            run_parts(work, jobs, threads, on_done)
        return
    pending: list[Future[R]] = [executor.submit(work, job) for job in jobs]
    try:
        for future in as_completed(pending):  # Dask's ClientExecutor futures too
            on_done(future.result())
    finally:
        for future in pending:
            future.cancel()


def progress_bar(enabled: bool, label: str, total: int) -> contextlib.AbstractContextManager[Any]:
    """A rich progress bar of ``total`` users (``advance(n)`` on what it yields), or a
    no-op."""
    if not enabled:
        return contextlib.nullcontext(_NoBar())
    return _Bar(label, total)


class _NoBar:
    def advance(self, n: int) -> None:
        del n


class _Bar:
    def __init__(self, label: str, total: int) -> None:
        self._progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
        )
        self._task = self._progress.add_task(label, total=total)

    def __enter__(self) -> _Bar:
        self._progress.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._progress.__exit__(None, None, None)

    def advance(self, n: int) -> None:
        self._progress.advance(self._task, n)
