"""The console's summary tables equal the raw rows they summarise, whatever the refresh order,
and withdrawal and erasure reach the per-device one (issue 19; migration 0065)."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import numpy as np
import psycopg
import pytest

from features.catalogue import DEFINITIONS, FEATURE_SET_VERSION, sync_definitions
from features.service.console.summary import (
    SummaryResult,
    read_summary_watermark,
    refresh_console_summaries,
    refresh_feature_stats,
    unpack_values,
)
from features.snapshots.codec import LAYOUT
from features.snapshots.store import SnapshotBatch, write_snapshots
from hearth import admin
from hearth.db import Conn
from hearth.signals import Category
from tests.integration.private_db import private_database
from tests.support.builders import add_device, add_user, insert_categorical, insert_numeric
from tests.support.service import seed_snapshot

NOW = datetime.now(UTC).replace(second=0, microsecond=0)


@pytest.fixture
def conn() -> Iterator[Conn]:
    with private_database() as (url, _), psycopg.connect(url, autocommit=True) as c:
        yield c


def _seed(conn: Conn, user: str, ingest_base: datetime) -> list[str]:
    """A phone (battery every 10 minutes, geohash every 30) and a plug (power every minute)."""
    add_user(conn, user, granted_at=NOW - timedelta(days=30))
    phone, plug = f"{user}-phone", f"{user}-plug"
    add_device(conn, phone, user, "phone")
    add_device(conn, plug, user, "plug")
    numeric = []
    categorical = []
    for i in range(60):  # ten hours of phone readings, ingested over 3 minutes
        t = NOW - timedelta(hours=10) + timedelta(minutes=10 * i)
        ing = ingest_base + timedelta(seconds=3 * i)
        numeric.append((t, phone, user, "battery_pct", 80.0 - i / 2, ing))
        if i % 3 == 0:
            categorical.append((t, phone, user, "geohash", "wtw3sjq", ing))
    for i in range(120):
        t = NOW - timedelta(hours=3) + timedelta(minutes=i)
        numeric.append((t, plug, user, "power_w", float(i % 7), ingest_base + timedelta(seconds=i)))
    insert_numeric(conn, numeric)
    insert_categorical(conn, categorical)
    return [phone, plug]


_RAW = """(SELECT device_id, signal, user_id, time, ingested_at FROM numeric_readings
           UNION ALL
           SELECT device_id, signal, user_id, time, ingested_at FROM categorical_readings)"""


def _expected_minutes(conn: Conn, before: datetime) -> list[tuple[object, ...]]:
    return conn.execute(
        f"""SELECT time_bucket(INTERVAL '1 minute', ingested_at), count(*),
                   count(DISTINCT (device_id, time))
              FROM {_RAW} r WHERE ingested_at < %s GROUP BY 1 ORDER BY 1""",
        (before,),
    ).fetchall()


def _expected_devices(conn: Conn) -> list[tuple[object, ...]]:
    return conn.execute(
        f"""WITH last AS (SELECT device_id, signal, max(time) AS t FROM {_RAW} r GROUP BY 1, 2)
            SELECT l.device_id, l.signal, l.t, count(*), min(r.time)
              FROM last l JOIN {_RAW} r USING (device_id, signal)
             WHERE r.time >= l.t - INTERVAL '7 days'
             GROUP BY 1, 2, 3 ORDER BY 1, 2"""
    ).fetchall()


def _minutes(conn: Conn) -> list[tuple[object, ...]]:
    return conn.execute(
        "SELECT minute, rows, messages FROM console_ingest_minutes ORDER BY 1"
    ).fetchall()


def _devices(conn: Conn) -> list[tuple[object, ...]]:
    return conn.execute(
        "SELECT device_id, signal, last_time, readings_7d, first_time_7d "
        "FROM console_device_signals ORDER BY 1, 2"
    ).fetchall()


def _refresh_until(conn: Conn, watermark: datetime, *, full: bool = False) -> SummaryResult:
    """A refresh whose watermark is ``watermark`` (minute-aligned, in the past): the grace is
    what lies between it and now."""
    grace = datetime.now(UTC) - watermark - timedelta(seconds=1)
    result = refresh_console_summaries(conn, grace=grace, full=full)
    assert result.watermark == watermark
    return result


def test_summaries_equal_the_raw_rows_and_survive_any_refresh_order(conn: Conn) -> None:
    first = _seed(conn, "sum-a", NOW - timedelta(minutes=20))
    result = _refresh_until(conn, NOW - timedelta(minutes=15))
    watermark = read_summary_watermark(conn)
    assert watermark is not None and watermark[0] == result.watermark
    assert _minutes(conn) == _expected_minutes(conn, NOW - timedelta(minutes=15))
    # 60 battery + 20 geohash readings over 3 minutes, 120 plug readings over the first 2
    assert [m[1:] for m in _minutes(conn)] == [(87, 80), (87, 80), (26, 20)]
    assert _devices(conn) == _expected_devices(conn)
    assert {d[0] for d in _devices(conn)} == set(first)

    # More rows ingested after the watermark: a late reading of the phone (older than its
    # latest) and a new user. The next refresh counts them; the latest reading stays the latest.
    late = NOW - timedelta(days=2)
    insert_numeric(
        conn, [(late, first[0], "sum-a", "battery_pct", 50.0, NOW - timedelta(minutes=12))]
    )
    second = _seed(conn, "sum-b", NOW - timedelta(minutes=10))
    again = _refresh_until(conn, NOW - timedelta(minutes=5))
    assert again.minutes == 4 and again.device_signals == 4  # sum-b's 3 and the late one's
    assert _minutes(conn) == _expected_minutes(conn, NOW - timedelta(minutes=5))
    assert _devices(conn) == _expected_devices(conn)
    assert {d[0] for d in _devices(conn)} == set(first + second)

    # Recomputed, not incremented: a refresh with nothing new, and a full one, change nothing.
    snapshot = (_minutes(conn), _devices(conn))
    assert _refresh_until(conn, NOW - timedelta(minutes=5)).minutes == 0
    _refresh_until(conn, NOW - timedelta(minutes=5), full=True)
    assert (_minutes(conn), _devices(conn)) == snapshot

    # A row written with a back-dated ingest time (a restore) is seen by a full refresh only.
    insert_numeric(conn, [(late, first[1], "sum-a", "power_w", 1.0, NOW - timedelta(minutes=30))])
    _refresh_until(conn, NOW - timedelta(minutes=5))
    assert _minutes(conn) == snapshot[0]
    _refresh_until(conn, NOW - timedelta(minutes=5), full=True)
    assert _minutes(conn) == _expected_minutes(conn, NOW - timedelta(minutes=5))
    assert _devices(conn) == _expected_devices(conn)


def test_lag_percentiles_are_the_minutes_own(conn: Conn) -> None:
    add_user(conn, "lag-u", granted_at=NOW - timedelta(days=3))
    add_device(conn, "lag-d", "lag-u", "plug")
    ing = NOW - timedelta(minutes=10)
    # Ten readings stored in one minute, 1..10 hours after their event time.
    insert_numeric(
        conn,
        [(ing - timedelta(hours=h), "lag-d", "lag-u", "power_w", 1.0, ing) for h in range(1, 11)],
    )
    _refresh_until(conn, NOW - timedelta(minutes=5))
    row = conn.execute(
        "SELECT rows, messages, lag_p50_s, lag_p95_s FROM console_ingest_minutes"
    ).fetchone()
    assert row == (10, 10, 5.5 * 3600, pytest.approx(9.55 * 3600))


def test_withdrawal_and_erasure_reach_the_device_summary(conn: Conn) -> None:
    user = f"sum-{secrets.token_hex(3)}"
    admin.add_user(conn, user, "UTC")
    for category in (Category.DEVICE_HEALTH, Category.LOCATION, Category.ENERGY):
        admin.grant_consent(conn, user_id=user, category=category, at=NOW - timedelta(days=30))
    phone = admin.register_device(
        conn, user_id=user, kind="phone", format="hearth", external_id=f"{user}-phone"
    ).device_id
    ing = NOW - timedelta(minutes=5)
    insert_numeric(conn, [(NOW - timedelta(hours=1), phone, user, "battery_pct", 50.0, ing)])
    insert_categorical(conn, [(NOW - timedelta(hours=1), phone, user, "geohash", "wtw3sjq", ing)])
    _refresh_until(conn, NOW - timedelta(minutes=1))
    signals = "SELECT signal FROM console_device_signals WHERE device_id = %s ORDER BY 1"
    assert [r[0] for r in conn.execute(signals, (phone,))] == ["battery_pct", "geohash"]

    report = admin.withdraw_consent(conn, user_id=user, category=Category.LOCATION)
    assert report.counts["console_device_signals"] == 1 and report.status == "complete"
    assert [r[0] for r in conn.execute(signals, (phone,))] == ["battery_pct"]

    exported = admin.export_user(conn, user)
    assert [r["signal"] for r in exported["tables"]["console_device_signals"]] == ["battery_pct"]  # type: ignore[index]

    erased = admin.erase_user(conn, user)
    assert erased.counts["console_device_signals"] == 1 and erased.status == "complete"
    assert conn.execute(signals, (phone,)).fetchall() == []


def test_a_first_refresh_keeps_minutes_for_two_weeks_and_every_devices_last_reading(
    conn: Conn,
) -> None:
    add_user(conn, "old-u", granted_at=NOW - timedelta(days=60))
    add_device(conn, "old-d", "old-u", "plug")
    month_ago = NOW - timedelta(days=30)
    insert_numeric(
        conn,
        [
            (month_ago - timedelta(minutes=k), "old-d", "old-u", "power_w", 1.0, month_ago)
            for k in range(5)
        ]
        + [(NOW - timedelta(hours=1), "old-d", "old-u", "power_w", 2.0, NOW - timedelta(days=13))],
    )
    _refresh_until(conn, NOW - timedelta(minutes=1))
    # Minutes older than KEEP_MINUTES are not kept; the device's readings all count.
    assert [m[1:] for m in _minutes(conn)] == [(1, 1)]
    assert _devices(conn) == _expected_devices(conn)
    assert _devices(conn)[0][2] == NOW - timedelta(hours=1)


def _stats(conn: Conn) -> dict[tuple[object, str], tuple[object, ...]]:
    return {
        (r[0], str(r[1])): tuple(r[2:])
        for r in conn.execute(
            "SELECT as_of, feature, cells, non_null, coverage_sum, sorted_values "
            "FROM console_feature_stats"
        ).fetchall()
    }


def test_feature_stats_are_the_snapshots_and_go_with_any_change_to_them(conn: Conn) -> None:
    user = "fs-u"
    admin.add_user(conn, user, "UTC")
    admin.grant_consent(conn, user_id=user, category=Category.ENERGY, at=NOW - timedelta(days=9))
    names = {d.name: d.category for d in DEFINITIONS}
    energy = next(n for n, c in names.items() if c == "energy")
    other = next(n for n, c in names.items() if c != "energy")
    day1, day2 = NOW - timedelta(days=2), NOW - timedelta(days=1)
    for i, as_of in enumerate((day1, day2)):
        for k, uid in enumerate((user, "fs-v", "fs-w")):
            if uid != user and i == 0:
                conn.execute("INSERT INTO users (user_id) VALUES (%s)", (uid,))
            vector = {
                energy: {"value": float(k + i), "coverage": 0.5},
                other: {"value": None if k == 2 else 3.0 - k, "coverage": 0.25 * k},
            }
            seed_snapshot(conn, uid, as_of, FEATURE_SET_VERSION, vector)
    sync_definitions(conn)
    result = _refresh_until(conn, NOW - timedelta(minutes=1))
    assert result.feature_dates == 2
    stats = _stats(conn)
    assert stats[(day2, energy)][:3] == (3, 3, 1.5)
    assert unpack_values(stats[(day2, energy)][3]).tolist() == [1.0, 2.0, 3.0]  # type: ignore[arg-type]
    assert stats[(day1, other)][:3] == (3, 2, 0.75)
    assert unpack_values(stats[(day1, other)][3]).tolist() == [2.0, 3.0]  # type: ignore[arg-type]
    assert _refresh_until(conn, NOW - timedelta(minutes=1)).feature_dates == 0  # nothing new

    # A withdrawal nulls the user's energy cells: both dates' stats go in its transaction.
    admin.withdraw_consent(conn, user_id=user, category=Category.ENERGY)
    assert _stats(conn) == {}
    _refresh_until(conn, NOW - timedelta(minutes=1))
    assert _stats(conn)[(day2, energy)][:3] == (3, 2, 1.0)
    # A new snapshot (materialisation) discards its date's stats only; erasure its user's dates.
    seed_snapshot(conn, "fs-v", NOW, FEATURE_SET_VERSION, {})
    assert {k[0] for k in _stats(conn)} == {day1, day2}
    conn.execute(
        "UPDATE feature_snapshots SET computed_at = now() WHERE as_of = %s AND user_id = 'fs-w'",
        (day1,),
    )
    assert {k[0] for k in _stats(conn)} == {day2}
    admin.erase_user(conn, "fs-v")
    assert _stats(conn) == {}


def test_a_backfill_write_of_many_dates_discards_exactly_their_stats(conn: Conn) -> None:
    """A backfill writes users x as_ofs in one upsert (features.snapshots.store): the
    statement-level triggers of 0066 discard the stats of every date it wrote, once, and of no
    other; the next refresh computes them again from the packed cells."""
    users = [f"bf-{k}" for k in range(4)]
    for uid in users:
        admin.add_user(conn, uid, "UTC")
        admin.grant_consent(
            conn, user_id=uid, category=Category.ENERGY, at=NOW - timedelta(days=30)
        )
    sync_definitions(conn)
    kept = NOW - timedelta(days=10)
    seed_snapshot(conn, users[0], kept, FEATURE_SET_VERSION, {})
    dates = [NOW - timedelta(days=d) for d in (3, 2, 1)]

    def write(shift: float) -> None:
        u, t = np.meshgrid(np.arange(len(users)), np.arange(len(dates)), indexing="ij")
        n = u.size
        values = np.full((n, LAYOUT.width), np.nan)
        values[:, 0] = np.arange(n) + shift
        coverage = np.zeros((n, LAYOUT.width))
        coverage[:, 0] = 1.0
        batch = SnapshotBatch(
            users, dates, u.ravel().astype(np.int32), t.ravel().astype(np.int32),
            values, coverage, ["{}"] * n,
        )  # fmt: skip
        write_snapshots(conn, batch)

    write(0.0)
    assert _refresh_until(conn, NOW - timedelta(minutes=1)).feature_dates == 4
    first = LAYOUT.names[0]
    for i, as_of in enumerate(dates):
        got = unpack_values(_stats(conn)[(as_of, first)][3])  # type: ignore[arg-type]
        assert got.tolist() == [float(k * len(dates) + i) for k in range(len(users))]
    write(100.0)  # the backfill again, other values: one statement over the three dates
    assert {k[0] for k in _stats(conn)} == {kept}
    assert refresh_feature_stats(conn, limit=1) == 1  # a refresh does the newest dates first
    assert {k[0] for k in _stats(conn)} == {kept, dates[2]}
    assert _refresh_until(conn, NOW - timedelta(minutes=1)).feature_dates == 2
    got = unpack_values(_stats(conn)[(dates[0], first)][3])  # type: ignore[arg-type]
    assert got.tolist() == [100.0 + k * len(dates) for k in range(len(users))]
    # An UPDATE that moves a snapshot to another date discards the stats of both dates.
    conn.execute(
        "UPDATE feature_snapshots SET as_of = %s WHERE as_of = %s AND user_id = %s",
        (kept, dates[0], users[1]),
    )
    assert {k[0] for k in _stats(conn)} == {dates[1], dates[2]}
