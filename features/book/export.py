"""``python -m features export --as-of D --out DIR``: every user's vector at D, for the book.

Users are split by user id into parts of :data:`DEFAULT_PART_USERS` (the plan); each part reads
its users' vectors at D (:mod:`features.book.vectors`: latest snapshot ≤ D within max_age, only
the categories consented at D) in batches of :data:`FETCH_ROWS` and streams them into
``part-NNNNN.parquet``, one row group per batch, so memory stays flat whatever the number of
users; users left out go to ``left_out-NNNNN.parquet`` with their reason (``no_consent``,
``no_snapshot``). Finished parts are journaled: a run stopped anywhere is resumed by running the
same command again (:mod:`features.book.files`). Parts run one after another, on local
processes (``--workers N``), or on a Dask cluster (any ``concurrent.futures.Executor``).

At the end the population is described (:mod:`features.book.population`: percentiles per
feature, in ``population.json`` and the ``feature_population`` table, which online scores read)
and ``manifest.json`` is written last: feature-set version, as_of, max_age, the columns, each
file with its rows and sha256, and the users left out by reason. An export without a manifest
is unfinished.

Columns of a part: ``user_id``; ``snapshot_as_of`` (the snapshot the row comes from);
``consent__<category>`` (consented at D); ``<feature>`` (float64, null when the value is
null or its category is not consented at D); ``<feature>__coverage`` (float32).
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from features.book import vectors
from features.book.files import (
    JOURNAL_FILE,
    MANIFEST_FILE,
    Journal,
    floats,
    progress_bar,
    run_parts,
    sha256_of,
    start_run,
    temporary,
    write_json,
)
from features.book.population import Population, build_population, sample_step, save_population
from features.catalogue import FEATURE_SET_VERSION
from hearth.db import connect
from hearth.errors import Invalid

FORMAT = "hearth-export/1"
DEFAULT_PART_USERS = 50_000
FETCH_ROWS = 5_000
SAMPLE_BATCH_ROWS = 10_000  # rows read at a time to sample the population
POPULATION_FILE = "population.json"
COVERAGE_SUFFIX = "__coverage"
CONSENT_PREFIX = "consent__"


def schema() -> pa.Schema:
    """The columns of every part, in order."""
    fields = [
        pa.field("user_id", pa.string(), nullable=False),
        pa.field("snapshot_as_of", pa.timestamp("us", tz="UTC")),
    ]
    fields += [pa.field(CONSENT_PREFIX + c, pa.bool_(), nullable=False) for c in vectors.CATEGORIES]
    fields += [pa.field(n, pa.float64()) for n in vectors.NAMES]
    fields += [pa.field(n + COVERAGE_SUFFIX, pa.float32()) for n in vectors.NAMES]
    return pa.schema(fields)


LEFT_OUT_SCHEMA = pa.schema(
    [pa.field("user_id", pa.string(), nullable=False), pa.field("reason", pa.string())]
)


@dataclass(frozen=True)
class PartJob:
    """One part: the users with ``after < user_id ≤ upto`` (``upto`` None: no upper bound).
    Plain data, so a job travels to another process or a Dask worker."""

    index: int
    after: str
    upto: str | None
    database_url: str
    out: str
    as_of: datetime
    max_age_s: float
    fetch_rows: int = FETCH_ROWS


@dataclass(frozen=True)
class ExportResult:
    out: Path
    as_of: datetime
    feature_set_version: str
    rows: int
    left_out: dict[str, int]
    parts: int
    resumed_parts: int
    seconds: float


def part_name(index: int) -> str:
    return f"part-{index:05d}.parquet"


def left_out_name(index: int) -> str:
    return f"left_out-{index:05d}.parquet"


_SCHEMA = schema()


def _batch(book: vectors.BookVectors, keep: np.ndarray) -> pa.RecordBatch:
    rows: slice | np.ndarray = slice(None) if keep.all() else np.flatnonzero(keep)
    # Transposed: one contiguous array per column (decode gives column-major matrices).
    values = book.values.T[:, rows]
    coverage = book.coverage.T[:, rows].astype(np.float32)
    consented = book.consented.T[:, rows]
    users, times = book.user_ids, book.snapshot_as_of
    if not isinstance(rows, slice):
        users, times = [users[i] for i in rows], [times[i] for i in rows]
    columns: list[pa.Array] = [
        pa.array(users, pa.string()),
        pa.array(times, pa.timestamp("us", tz="UTC")),
    ]
    columns += [pa.array(column) for column in consented]
    columns += [floats(column) for column in values]
    columns += [pa.array(column, pa.float32()) for column in coverage]
    return pa.RecordBatch.from_arrays(columns, schema=_SCHEMA)


def export_part(job: PartJob) -> dict[str, Any]:
    """Write one part (and its left-out users); what the journal records of it."""
    started = time.monotonic()
    out = Path(job.out)
    path, left_path = out / part_name(job.index), out / left_out_name(job.index)
    rows, first, last = 0, None, None
    left: list[tuple[str, str]] = []
    max_age = timedelta(seconds=job.max_age_s)
    with (
        connect(job.database_url) as conn,
        pq.ParquetWriter(temporary(path), schema()) as writer,
    ):
        conn.execute("SET jit = off")
        # Every table's range in index order, merge-joined: the planner's bitmap scan of the
        # part's consent events then sorts them all (about a quarter of the query's time).
        conn.execute("SET enable_bitmapscan = off")
        # Binary results: the packed vectors arrive as bytes, not hex text to decode.
        with conn.cursor(name=f"book_export_{job.index}", binary=True) as cur:
            cur.execute(
                vectors.RANGE_SQL,
                vectors.params(job.as_of, max_age, after=job.after, upto=job.upto),
            )
            while batch := cur.fetchmany(job.fetch_rows):
                book = vectors.decode(batch)
                kept = np.flatnonzero(book.in_book)
                if len(kept) < len(book):
                    left += [(u, r) for u, r in zip(book.user_ids, book.left_out, strict=True) if r]
                if len(kept):
                    writer.write_batch(_batch(book, book.in_book))
                    first = first or book.user_ids[kept[0]]
                    last = book.user_ids[kept[-1]]
                    rows += len(kept)
        conn.rollback()
    if rows:
        temporary(path).replace(path)
    else:  # nobody of this part is in the book: no file
        temporary(path).unlink()
    entry: dict[str, Any] = {
        "index": job.index,
        "file": path.name if rows else None,
        "rows": rows,
        "sha256": sha256_of(path) if rows else None,
        "first_user": first,
        "last_user": last,
        "left_out": {
            vectors.NO_CONSENT: sum(1 for _, r in left if r == vectors.NO_CONSENT),
            vectors.NO_SNAPSHOT: sum(1 for _, r in left if r == vectors.NO_SNAPSHOT),
        },
        "left_out_file": None,
        "seconds": round(time.monotonic() - started, 3),
    }
    if left:
        table = pa.table(
            [pa.array([u for u, _ in left]), pa.array([r for _, r in left])],
            schema=LEFT_OUT_SCHEMA,
        )
        pq.write_table(table, temporary(left_path))
        temporary(left_path).replace(left_path)
        entry["left_out_file"] = left_path.name
        entry["left_out_sha256"] = sha256_of(left_path)
    return entry


def plan_parts(database_url: str, part_users: int) -> tuple[list[tuple[str, str | None]], int]:
    """((after, upto) user-id bounds of each part, number of users now)."""
    with connect(database_url, autocommit=True) as conn:
        bounds = [
            str(r[0])
            for r in conn.execute(
                """SELECT user_id FROM (
                       SELECT user_id, row_number() OVER (ORDER BY user_id) AS n FROM users
                   ) t WHERE n %% %(size)s = 0 ORDER BY user_id""",
                {"size": part_users},
            )
        ]
        row = conn.execute("SELECT count(*) FROM users").fetchone()
    total = int(row[0]) if row else 0
    lowers = ["", *bounds]
    uppers: list[str | None] = [*bounds, None]
    return list(zip(lowers, uppers, strict=True)), total


def export_book(
    database_url: str,
    as_of: datetime,
    out: Path,
    *,
    max_age: timedelta,
    part_users: int = DEFAULT_PART_USERS,
    executor: Executor | None = None,
    progress: bool = True,
    force: bool = False,
) -> ExportResult:
    """Export every user's vector at ``as_of`` to ``out`` (see the module docstring)."""
    started = time.monotonic()
    as_of = as_of.astimezone(UTC)
    bounds, total = plan_parts(database_url, part_users)
    plan: dict[str, Any] = {
        "format": FORMAT,
        "as_of": as_of.isoformat(),
        "feature_set_version": FEATURE_SET_VERSION,
        "max_age_s": max_age.total_seconds(),
        "part_users": part_users,
        "parts": [{"index": i, "after": a, "upto": u} for i, (a, u) in enumerate(bounds)],
        "users_at_plan": total,
        "planned_at": datetime.now(UTC).isoformat(),
    }
    identity = ("format", "as_of", "feature_set_version", "max_age_s")
    resumed = start_run(out, plan, identity, force)
    if resumed:
        plan = _read_json(out / "plan.json")  # the first run's parts, so resumes line up
    journal = Journal(out / JOURNAL_FILE)
    done = journal.done() if resumed else {}
    jobs = [
        PartJob(
            int(p["index"]),
            str(p["after"]),
            p["upto"],
            database_url,
            str(out),
            as_of,
            max_age.total_seconds(),
        )
        for p in plan["parts"]
        if int(p["index"]) not in done
    ]
    if resumed and not jobs and (out / MANIFEST_FILE).is_file():  # finished before: as it was
        return _finished(out, as_of, len(done), started)
    with progress_bar(progress, "export", int(plan["users_at_plan"])) as bar:
        bar.advance(sum(_users_of(e) for e in done.values()))

        def finished(entry: dict[str, Any]) -> None:
            journal.record(entry)
            done[int(entry["index"])] = entry
            bar.advance(_users_of(entry))

        run_parts(export_part, jobs, executor, finished)
    entries = [done[i] for i in sorted(done)]
    population = _describe_population(out, entries, as_of)
    write_json(out / POPULATION_FILE, population.to_json())
    with connect(database_url, autocommit=True) as conn:
        save_population(conn, population)
    left_out = _left_out(entries)
    rows = sum(int(e["rows"]) for e in entries)
    write_json(out / MANIFEST_FILE, _manifest(plan, entries, population, rows, left_out))
    return ExportResult(
        out=out,
        as_of=as_of,
        feature_set_version=FEATURE_SET_VERSION,
        rows=rows,
        left_out=left_out,
        parts=len(entries),
        resumed_parts=len(entries) - len(jobs),
        seconds=time.monotonic() - started,
    )


