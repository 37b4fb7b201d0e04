"""Point-in-time: late rows, ingest time and consent withdrawal (docs/invariants.md#8)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from features.engine import compute_historical, compute_vectors, load
from features.rollups import read_watermark, refresh_rollups
from features.snapshots.materialize import materialize
from hearth.signals import Category
from hearth.vectors import CellReason
from tests.support.builders import add_device, add_user, consent, insert_categorical, insert_numeric
from tests.support.service import VECTOR_SQL

T1 = datetime(2026, 6, 1, tzinfo=UTC)
ING = timedelta(minutes=2)


def _battery_days(conn: psycopg.Connection[tuple[object, ...]], user: str, device: str) -> None:
    rows = []
    for d in range(40):
        t = T1 - timedelta(days=d, hours=10)
        rows.append((t, device, user, "battery_pct", 60.0, t + ING))
    insert_numeric(conn, rows)


def test_late_row_changes_only_as_of_after_its_arrival(db: psycopg.Connection) -> None:
    add_user(db, "late-1", granted_at=T1 - timedelta(days=200))
    add_device(db, "late-1-phone", "late-1", "phone")
    _battery_days(db, "late-1", "late-1-phone")
    refresh_rollups(db, full=True)
    materialize(db, T1, users=["late-1"], progress=False)
    stored = db.execute(
        f"SELECT {VECTOR_SQL} FROM feature_snapshots WHERE user_id = 'late-1' AND as_of = %s",
        (T1,),
    ).fetchone()
    assert stored is not None
    before = compute_vectors(db, ["late-1"], T1)[0]
    assert before.values["low_battery_day_share_30d"].value == 0.0
    assert stored[0]["low_battery_day_share_30d"]["value"] == 0.0

    # A reading from 5 days before T1 (and an hour that already has a reading) arrives 2 days
    # after T1; a second one lands in an hour of its own.
    arrival = T1 + timedelta(days=2)
    same_hour = T1 - timedelta(days=5, hours=10) + timedelta(minutes=30)
    own_hour = T1 - timedelta(days=6, hours=3)
    insert_numeric(
        db,
        [
            (same_hour, "late-1-phone", "late-1", "battery_pct", 5.0, arrival),
            (own_hour, "late-1-phone", "late-1", "battery_pct", 4.0, arrival),
        ],
    )
    refresh_rollups(db, full=True)  # back-dated ingest times: rebuild (see refresh_rollups)

    again = compute_vectors(db, ["late-1"], T1)[0]
    assert again.values == before.values
    after = compute_vectors(db, ["late-1"], arrival + timedelta(hours=1))[0]
    share = after.values["low_battery_day_share_30d"].value
    assert share is not None and share > 0.0
    # Historical API: one row per input row, in order, None for an unknown user.
    just_before = arrival - timedelta(seconds=1)
    hist = compute_historical(db, [("late-1", T1), ("ghost", T1), ("late-1", just_before)])
    assert hist[1] is None
    assert hist[0] is not None and hist[0].values == before.values
    assert hist[2] is not None and hist[2].values["low_battery_day_share_30d"].value == 0.0


def test_rows_after_t_are_invisible_even_with_old_ingest(db: psycopg.Connection) -> None:
    add_user(db, "late-2", granted_at=T1 - timedelta(days=200))
    add_device(db, "late-2-phone", "late-2", "phone")
    _battery_days(db, "late-2", "late-2-phone")
    t = T1 + timedelta(minutes=10)  # event after T (e.g. clock skew), ingested "before" T
    insert_numeric(db, [(t, "late-2-phone", "late-2", "battery_pct", 1.0, T1 - timedelta(1))])
    refresh_rollups(db, full=True)
    vec = compute_vectors(db, ["late-2"], T1)[0]
    assert vec.values["low_battery_day_share_30d"].value == 0.0
    # As of 30 minutes after T the reading is known and in the (partial) current hour.
    later = compute_vectors(db, ["late-2"], T1 + timedelta(minutes=30))[0]
    assert (later.values["low_battery_day_share_30d"].value or 0.0) > 0.0


def test_withdrawn_category_contributes_nothing_after_withdrawal(db: psycopg.Connection) -> None:
    add_user(db, "wd-1", granted_at=T1 - timedelta(days=200))
    add_device(db, "wd-1-phone", "wd-1", "phone")
    _battery_days(db, "wd-1", "wd-1-phone")
    rows = []
    for d in range(40):
        for h, cell in ((2, "u33dc0c"), (14, "u33dc1b")):
            t = T1 - timedelta(days=d) + timedelta(hours=h)
            rows.append((t, "wd-1-phone", "wd-1", "geohash", cell, t + ING))
    insert_categorical(db, rows)
    refresh_rollups(db, full=True)
    before = compute_vectors(db, ["wd-1"], T1)[0]
    rg = before.values["radius_of_gyration_km_30d"]
    assert rg.value is not None and rg.value > 0 and rg.coverage > 0.9
    assert rg.reason is None

    withdrawn_at = T1 + timedelta(days=3)
    consent(db, "wd-1", Category.LOCATION, "withdraw", withdrawn_at)
    # Issue 12 §3: a withdrawal purges the category's data whatever its date, so even as of
    # T1 (consented then) the category's features are null with coverage 0 and say why,
    # never a confident value computed from what is left.
    for at, reason in (
        (T1, CellReason.CONSENT_WITHDRAWN),
        (withdrawn_at, CellReason.NOT_CONSENTED),
        (withdrawn_at + timedelta(days=10), CellReason.NOT_CONSENTED),
    ):
        vec = compute_vectors(db, ["wd-1"], at)[0]
        loc = [n for n in vec.values if n.startswith(("radius", "location_", "home_", "week_"))]
        assert loc
        for name in loc:
            assert vec.values[name].value is None, name
            assert vec.values[name].coverage == 0.0, name
            assert vec.values[name].reason is reason, name
        # Other categories still count.
        assert vec.values["mean_daily_min_battery_pct_90d"].value == 60.0
        assert vec.values["mean_daily_min_battery_pct_90d"].reason is None


def test_rows_not_yet_rolled_up_are_read_from_raw(db: psycopg.Connection) -> None:
    """Above the rollup watermark the engine recomputes from raw; after the rollup job has
    run, the rollup path gives the very same vector."""
    now = datetime.now(UTC).replace(microsecond=0)
    add_user(db, "fresh-1", tz="America/New_York", granted_at=now - timedelta(days=100))
    add_device(db, "fresh-1-phone", "fresh-1", "phone")
    add_device(db, "fresh-1-plug", "fresh-1", "plug")
    refresh_rollups(db)  # watermark ≈ now: the rows below are "newer" than the rollups
    ingest = now + timedelta(days=1)  # ingest stamps after the watermark
    rows, cat = [], []
    for d in range(1, 40):
        for h in (1, 7, 13, 19, 23):
            t = now - timedelta(days=d, hours=h)
            rows.append((t, "fresh-1-phone", "fresh-1", "battery_pct", 20.0 + h + d % 7, ingest))
            rows.append((t, "fresh-1-phone", "fresh-1", "charging", float(h in (1, 23)), ingest))
            rows.append((t, "fresh-1-plug", "fresh-1", "power_w", 10.0 * h + d, ingest))
            cat.append((t, "fresh-1-phone", "fresh-1", "geohash", ["u33dc0c", "u33dc1b"][d % 2],
                        ingest))  # fmt: skip
    insert_numeric(db, rows)
    insert_categorical(db, cat)
    as_of = now + timedelta(days=2)
    from_raw = compute_vectors(db, ["fresh-1"], as_of)[0]
    assert from_raw.values["mean_daily_min_battery_pct_30d"].value is not None
    assert from_raw.values["radius_of_gyration_km_30d"].value is not None
    assert compute_vectors(db, ["fresh-1"], now)[0].values["active_day_ratio_30d"].value == 0.0
    result = refresh_rollups(db, grace=timedelta(0))
    assert result.numeric_buckets > 0
    # The watermark (now) is still before the ingest stamps, so force the rollup path by
    # rebuilding: the engine must now read the same numbers from rollups.
    refresh_rollups(db, full=True)
    saved = read_watermark(db)
    db.execute("UPDATE rollup_watermarks SET watermark = %s", (as_of,))
    try:
        from_rollups = compute_vectors(db, ["fresh-1"], as_of)[0]
    finally:  # the watermark is shared by every test of the session
        db.execute("UPDATE rollup_watermarks SET watermark = %s", (saved,))
    # Future ingest stamps would be "new" for every later rollup run of the session.
    for table in ("numeric_readings", "categorical_readings"):
        db.execute(f"DELETE FROM {table} WHERE user_id = 'fresh-1'")
    refresh_rollups(db, full=True)
    for name, cell in from_raw.values.items():
        other = from_rollups.values[name]
        assert other.coverage == cell.coverage, name
        if cell.value is None:
            assert other.value is None, name
        else:
            assert other.value == pytest.approx(cell.value, rel=1e-12, abs=1e-12), name


def test_both_forms_of_recomputation_agree(
    db: psycopg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Pass 2 recomputes dirty buckets either by one scan of the raw rows of their range or by
    an index probe per bucket (features.engine.load._recompute picks by cost); both give
    the same vector, and late rows count only once known."""
    add_user(db, "forms-1", granted_at=T1 - timedelta(days=200))
    add_device(db, "forms-1-phone", "forms-1", "phone")
    arrival = T1 + timedelta(days=1)
    rows, cat = [], []
    for d in range(1, 60):
        for h in (3, 9, 15, 21):
            t = T1 - timedelta(days=d, hours=h)
            late = (d + h) % 3 == 0  # a third of the buckets hold a row ingested after T1
            rows.append((t, "forms-1-phone", "forms-1", "battery_pct", 30.0 + d % 9 + h, t + ING))
            if late:
                rows.append((t + timedelta(minutes=5), "forms-1-phone", "forms-1",
                             "battery_pct", 5.0, arrival))  # fmt: skip
            cat.append((t, "forms-1-phone", "forms-1", "geohash",
                        ["u33dc0c", "u33dc1b", "u33dc2c"][(d * h) % 3],
                        arrival if late else t + ING))  # fmt: skip
    insert_numeric(db, rows)
    insert_categorical(db, cat)
    refresh_rollups(db, full=True)
    vectors = {}
    for form, rows_per_key in (("scan", 10**9), ("probe", -1)):
        monkeypatch.setattr(load, "SCAN_ROWS_PER_KEY", rows_per_key)
        vectors[form] = [
            compute_vectors(db, ["forms-1"], at)[0].values for at in (T1, arrival + ING)
        ]
    assert vectors["scan"] == vectors["probe"]
    at_t1, after = vectors["scan"]
    assert at_t1["low_battery_day_share_30d"].value == 0.0
    share = after["low_battery_day_share_30d"].value
    assert share is not None and share > 0.0
    assert at_t1["radius_of_gyration_km_30d"] != after["radius_of_gyration_km_30d"]
