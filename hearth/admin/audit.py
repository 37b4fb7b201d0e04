"""The audit log: what a purge, erasure, rotation or retention did, without personal data."""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime

from hearth.db import Conn
from hearth.pseudonym import DOMAIN_AUDIT_SUBJECT, keyed_hash
from hearth.settings import get_settings


def audit_subject(user_id: str) -> str:
    """The audit log's reference to a user: a keyed hash, so the log holds no personal data."""
    return keyed_hash(get_settings().require_pseudonym_key(), DOMAIN_AUDIT_SUBJECT, user_id)


def write_audit(conn: Conn, action: str, user_id: str | None, details: Mapping[str, object]) -> int:
    row = conn.execute(
        "INSERT INTO audit_log (action, subject_ref, details) VALUES (%s, %s, %s) RETURNING id",
        (action, audit_subject(user_id) if user_id else None, json.dumps(details)),
    ).fetchone()
    assert row is not None and isinstance(row[0], int)
    return row[0]


def erasure_record(conn: Conn, user_id: str) -> dict[str, object] | None:
    """The latest ``erase_user`` audit record of a user, found by the keyed subject hash (the
    audit log never holds the id itself); None when the user was never erased."""
    row = conn.execute(
        "SELECT id, at, details FROM audit_log WHERE action = 'erase_user' AND subject_ref = %s "
        "ORDER BY at DESC, id DESC LIMIT 1",
        (audit_subject(user_id),),
    ).fetchone()
    if row is None:
        return None
    audit_id, at, details = row
    assert isinstance(at, datetime) and isinstance(details, dict)
    return {
        "user_id": user_id,
        "held": "nothing",
        "erased_at": at.isoformat(),
        "audit_id": audit_id,
        "audit_subject": audit_subject(user_id),
        "deleted": details.get("counts", {}),
    }
