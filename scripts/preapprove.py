"""An example of the lender's side: turn a batch of scores into a pre-approval file.

    .venv/bin/python scripts/preapprove.py SCORES_DIR [--min-points 560] [--out FILE] [--sample 3]

Reads the Parquet files of ``python -m features score`` (SCORES_DIR/scores-*.parquet, checked
against SCORES_DIR/manifest.json), applies one illustrative rule — pre-approve when the points
reach ``--min-points`` — and writes a CSV (user_id, points, probability, decision, reasons,
model and feature-set versions). Hearth supplies scores and reasons; the decision rules (cutoffs,
limits, policy exclusions, bureau data) belong to the lender, and this script stands in for
them in the demo (docs/book.md). Prints the counts and a sample of scores with their reasons:
the lowest, the middle and the highest.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import sys
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _scores(directory: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    manifest = json.loads((directory / "manifest.json").read_text())
    rows: list[dict[str, Any]] = []
    for entry in manifest["files"]:
        path = directory / entry["file"]
        if _sha256(path) != entry["sha256"]:
            raise SystemExit(f"{path} does not match its sha256 in manifest.json")
        rows += pq.read_table(path).to_pylist()
    return manifest, rows


def _reasons(row: dict[str, Any]) -> str:
    return "; ".join(
        r["text"] + ("" if r["percentile"] is None else f" (percentile {r['percentile']})")
        for r in row["reasons"]
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scores", type=Path, help="a python -m features score --out directory")
    parser.add_argument("--min-points", type=float, default=560.0)
    parser.add_argument("--out", type=Path, help="CSV to write (default SCORES/preapproved.csv)")
    parser.add_argument("--sample", type=int, default=3, help="scores to print with reasons")
    args = parser.parse_args()
    manifest, rows = _scores(args.scores)
    out = args.out or args.scores / "preapproved.csv"
    approved = 0
    with out.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(
            [
                "user_id",
                "points",
                "probability",
                "decision",
                "reasons",
                "model_version",
                "feature_set_version",
            ]
        )
        for row in sorted(rows, key=lambda r: r["user_id"]):
            decision = "pre-approved" if row["points"] >= args.min_points else "refer"
            approved += decision == "pre-approved"
            writer.writerow(
                [
                    row["user_id"],
                    row["points"],
                    f"{row['probability']:.4f}",
                    decision,
                    _reasons(row),
                    row["model_version"],
                    row["feature_set_version"],
                ]
            )
    print(
        f"pre-approval file: {out} ({approved} of {len(rows)} pre-approved at "
        f">= {args.min_points:g} points; model {manifest['model_version']}, feature set "
        f"{manifest['feature_set_version']}, as of {manifest['as_of']})"
    )
    ranked = sorted(rows, key=lambda r: (r["points"], r["user_id"]))
    if ranked and args.sample > 0:
        picks = sorted({0, len(ranked) // 2, len(ranked) - 1})[: args.sample]
        for i in picks:
            row = ranked[i]
            print(
                f"  {row['user_id']}: {row['points']} points, probability of default "
                f"{row['probability']:.3f}"
            )
            if not row["reasons"]:
                print("      (no feature lowered these points below the average applicant's)")
            for reason in row["reasons"]:
                shown = (
                    "" if reason["percentile"] is None else f", percentile {reason['percentile']}"
                )
                print(f"      {reason['points']:+.1f}  {reason['text']}{shown}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
