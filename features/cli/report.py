"""Sub-commands of ``python -m features`` for the report.

``python -m features report --ground-truth CSV --out DIR`` trains the reference model on
point-in-time features at each user's application date and writes ``DIR/report.html``,
``DIR/report.json`` and ``DIR/model/``; the headline numbers go to stdout.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from features.cli.engine import add_cluster_arguments, wants_cluster
from hearth.db import connect
from hearth.errors import Invalid
from hearth.settings import get_settings

if TYPE_CHECKING:  # the report package is imported when a command runs (features.cli)
    from features.report.data import BatchComputer, FeatureTable, GroundTruth


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add this family's sub-commands."""
    parser = sub.add_parser(
        "report",
        help="model-validation report (HTML + JSON) from a labelled set",
        description=(
            "Train the reference model out of time on point-in-time features at each user's "
            "application date and write report.html, report.json and model/ to --out."
        ),
    )
    parser.add_argument(
        "--ground-truth",
        type=Path,
        default=Path("out/ground_truth.csv"),
        help="labelled CSV: user_id, default, application_date[, latent_score] "
        "(default: out/ground_truth.csv, written by device_sim)",
    )
    parser.add_argument(
        "--out", type=Path, default=Path("out/report"), help="output directory (created)"
    )
    add_source_arguments(parser)
    parser.add_argument(
        "--leaky-features-file",
        type=Path,
        help="CSV of features computed AFTER the application date (csv source's leakage check)",
    )
    parser.add_argument(
        "--leaky-shift-days",
        type=float,
        default=14.0,
        help="leakage check: also compute features as of application date + N days with the "
        "engine (default 14; 0 disables)",
    )
    parser.add_argument("--model", choices=("logistic", "hgb"), default="logistic")
    parser.add_argument(
        "--test-share",
        type=float,
        default=0.3,
        help="share of the latest applications held out as the test set (default 0.3)",
    )
    add_cluster_arguments(parser)
    parser.set_defaults(func=run_report)


def add_source_arguments(parser: argparse.ArgumentParser) -> None:
    """Where the features of a labelled set come from (``report`` and ``train``)."""
    parser.add_argument(
        "--features-source",
        choices=("engine", "snapshots", "csv"),
        default="engine",
        help="engine: compute point-in-time now (default); snapshots: stored snapshots at the "
        "application dates; csv: --features-file",
    )
    parser.add_argument(
        "--features-file", type=Path, help="CSV of user_id + feature columns (csv source)"
    )
    parser.add_argument(
        "--knowledge",
        choices=("ingested", "event"),
        default="ingested",
        help="engine source: when a row counts as known at T. 'ingested' (default): ingested by "
        "T, for live data; 'event': at its event time, for history replayed after the fact "
        "(the simulator's fleet) — event time < T still holds, so nothing after T leaks",
    )


def _progress(label: str) -> Callable[[int, int], None]:
    def show(done: int, total: int) -> None:
        print(f"[report] {label}: {done}/{total} users", file=sys.stderr, flush=True)

    return show


@contextlib.contextmanager
def _engine_computer(args: argparse.Namespace) -> Iterator[BatchComputer | None]:
    """Where the engine's batches run: a Dask cluster when asked for, else None (here)."""
    if args.features_source == "csv" or not wants_cluster(args):
        yield None
        return
    # Imported when a cluster is asked for: Dask's import costs about a second (features.cli).
    from features import distributed

    settings = get_settings()
    options = distributed.ClusterOptions.resolve(args.scheduler, args.workers, settings)
    assert options is not None
    with connect(settings.database_url, autocommit=True) as conn:
        expect = distributed.DatabaseIdentity.of(conn)
    with distributed.dask_client(options, distributed.local_worker_env(settings)) as client:
        yield distributed.historical_runner(client, expect)


def check_source_arguments(args: argparse.Namespace) -> None:
    """Refuse a source without what it needs, before any work."""
    if args.features_source == "csv" and args.features_file is None:
        raise Invalid("--features-source csv needs --features-file FILE")


def honest_features(
    args: argparse.Namespace, truth: GroundTruth, compute: BatchComputer | None = None
) -> FeatureTable:
    """The features of the labelled set at each application date, from the chosen source
    (``compute``: where the engine's batches run, default here)."""
    # Imported when the command runs: scikit-learn takes seconds (features.cli).
    from features.report import data

    settings = get_settings()
    url, read_url = settings.database_url, settings.database_read_url
    if args.features_source == "csv":
        honest = data.features_from_csv(args.features_file, truth.user_ids)
    elif args.features_source == "engine":
        honest = data.features_from_engine(
            url,
            data.application_rows(truth),
            _progress("features at application"),
            args.knowledge,
            read_url=read_url,
            compute=compute,
        )
    else:
        honest = data.features_from_snapshots(url, data.application_rows(truth), read_url=read_url)
    if not honest.scored.any():
        raise Invalid(
            f"no user in {args.ground_truth} has features from {honest.source} "
            "(did the collector store their data, with consent?)"
        )
    return honest


def run_report(args: argparse.Namespace) -> int:
    # Imported when the command runs: scikit-learn and matplotlib take seconds (features.cli).
    from features.report import data
    from features.report.build import build_report, write_report
    from features.report.summary import format_headline

    if not 0 < args.test_share < 1:
        raise Invalid("--test-share must be between 0 and 1")
    check_source_arguments(args)
    truth = data.load_ground_truth(args.ground_truth)
    leaky_rows = data.shifted_rows(truth, args.leaky_shift_days) if args.leaky_shift_days else []
    leaky: data.FeatureTable | None = None
    with _engine_computer(args) as compute:
        honest = honest_features(args, truth, compute)
        if args.features_source == "csv":
            if args.leaky_features_file is not None:
                leaky = data.features_from_csv(args.leaky_features_file, truth.user_ids)
        elif leaky_rows:
            settings = get_settings()
            label = f"features at application + {args.leaky_shift_days:g} days (leaky variant)"
            leaky = data.features_from_engine(
                settings.database_url,
                leaky_rows,
                _progress(label),
                args.knowledge,
                read_url=settings.database_read_url,
                compute=compute,
            )
    try:
        report, fitted, plots = build_report(
            truth,
            honest,
            leaky,
            kind=args.model,
            test_share=args.test_share,
            leaky_shift_days=args.leaky_shift_days if leaky is not None else None,
        )
    except ValueError as exc:
        raise Invalid(str(exc)) from None
    json_path, html_path = write_report(args.out, report, fitted, plots)
    print(format_headline(report))
    print(f"report: {html_path}")
    print(f"json:   {json_path}")
    return 0
