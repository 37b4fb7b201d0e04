"""Bulk export benchmark: every user's vector at D to partitioned Parquet, in one process.

    .venv/bin/python bench/export.py [--users 1000000] [--part-users 50000]

A throwaway database (from template ``hearth_template``) gets ``--users`` users, each with
consent to five of the seven categories and one snapshot of the whole feature set (every
feature, values and coverage; the other two categories' cells null by consent), loaded with
COPY (triggers off while loading; consent_state filled from the ledger); then a wait (at most
5 minutes) for the load average to fall below 1 again. Then
``features.book.export.export_book`` writes the book as of D in a process of its own (what
seeding left in this one is not the export's memory), sampled for peak RSS, against the named
baseline: the per-user read through the snapshot store's current API
(``features.snapshots.store.latest_snapshot``, one query per user) on a sample of users.
Peak RSS is sampled by bench/_common.py's ``RssSampler`` (MB = 2**20 bytes, as in every bench).
Targets (issue 17): >= 50,000 users/s per process and <= 1,000 MB, on a quiet machine. The table,
targets, load average and last line come from bench/_common.py (``Bench``); its load at start
is the load once the seeding is done and settled, when the measured work starts (the load
before seeding is printed too). Last line: ``users_per_s=… peak_rss_mb=… load_start=…
load_end=…`` (and the harness's warning token when the load at start was above 1.5).
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench._common import BASE_URL, Bench, RssSampler, load_1m, scratch_database, settle  # noqa: E402

AS_OF = datetime(2026, 1, 1, tzinfo=UTC)
CATEGORIES = ("location", "connectivity", "device_health", "energy", "presence")
USERS_PER_S_TARGET = 50_000.0
PEAK_MB_TARGET = 1000.0
BASELINE_SAMPLE = 2_000


def _seed(url: str, users: int) -> None:
    import numpy as np
    import psycopg

    from features.catalogue import FEATURE_SET_VERSION
    from features.snapshots.codec import LAYOUT, STORED
    from hearth.ledger import CURRENT_NOTICE_VERSION
    from hearth.migrate import migrate

    # Packed as feature_snapshots stores them (features.snapshots.codec): the categories not
    # consented withheld, their values null with coverage 0.
    shown = np.array([c in CATEGORIES for c in LAYOUT.categories])
    withheld = json.dumps(
        {c: "not_consented" for c in sorted(set(LAYOUT.categories)) if c not in CATEGORIES}
    )  # no backslash in it: COPY text as it is
    rng = np.random.default_rng(7)
    with psycopg.connect(url, autocommit=True) as conn:
        migrate(conn)
        for table in ("users", "consent_events"):
            conn.execute(f"ALTER TABLE {table} DISABLE TRIGGER USER")
        with conn.cursor() as cur:
            with cur.copy("COPY users (user_id) FROM STDIN") as copy:
                for i in range(users):
                    copy.write(f"x{i:07d}\n")
            granted = (AS_OF - timedelta(days=200)).isoformat()
            with cur.copy(
                "COPY consent_events (user_id, category, notice_version, action, at) FROM STDIN"
            ) as copy:
                for i in range(users):
                    copy.write(
                        "".join(
                            f"x{i:07d}\t{c}\t{CURRENT_NOTICE_VERSION}\tgrant\t{granted}\n"
                            for c in CATEGORIES
                        )
                    )
            cur.execute(
                """INSERT INTO consent_state
                       (user_id, purpose, category, action, notice_version, at, event_id, since)
                   SELECT user_id, purpose, category, action, notice_version, at, event_id, at
                     FROM consent_events"""
            )
            taken = (AS_OF - timedelta(hours=3)).isoformat()
            with cur.copy(
                "COPY feature_snapshots (user_id, as_of, feature_set_version, vals, covs, withheld)"
                " FROM STDIN"
            ) as copy:
                for start in range(0, users, 10_000):
                    n = min(10_000, users - start)
                    values = rng.random((n, LAYOUT.width)).round(6)
                    coverage = rng.random((n, LAYOUT.width)).round(3)
                    values[:, ~shown] = np.nan
                    coverage[:, ~shown] = 0.0
                    vals = values.astype(STORED).tobytes()
                    covs = coverage.astype(STORED).tobytes()
                    width = LAYOUT.width * STORED.itemsize
                    lines = []
                    for k in range(n):
                        row = slice(k * width, (k + 1) * width)
                        line = (
                            f"x{start + k:07d}\t{taken}\t{FEATURE_SET_VERSION}\t"
                            f"\\\\x{vals[row].hex()}\t\\\\x{covs[row].hex()}\t{withheld}\n"
                        )
                        lines.append(line)
                    copy.write("".join(lines))
        for table in ("users", "consent_events"):
            conn.execute(f"ALTER TABLE {table} ENABLE TRIGGER USER")
        conn.execute("VACUUM ANALYZE")


def _baseline(url: str, users: int) -> float:
    """Users/s of one latest_snapshot() query per user (the store's current API)."""
    import psycopg

    from features.snapshots.store import latest_snapshot

    sample = random.Random(3).sample(range(users), min(BASELINE_SAMPLE, users))
    with psycopg.connect(url, autocommit=True) as conn:
        start = time.perf_counter()
        for i in sample:
            latest_snapshot(conn, f"x{i:07d}", AS_OF)
        return len(sample) / (time.perf_counter() - start)


def child_export(url: str, out: Path, part_users: int) -> None:
    """The export itself, in a process of its own (so that its peak RSS is the export's, not
    what seeding a million users left in this one): prints seconds and rows as JSON."""
    from features.book.export import export_book

    start = time.perf_counter()
    result = export_book(
        url, AS_OF, out, max_age=timedelta(hours=36), part_users=part_users, progress=False
    )
    print(json.dumps({"seconds": time.perf_counter() - start, "rows": result.rows}))


def _export(url: str, out: Path, part_users: int) -> tuple[float, float, int]:
    """(seconds, peak RSS MB of the exporting process, rows) of one export."""
    child = subprocess.Popen(
        [sys.executable, __file__, "_export", url, str(out), str(part_users)],
        stdout=subprocess.PIPE,
    )
    sampler = RssSampler([child.pid])
    sampler.start()
    try:
        stdout, _ = child.communicate()
    finally:
        peak_mb = sampler.stop()
    if child.returncode != 0:
        raise SystemExit(f"the export failed (exit {child.returncode})")
    done = json.loads(stdout.decode().strip().splitlines()[-1])
    return float(done["seconds"]), peak_mb, int(done["rows"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=1_000_000)
    parser.add_argument("--part-users", type=int, default=50_000)
    args = parser.parse_args()

    load_before_seed = load_1m()
    with scratch_database(BASE_URL) as url:
        t0 = time.perf_counter()
        _seed(url, args.users)
        print(f"seeded {args.users} users in {time.perf_counter() - t0:.0f}s", file=sys.stderr)
        settle()
        bench = Bench()  # the load when the export starts: seeding is not measured
        baseline = _baseline(url, args.users)
        with tempfile.TemporaryDirectory() as tmp:
            seconds, peak_mb, rows = _export(url, Path(tmp) / "book", args.part_users)
            size_mb = sum(p.stat().st_size for p in (Path(tmp) / "book").iterdir()) / 1e6
            manifest = json.loads((Path(tmp) / "book" / "manifest.json").read_text())
    rate = args.users / seconds

    bench.table(
        ["run", "users/s", "ratio", "peak MB", "seconds"],
        [
            ["export (parts, manifest, population)", f"{rate:.0f}", f"{rate / baseline:.2f}",
             f"{peak_mb:.0f}", f"{seconds:.1f}"],
            ["  baseline: latest_snapshot() per user", f"{baseline:.0f}", "1.00", "", ""],
        ],
    )  # fmt: skip
    print(
        f"rows {rows} of {args.users} users; {len(manifest['files'])} files, {size_mb:.0f} MB; "
        f"left out {manifest['left_out']}"
    )
    print(f"load average (1 min) before seeding: {load_before_seed:.2f}")
    bench.target("export users/s per process", rate, ">=", USERS_PER_S_TARGET, "users/s")
    bench.target("export peak RSS", peak_mb, "<=", PEAK_MB_TARGET, "MB")
    bench.finish(users_per_s=f"{rate:.0f}", peak_rss_mb=f"{peak_mb:.0f}")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_export":
        child_export(sys.argv[2], Path(sys.argv[3]), int(sys.argv[4]))
    else:
        main()
