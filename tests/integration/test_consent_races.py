"""Consent under concurrency and by event time (issue 11 §2-§3), on the real broker and database.

Each race is made deterministic with a hook, a lock or a failing trigger, never with sleeps:
- materialise paused between computing a chunk and writing it, a withdrawal in between;
- the collector's move SQL after a withdrawal committed (the commit enforces consent);
- a real collector whose writes fail while a withdrawal and an erasure land;
- a backlog queued in the broker for an offline collector across a re-registration.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest

from collector.pipeline import Batch
from collector.writer import BatchWriter
from features.catalogue import DEFINITIONS, FEATURE_SET_VERSION
from features.rollups import refresh_rollups
from features.snapshots.materialize import materialize
from hearth import admin, ledger
from hearth.db import Conn
from hearth.errors import Invalid
from hearth.settings import get_settings
from hearth.signals import Category
from hearth.vectors import withdrawn_cell
from tests.conftest import Broker
from tests.integration.consent_fixtures import count_signal_rows, unique
from tests.integration.fleet import (
    CollectorFactory,
    CollectorProcess,
    grant,
    publish_all,
    wait_until,
)
from tests.integration.fleet import add_device as fleet_device
from tests.integration.fleet import add_user as fleet_user
from tests.integration.privacy_scan import find_references
from tests.support.builders import add_device, add_user, insert_categorical, insert_numeric
from tests.support.service import VECTOR_SQL

AS_OF = datetime(2026, 5, 1, tzinfo=UTC)
LOCATION_FEATURES = {d.name for d in DEFINITIONS if d.category == Category.LOCATION}


# -- materialise vs withdrawal ----------------------------------------------------------------


def _user_with_location_history(conn: Conn, user: str) -> None:
    add_user(conn, user, granted_at=AS_OF - timedelta(days=120))
    add_device(conn, f"{user}-phone", user, "phone")
    geo, num = [], []
    for h in range(0, 24 * 30, 3):
        t = AS_OF - timedelta(hours=h + 1)
        place = "wtw3sjq" if t.hour < 8 or t.hour >= 20 else "wtw3ey0"  # home at night
        geo.append((t, f"{user}-phone", user, "geohash", place, t + timedelta(minutes=1)))
        num.append((t, f"{user}-phone", user, "battery_pct", 50.0, t + timedelta(minutes=1)))
    insert_categorical(conn, geo)
    insert_numeric(conn, num)


def _vector(conn: Conn, user: str) -> dict[str, Any]:
    row = conn.execute(
        f"SELECT {VECTOR_SQL} FROM feature_snapshots WHERE user_id = %s AND as_of = %s "
        "AND feature_set_version = %s",
        (user, AS_OF, FEATURE_SET_VERSION),
    ).fetchone()
    assert row is not None, user
    return dict(row[0])


def test_withdrawal_between_materialise_load_and_write_is_not_undone(
    database_url: str, db: Conn
) -> None:
    withdrawn, control = unique("mw"), unique("mc")
    for user in (withdrawn, control):
        _user_with_location_history(db, user)
    refresh_rollups(db, full=True)
    paused, resume = threading.Event(), threading.Event()
    failures: list[BaseException] = []

    def pause(chunk: object) -> None:
        paused.set()
        assert resume.wait(60), "never resumed"

    def run() -> None:
        try:
            with psycopg.connect(database_url, autocommit=True) as conn:
                materialize(
                    conn,
                    AS_OF,
                    users=[withdrawn, control],
                    refresh=False,
                    progress=False,
                    before_write=pause,
                )
        except BaseException as exc:
            failures.append(exc)

    worker = threading.Thread(target=run)
    worker.start()
    try:
        assert paused.wait(120), "materialise never reached its write"
        report = admin.withdraw_consent(db, user_id=withdrawn, category="location")
        assert report.status == "complete" and report.counts["categorical_readings"] > 0
    finally:
        resume.set()
        worker.join(timeout=120)
    assert failures == []
    # The chunk was computed before the withdrawal: the control user shows what it held.
    assert any(_vector(db, control)[n]["value"] is not None for n in LOCATION_FEATURES)
    written = _vector(db, withdrawn)
    # Withdrawn features keep their keys (one schema) as null cells that say why (hearth.vectors).
    assert written.keys() >= LOCATION_FEATURES
    assert all(written[n] == withdrawn_cell() for n in LOCATION_FEATURES)
    assert written["mean_daily_min_battery_pct_90d"]["value"] is not None  # other categories stay


# -- the commit enforces consent --------------------------------------------------------------


def test_batch_move_refuses_rows_whose_consent_changed_after_the_pipeline(
    database_url: str, db: Conn
) -> None:
    """The pipeline checked consent with its cache; the withdrawal and a late grant commit
    before the batch does. The move stores only what consent_state allows at commit."""
    user = unique("mv")
    fleet_user(db, user)
    fleet_device(db, f"{user}-d", user)
    grant(db, user)
    now = datetime.now(UTC).replace(microsecond=0)
    batch = Batch()
    for i in range(3):
        t = now - timedelta(minutes=10 + i)
        batch.categorical.append((t, f"{user}-d", user, "geohash", "wtw3sjq", False))
        batch.numeric.append((t, f"{user}-d", user, "battery_pct", 50.0, False))
        batch.numeric.append((t, f"{user}-d", user, "power_w", 5.0, False))
    admin.withdraw_consent(db, user_id=user, category="location")
    # Energy granted again (from now): readings dated before that are not consented at their time.
    admin.withdraw_consent(db, user_id=user, category="energy")
    admin.grant_consent(db, user_id=user, category="energy")

    async def write() -> Any:
        writer = BatchWriter(database_url)
        try:
            return await writer.write(batch)
        finally:
            await writer.close()

    result = asyncio.run(write())  # a batch checked at no known epoch: every row checked
    assert result.refused == {"numeric_readings": 3, "categorical_readings": 3}
    assert result.inserted == {"numeric_readings": 3, "categorical_readings": 0}
    assert sum(count_signal_rows(db, user, Category.LOCATION).values()) == 0
    assert sum(count_signal_rows(db, user, Category.ENERGY).values()) == 0
    assert count_signal_rows(db, user, Category.DEVICE_HEALTH)["numeric_readings"] == 3

    # Checked at the current epoch (no revocation since): the hot path moves rows unchecked.
    epoch = db.execute(ledger.CONSENT_EPOCH_SQL).fetchone()
    assert epoch is not None
    batch = Batch(consent_epoch=int(epoch[0]))
    batch.numeric.append((now, f"{user}-d", user, "battery_pct", 51.0, False))
    result = asyncio.run(write())
    assert (result.inserted, result.refused) == ({"numeric_readings": 1}, {})
    admin.withdraw_consent(db, user_id=user, category="device_health")  # bumps the epoch
    batch.numeric[0] = (now + timedelta(seconds=1), f"{user}-d", user, "battery_pct", 52.0, False)
    result = asyncio.run(write())
    assert (result.inserted, result.refused) == ({"numeric_readings": 0}, {"numeric_readings": 1})


# -- a real collector whose writes fail while consent changes ---------------------------------

_FAIL_WRITES = """
CREATE OR REPLACE FUNCTION test_fail_writes() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'writes disabled by the test' USING ERRCODE = 'serialization_failure';
END $$;
CREATE TRIGGER test_fail_numeric BEFORE INSERT ON numeric_readings
    FOR EACH ROW EXECUTE FUNCTION test_fail_writes();
