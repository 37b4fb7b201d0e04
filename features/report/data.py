"""Inputs of the validation report: the labelled set and point-in-time feature tables.

The labelled set is the simulator's ``ground_truth.csv`` (or any CSV with the same columns):
``user_id``, ``default`` (1 = defaulted), ``application_time`` or ``application_date`` (ISO-8601
timestamp or date, naive means UTC; the most precise column present wins) and, when known,
``latent_score`` (the simulator's hidden stability, higher = more stable), which the report
uses as the oracle.

Feature tables come from one of three sources, always *as of each user's application date*:

* ``engine``: the feature engine's point-in-time computation (``features.engine``);
* ``snapshots``: stored snapshots in ``feature_snapshots`` whose ``as_of`` equals the
  application date (users without one are reported as unscored);
* ``csv``: a file with ``user_id`` and one column per feature (empty = missing) and optional
  ``coverage__<feature>`` columns; for tests, and for data exported elsewhere.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import psycopg
from numpy.typing import NDArray

from features.catalogue import DEFINITIONS, FEATURE_SET_VERSION
from features.engine import FeatureVector, Knowledge, compute_historical
from hearth.db import Conn, connect
from hearth.errors import Invalid, Unavailable
from hearth.replica import catch_up
from hearth.settings import get_settings
from hearth.times import parse_rfc3339

COVERAGE_PREFIX = "coverage__"
# Most precise first: the simulator writes application_time (RFC 3339) and a local-date
# application_date; other labelled sets may have only one of them.
TIME_COLUMNS = ("application_time", "application_ts", "application_at", "application_date")
ENGINE_BATCH_ROWS = 500
FloatArray = NDArray[np.float64]


@dataclass(frozen=True)
class GroundTruth:
    user_ids: list[str]
    defaulted: NDArray[np.int64]
    application_times: list[datetime]
    latent_score: FloatArray  # NaN where unknown

    def __len__(self) -> int:
        return len(self.user_ids)


def parse_time(text: str) -> datetime:
    """Epoch seconds, or RFC 3339 by :func:`hearth.times.parse_rfc3339` with a labelled set's
    leniency: a naive timestamp is UTC and a bare date is midnight UTC."""
    try:
        return datetime.fromtimestamp(float(text), tz=UTC)
    except ValueError:
        return parse_rfc3339(text, what="time", naive_is_utc=True, date_is_midnight=True)


def _label(text: str) -> int:
    value = text.strip().lower()
    if value in ("1", "true", "t", "yes"):
        return 1
    if value in ("0", "false", "f", "no"):
        return 0
    raise ValueError(f"default must be 0/1 or true/false, got {text!r}")


def load_ground_truth(path: Path) -> GroundTruth:
    """Read the labelled set; one-line :class:`Invalid` on a missing file or column."""
    if not path.is_file():
        raise Invalid(
            f"--ground-truth: no such file {str(path)!r} (run python -m device_sim run first)"
        )
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        columns = set(reader.fieldnames or ())
        time_column = next(
            (c for c in TIME_COLUMNS if c in columns),
            None,
        )
        missing = {"user_id", "default"} - columns
        if missing or time_column is None:
            need = sorted(missing | ({"application_date"} if time_column is None else set()))
            raise Invalid(f"--ground-truth {path}: missing column(s) {', '.join(need)}")
        users: list[str] = []
        labels: list[int] = []
        times: list[datetime] = []
        latent: list[float] = []
        for line, row in enumerate(reader, start=2):
            try:
                users.append(row["user_id"].strip())
                labels.append(_label(row["default"]))
                times.append(parse_time(row[time_column]))
                text = (row.get("latent_score") or "").strip()
                latent.append(float(text) if text else math.nan)
            except (ValueError, AttributeError, Invalid) as exc:
                raise Invalid(f"--ground-truth {path}:{line}: {exc}") from None
    if not users:
        raise Invalid(f"--ground-truth {path}: no rows")
    return GroundTruth(
        user_ids=users,
        defaulted=np.asarray(labels, dtype=np.int64),
        application_times=times,
        latent_score=np.asarray(latent, dtype=np.float64),
    )


@dataclass(frozen=True)
class FeatureTable:
    """Feature values for the ground-truth rows, in the same order; NaN = missing.

    ``scored[i]`` is False when the source had no vector at all for row ``i`` (unknown user,
    no consent at the date, no snapshot): such rows cannot be scored and are left out.
    """

    names: list[str]
    values: FloatArray  # [rows, features]
    coverage: FloatArray  # [rows, features]; NaN when the source does not say
    scored: NDArray[np.bool_]
    feature_set_version: str
    families: dict[str, str]
    categories: dict[str, str]
    source: str


def feature_catalogue() -> tuple[str, dict[str, str], dict[str, str], list[str]]:
    """(feature-set version, family by name, category by name, names in catalogue order)."""
    families = {d.name: d.family for d in DEFINITIONS}
    categories = {d.name: d.category for d in DEFINITIONS}
    return FEATURE_SET_VERSION, families, categories, [d.name for d in DEFINITIONS]


def _table_from_vectors(
    vectors: Sequence[Mapping[str, tuple[float | None, float | None]] | None],
    version: str,
    source: str,
) -> FeatureTable:
    catalogue_version, families, categories, order = feature_catalogue()
    seen = {name for vec in vectors if vec is not None for name in vec}
    if version == "unknown" and seen & set(order):
        version = catalogue_version
    names = [n for n in order if n in seen] + sorted(seen - set(order))
    position = {name: j for j, name in enumerate(names)}
    values = np.full((len(vectors), len(names)), np.nan)
    coverage = np.full((len(vectors), len(names)), np.nan)
    scored = np.zeros(len(vectors), dtype=np.bool_)
    for i, vec in enumerate(vectors):
        if vec is None:
            continue
        scored[i] = True
        for name, (value, cov) in vec.items():
            j = position[name]
            if value is not None and math.isfinite(value):
                values[i, j] = value
            if cov is not None:
                coverage[i, j] = cov
    return FeatureTable(
        names=names,
        values=values,
        coverage=coverage,
        scored=scored,
        feature_set_version=version,
        families={n: families.get(n, "other") for n in names},
        categories={n: categories.get(n, "") for n in names},
        source=source,
    )


def _as_float(value: object) -> float | None:
    if value is None or isinstance(value, bool):
        return float(value) if isinstance(value, bool) else None
    if isinstance(value, int | float):
        return float(value)
    return None


def _vector_cells(vector: FeatureVector) -> dict[str, tuple[float | None, float | None]]:
    """Engine ``FeatureVector.values`` → {name: (value, coverage)}."""
    return {
        name: (_as_float(cell.value), _as_float(cell.coverage))
        for name, cell in vector.values.items()
    }


# Computes the report's batches of (user, time) rows: one vector per row (None: unknown user),
# batch by batch in order, calling progress(done, total) on the way. In process by default;
# features.distributed runs the batches as tasks on a Dask cluster.
BatchComputer = Callable[
    [Sequence[Sequence[tuple[str, datetime]]], Knowledge, Callable[[int, int], None] | None],
    Iterable[list[FeatureVector | None]],
]


def features_from_engine(
    database_url: str,
    rows: Sequence[tuple[str, datetime]],
    progress: Callable[[int, int], None] | None = None,
    knowledge: str = "ingested",
    *,
    read_url: str | None = None,
    compute: BatchComputer | None = None,
) -> FeatureTable:
    """Point-in-time vectors from ``features.engine.compute_historical``, in batches.

    ``knowledge`` is :class:`features.engine.Knowledge`: "event" for history replayed through
    the pipeline after the fact (the simulator), "ingested" for data collected live. Reads go
    to ``read_url`` (a replica, hearth.replica) when given; ``compute`` runs the batches
    elsewhere (features.distributed).
    """
    vectors: list[dict[str, tuple[float | None, float | None]] | None] = [None] * len(rows)
    version = "unknown"
    # The engine computes one as-of time at a time: batches of time-sorted rows keep each
    # application hour in as few calls as possible.
    order = sorted(range(len(rows)), key=lambda i: rows[i][1])
    batches = [order[s : s + ENGINE_BATCH_ROWS] for s in range(0, len(order), ENGINE_BATCH_ROWS)]
    run = compute or _in_process(database_url, read_url)
    computed = run([[rows[i] for i in b] for b in batches], Knowledge(knowledge), progress)
    for batch, batch_vectors in zip(batches, computed, strict=True):
        for i, vector in zip(batch, batch_vectors, strict=True):
            if vector is not None:
                version = vector.feature_set_version
                vectors[i] = _vector_cells(vector)
    return _table_from_vectors(vectors, version, "engine")


def _in_process(database_url: str, read_url: str | None) -> BatchComputer:
    """The batches computed here, one after the other, on a replica caught up before each."""

    def run(
        batches: Sequence[Sequence[tuple[str, datetime]]],
        knowledge: Knowledge,
        progress: Callable[[int, int], None] | None,
    ) -> Iterator[list[FeatureVector | None]]:
        total, done = sum(len(b) for b in batches), 0
        with _reading(database_url, read_url) as (primary, conn):
            for batch in batches:
                if conn is not primary:
                    catch_up(primary, conn, get_settings().replica_max_wait_s)
                yield compute_historical(conn, batch, knowledge=knowledge)
                conn.rollback()  # read-only work; end the snapshot between batches
                done += len(batch)
                if progress is not None:
                    progress(done, total)

    return run


@contextmanager
def _reading(database_url: str, read_url: str | None) -> Iterator[tuple[Conn, Conn]]:
    """(primary, the connection to read from): the replica when ``read_url`` is given."""
    with connect(database_url) as primary:
        if read_url is None:
            yield primary, primary
            return
        with connect(read_url, variable="HEARTH_DATABASE_READ_URL") as replica:
            yield primary, replica


SNAPSHOT_SQL = """
SELECT r.ord, s.feature_set_version,
       hearth_snapshot_vector(s.feature_set_version, s.vals, s.covs, s.withheld)
  FROM unnest(%(users)s::text[], %(as_ofs)s::timestamptz[]) WITH ORDINALITY
       AS r(user_id, as_of, ord)
  JOIN LATERAL (
        SELECT f.feature_set_version, f.vals, f.covs, f.withheld
          FROM feature_snapshots f
         WHERE f.user_id = r.user_id AND f.as_of = r.as_of
           AND (%(version)s::text IS NULL OR f.feature_set_version = %(version)s)
         ORDER BY f.computed_at DESC
         LIMIT 1
  ) s ON true
