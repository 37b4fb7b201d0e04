"""Builders for hand-made users and readings (tests, benchmarks, notebooks).

They write straight to the tables the collector fills, with explicit event and ingest times,
so a test can state exactly what was known when.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime

from hearth.db import Conn
from hearth.ledger import CURRENT_NOTICE_VERSION
from hearth.signals import PURPOSE_CREDIT_SCORING, Category

ALL_CATEGORIES = tuple(Category)


def add_user(
    conn: Conn,
    user_id: str,
    *,
    tz: str = "UTC",
    categories: Iterable[Category] = ALL_CATEGORIES,
    granted_at: datetime,
) -> None:
    conn.execute("INSERT INTO users (user_id, tz) VALUES (%s, %s)", (user_id, tz))
    for c in categories:
        consent(conn, user_id, c, "grant", granted_at)


def consent(conn: Conn, user_id: str, category: Category | str, action: str, at: datetime) -> None:
    """One consent event under the current notice, for credit scoring."""
    conn.execute(
        """INSERT INTO consent_events (user_id, purpose, category, notice_version, action, at)
           VALUES (%s, %s, %s, %s, %s, %s)""",
        (user_id, PURPOSE_CREDIT_SCORING, str(category), CURRENT_NOTICE_VERSION, action, at),
    )


def add_device(conn: Conn, device_id: str, user_id: str, kind: str) -> None:
    conn.execute(
        """INSERT INTO devices (device_id, user_id, kind, format, external_id)
           VALUES (%s, %s, %s, 'hearth', %s)""",
        (device_id, user_id, kind, device_id),
    )


NumericRow = tuple[datetime, str, str, str, float, datetime]  # time, device, user, signal, v, ing
CategoricalRow = tuple[datetime, str, str, str, str, datetime]


def insert_numeric(conn: Conn, rows: Sequence[NumericRow]) -> int:
    """Insert readings; duplicates (same device, signal, time) are ignored like the collector."""
    with conn.cursor() as cur:
        cur.executemany(
            """INSERT INTO numeric_readings (time, device_id, user_id, signal, value, ingested_at)
               VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING""",
            list(rows),
        )
    return len(rows)


def insert_categorical(conn: Conn, rows: Sequence[CategoricalRow]) -> int:
    with conn.cursor() as cur:
        cur.executemany(
            """INSERT INTO categorical_readings
                   (time, device_id, user_id, signal, value, ingested_at)
               VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING""",
            list(rows),
        )
    return len(rows)