CREATE TRIGGER test_fail_categorical BEFORE INSERT ON categorical_readings
    FOR EACH ROW EXECUTE FUNCTION test_fail_writes();
"""
_RESTORE_WRITES = """
DROP TRIGGER IF EXISTS test_fail_numeric ON numeric_readings;
DROP TRIGGER IF EXISTS test_fail_categorical ON categorical_readings;
"""


def _phone_fixes(device: str, start: datetime, n: int) -> list[tuple[str, bytes]]:
    out = []
    for i in range(n):
        ts = (start + timedelta(seconds=i)).isoformat().replace("+00:00", "Z")
        body = {
            "ts": ts,
            "readings": {"position": {"lat": 31.2304, "lon": 121.4737}, "battery_pct": 60.0},
        }
        out.append((f"hearth/v1/{device}/phone", json.dumps(body).encode()))
    return out


def _health(collector: CollectorProcess) -> dict[str, Any]:
    got = collector._get("/healthz")
    return json.loads(got[1]) if got else {}


def _metric(collector: CollectorProcess, name: str) -> float:
    """A counter's total over all its labels (``name`` without ``_total``)."""
    metrics = collector.metrics().items()
    return sum(v for k, v in metrics if k == f"{name}_total" or k.startswith(f"{name}_total{{"))


@pytest.fixture
def failing_writes(db: Conn) -> Iterator[Conn]:
    yield db
    db.execute(_RESTORE_WRITES)


