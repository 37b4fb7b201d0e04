"""Consent: grants and withdrawals in the append-only ledger (``consent_events``).

"Active at T" is read in one place, :mod:`hearth.ledger`; this module appends to the ledger. A
withdrawal runs in two transactions around the consent gate (hearth.ledger): the first takes the
INGEST gate exclusively and commits the ledger event (:func:`record_withdrawal`), so from then on
every collector commit refuses the category; the second takes the DERIVED gate exclusively,
deletes and verifies (:func:`purge_withdrawn`, with :mod:`hearth.admin.purge`).
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime

from hearth import ledger
from hearth.admin import purge
from hearth.admin.common import atomic, check_at
from hearth.admin.users import require_user
from hearth.db import Conn
from hearth.errors import Invalid
from hearth.ledger import (
    CONSENT_EVENT_COLUMNS,
    CURRENT_NOTICE_VERSION,
    GATE_DERIVED,
    GATE_INGEST,
    ConsentEvent,
    consent_event_from_row,
    gate_sql,
    notify_consent,
)
from hearth.signals import PURPOSE_CREDIT_SCORING, Category


def _category(value: str) -> Category:
    try:
        return Category(value)
    except ValueError:
        known = ", ".join(c.value for c in Category)
        raise Invalid(f"unknown data category {value!r}; known: {known}") from None


def _purpose(value: str) -> str:
    if value not in ledger.PURPOSES:
        known = ", ".join(sorted(ledger.PURPOSES))
        raise Invalid(f"unknown purpose {value!r}; known: {known}")
    return value


def evidence_hash(evidence: object) -> str:
    """SHA-256 of the consent evidence (the signed form, the UI transcript, ...), never the text.

    Bytes and strings are hashed as given; anything else as canonical JSON.
    """
    if isinstance(evidence, bytes):
        data = evidence
    elif isinstance(evidence, str):
        data = evidence.encode()
    else:
        data = json.dumps(evidence, sort_keys=True, separators=(",", ":"), default=str).encode()
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _append_consent_event(
    conn: Conn,
    *,
    user_id: str,
    category: Category,
    purpose: str,
    notice_version: str,
    action: str,
    at: datetime | None,
    evidence: object | None,
) -> ConsentEvent:
    require_user(conn, user_id, lock=True)  # one append per user at a time (consent_state)
    row = conn.execute(
        "SELECT max(at) FILTER (WHERE action = 'grant'), greatest(max(at), now()) "
        "FROM consent_events WHERE user_id = %s AND purpose = %s AND category = %s",
        (user_id, purpose, category.value),
    ).fetchone()
    assert row is not None
    latest_grant, latest_or_now = row
    assert isinstance(latest_or_now, datetime)
    assert latest_grant is None or isinstance(latest_grant, datetime)
    if at is None:
        at = latest_or_now  # an undated event is now, and never older than the latest one
    elif action == "withdraw" and latest_grant is not None and at < latest_grant:
        raise Invalid(
            f"withdrawal at {at.isoformat()} is before the latest grant of {category.value} "
            f"({latest_grant.isoformat()}); date it at or after that grant, or leave out the time"
        )
    row = conn.execute(
        "INSERT INTO consent_events (user_id, purpose, category, notice_version, action, at, "
        "evidence_hash) VALUES (%s, %s, %s, %s, %s, %s, %s) "
        f"RETURNING {CONSENT_EVENT_COLUMNS}",
        (
            user_id,
            purpose,
            category.value,
            notice_version,
            action,
            at,
            None if evidence is None else evidence_hash(evidence),
        ),
    ).fetchone()
    assert row is not None
    notify_consent(conn, action, user_id, category)
    return consent_event_from_row(row)


def grant_consent(
    conn: Conn,
    *,
    user_id: str,
    category: str,
    purpose: str = PURPOSE_CREDIT_SCORING,
    notice_version: str = CURRENT_NOTICE_VERSION,
    at: datetime | None = None,
    evidence: object | None = None,
) -> ConsentEvent:
    """Append a grant. ``at`` (default now) may be in the past for imports of consents given
    elsewhere and for simulations that replay history; "active at T" honours it, so features
    as of an earlier T see the grant only from ``at`` on, and the collector stores readings
    from ``at`` on. ``at`` may not be in the future beyond the clock-skew allowance; without it
    the grant is dated now (or at the category's latest event, if that is later).
    ``evidence`` is stored as a hash."""
    check_at(at)
    cat = _category(category)
    purpose = _purpose(purpose)
    with atomic(conn):
        return _append_consent_event(
            conn,
            user_id=user_id,
            category=cat,
            purpose=purpose,
            notice_version=notice_version,
            action="grant",
            at=at,
            evidence=evidence,
        )


def consent_history(conn: Conn, user_id: str) -> list[ConsentEvent]:
    """The user's ledger, oldest first; unknown user → :class:`NotFound`."""
    require_user(conn, user_id)
    return ledger.consent_history(conn, user_id)


def withdraw_consent(
    conn: Conn,
    *,
    user_id: str,
    category: str,
    purpose: str = PURPOSE_CREDIT_SCORING,
    at: datetime | None = None,
    settle_s: float = 0.0,
) -> purge.PurgeReport:
    """Append a withdrawal and purge every stored row of that user and category.

    Purges raw readings and any table with ``user_id`` + ``signal`` (rollups), nulls the
    category's features in ``feature_snapshots`` (with a reason), deletes the dead letters of the
    user's devices and notifies caches on CONSENT_CHANNEL. All of the category's data goes,
    whatever ``at`` says (``at`` only dates the ledger event; it may not be before the
    category's latest grant, nor in the future) — unless another purpose that uses the category
    keeps an active consent (``status`` ``retained``). Raises :class:`.PurgeIncomplete` when the
    final verification finds rows left. ``settle_s`` is ignored: the consent gate made the old
    settle pass unnecessary.
    """
    del settle_s
    report = record_withdrawal(conn, user_id=user_id, category=category, purpose=purpose, at=at)
    purge_withdrawn(conn, report)
    report.raise_if_incomplete()
    return report


def record_withdrawal(
    conn: Conn,
    *,
    user_id: str,
    category: str,
    purpose: str = PURPOSE_CREDIT_SCORING,
    at: datetime | None = None,
) -> purge.PurgeReport:
    """First half of :func:`withdraw_consent`: append the withdrawal under the exclusive INGEST
    gate. Once it commits, no collector commit stores the category for the user."""
    check_at(at)
    cat = _category(category)
    purpose = _purpose(purpose)
    report = purge.PurgeReport("purge_category", user_id, cat)
    with atomic(conn):
        conn.execute(gate_sql(GATE_INGEST, exclusive=True))
        report.event = _append_consent_event(
            conn,
            user_id=user_id,
            category=cat,
            purpose=purpose,
            notice_version=CURRENT_NOTICE_VERSION,
            action="withdraw",
            at=at,
            evidence=None,
        )
    return report


def purge_withdrawn(conn: Conn, report: purge.PurgeReport) -> purge.PurgeReport:
    """Second half of :func:`withdraw_consent`: under the exclusive DERIVED gate, delete the
    category's rows unless another purpose still uses them, verify, and audit. Does not raise
    on rows left (see :meth:`~hearth.admin.purge.PurgeReport.raise_if_incomplete`)."""
    category = report.category
    assert category is not None
    with atomic(conn):
        conn.execute(gate_sql(GATE_DERIVED, exclusive=True))
        report.retained_for = purposes_still_using(conn, report.user_id, category)
        if report.retained_for:
            report.status = "retained"
            left: dict[str, int] = {}
        else:
            report.add(purge.purge_category_rows(conn, report.user_id, category))
            left = purge.category_rows_left(conn, report.user_id, category)
            notify_consent(conn, "withdraw", report.user_id, category)  # cached vectors
        report.finish(conn, left)
    return report


def purposes_still_using(conn: Conn, user_id: str, category: Category) -> list[str]:
    """Purposes using ``category`` for which the user's consent is active now."""
    using = sorted(p for p, cats in ledger.PURPOSES.items() if category in cats)
    rows = conn.execute(
        "SELECT purpose FROM consent_state WHERE user_id = %s AND category = %s "
        "AND purpose = ANY(%s) AND action = 'grant' AND notice_version = %s ORDER BY purpose",
        (user_id, category.value, using, CURRENT_NOTICE_VERSION),
    ).fetchall()
    return [str(r[0]) for r in rows]
