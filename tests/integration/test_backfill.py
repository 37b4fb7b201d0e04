"""Backfill (``features materialize --from D1 --to D2``): every as_of of a range from one read
of each chunk of users gives, bit for bit, the snapshots single-date runs write
(docs/invariants.md#8), and it is resumable.

The fleet is built to walk every point-in-time path of the single-date read: local days in
zones a half hour off UTC, buckets with one and with several readings, history from before the
span (tenure), a bucket holding T (an as_of in the middle of an hour) in a packed day that
straddles T, rows ingested late (after some as_ofs of the range) into days whose other buckets
were ingested on time, a packed day whose every reading arrives after some as_ofs (left out
there, not recomputed), rows the rollups have not seen (above the watermark), a category
withdrawn and another granted between two as_ofs, and a device retired in the range. Tenure
moves within the range: late readings arrive before the span, into a day of history known
from the start (earlier in that day) and into a day before all of a user's history.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import numpy as np
import psycopg
import pytest

from features.catalogue import FEATURE_SET_VERSION
from features.engine import Knowledge, compute_span, iter_chunk_results, load_span
from features.engine import load as load_module
from features.rollups import read_watermark, refresh_rollups
from features.snapshots.codec import LAYOUT, STORED
from features.snapshots.materialize import as_of_range, backfill, materialize
from hearth import ledger
from hearth.db import Conn
from hearth.signals import Category
from tests.conftest import ROOT
from tests.support.builders import add_device, add_user, consent, insert_categorical, insert_numeric

D1 = datetime(2026, 6, 1, 13, 30, tzinfo=UTC)  # mid-hour: the bucket holding T is recomputed
AS_OFS = as_of_range(D1, D1 + timedelta(days=6), timedelta(days=1))
USERS = ["bf-kolkata", "bf-newyork", "bf-late-grant", "bf-quiet"]
ING = timedelta(minutes=3)


def _readings(conn: Conn, user: str, seed: int) -> None:
    """150 days of phone, plug and door readings up to the last as_of, some hours twice."""
    rng = random.Random(seed)
    start = D1 - timedelta(days=150)
    numeric, categorical = [], []
    for h in range(0, 157 * 24):
        t = start + timedelta(hours=h, minutes=rng.randrange(60))
        if rng.random() < 0.45:
            numeric.append((t, f"{user}-phone", user, "battery_pct", rng.uniform(5, 100), t + ING))
        if rng.random() < 0.15:  # a second reading in the same hour: n > 1
            t2 = t.replace(minute=59) if t.minute < 59 else t
            numeric.append(
                (t2, f"{user}-phone", user, "battery_pct", rng.uniform(5, 100), t2 + ING)
            )
        if rng.random() < 0.3:
            numeric.append((t, f"{user}-plug", user, "power_w", rng.uniform(0, 300), t + ING))
        if h % 24 in (7, 18) and rng.random() < 0.9:
            numeric.append((t, f"{user}-door", user, "contact_open", 1.0, t + ING))
        if rng.random() < 0.25:
            cell = rng.choice(["u33dc0c", "u33dc1b", "u33dc2d", "u33db8f"])
            categorical.append((t, f"{user}-phone", user, "geohash", cell, t + ING))
        if rng.random() < 0.1:
            net = rng.choice(["wifi", "mobile", "mobile"])
            categorical.append((t, f"{user}-phone", user, "net_type", net, t + ING))
    insert_numeric(conn, numeric)
    insert_categorical(conn, categorical)


@pytest.fixture
def fleet(own_database: tuple[str, str]) -> Iterator[str]:
    url, _ = own_database
    with psycopg.connect(url, autocommit=True) as conn:
        granted = D1 - timedelta(days=400)
        for i, (user, tz) in enumerate(
            zip(USERS, ["Asia/Kolkata", "America/New_York", "Australia/Adelaide", "UTC"],
                strict=True)
        ):  # fmt: skip
            late_grant = user == "bf-late-grant"
            cats = [c for c in Category if not (late_grant and c is Category.PRESENCE)]
            add_user(conn, user, tz=tz, categories=cats, granted_at=granted)
            for kind in ("phone", "plug", "door"):
                add_device(conn, f"{user}-{kind}", user, kind if kind != "door" else "contact")
            if user != "bf-quiet":
                _readings(conn, user, seed=i)
        # Between two as_ofs: a withdrawal, a grant, a retired device.
        consent(conn, "bf-newyork", Category.LOCATION, "withdraw", D1 + timedelta(days=2, hours=5))
        consent(conn, "bf-late-grant", Category.PRESENCE, "grant", D1 + timedelta(days=3, hours=1))
        conn.execute(
            "UPDATE devices SET retired_at = %s WHERE device_id = 'bf-kolkata-plug'",
            (D1 + timedelta(days=1, hours=2),),
        )
        # Late rows: ten days old when they arrive after the second and the fifth as_of.
        late = []
        for k, arrival in enumerate((D1 + timedelta(days=1, hours=6), D1 + timedelta(days=4))):
            for j in range(5):
                t = arrival - timedelta(days=10, hours=j * 7, minutes=k * 13)
                late.append((t, "bf-kolkata-phone", "bf-kolkata", "battery_pct", 2.0, arrival))
        # One bucket known three ways: a reading on time, one arriving between the first two
        # as_ofs and one between the fourth and the fifth (a backfill must recompute it at
        # the second as_of, not reuse the first's: RecomputeMemo).
        hour = (D1 - timedelta(days=20)).replace(minute=0) + timedelta(hours=5)
        late += [
            (hour + timedelta(minutes=5, seconds=17), "bf-kolkata-phone", "bf-kolkata",
             "battery_pct", 61.0, hour + timedelta(minutes=8)),
            (hour + timedelta(minutes=25, seconds=17), "bf-kolkata-phone", "bf-kolkata",
             "battery_pct", 7.0, D1 + timedelta(hours=2)),
            (hour + timedelta(minutes=45, seconds=17), "bf-kolkata-phone", "bf-kolkata",
             "battery_pct", 93.0, D1 + timedelta(days=3, hours=2)),
        ]  # fmt: skip
        # bf-quiet's phone reports from 60 days before D1 on, and two readings from long
        # before arrive late: one inside the span (before the grids of the later as_ofs), one
        # before it. Tenure changes when each arrives.
        quiet = [
            (t, "bf-quiet-phone", "bf-quiet", "battery_pct", 50.0, t + ING)
            for t in (D1 - timedelta(days=60) + timedelta(hours=5 * i) for i in range(320))
        ]
        quiet += [
            (D1 - timedelta(days=89, hours=12), "bf-quiet-phone", "bf-quiet", "battery_pct", 9.0,
             D1 + timedelta(days=3, hours=1)),
            (D1 - timedelta(days=120), "bf-quiet-phone", "bf-quiet", "battery_pct", 8.0,
             D1 + timedelta(days=5, hours=1)),
        ]  # fmt: skip
        # Before the span: bf-newyork's first day of history gets a reading from earlier that
        # day, arriving after the third as_of; bf-late-grant's plug a reading 20 days before
        # all of its history, arriving after the fourth.
        first_day = (D1 - timedelta(days=150)).replace(hour=2, minute=10)
        before = [
            (first_day, "bf-newyork-phone", "bf-newyork", "battery_pct", 40.0,
             D1 + timedelta(days=2, hours=3)),
            (D1 - timedelta(days=170), "bf-late-grant-plug", "bf-late-grant", "power_w", 12.0,
             D1 + timedelta(days=3, hours=12)),
        ]  # fmt: skip
        insert_numeric(conn, late + quiet + before)
        refresh_rollups(conn, full=True)
        # The rollup job last ran between two as_ofs: rows ingested later (these, stored
        # after it ran) are read from raw.
        watermark = D1 + timedelta(days=4, hours=12)
        unseen = [
            (t, "bf-kolkata-phone", "bf-kolkata", "battery_pct", 1.0, t + ING)
            for t in (watermark + timedelta(hours=h, minutes=7) for h in range(1, 30, 4))
        ]
        insert_numeric(conn, unseen)
        conn.execute("UPDATE rollup_watermarks SET watermark = %s", (watermark,))
    yield url


def _stored(conn: Conn) -> dict[tuple[str, datetime], tuple[bytes, bytes, str]]:
    rows = conn.execute(
        "SELECT user_id, as_of, vals, covs, withheld::text FROM feature_snapshots"
        " WHERE feature_set_version = %s",
        (FEATURE_SET_VERSION,),
    ).fetchall()
    return {(str(u), a): (bytes(v), bytes(c), str(w)) for u, a, v, c, w in rows}  # type: ignore[misc, call-overload]


def _tenure_days(stored: tuple[bytes, bytes, str]) -> float:
    values = np.frombuffer(stored[0], dtype=STORED)
    return float(values[LAYOUT.index["days_since_first_seen"]])


def test_backfill_equals_single_date_runs_bit_for_bit(fleet: str) -> None:
    with psycopg.connect(fleet, autocommit=True) as conn:
        result = backfill(conn, AS_OFS, chunk_size=3, refresh=False, progress=False,
                          database_url=fleet)  # fmt: skip
        assert (result.users, result.written, result.skipped) == (4, 28, 0)
        backfilled = _stored(conn)
        assert len(backfilled) == 28
        conn.execute("DELETE FROM feature_snapshots")
        # The same work in worker processes (materialize_chunk, a chunk each).
        spread = backfill(conn, AS_OFS, chunk_size=2, refresh=False, progress=False,
                          database_url=fleet, processes=2)  # fmt: skip
        assert (spread.users, spread.written) == (4, 28)
        assert _stored(conn) == backfilled
        conn.execute("DELETE FROM feature_snapshots")
        for t in AS_OFS:
            materialize(conn, t, refresh=False, progress=False, chunk_size=3)
        single = _stored(conn)
    assert single.keys() == backfilled.keys()
    differ = [key for key in single if single[key] != backfilled[key]]
    assert not differ
    # The paths the fleet was built for did run: reasons change within the range.
    withheld = {(u, t): w for (u, t), (_, _, w) in single.items()}
    assert all('"location": "consent_withdrawn"' in withheld[("bf-newyork", t)] for t in AS_OFS)
    assert "presence" in withheld[("bf-late-grant", AS_OFS[0])]
    assert "presence" not in withheld[("bf-late-grant", AS_OFS[-1])]
    # Tenure grows a day per as_of, and more when earlier history arrives late.
    growth = {
        user: np.diff([_tenure_days(single[(user, t)]) for t in AS_OFS]) for user in USERS[:3]
    }
    assert np.allclose(growth["bf-kolkata"], 1.0)
    assert growth["bf-newyork"][2] > 1.3 and np.allclose(np.delete(growth["bf-newyork"], 2), 1.0)
    jump = growth["bf-late-grant"][3]
    assert jump > 15 and np.allclose(np.delete(growth["bf-late-grant"], 3), 1.0)


def test_span_results_equal_single_date_results_replayed_history(fleet: str) -> None:
    """The same with rows counted as known at their event time (Knowledge.EVENT)."""
    with psycopg.connect(fleet, autocommit=True) as conn:
        tz = ledger.user_timezones(conn, USERS)
        watermark = read_watermark(conn)
        times = AS_OFS[::3]
        span = load_span(conn, USERS, [tz[u] for u in USERS], times, watermark,
                         knowledge=Knowledge.EVENT)  # fmt: skip
        from_span = dict(compute_span(conn, span))
        for t in times:
            ((known, single),) = iter_chunk_results(
                conn, USERS, t, chunk_size=10, knowledge=Knowledge.EVENT
            )
            assert known == USERS
            for name, (value, coverage) in single.items():
                other = from_span[t][name]
                assert np.array_equal(value, other[0], equal_nan=True), (t, name)
                assert np.array_equal(coverage, other[1], equal_nan=True), (t, name)


def test_a_late_bucket_is_recomputed_once_while_what_is_known_of_it_stays_the_same(
    fleet: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A span's memo (features.engine.load.RecomputeMemo) recomputes a late bucket again only
    when an as_of knows more of its raw rows; the arrays are those of recomputing everything
    at every as_of."""
    recomputed: list[int] = []
    real = load_module._recompute

    def counting(conn: Conn, kind: str, keys: np.ndarray, *args: object) -> object:
        recomputed.append(len(keys))
        return real(conn, kind, keys, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(load_module, "_recompute", counting)
    with psycopg.connect(fleet, autocommit=True) as conn:
        tz = ledger.user_timezones(conn, USERS)
        tzs, watermark = [tz[u] for u in USERS], read_watermark(conn)
        span = load_span(conn, USERS, tzs, AS_OFS, watermark)
        with_memo = dict(compute_span(conn, span))
        keys_with_memo, memo = sum(recomputed), span.memo
        recomputed.clear()
        span = load_span(conn, USERS, tzs, AS_OFS, watermark)
        span.memo.read_us = 0  # no cut-off is before it: every as_of recomputes
        without = dict(compute_span(conn, span))
        keys_without = sum(recomputed)
    # Most recomputing here is of the buckets holding each T and of rows above the watermark,
    # which no memo can spare; the late buckets of the span are recomputed once each.
    assert 0 < keys_with_memo < keys_without, (keys_with_memo, keys_without)
    for t in AS_OFS:
        for name, (value, coverage) in without[t].items():
            assert np.array_equal(value, with_memo[t][name][0], equal_nan=True), (t, name)
            assert np.array_equal(coverage, with_memo[t][name][1], equal_nan=True), (t, name)
    # The bucket known three ways was recomputed for two of them (before and after its first
    # late reading arrived; after the second it is usable as rolled up).
    versions: dict[int, set[int]] = {}
    for code, count in memo.versions("numeric"):
        versions.setdefault(code, set()).add(count)
    assert any(len(counts) == 2 for counts in versions.values())


def test_backfill_is_resumable(fleet: str) -> None:
    with psycopg.connect(fleet, autocommit=True) as conn:
        first = backfill(conn, AS_OFS[:3], refresh=False, progress=False)
        assert (first.written, first.skipped) == (12, 0)
        stored = _stored(conn)
        conn.execute(
            "DELETE FROM feature_snapshots WHERE user_id = 'bf-quiet' AND as_of = %s",
            (AS_OFS[1],),
        )
        again = backfill(conn, AS_OFS[:4], refresh=False, progress=False)
        # Only what is missing: bf-quiet's second as_of and the fourth as_of of everyone.
        assert (again.written, again.skipped) == (5, 11)
        now = _stored(conn)
        assert {k: v for k, v in now.items() if k in stored} == stored
        forced = backfill(conn, AS_OFS[:2], refresh=False, progress=False, force=True)
        assert (forced.written, forced.skipped) == (8, 0)


def test_materialize_command_backfills_a_range(fleet: str) -> None:
    env = dict(os.environ, HEARTH_DATABASE_URL=fleet)
    args = ["materialize", "--from", D1.isoformat(), "--to", "2026-06-04T13:30:00Z",
            "--every", "1d", "--users", "bf-kolkata,bf-quiet,nobody", "--no-progress"]  # fmt: skip
    proc = subprocess.run(
        [sys.executable, "-m", "features", *args],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "as_ofs=4" in proc.stdout and "users=2" in proc.stdout and "written=8" in proc.stdout
    bad = subprocess.run(
        [sys.executable, "-m", "features", "materialize", "--from", "2026-06-04",
         "--to", "2026-06-01"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert bad.returncode == 2 and "before --from" in bad.stderr
    on_dask = subprocess.run(
        [sys.executable, "-m", "features", "materialize", "--from", "2026-06-01",
         "--to", "2026-06-04", "--workers", "2"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert on_dask.returncode == 2 and "--processes" in on_dask.stderr