def test_withdrawal_and_erasure_while_collector_writes_fail(
    failing_writes: Conn, broker: Broker, tag: str, make_collector: CollectorFactory
) -> None:
    """A batch checked consent, then its writes fail (retried) while a withdrawal and an
    erasure commit; when writes work again, the commit stores nothing of either."""
    db = failing_writes
    keeps, erased = f"{tag}-keep", f"{tag}-gone"
    for user in (keeps, erased):
        fleet_user(db, user)
        fleet_device(db, f"{user}-d", user)
        grant(db, user)
    collector = make_collector()
    collector.start()
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)
    publish_all(broker.host, broker.port, _phone_fixes(f"{keeps}-d", start, 1))
    wait_until(lambda: _location_rows(db, keeps) == 1, 30, "warm-up fix stored")

    db.execute(_FAIL_WRITES)
    errors_before = _metric(collector, "hearth_collector_db_errors")
    n = 20
    fixes = _phone_fixes(f"{keeps}-d", start + timedelta(minutes=1), n)
    fixes += _phone_fixes(f"{erased}-d", start + timedelta(minutes=1), n)
    publish_all(broker.host, broker.port, fixes)
    # Every message is through the pipeline (in flight, consent checked) and writing fails.
    wait_until(lambda: _health(collector).get("in_flight") == 2 * n, 30, "40 messages in flight")
    wait_until(
        lambda: _metric(collector, "hearth_collector_db_errors") > errors_before, 30, "a failure"
    )
    withdrawal = admin.withdraw_consent(db, user_id=keeps, category="location")
    erasure = admin.erase_user(db, erased)
    assert withdrawal.status == erasure.status == "complete"
    failed = _metric(collector, "hearth_collector_db_errors")
    wait_until(lambda: _metric(collector, "hearth_collector_db_errors") > failed, 30, "a retry")
    db.execute(_RESTORE_WRITES)

    wait_until(lambda: _health(collector).get("in_flight") == 0, 30, "the batch committed")
    assert _location_rows(db, keeps) == 0
    assert count_signal_rows(db, keeps, Category.DEVICE_HEALTH)["numeric_readings"] == n + 1
    assert find_references(db, [erased, f"{erased}-d"]) == []  # no orphan of the erased user
    # The commit refused them (the pipeline had accepted them): 20 fixes of the withdrawn
    # category, and both rows of each of the erased user's 20 messages.
    assert _metric(collector, "hearth_collector_rows_refused_at_commit") == 3 * n


def _location_rows(conn: Conn, user: str) -> int:
    return sum(count_signal_rows(conn, user, Category.LOCATION).values())


# -- re-registration with a backlog queued in the broker --------------------------------------


@pytest.fixture
def short_skew(monkeypatch: pytest.MonkeyPatch) -> Iterator[int]:
    """A 2 s clock-skew allowance for this process and the collector it starts."""
    monkeypatch.setenv("HEARTH_MAX_CLOCK_SKEW_S", "2")
    get_settings.cache_clear()
    yield 2
    monkeypatch.delenv("HEARTH_MAX_CLOCK_SKEW_S")
    get_settings.cache_clear()


def _sensor_readings(external_id: str, start: datetime, n: int, temp: float) -> list[Any]:
    return [
        (
            f"zigbee2mqtt/{external_id}",
            json.dumps(
                {
                    "temperature": temp,
                    "last_seen": (start + timedelta(milliseconds=10 * i)).isoformat(),
                }
            ).encode(),
        )
        for i in range(n)
    ]


def test_reregistered_id_never_receives_the_first_owners_queued_messages(
    db: Conn, broker: Broker, tag: str, make_collector: CollectorFactory, short_skew: int
) -> None:
    first, second = f"{tag}-first", f"{tag}-second"
    for user in (first, second):
        fleet_user(db, user)
        grant(db, user, [Category.CLIMATE])
    sensor = f"{tag}-sensor"
    long_ago = datetime.now(UTC) - timedelta(days=30)
    old = admin.register_device(
        db, user_id=first, kind="sensor", format="zigbee2mqtt", external_id=sensor,
        bound_at=long_ago,
    )  # fmt: skip
    collector = make_collector(HEARTH_MAX_CLOCK_SKEW_S=str(short_skew))
    collector.start()  # subscribes; its session then queues while it is away
    assert collector.terminate() == 0

    backlog = 30
    publish_all(broker.host, broker.port, _sensor_readings(sensor, datetime.now(UTC), backlog, 1))
    retired = admin.retire_device(db, old.device_id)
    with pytest.raises(Invalid, match="another user's device had this id"):
        admin.register_device(
            db, user_id=second, kind="sensor", format="zigbee2mqtt", external_id=sensor,
            bound_at=long_ago,
        )  # fmt: skip
    new = admin.register_device(
        db, user_id=second, kind="sensor", format="zigbee2mqtt", external_id=sensor
    )
    assert retired.retired_at is not None and new.bound_at is not None
    assert new.bound_at >= retired.retired_at + timedelta(seconds=short_skew)
    wait_until(lambda: datetime.now(UTC) > new.bound_at, 10, "the new binding to begin")
    fresh = 10
    publish_all(broker.host, broker.port, _sensor_readings(sensor, datetime.now(UTC), fresh, 2))

    collector.start()  # the same client id: the queued backlog is delivered first
    wait_until(lambda: _climate_rows(db, second) == fresh, 30, "the new owner's readings")
    wait_until(lambda: _health(collector).get("in_flight") == 0, 30, "everything acknowledged")
    dead = collector.metrics()
    assert dead.get('hearth_collector_dead_lettered_total{reason="before_binding"}') == backlog
    assert _climate_rows(db, first) == 0  # retired: nothing stored for the first owner either
    row = db.execute(
        "SELECT count(*), min(value) FROM numeric_readings WHERE user_id = %s", (second,)
    ).fetchone()
    assert row == (fresh, 2.0)  # none of the first owner's values (1.0)


def _climate_rows(conn: Conn, user: str) -> int:
    return sum(count_signal_rows(conn, user, Category.CLIMATE).values())