def _finished(out: Path, as_of: datetime, parts: int, started: float) -> ExportResult:
    """The result of an export finished by an earlier run (its manifest is left untouched, so
    a score run that read it still recognises it)."""
    manifest = _read_json(out / MANIFEST_FILE)
    return ExportResult(
        out=out,
        as_of=as_of,
        feature_set_version=str(manifest["feature_set_version"]),
        rows=int(manifest["rows"]),
        left_out={str(k): int(v) for k, v in manifest["left_out"].items()},
        parts=parts,
        resumed_parts=parts,
        seconds=time.monotonic() - started,
    )


def _read_json(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def _users_of(entry: dict[str, Any]) -> int:
    return int(entry["rows"]) + sum(int(v) for v in entry["left_out"].values())


def _left_out(entries: Sequence[dict[str, Any]]) -> dict[str, int]:
    out = {vectors.NO_CONSENT: 0, vectors.NO_SNAPSHOT: 0}
    for entry in entries:
        for reason, n in entry["left_out"].items():
            out[reason] = out.get(reason, 0) + int(n)
    return out


def _describe_population(
    out: Path, entries: Sequence[dict[str, Any]], as_of: datetime
) -> Population:
    """Percentiles from every k-th exported row (in part order), read a batch of rows at a time
    (memory: the sample and one batch, not a part's columns)."""
    total = sum(int(e["rows"]) for e in entries)
    step = sample_step(total)
    sampled: dict[str, list[np.ndarray]] = {n: [] for n in vectors.NAMES}
    offset = 0  # global index of the batch's first row
    for entry in entries:
        if not entry["rows"]:
            continue
        part = pq.ParquetFile(out / entry["file"])
        for batch in part.iter_batches(batch_size=SAMPLE_BATCH_ROWS, columns=list(vectors.NAMES)):
            first = (-offset) % step
            for name in vectors.NAMES:
                column = batch.column(name).to_numpy(zero_copy_only=False)
                # A copy: a strided view would keep the whole batch alive.
                sampled[name].append(np.array(column[first::step], dtype=np.float64))
            offset += batch.num_rows
    columns = {n: np.concatenate(parts) if parts else np.empty(0) for n, parts in sampled.items()}
    return build_population(as_of, FEATURE_SET_VERSION, total, columns)


def _manifest(
    plan: dict[str, Any],
    entries: Sequence[dict[str, Any]],
    population: Population,
    rows: int,
    left_out: dict[str, int],
) -> dict[str, Any]:
    files = [
        {k: e[k] for k in ("file", "rows", "sha256", "first_user", "last_user")}
        for e in entries
        if e["rows"]
    ]
    left_files = [
        {
            "file": e["left_out_file"],
            "rows": sum(e["left_out"].values()),
            "sha256": e["left_out_sha256"],
        }
        for e in entries
        if e.get("left_out_file")
    ]
    return {
        "format": FORMAT,
        "feature_set_version": plan["feature_set_version"],
        "as_of": plan["as_of"],
        "max_age_s": plan["max_age_s"],
        "finished_at": datetime.now(UTC).isoformat(),
        "rows": rows,
        "left_out": left_out,
        "files": files,
        "left_out_files": left_files,
        "population": {"file": POPULATION_FILE, "n_users": population.n_users},
        "columns": {
            "user_id": "user id",
            "snapshot_as_of": "as_of of the snapshot the row comes from (≤ as_of, within max_age)",
            "consent": [CONSENT_PREFIX + c for c in vectors.CATEGORIES],
            "features": list(vectors.NAMES),
            "coverage": [n + COVERAGE_SUFFIX for n in vectors.NAMES],
        },
        "feature_categories": dict(zip(vectors.NAMES, vectors.FEATURE_CATEGORIES, strict=True)),
    }


def read_manifest(directory: Path) -> dict[str, Any]:
    """A finished export's manifest (:class:`hearth.errors.Invalid` when there is none)."""
    path = directory / MANIFEST_FILE
    if not path.is_file():
        raise Invalid(f"{directory} holds no finished export (no {MANIFEST_FILE})")
    return _read_json(path)
