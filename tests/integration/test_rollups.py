"""Hourly rollups: exact under duplicate, out-of-order and late delivery; idempotent."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import psycopg

from features.rollups import read_watermark, refresh_rollups
from tests.support.builders import add_device, add_user

BASE = datetime(2026, 3, 1, tzinfo=UTC)


def _readings(device: str, user: str = "roll-user") -> list[tuple[datetime, str, str, str, object]]:
    rng = random.Random(7)
    rows: list[tuple[datetime, str, str, str, object]] = []
    for i in range(300):
        t = BASE + timedelta(minutes=rng.randrange(0, 60 * 24 * 3), seconds=i % 60)
        rows.append((t, device, user, "power_w", float(rng.randrange(0, 2000))))
        rows.append((t, device, user, "geohash", rng.choice(["u33dc0c", "u33dc1b"])))
    return rows


def _insert(conn: psycopg.Connection, rows: list[tuple[datetime, str, str, str, object]]) -> None:
    """Like the collector: default ingested_at = now(), duplicates ignored by natural key."""
    with conn.cursor() as cur:
        for table, kind in (("numeric_readings", float), ("categorical_readings", str)):
            cur.executemany(
                f"INSERT INTO {table} (time, device_id, user_id, signal, value) "
                "VALUES (%s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
                [r for r in rows if isinstance(r[4], kind)],
            )


def _rollups(conn: psycopg.Connection, device: str) -> list[tuple[object, ...]]:
    numeric = conn.execute(
        """SELECT bucket, signal, n, sum, sumsq, min, max, first, last, first_time, last_time
             FROM rollup_numeric_hourly WHERE device_id = %s ORDER BY bucket, signal""",
        (device,),
    ).fetchall()
    categorical = conn.execute(
        """SELECT bucket, signal, value, share, n FROM rollup_categorical_hourly
            WHERE device_id = %s ORDER BY bucket, signal""",
        (device,),
    ).fetchall()
    return numeric + categorical


def test_duplicate_and_out_of_order_delivery_give_identical_rollups(
    db: psycopg.Connection,
) -> None:
    user, dev_a, dev_b = (f"roll-{x}" for x in ("user", "a", "b"))
    add_user(db, user, granted_at=BASE - timedelta(days=1))
    add_device(db, dev_a, user, "plug")
    add_device(db, dev_b, user, "plug")
    in_order = sorted(_readings(dev_a, user), key=lambda r: r[0])
    _insert(db, in_order)
    refresh_rollups(db)

    # Same readings for device b: shuffled, delivered in three batches with redeliveries,
    # and the rollup job running between batches (each batch is "late" for the previous run).
    shuffled = [(t, dev_b, u, s, v) for t, _, u, s, v in _readings(dev_a, user)]
    random.Random(3).shuffle(shuffled)
    third = len(shuffled) // 3
    batches = [shuffled[:third], shuffled[third : 2 * third], shuffled[2 * third :]]
    for i, batch in enumerate(batches):
        _insert(db, batch + shuffled[: 20 * i])  # redelivery of earlier rows
        result = refresh_rollups(db, grace=timedelta(0))
        assert result.numeric_buckets > 0
    a, b = _rollups(db, dev_a), _rollups(db, dev_b)
    assert len(a) > 50
    assert a == b

    # Idempotent: another run changes nothing and has nothing to do.
    again = refresh_rollups(db, grace=timedelta(0))
    assert (again.numeric_buckets, again.categorical_buckets) == (0, 0)
    assert _rollups(db, dev_b) == b
    assert read_watermark(db) == again.watermark

    # A full rebuild (the readings span four one-day slices) gives the same rows again.
    rebuilt = refresh_rollups(db, full=True)
    assert rebuilt.numeric_buckets >= len(a) // 2
    assert (_rollups(db, dev_a), _rollups(db, dev_b)) == (a, b)


def test_rollup_values_match_raw(db: psycopg.Connection) -> None:
    add_user(db, "roll-raw", granted_at=BASE)
    add_device(db, "roll-raw-plug", "roll-raw", "plug")
    t = BASE + timedelta(hours=5)
    rows = [
        (t + timedelta(minutes=50), "roll-raw-plug", "roll-raw", "power_w", 30.0),
        (t + timedelta(minutes=10), "roll-raw-plug", "roll-raw", "power_w", 10.0),
        (t + timedelta(minutes=30), "roll-raw-plug", "roll-raw", "power_w", 20.0),
    ]
    _insert(db, rows)
    refresh_rollups(db, grace=timedelta(0))
    row = db.execute(
        """SELECT n, sum, sumsq, min, max, first, last FROM rollup_numeric_hourly
            WHERE device_id = 'roll-raw-plug'"""
    ).fetchall()
    assert row == [(3, 60.0, 1400.0, 10.0, 30.0, 10.0, 30.0)]


# -- late data never destroys history (issue 11 §6) ------------------------------------------
# Far in the past (before every other test's data but test_retention's 2001), so dropping these
# chunks and moving the retention horizon touches nothing else in the session's database.
OLD_HOUR = datetime(2002, 1, 10, 10, tzinfo=UTC)
RETENTION_NOW = datetime(2002, 7, 1, tzinfo=UTC)  # 90-day cutoff: 2002-04-02


def _bucket(conn: psycopg.Connection, device: str, hour: datetime) -> list[tuple[object, ...]]:
    numeric = conn.execute(
        "SELECT n, sum, min, max FROM rollup_numeric_hourly WHERE device_id = %s AND bucket = %s",
        (device, hour),
    ).fetchall()
    categorical = conn.execute(
        "SELECT value, n FROM rollup_categorical_hourly WHERE device_id = %s AND bucket = %s",
        (device, hour),
    ).fetchall()
    return numeric + categorical


def test_full_rebuild_keeps_buckets_older_than_every_raw_row(db: psycopg.Connection) -> None:
    # A bucket older than every raw row (their chunks dropped; no horizon needed) is history,
    # not an orphan: --full must not delete it. Runs before the horizon test below moves it.
    user, plug = "roll-hist", "roll-hist-plug"
    add_user(db, user, granted_at=BASE - timedelta(days=400))
    add_device(db, plug, user, "plug")
    _insert(db, [(BASE, plug, user, "power_w", 1.0)])
    first_raw = db.execute("SELECT min(time) FROM numeric_readings").fetchone()
    assert first_raw is not None
    ancient: datetime = first_raw[0] - timedelta(days=1)  # type: ignore[operator]
    ancient = ancient.replace(minute=0, second=0, microsecond=0)
    assert db.execute(  # the horizon alone would not protect this bucket
        "SELECT count(*) FROM raw_retention_horizons WHERE horizon > %s", (ancient,)
    ).fetchone() == (0,)
    db.execute(
        """INSERT INTO rollup_numeric_hourly (bucket, device_id, user_id, signal, n, sum, sumsq,
               min, max, first, last, first_time, last_time, max_ingested_at)
           VALUES (%s, %s, %s, 'power_w', 2, 3, 5, 1, 2, 1, 2, %s, %s, now())""",
        (ancient, plug, user, ancient, ancient),
    )
    refresh_rollups(db, full=True)
    assert _bucket(db, plug, ancient) == [(2, 3.0, 1.0, 2.0)]


def test_late_reading_after_retention_never_rebuilds_a_bucket(db: psycopg.Connection) -> None:
    from collector.retention import run_retention

    user, plug = "roll-late", "roll-late-plug"
    add_user(db, user, granted_at=OLD_HOUR - timedelta(days=1))
    add_device(db, plug, user, "plug")
    _insert(
        db,
        [(OLD_HOUR + timedelta(minutes=m), plug, user, "power_w", float(m)) for m in (5, 15, 25)]
        + [(OLD_HOUR + timedelta(minutes=m), plug, user, "geohash", "u33dc0c") for m in (5, 15)],
    )
    refresh_rollups(db, grace=timedelta(0))
    before = _bucket(db, plug, OLD_HOUR)
    assert before == [(3, 45.0, 5.0, 25.0), ("u33dc0c", 2)]

    report = run_retention(db, 90, now=RETENTION_NOW)
    assert report.chunks_dropped["numeric_readings"] >= 1
    raw_left = db.execute("SELECT count(*) FROM numeric_readings WHERE device_id = %s", (plug,))
    assert raw_left.fetchone() == (0,)
    horizon = db.execute(
        "SELECT horizon FROM raw_retention_horizons WHERE hypertable = 'numeric_readings'"
    ).fetchone()
    assert horizon is not None and horizon[0] >= RETENTION_NOW - timedelta(days=90)

    # A late reading of that hour (written behind ingest's back: ingest refuses it as too_old)
    # is the only raw row left there; neither an incremental nor a full run may rebuild from it.
    _insert(
        db,
        [
            (OLD_HOUR + timedelta(minutes=45), plug, user, "power_w", 1000.0),
            (OLD_HOUR + timedelta(minutes=45), plug, user, "geohash", "u33dc1b"),
        ],
    )
    refresh_rollups(db, grace=timedelta(0))
    assert _bucket(db, plug, OLD_HOUR) == before
    refresh_rollups(db, full=True)
    assert _bucket(db, plug, OLD_HOUR) == before

    # After the horizon, buckets are rebuilt as always.
    recent = RETENTION_NOW - timedelta(days=10)
    _insert(db, [(recent + timedelta(minutes=1), plug, user, "power_w", 7.0)])
    refresh_rollups(db, grace=timedelta(0))
    assert _bucket(db, plug, recent) == [(1, 7.0, 7.0, 7.0)]
