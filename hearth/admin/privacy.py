"""Data-subject rights: access (:func:`export_user`) and erasure (:func:`erase_user`).

Export reads and erasure deletes exactly the rows :func:`hearth.admin.purge.user_row_filters`
finds — every table holding the user's id or their devices' ids — so an export before an erasure
returns everything the erasure removes. An erasure runs in two transactions around the consent
gate (hearth.ledger), like a withdrawal: the first clears the user's consent state under the
INGEST gate, the second deletes and verifies under the DERIVED gate.
"""

from __future__ import annotations

import base64
import json
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any
from uuid import UUID

from psycopg import sql
from psycopg.rows import dict_row

from hearth import ledger
from hearth.admin.audit import audit_subject, erasure_record
from hearth.admin.common import atomic
from hearth.admin.devices import DeviceInfo, list_devices, revoke_broker_accounts
from hearth.admin.purge import (
    PurgeReport,
    count_rows,
    links_left,
    purge_links,
    table_ident,
    user_row_filters,
)
from hearth.admin.users import require_user, unknown_user
from hearth.broker import BrokerAccounts
from hearth.db import Conn
from hearth.errors import NotFound
from hearth.ledger import GATE_DERIVED, GATE_INGEST, gate_sql, notify_consent
from hearth.signals import Category


def _jsonable(value: object) -> object:
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, bytes | memoryview):
        return base64.b64encode(bytes(value)).decode()
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, UUID | timedelta):
        return str(value)
    return value


# Stored snapshots are packed (migration 0055): exported as named cells, not as bytes.
_EXPORT_COLUMNS = {
    "feature_snapshots": sql.SQL(
        "user_id, as_of, feature_set_version, computed_at, "
        "hearth_snapshot_vector(feature_set_version, vals, covs, withheld) AS vector"
    ),
}


def _rows(conn: Conn, query: sql.Composed | sql.SQL, params: Any) -> list[dict[str, object]]:
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(query, params)
        return [{k: _jsonable(v) for k, v in r.items()} for r in cur.fetchall()]


def export_user(conn: Conn, user_id: str) -> dict[str, object]:
    """Everything held about a user (data-subject access), as JSON-ready data.

    Devices come without password hashes; ``tables`` has the rows of every table holding the
    user's id or their devices' ids; ``dead_letters`` the quarantined messages of their
    devices (by device id); ``audit`` the purge records about them (found by their keyed hash).
    """
    with conn.transaction():
        user = _rows(conn, sql.SQL("SELECT * FROM users WHERE user_id = %s"), (user_id,))
        if not user:
            raise unknown_user(user_id, hint=None)
        devices = list_devices(conn, user_id)
        device_ids = [d.device_id for d in devices]
        tables: dict[str, list[dict[str, object]]] = {}
        for table, where in user_row_filters(conn):
            rows = _rows(
                conn,
                sql.SQL("SELECT {} FROM {} WHERE {}").format(
                    _EXPORT_COLUMNS.get(table, sql.SQL("*")), table_ident(table), where
                ),
                {"user": user_id, "devices": device_ids},
            )
            if rows:
                tables[table] = rows
        dead = sorted(tables.pop("dead_letters", []), key=lambda r: int(str(r["id"])))
        audit = _rows(
            conn,
            sql.SQL("SELECT * FROM audit_log WHERE subject_ref = %s ORDER BY id"),
            (audit_subject(user_id),),
        )
    return {
        "user": user[0],
        "devices": [d.to_json() for d in devices],
        "consent_history": [e.to_json() for e in ledger.consent_history(conn, user_id)],
        "tables": tables,
        "dead_letters": dead,
        "audit": audit,
        "exported_at": datetime.now().astimezone().isoformat(),
    }


def export_document(conn: Conn, user_id: str) -> dict[str, object]:
    """What data-subject access hands out (``collector users export``, the console's
    download): :func:`export_user`, or for an erased user "nothing held" and the erasure's
    audit reference (how an operator verifies an erasure without the log naming anybody)."""
    try:
        return export_user(conn, user_id)
    except NotFound:
        erased = erasure_record(conn, user_id)
        if erased is None:
            raise
        return erased


