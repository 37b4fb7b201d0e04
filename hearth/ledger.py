"""The one module that owns the queries on the registry (users, devices) and the consent ledger.

The collector (identify, consent gate), the feature engine (consented categories at T, user time
zones) and the admin commands all read through here, so "active consent at T" has exactly one
definition.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

import psycopg

from hearth.signals import PURPOSE_CREDIT_SCORING, Category

REGISTRY_CHANNEL = "hearth_registry"  # NOTIFY on any change to users/devices (migration 0002)
CONSENT_CHANNEL = "hearth_consent"  # NOTIFY on any change to consent_events

# The privacy notice users consent to. A grant under an older notice does not cover this one.
CURRENT_NOTICE_VERSION = "2026-11"

Conn = psycopg.Connection[tuple[object, ...]]
AsyncConn = psycopg.AsyncConnection[tuple[object, ...]]


@dataclass(frozen=True, slots=True)
class DeviceRecord:
    device_id: str
    user_id: str
    kind: str
    format: str
    external_id: str
    tz: str  # the device's own zone, else its user's
    mqtt_username: str | None


_LIVE_DEVICES_SQL = """
    SELECT d.device_id, d.user_id, d.kind, d.format, d.external_id,
           coalesce(d.tz, u.tz), d.mqtt_username
      FROM devices d JOIN users u USING (user_id)
     WHERE d.retired_at IS NULL
"""

# Latest event per (user, category) at or before T decides; only a grant under the current
# notice version counts as active.
_ACTIVE_CONSENT_SQL = """
    SELECT user_id, category FROM (
        SELECT DISTINCT ON (user_id, category) user_id, category, action, notice_version
          FROM consent_events
         WHERE purpose = %(purpose)s AND at <= %(at)s {user_filter}
         ORDER BY user_id, category, at DESC, event_id DESC
    ) latest
    WHERE action = 'grant' AND notice_version = %(notice)s
"""


def _devices(rows: Iterable[tuple[object, ...]]) -> dict[tuple[str, str], DeviceRecord]:
    out = {}
    for r in rows:
        rec = DeviceRecord(*(None if v is None else str(v) for v in r))  # type: ignore[arg-type]
        out[(rec.format, rec.external_id)] = rec
    return out


def load_live_devices(conn: Conn) -> dict[tuple[str, str], DeviceRecord]:
    """Registered, not retired devices keyed by (format, external id)."""
    return _devices(conn.execute(_LIVE_DEVICES_SQL).fetchall())


async def load_live_devices_async(conn: AsyncConn) -> dict[tuple[str, str], DeviceRecord]:
    cur = await conn.execute(_LIVE_DEVICES_SQL)
    return _devices(await cur.fetchall())


def _consent_params(at: datetime | None, user_id: str | None) -> tuple[str, dict[str, object]]:
    sql = _ACTIVE_CONSENT_SQL.format(user_filter="AND user_id = %(user)s" if user_id else "")
    params: dict[str, object] = {
        "purpose": PURPOSE_CREDIT_SCORING,
        "at": at if at is not None else "infinity",
        "notice": CURRENT_NOTICE_VERSION,
        "user": user_id,
    }
    return sql, params


def active_consents(conn: Conn, at: datetime | None = None) -> set[tuple[str, Category]]:
    """(user, category) pairs with active credit-scoring consent at ``at`` (default: now)."""
    sql, params = _consent_params(at, None)
    return {(str(u), Category(str(c))) for u, c in conn.execute(sql, params).fetchall()}


async def active_consents_async(
    conn: AsyncConn, at: datetime | None = None
) -> set[tuple[str, Category]]:
    sql, params = _consent_params(at, None)
    cur = await conn.execute(sql, params)
    return {(str(u), Category(str(c))) for u, c in await cur.fetchall()}


def consented_categories(conn: Conn, user_id: str, at: datetime) -> set[Category]:
    """Categories the user had consented to (credit scoring, current notice) at ``at``."""
    sql, params = _consent_params(at, user_id)
    return {Category(str(c)) for _, c in conn.execute(sql, params).fetchall()}
