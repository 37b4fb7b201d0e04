"""Hourly rollups: exact under duplicate, out-of-order and late delivery; idempotent."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import psycopg

from features.rollups import bucket_rows, read_watermark, refresh_rollups, write_buckets
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


_NUMERIC = ("bucket", "signal", "n", "sum", "sumsq", "min", "max", "first", "last",
            "first_time", "last_time")  # fmt: skip
_CATEGORICAL = ("bucket", "signal", "value", "share", "n")


def _rollups(conn: psycopg.Connection, device: str) -> list[tuple[object, ...]]:
    numeric = [
        tuple(b[k] for k in _NUMERIC) for b in bucket_rows(conn, "rollup_numeric_hourly", device)
    ]
    categorical = [
        tuple(b[k] for k in _CATEGORICAL)
        for b in bucket_rows(conn, "rollup_categorical_hourly", device)
    ]
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
    row = [
        tuple(b[k] for k in ("n", "sum", "sumsq", "min", "max", "first", "last"))
        for b in bucket_rows(db, "rollup_numeric_hourly", "roll-raw-plug")
    ]
    assert row == [(3, 60.0, 1400.0, 10.0, 30.0, 10.0, 30.0)]


def test_packed_rows_match_per_bucket_aggregates(db: psycopg.Connection) -> None:
    # Many buckets of one device-day, single and multi readings mixed, delivered shuffled: the
    # packed row holds every bucket in hour order, multi-only columns aligned with n <> 1.
    add_user(db, "roll-pack", granted_at=BASE)
    add_device(db, "roll-pack-plug", "roll-pack", "plug")
    day = BASE + timedelta(days=20)
    rows = []
    for h in range(24):
        for m in range(1 + (h % 3 == 0) * 2):
            rows.append((day + timedelta(hours=h, minutes=10 * m + 1), "roll-pack-plug",
                         "roll-pack", "power_w", float(h * 10 + m)))  # fmt: skip
            rows.append((day + timedelta(hours=h, minutes=10 * m + 1), "roll-pack-plug",
                         "roll-pack", "geohash", ["u33dc0c", "u33dc1b"][(h + m) % 2]))  # fmt: skip
    random.Random(5).shuffle(rows)
    _insert(db, rows)
    refresh_rollups(db, grace=timedelta(0))
    packed = bucket_rows(db, "rollup_numeric_hourly", "roll-pack-plug")
    assert [b["bucket"] for b in packed] == [day + timedelta(hours=h) for h in range(24)]
    expected = db.execute(
        """SELECT n, sum, sumsq, min, max, first, last, first_time, last_time
             FROM (SELECT time_bucket(INTERVAL '1 hour', time) AS bucket, count(*) AS n,
                          sum(value) AS sum, sum(value * value) AS sumsq, min(value) AS min,
                          max(value) AS max, first(value, time) AS first,
                          last(value, time) AS last, min(time) AS first_time,
                          max(time) AS last_time
                     FROM numeric_readings WHERE device_id = 'roll-pack-plug'
                    GROUP BY 1 ORDER BY 1) x"""
    ).fetchall()
    fields = ("n", "sum", "sumsq", "min", "max", "first", "last", "first_time", "last_time")
    assert [tuple(b[k] for k in fields) for b in packed] == expected
    shares = [(b["value"], b["share"], b["n"])
              for b in bucket_rows(db, "rollup_categorical_hourly", "roll-pack-plug")]  # fmt: skip
    assert shares[0] == ("u33dc0c", 2 / 3, 3)  # hour 0: two of three readings
    assert shares[1] == ("u33dc1b", 1.0, 1)
    # A parallel full rebuild (its own connections) writes the same bytes.
    before = db.execute("SELECT * FROM rollup_numeric_hourly ORDER BY 1, 2, 4").fetchall()
    url = db.info.dsn
    password = db.info.password
    result = refresh_rollups(
        db, full=True, database_url=f"{url} password={password}" if password else url, jobs=2
    )
    assert result.jobs == 2 and result.readings >= len(rows) // 2
    assert db.execute("SELECT * FROM rollup_numeric_hourly ORDER BY 1, 2, 4").fetchall() == before


# -- late data never destroys history (issue 11 §6) ------------------------------------------
# Far in the past (before every other test's data but test_retention's 2001), so dropping these
# chunks and moving the retention horizon touches nothing else in the session's database.
OLD_HOUR = datetime(2002, 1, 10, 10, tzinfo=UTC)
RETENTION_NOW = datetime(2002, 7, 1, tzinfo=UTC)  # 90-day cutoff: 2002-04-02


def _bucket(conn: psycopg.Connection, device: str, hour: datetime) -> list[tuple[object, ...]]:
    numeric = [
        (b["n"], b["sum"], b["min"], b["max"])
        for b in bucket_rows(conn, "rollup_numeric_hourly", device)
        if b["bucket"] == hour
    ]
    categorical = [
        (b["value"], b["n"])
        for b in bucket_rows(conn, "rollup_categorical_hourly", device)
        if b["bucket"] == hour
    ]
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
    write_buckets(
        db,
        "rollup_numeric_hourly",
        [
            {"bucket": ancient, "device_id": plug, "user_id": user, "signal": "power_w", "n": 2,
             "sum": 3.0, "sumsq": 5.0, "min": 1.0, "max": 2.0, "first": 1.0, "last": 2.0,
             "first_time": ancient, "last_time": ancient, "max_ingested_at": ancient}
        ],
    )  # fmt: skip
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
