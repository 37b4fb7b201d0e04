"""Seed a user with data in every kind of table a purge must reach (consent/identity tests)."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from features.rollups import write_buckets
from hearth import admin
from hearth.db import Conn
from hearth.signals import SIGNALS, Category
from tests.support.service import VECTOR_SQL, seed_snapshot

T0 = datetime(2026, 10, 1, tzinfo=UTC)
FEATURE_SET = "test-fs-1"
FEATURES = {  # name → category, registered in feature_definitions
    "test_home_nights_share": Category.LOCATION,
    "test_plug_energy_cv": Category.ENERGY,
    "test_battery_low_share": Category.DEVICE_HEALTH,
}


@dataclass
class SeededUser:
    user_id: str
    device_ids: list[str]
    rows_per_signal: int


def unique(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(4)}"


def ensure_feature_definitions(conn: Conn) -> None:
    for name, category in FEATURES.items():
        conn.execute(
            "INSERT INTO feature_definitions (name, feature_set_version, family, category, "
            "definition) VALUES (%s, %s, 'test', %s, '{}') ON CONFLICT DO NOTHING",
            (name, FEATURE_SET, category.value),
        )


def seed_user(
    conn: Conn,
    user_id: str | None = None,
    *,
    rows_per_signal: int = 24,
    categories: tuple[Category, ...] = (Category.LOCATION, Category.ENERGY, Category.DEVICE_HEALTH),
) -> SeededUser:
    """A user with a phone (owntracks) and a plug (tasmota), consent to ``categories``, raw rows
    (numeric + categorical), rollups, a snapshot and a dead letter of the phone."""
    user_id = user_id or unique("u")
    admin.add_user(conn, user_id, "Europe/Berlin")
    phone = admin.register_device(
        conn,
        user_id=user_id,
        kind="phone",
        format="owntracks",
        external_id=f"{user_id}/phone",
    )
    plug = admin.register_device(
        conn, user_id=user_id, kind="plug", format="tasmota", external_id=f"plug-{user_id}"
    )
    for c in categories:
        admin.grant_consent(conn, user_id=user_id, category=c, at=T0 - timedelta(days=30))
    numeric = [
        (phone.device_id, "region_event"),
        (phone.device_id, "battery_pct"),
        (plug.device_id, "power_w"),
    ]
    categorical = [(phone.device_id, "geohash", "u33dc0c")]
    with conn.cursor() as cur:
        with cur.copy(
            "COPY numeric_readings (time, device_id, user_id, signal, value) FROM STDIN"
        ) as cp:
            for device, signal in numeric:
                for i in range(rows_per_signal):
                    cp.write_row((T0 + timedelta(hours=i), device, user_id, signal, 1.0))
        with cur.copy(
            "COPY categorical_readings (time, device_id, user_id, signal, value) FROM STDIN"
        ) as cp:
            for device, signal, value in categorical:
                for i in range(rows_per_signal):
                    cp.write_row((T0 + timedelta(hours=i), device, user_id, signal, value))
    now = datetime.now(UTC)
    write_buckets(
        conn,
        "rollup_numeric_hourly",
        [
            {"bucket": T0, "device_id": device, "user_id": user_id, "signal": signal, "n": 1,
             "sum": 1.0, "first_time": T0, "max_ingested_at": now}
            for device, signal in numeric
        ],
    )  # fmt: skip
    write_buckets(
        conn,
        "rollup_categorical_hourly",
        [
            {"bucket": T0, "device_id": phone.device_id, "user_id": user_id,
             "signal": "geohash", "value": "u33dc0c", "n": 1, "max_ingested_at": now}
        ],
    )  # fmt: skip
    ensure_feature_definitions(conn)
    vector = {name: {"value": 0.5, "coverage": 1.0} for name in FEATURES}
    seed_snapshot(conn, user_id, T0 + timedelta(days=2), FEATURE_SET, vector)
    add_dead_letter(conn, user_id, phone.device_id)
    return SeededUser(user_id, [phone.device_id, plug.device_id], rows_per_signal)


def add_dead_letter(conn: Conn, user_id: str, device_id: str) -> None:
    """A quarantined message of the user's phone, attributed by device id as the collector does."""
    conn.execute(
        "INSERT INTO dead_letters (topic, reason, detail, payload, payload_bytes, digest, "
        "device_id) VALUES (%s, 'schema', 'test', %s, 2, %s, %s)",
        (f"owntracks/{user_id}/phone", b"{}", secrets.token_bytes(32), device_id),
    )


def count_signal_rows(conn: Conn, user_id: str, category: Category) -> dict[str, int]:
    """Rows of the user's ``category`` signals in raw and rollup tables."""
    signals = [s.name for s in SIGNALS.values() if s.category == category]
    out = {}
    for table in (
        "numeric_readings",
        "categorical_readings",
        "rollup_numeric_hourly",
        "rollup_categorical_hourly",
    ):
        row = conn.execute(
            f"SELECT count(*) FROM {table} WHERE user_id = %s AND signal = ANY(%s)",
            (user_id, signals),
        ).fetchone()
        assert row is not None
        out[table] = int(row[0])
    return out


def snapshot_features(conn: Conn, user_id: str) -> set[str]:
    """Features the user's snapshot holds data for: a withdrawn feature keeps its key, as a
    null cell with a reason (hearth.vectors), and is not listed."""
    row = conn.execute(
        f"SELECT {VECTOR_SQL} FROM feature_snapshots WHERE user_id = %s",
        (user_id,),
    ).fetchone()
    assert row is not None
    return {name for name, cell in row[0].items() if "reason" not in cell}
