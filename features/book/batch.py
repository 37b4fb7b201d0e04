"""``python -m features score --model DIR --as-of D --out DIR``: score every exported user.

Reads a finished export at D (:mod:`features.book.export`; made first, into ``OUT/export``,
when no ``--export`` is given), scores each part with the model (:mod:`features.book.scoring`:
probability, points, at most four reason codes, model and feature-set versions), writes
``scores-NNNNN.parquet`` per part and appends every score to the score log
(:mod:`features.book.score_log`) in the same step, one transaction per part with a marker, so a
resumed run logs each score exactly once. Percentiles come from the export's population.
Parts run inline, on local processes or on a Dask cluster, like the export's.

Columns of a scores part: ``user_id``, ``as_of``, ``snapshot_as_of``, ``probability``,
``points``, ``model_version``, ``feature_set_version``, ``reasons`` (a list of at most four
``{feature, value, percentile, points, text}``, most negative points first).
"""

from __future__ import annotations

import getpass
import json
import socket
import time
import uuid
from concurrent.futures import Executor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from features.book import export as book_export
from features.book.files import (
    JOURNAL_FILE,
    MANIFEST_FILE,
    PLAN_FILE,
    Journal,
    floats,
    progress_bar,
    run_parts,
    sha256_of,
    start_run,
    temporary,
    write_json,
)
from features.book.model import load_model
from features.book.population import Population
from features.book.score_log import BATCH, copy_batch_part
from features.book.scoring import (
    HIGHER,
    LOWER,
    NOT_REPORTED,
    Scored,
    ScoringModel,
    score_matrix,
)
from hearth.db import connect
from hearth.errors import Invalid

FORMAT = "hearth-scores/1"

