"""Sub-commands of ``python -m features`` for the book: ``train``, ``export`` and ``score``
(docs/book.md)."""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing
import re
from collections.abc import Iterator
from concurrent.futures import Executor, ProcessPoolExecutor
from datetime import timedelta
from pathlib import Path

from features.book.export import DEFAULT_PART_USERS, export_book
from features.book.scale import DEFAULT_ODDS, DEFAULT_PDO, DEFAULT_POINTS, PointsScale
from features.cli.engine import parse_as_of
from features.cli.report import add_source_arguments, check_source_arguments, honest_features
from hearth.errors import Conflict, Invalid
from hearth.settings import get_settings

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")
_UNIT_S = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> timedelta:
    """``36h``, ``7d``, ``90m``, ``3600s`` or plain seconds."""
    match = _DURATION.match(text)
    if match is None or float(match[1]) <= 0:
        raise Invalid(f"--max-age {text!r}: use a positive duration such as 36h, 7d or 90m")
    return timedelta(seconds=float(match[1]) * _UNIT_S[match[2]])


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add this family's sub-commands."""
    _register_train(sub)
    _register_export(sub)
    _register_score(sub)


def _register_train(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    t = sub.add_parser(
        "train",
        help="fit the reference model and write a versioned model directory",
        description="Fit the logistic reference model (the report's cross-validation choices) "
        "out of time on point-in-time features at each user's application date, and write "
        "OUT/model.skops (skops' secure format: loading it cannot run code) and OUT/model.json "
        "(the model card). Exit 2 when the labelled set is too small to train and validate.",
    )
    t.add_argument("--ground-truth", type=Path, required=True, help="labelled CSV (as report)")
    t.add_argument("--out", type=Path, required=True, help="model directory, e.g. models/NAME")
    add_source_arguments(t)
    t.add_argument("--test-share", type=float, default=0.3, help="held-out share (default 0.3)")
    t.add_argument(
        "--points",
        type=float,
        default=DEFAULT_POINTS,
        help="points at --odds (default %(default)g)",
    )
    t.add_argument(
        "--odds",
        type=float,
        default=DEFAULT_ODDS,
        help="good:bad odds at --points (default %(default)g:1)",
    )
    t.add_argument(
        "--pdo",
        type=float,
        default=DEFAULT_PDO,
        help="points to double the odds (default %(default)g)",
    )
    t.add_argument("--force", action="store_true", help="overwrite a model already in --out")
    t.set_defaults(func=_train)


def _register_export(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    e = sub.add_parser(
        "export",
        help="write every consented user's vector at a date to partitioned Parquet",
        description="Each user's latest snapshot with as_of <= D within --max-age, only for "
        "users with an active credit-scoring consent at D and only their consented categories "
        "(the rest null), to OUT/part-NNNNN.parquet, with manifest.json (feature-set version, "
        "as_of, rows and sha256 per file, users left out by reason) and population.json. "
        "Resumable: run it again to finish an interrupted export.",
    )
    _common(e)
    e.add_argument(
        "--part-users",
        type=int,
        default=DEFAULT_PART_USERS,
        help="users per part file (default %(default)s)",
    )
    e.set_defaults(func=_export)


def _register_score(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    s = sub.add_parser(
        "score",
        help="score every exported user with a model (batch), with reason codes",
        description="Score an export at D (made into OUT/export first when --export is not "
        "given) with the model in --model: probability, points, up to 4 reason codes, model "
        "and feature-set versions, to OUT/scores-NNNNN.parquet and manifest.json; every score "
        "is appended to the score log. Resumable like export.",
    )
    s.add_argument("--model", type=Path, required=True, help="model directory (train --out)")
    _common(s)
    s.add_argument("--export", type=Path, help="a finished export at --as-of to score")
    s.add_argument("--requested-by", help="who asks, for the score log (default cli:USER@HOST)")
    s.set_defaults(func=_score)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--as-of", required=True, help="YYYY-MM-DD (midnight UTC) or RFC 3339")
    parser.add_argument("--out", type=Path, required=True, help="output directory (created)")
    parser.add_argument(
        "--max-age",
        help="oldest snapshot taken, before as_of (default: HEARTH_SNAPSHOT_STALE_AFTER_S)",
    )
    where = parser.add_mutually_exclusive_group()
    where.add_argument(
        "--workers",
        type=int,
        default=0,
        help="local worker processes for the parts (default 0: in this process)",
    )
    where.add_argument(
        "--scheduler",
        metavar="tcp://HOST:8786",
        help="run the parts as tasks on this Dask cluster; its workers write the part files, "
        "so --out must be a directory they share (HEARTH_DASK_SCHEDULER is not used here)",
    )
    parser.add_argument(
        "--force", action="store_true", help="start over in an --out of another run"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def _max_age(args: argparse.Namespace) -> timedelta:
    if args.max_age:
        return parse_duration(args.max_age)
    return timedelta(seconds=get_settings().snapshot_stale_after_s)


@contextlib.contextmanager
def _executor(args: argparse.Namespace) -> Iterator[Executor | None]:
    """Where the parts run: ``--workers N`` local processes, the Dask cluster of ``--scheduler``
    (its executor runs the same parts), or None (in this process). Only an explicit
    ``--scheduler``: a cluster's workers write the part files, and HEARTH_DASK_SCHEDULER is set
    where they do not share the command's output directory (docker-compose.yml's demo)."""
    if args.workers < 0:
        raise Invalid("--workers must be 0 or more")
    if args.workers:
        # spawn: a forked child would inherit the progress bar's thread and open sockets.
        pool = ProcessPoolExecutor(args.workers, mp_context=multiprocessing.get_context("spawn"))
        try:
            yield pool
        finally:
            pool.shutdown(cancel_futures=True)
        return
    if not args.scheduler:
        yield None
        return
    # Imported when a cluster is asked for: Dask's import costs about a second (features.cli).
    from features import distributed

    settings = get_settings()
    options = distributed.ClusterOptions.resolve(args.scheduler, None, settings)
    assert options is not None
    with distributed.cluster_executor(options, distributed.local_worker_env(settings)) as ex:
        yield ex


def _train(args: argparse.Namespace) -> int:
    # Imported when the command runs: scikit-learn takes seconds (features.cli).
    from features.report.data import load_ground_truth
    from features.report.train import train_model, write_model

    if not 0 < args.test_share < 1:
        raise Invalid("--test-share must be between 0 and 1")
    check_source_arguments(args)
    try:
        scale = PointsScale(args.points, args.odds, args.pdo)
    except ValueError as exc:
        raise Invalid(str(exc)) from None
    if (args.out / "model.json").exists() and not args.force:  # before minutes of fitting
        raise Conflict(f"{args.out} already holds a model: use another directory or --force")
    truth = load_ground_truth(args.ground_truth)
    table = honest_features(args, truth)
    sources = {"ground_truth": args.ground_truth.name, "knowledge": args.knowledge}
    fitted, card = train_model(
        truth, table, test_share=args.test_share, scale=scale, sources=sources
    )
    model = write_model(args.out, fitted, card, force=args.force)
    metrics = card["metrics"]
    print(
        f"model_version={model.model_version} feature_set_version={model.feature_set_version} "
        f"features={len(model.features)} cv_auc={metrics['cv_auc']:.3f} "
        f"test_auc={metrics['test_auc']:.3f} ks={metrics['ks']:.3f} "
        f"psi_score={metrics['psi_score']:.3f} out={args.out}"
    )
    return 0


def _export(args: argparse.Namespace) -> int:
    if args.part_users < 1:
        raise Invalid("--part-users must be at least 1")
    as_of = parse_as_of(args.as_of)
    with _executor(args) as executor:
        result = export_book(
            get_settings().database_url,
            as_of,
            args.out,
            max_age=_max_age(args),
            part_users=args.part_users,
            executor=executor,
            progress=not args.no_progress,
            force=args.force,
        )
    print(
        f"as_of={result.as_of.isoformat()} version={result.feature_set_version} "
        f"rows={result.rows} left_out_no_consent={result.left_out.get('no_consent', 0)} "
        f"left_out_no_snapshot={result.left_out.get('no_snapshot', 0)} parts={result.parts} "
        f"resumed_parts={result.resumed_parts} seconds={result.seconds:.1f} out={result.out}"
    )
    return 0


def _score(args: argparse.Namespace) -> int:
    # Imported when the command runs: scikit-learn and skops take seconds (features.cli).
    from features.book.batch import operator, score_export

    as_of = parse_as_of(args.as_of)
    url = get_settings().database_url
    with _executor(args) as executor:
        export_dir = args.export
        if export_dir is None:
            export_dir = args.out / "export"
            export_book(
                url,
                as_of,
                export_dir,
                max_age=_max_age(args),
                executor=executor,
                progress=not args.no_progress,
                force=args.force,
            )
        result = score_export(
            args.model,
            export_dir,
            args.out,
            as_of=as_of,
            database_url=url,
            requested_by=args.requested_by or operator(),
            executor=executor,
            progress=not args.no_progress,
            force=args.force,
        )
    print(
        f"as_of={result.as_of.isoformat()} model_version={result.model_version} "
        f"feature_set_version={result.feature_set_version} rows={result.rows} "
        f"parts={result.parts} resumed_parts={result.resumed_parts} batch_id={result.batch_id} "
        f"seconds={result.seconds:.1f} out={result.out}"
    )
    return 0