def export_text(conn: Conn, user_id: str) -> str:
    """:func:`export_document` as the JSON text ``collector users export`` prints."""
    return json.dumps(export_document(conn, user_id), indent=2, default=str)


def _erase_rows(conn: Conn, user_id: str, device_ids: list[str]) -> dict[str, int]:
    # Other users' snapshots whose relationship features used this user: withheld.
    counts: dict[str, int] = purge_links(conn, user_id, [Category.RELATIONSHIPS])
    for table, where in user_row_filters(conn):
        cur = conn.execute(
            sql.SQL("DELETE FROM {} WHERE {}").format(table_ident(table), where),
            {"user": user_id, "devices": device_ids},
        )
        counts[table] = counts.get(table, 0) + cur.rowcount
    return counts


def _erase_rows_left(conn: Conn, user_id: str, devices: list[DeviceInfo]) -> dict[str, int]:
    """The final verification of an erasure: rows still held per table (what
    :func:`_erase_rows` reaches, dead letters included by device id)."""
    params = {"user": user_id, "devices": [d.device_id for d in devices]}
    query = sql.SQL("SELECT count(*) FROM {} WHERE {}")
    left = {t: count_rows(conn, query, t, where, params) for t, where in user_row_filters(conn)}
    left.update(links_left(conn, user_id, [Category.RELATIONSHIPS]))
    return left


def erase_user(
    conn: Conn, user_id: str, *, settle_s: float = 0.0, broker: BrokerAccounts | None = None
) -> PurgeReport:
    """Delete every row of the user: data in any table with their id or their devices' ids
    (dead letters included, by device id), devices, consent history and the user itself.

    First, under the exclusive INGEST gate, the user's consent state is cleared (no collector
    commit stores anything of theirs from then on) and the devices' broker accounts are deleted
    before that commits (which disconnects them; ``broker`` as for :func:`register_device`);
    then, under the exclusive DERIVED gate,
    everything is deleted and verified. The registry, ledger and user go only when nothing is
    left, so an incomplete erasure (:class:`.PurgeIncomplete`) can simply be run again. The
    audit record keeps only the keyed-hash subject, counts and status. ``settle_s`` is ignored.
    """
    del settle_s
    report = PurgeReport("erase_user", user_id, None)
    with atomic(conn):
        conn.execute(gate_sql(GATE_INGEST, exclusive=True))
        require_user(conn, user_id, lock=True)
        conn.execute("DELETE FROM consent_state WHERE user_id = %s", (user_id,))
        notify_consent(conn, "erase", user_id, None)
        usernames = [d.mqtt_username or d.device_id for d in list_devices(conn, user_id)]
        revoke_broker_accounts(usernames, conn=conn, broker=broker)
    with atomic(conn):
        conn.execute(gate_sql(GATE_DERIVED, exclusive=True))
        require_user(conn, user_id, lock=True)
        devices = list_devices(conn, user_id)
        # Append-only tables (the score log, migration 0075) let an erasure delete; the
        # ledger itself still goes only when nothing else is left.
        conn.execute("SELECT set_config('hearth.erasing', 'on', true)")
        report.add(_erase_rows(conn, user_id, [d.device_id for d in devices]))
        left = _erase_rows_left(conn, user_id, devices)
        if not any(left.values()):
            for table in ("consent_events", "devices", "users"):
                cur = conn.execute(
                    sql.SQL("DELETE FROM {} WHERE user_id = %s").format(sql.Identifier(table)),
                    (user_id,),
                )
                report.add({table: cur.rowcount})
            conn.execute("SELECT set_config('hearth.erasing', '', true)")
        notify_consent(conn, "erase", user_id, None)  # cached vectors
        report.finish(conn, left)
    report.raise_if_incomplete()
    return report