REASON_TYPE = pa.struct(
    [
        pa.field("feature", pa.string()),
        pa.field("value", pa.float64()),
        pa.field("percentile", pa.int16()),
        pa.field("points", pa.float64()),
        pa.field("text", pa.string()),
    ]
)
SCHEMA = pa.schema(
    [
        pa.field("user_id", pa.string(), nullable=False),
        pa.field("as_of", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("snapshot_as_of", pa.timestamp("us", tz="UTC")),
        pa.field("probability", pa.float64(), nullable=False),
        pa.field("points", pa.int32(), nullable=False),
        pa.field("model_version", pa.string(), nullable=False),
        pa.field("feature_set_version", pa.string(), nullable=False),
        pa.field("reasons", pa.list_(REASON_TYPE), nullable=False),
    ]
)

_MODELS: dict[tuple[str, str], ScoringModel] = {}  # per process: (directory, version) → model


def operator() -> str:
    """Who asks for a batch run: ``cli:<user>@<host>``."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"cli:{user}@{socket.gethostname()}"


@dataclass(frozen=True)
class ScoreJob:
    """One export part to score. Plain data, for another process or a Dask worker."""

    index: int
    source: str  # the export part file
    out: str
    model_dir: str
    model_version: str
    database_url: str
    as_of: datetime
    requested_by: str
    batch_id: str
    population: Population


@dataclass(frozen=True)
class ScoreResult:
    out: Path
    as_of: datetime
    model_version: str
    feature_set_version: str
    batch_id: str
    rows: int
    parts: int
    resumed_parts: int
    seconds: float


def _model(directory: str, version: str) -> ScoringModel:
    key = (directory, version)
    if key not in _MODELS:
        model = load_model(Path(directory))
        if model.model_version != version:
            raise Invalid(
                f"{directory}: the model changed during the run ({version} → "
                f"{model.model_version}); run again with --force"
            )
        _MODELS[key] = model
    return _MODELS[key]


def scores_name(index: int) -> str:
    return f"scores-{index:05d}.parquet"


@dataclass(frozen=True)
class Reasons:
    """The reason codes of a scored table, flat: entry ``e`` belongs to row ``row[e]``; a row's
    entries are consecutive, most negative points first (``offsets`` delimit them)."""

    row: np.ndarray
    feature: np.ndarray  # feature index
    direction: np.ndarray  # 0 lower, 1 higher than average, 2 not reported
    value: np.ndarray
    percentile: np.ndarray  # NaN: none
    points: np.ndarray  # rounded to 0.1
    offsets: np.ndarray  # [n + 1]


DIRECTIONS = (LOWER, HIGHER, NOT_REPORTED)


def reasons_of(model: ScoringModel, scored: Scored, population: Population | None) -> Reasons:
    """The reason codes of every scored row (what :func:`features.book.scoring.reason_codes`
    gives row by row, computed column-wise)."""
    idx = scored.reasons  # [n, 4], -1 pads (always at the end of a row)
    valid = idx >= 0
    rows = np.repeat(np.arange(idx.shape[0])[:, None], idx.shape[1], axis=1)[valid]
    feats = idx[valid]
    values = scored.values[rows, feats]
    percentile = np.full(feats.size, np.nan)
    if population is not None:
        for j in np.unique(feats):
            at = feats == j
            percentile[at] = population.percentiles(model.features[j], values[at])
    mean = model.scorecard.mean[feats]
    return Reasons(
        row=rows,
        feature=feats,
        direction=np.where(np.isnan(values), 2, np.where(values < mean, 0, 1)),
        value=values,
        percentile=percentile,
        points=np.round(scored.point_contributions[rows, feats], 1),
        offsets=np.concatenate([[0], np.cumsum(valid.sum(axis=1))]).astype(np.int32),
    )


def _texts(model: ScoringModel) -> np.ndarray:
    """[features, 3]: each feature's text per direction."""
    out = np.empty((len(model.features), len(DIRECTIONS)), dtype=object)
    for j, reason in enumerate(model.reasons):
        for d, direction in enumerate(DIRECTIONS):
            out[j, d] = f"{reason}: {direction}"
    return out


def score_table(
    model: ScoringModel, table: pa.Table, as_of: datetime, population: Population | None
) -> tuple[pa.Table, Reasons]:
    """Score the rows of an export table (see :mod:`features.book.export` for its columns)."""
    n = table.num_rows
    x = np.empty((n, len(model.features)))
    for j, feature in enumerate(model.features):
        x[:, j] = table.column(feature).to_numpy(zero_copy_only=False)
    consented = {
        c: np.asarray(table.column(book_export.CONSENT_PREFIX + c).to_numpy(), dtype=np.bool_)
        for c in set(model.categories)
        if book_export.CONSENT_PREFIX + c in table.column_names
    }
    scored = score_matrix(model, x, model.eligible(consented, n))
    reasons = reasons_of(model, scored, population)
    out = pa.table(
        [
            table.column("user_id"),
            pa.array(
                np.full(n, np.datetime64(as_of.replace(tzinfo=None), "us")),
                pa.timestamp("us", tz="UTC"),
            ),
            table.column("snapshot_as_of"),
            pa.array(scored.probability, pa.float64()),
            pa.array(scored.rounded_points().astype(np.int32), pa.int32()),
            _constant(model.model_version, n),
            _constant(model.feature_set_version, n),
            _reason_column(model, reasons),
        ],
        schema=SCHEMA,
    )
    return out, reasons


def _constant(text: str, n: int) -> pa.Array:
    return pa.array([text] * n, pa.string())


def _reason_column(model: ScoringModel, reasons: Reasons) -> pa.Array:
    """``reasons`` as a list<struct> column."""
    names = np.array(model.features, dtype=object)
    struct = pa.StructArray.from_arrays(
        [
            pa.array(names[reasons.feature], pa.string()),
            floats(reasons.value),
            floats(reasons.percentile).cast(pa.int16()),
            pa.array(reasons.points, pa.float64()),
            pa.array(_texts(model)[reasons.feature, reasons.direction], pa.string()),
        ],
        fields=list(REASON_TYPE),
    )
    return pa.ListArray.from_arrays(
        pa.array(reasons.offsets, pa.int32()), struct, type=SCHEMA.field("reasons").type
    )


def _copy_field(text: str) -> str:
    """A value in COPY's text format."""
    return text.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n")


def log_text(
    model: ScoringModel,
    table: pa.Table,
    reasons: Reasons,
    as_of: datetime,
    requested_by: str,
    batch_id: uuid.UUID,
) -> str:
    """The score log's rows of a scored table as COPY text (columns of
    :data:`features.book.score_log.COLUMNS`); reasons keep feature, text and points only."""
    texts = _texts(model)
    heads = np.empty(texts.shape, dtype=object)
    for j, name in enumerate(model.features):
        for d in range(len(DIRECTIONS)):
            head = json.dumps({"feature": name, "text": texts[j, d]})[:-1] + ', "points": '
            heads[j, d] = _copy_field(head)  # the only part of a row's JSON that may need it
    entries = [
        f"{head}{points!r}}}"
        for head, points in zip(
            heads[reasons.feature, reasons.direction].tolist(), reasons.points.tolist(), strict=True
        )
    ]
    bounds = reasons.offsets.tolist()
    middle = "\t".join(
        _copy_field(v) for v in (as_of.isoformat(), model.model_version, model.feature_set_version)
    )
    tail = f"{_copy_field(requested_by)}\t{BATCH}\t{batch_id}"
    lines = [
        f"{user}\t{middle}\t{points}\t{probability!r}\t"  # user ids: hearth.ids, no escapes
        f"[{', '.join(entries[bounds[i] : bounds[i + 1]])}]\t{tail}\n"
        for i, (user, points, probability) in enumerate(
            zip(
                table.column("user_id").to_pylist(),
                table.column("points").to_pylist(),
                table.column("probability").to_pylist(),
                strict=True,
            )
        )
    ]
    return "".join(lines)


def score_part(job: ScoreJob) -> dict[str, Any]:
    """Score one export part, log its scores (once), write its file; the journal entry."""
    started = time.monotonic()
    model = _model(job.model_dir, job.model_version)
    columns = [
        "user_id",
        "snapshot_as_of",
        *(book_export.CONSENT_PREFIX + c for c in sorted(set(model.categories)) if c),
        *model.features,
    ]
    source = pq.read_table(job.source, columns=columns)
    table, reasons = score_table(model, source, job.as_of, job.population)
    path = Path(job.out) / scores_name(job.index)
    pq.write_table(table, temporary(path))
    batch_id = uuid.UUID(job.batch_id)
    text = log_text(model, table, reasons, job.as_of, job.requested_by, batch_id)
    with connect(job.database_url) as conn:
        logged = copy_batch_part(conn, text, batch_id, job.index, table.num_rows)
    temporary(path).replace(path)
    return {
        "index": job.index,
        "file": path.name,
        "rows": table.num_rows,
        "sha256": sha256_of(path),
        "logged_now": logged,
        "seconds": round(time.monotonic() - started, 3),
    }


def score_export(
    model_dir: Path,
    export_dir: Path,
    out: Path,
    *,
    as_of: datetime,
    database_url: str,
    requested_by: str,
    executor: Executor | None = None,
    progress: bool = True,
    force: bool = False,
) -> ScoreResult:
    """Score a finished export (see the module docstring)."""
    started = time.monotonic()
    model = load_model(model_dir)
    manifest = book_export.read_manifest(export_dir)
    as_of = as_of.astimezone(UTC)
    if datetime.fromisoformat(manifest["as_of"]) != as_of:
        raise Invalid(
            f"{export_dir} is an export as of {manifest['as_of']}, not {as_of.isoformat()}"
        )
    if manifest["feature_set_version"] != model.feature_set_version:
        raise Invalid(
            f"the model was trained on feature set {model.feature_set_version}, the export "
            f"holds {manifest['feature_set_version']}: train on this feature set first"
        )
    absent = sorted(set(model.features) - set(manifest["columns"]["features"]))
    if absent:
        raise Invalid(f"{export_dir} lacks the model's features {', '.join(absent[:5])}")
    population = Population.from_json(
        json.loads((export_dir / manifest["population"]["file"]).read_text())
    )
    plan: dict[str, Any] = {
        "format": FORMAT,
        "model_version": model.model_version,
        "feature_set_version": model.feature_set_version,
        "as_of": as_of.isoformat(),
        "export": str(export_dir.resolve()),
        "export_manifest_sha256": sha256_of(export_dir / MANIFEST_FILE),
        "batch_id": str(uuid.uuid4()),
        "requested_by": requested_by,
        "planned_at": datetime.now(UTC).isoformat(),
    }
    identity = ("format", "model_version", "as_of", "export_manifest_sha256")
    resumed = start_run(out, plan, identity, force)
    if resumed:
        plan = json.loads((out / PLAN_FILE).read_text())
    journal = Journal(out / JOURNAL_FILE)
    done = journal.done() if resumed else {}
    parts = {int(f["file"].split("-")[1].split(".")[0]): f for f in manifest["files"]}
    jobs = [
        ScoreJob(
            index,
            str(export_dir / f["file"]),
            str(out),
            str(model_dir.resolve()),
            model.model_version,
            database_url,
            as_of,
            str(plan["requested_by"]),
            str(plan["batch_id"]),
            population,
        )
        for index, f in sorted(parts.items())
        if index not in done
    ]
    with progress_bar(progress, "score", int(manifest["rows"])) as bar:
        bar.advance(sum(int(e["rows"]) for e in done.values()))

        def finished(entry: dict[str, Any]) -> None:
            journal.record(entry)
            done[int(entry["index"])] = entry
            bar.advance(int(entry["rows"]))

        run_parts(score_part, jobs, executor, finished)
    entries = [done[i] for i in sorted(done)]
    rows = sum(int(e["rows"]) for e in entries)
    write_json(
        out / MANIFEST_FILE,
        {
            "format": FORMAT,
            "model_version": model.model_version,
            "feature_set_version": model.feature_set_version,
            "as_of": as_of.isoformat(),
            "points_scale": model.scale.to_json(),
            "baseline_points": model.baseline_points,
            "export": plan["export"],
            "export_manifest_sha256": plan["export_manifest_sha256"],
            "batch_id": plan["batch_id"],
            "requested_by": plan["requested_by"],
            "finished_at": datetime.now(UTC).isoformat(),
            "rows": rows,
            "files": [{k: e[k] for k in ("file", "rows", "sha256")} for e in entries],
        },
    )
    return ScoreResult(
        out=out,
        as_of=as_of,
        model_version=model.model_version,
        feature_set_version=model.feature_set_version,
        batch_id=str(plan["batch_id"]),
        rows=rows,
        parts=len(entries),
        resumed_parts=len(entries) - len(jobs),
        seconds=time.monotonic() - started,
    )