"""


def features_from_snapshots(
    database_url: str,
    rows: Sequence[tuple[str, datetime]],
    version: str | None = None,
    *,
    read_url: str | None = None,
) -> FeatureTable:
    """Stored snapshots at exactly each application date (``materialize`` them first); read
    from ``read_url`` (a replica caught up with the primary) when given."""
    vectors: list[dict[str, tuple[float | None, float | None]] | None] = [None] * len(rows)
    seen_version = "unknown"
    with _reading(database_url, read_url) as (primary, conn):
        if conn is not primary:
            catch_up(primary, conn, get_settings().replica_max_wait_s)
        try:
            cur = conn.execute(
                SNAPSHOT_SQL,
                {
                    "users": [u for u, _ in rows],
                    "as_ofs": [t for _, t in rows],
                    "version": version,
                },
            )
        except psycopg.errors.UndefinedTable:
            raise Unavailable(
                "feature_snapshots table missing: run python -m collector migrate"
            ) from None
        for ordinal, fs_version, vector in cur.fetchall():
            seen_version = str(fs_version)
            payload = json.loads(vector) if isinstance(vector, str) else vector
            assert isinstance(payload, dict)
            vectors[int(str(ordinal)) - 1] = {
                str(name): (_as_float(cell.get("value")), _as_float(cell.get("coverage")))
                for name, cell in payload.items()
            }
    return _table_from_vectors(vectors, seen_version, "snapshots")


def features_from_csv(path: Path, user_ids: Sequence[str]) -> FeatureTable:
    """Feature columns from a CSV keyed by ``user_id``; users absent from it are unscored."""
    if not path.is_file():
        raise Invalid(f"--features-file: no such file {str(path)!r}")
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        columns = list(reader.fieldnames or ())
        if "user_id" not in columns:
            raise Invalid(f"--features-file {path}: needs a user_id column")
        skip = {"user_id", "as_of", "application_date", "default", "latent_score"}
        names = [c for c in columns if c not in skip and not c.startswith(COVERAGE_PREFIX)]
        by_user: dict[str, dict[str, tuple[float | None, float | None]]] = {}
        for line, row in enumerate(reader, start=2):
            cells: dict[str, tuple[float | None, float | None]] = {}
            for name in names:
                try:
                    text = (row.get(name) or "").strip()
                    cov = (row.get(COVERAGE_PREFIX + name) or "").strip()
                    cells[name] = (
                        float(text) if text else None,
                        float(cov) if cov else None,
                    )
                except ValueError:
                    raise Invalid(
                        f"--features-file {path}:{line}: {name} is not a number"
                    ) from None
            by_user[row["user_id"].strip()] = cells
    vectors = [by_user.get(u) for u in user_ids]
    return _table_from_vectors(vectors, "unknown", f"csv:{path.name}")


def shifted_rows(truth: GroundTruth, days: float) -> list[tuple[str, datetime]]:
    """(user, application date + ``days``): the as-of times of the deliberately leaky variant."""
    shift = timedelta(days=days)
    return [(u, t + shift) for u, t in zip(truth.user_ids, truth.application_times, strict=True)]


def application_rows(truth: GroundTruth) -> list[tuple[str, datetime]]:
    return list(zip(truth.user_ids, truth.application_times, strict=True))
