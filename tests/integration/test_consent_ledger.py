"""The consent ledger: "active at T", notice versions, append-only history, notifications."""

from __future__ import annotations

import json
from datetime import timedelta

import psycopg
import pytest

from hearth import admin, ledger
from hearth.errors import Invalid
from hearth.ledger import (
    CONSENT_CHANNEL,
    CURRENT_NOTICE_VERSION,
    active_consents,
    consented_categories,
    parse_consent_notification,
)
from hearth.signals import Category
from tests.integration.consent_fixtures import T0, unique


def test_active_at_t_follows_the_latest_event(db: psycopg.Connection) -> None:
    user = unique("u")
    admin.add_user(db, user)
    t1, t2, t3 = T0, T0 + timedelta(days=10), T0 + timedelta(days=20)
    admin.grant_consent(db, user_id=user, category="location", at=t1, evidence={"form": "v1"})
    admin.grant_consent(db, user_id=user, category="energy", at=t1)
    admin.withdraw_consent(db, user_id=user, category="location", at=t2, settle_s=0)
    admin.grant_consent(db, user_id=user, category="location", at=t3)

    assert consented_categories(db, user, t1 - timedelta(seconds=1)) == set()
    assert consented_categories(db, user, t1) == {Category.LOCATION, Category.ENERGY}
    assert consented_categories(db, user, t2 - timedelta(seconds=1)) == {
        Category.LOCATION,
        Category.ENERGY,
    }
    assert consented_categories(db, user, t2) == {Category.ENERGY}
    assert consented_categories(db, user, t3) == {Category.LOCATION, Category.ENERGY}
    assert (user, Category.ENERGY) in active_consents(db)
    history = admin.consent_history(db, user)
    assert [(e.category.value, e.action) for e in history] == [
        ("location", "grant"),
        ("energy", "grant"),
        ("location", "withdraw"),
        ("location", "grant"),
    ]
    assert history[0].evidence_hash is not None and history[0].evidence_hash.startswith("sha256:")
    assert "v1" not in history[0].evidence_hash


def test_old_notice_version_does_not_cover_the_current_one(db: psycopg.Connection) -> None:
    user = unique("u")
    admin.add_user(db, user)
    admin.grant_consent(db, user_id=user, category="presence", notice_version="2020-01", at=T0)
    assert consented_categories(db, user, T0 + timedelta(days=1)) == set()
    assert (user, Category.PRESENCE) not in active_consents(db)
    admin.grant_consent(
        db, user_id=user, category="presence", notice_version=CURRENT_NOTICE_VERSION, at=T0
    )
    assert consented_categories(db, user, T0 + timedelta(days=1)) == {Category.PRESENCE}


def test_other_purposes_do_not_count(
    db: psycopg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(ledger.PURPOSES, "marketing", frozenset({Category.USAGE}))
    user = unique("u")
    admin.add_user(db, user)
    admin.grant_consent(db, user_id=user, category="usage", purpose="marketing", at=T0)
    assert consented_categories(db, user, T0 + timedelta(days=1)) == set()
    assert (user, Category.USAGE) not in ledger.consent_since(db)


def test_ledger_is_append_only(db: psycopg.Connection) -> None:
    user = unique("u")
    admin.add_user(db, user)
    event = admin.grant_consent(db, user_id=user, category="climate")
    with pytest.raises(psycopg.errors.InsufficientPrivilege, match="append-only"):
        db.execute("UPDATE consent_events SET action = 'withdraw' WHERE event_id = %s",
                   (event.event_id,))  # fmt: skip
    with pytest.raises(psycopg.errors.InsufficientPrivilege, match="append-only"):
        db.execute("DELETE FROM consent_events WHERE event_id = %s", (event.event_id,))
    with pytest.raises(psycopg.errors.InsufficientPrivilege, match="append-only"):
        db.execute("DELETE FROM users WHERE user_id = %s", (user,))  # cascade is guarded too
    with pytest.raises(psycopg.errors.InsufficientPrivilege, match="append-only"):
        db.execute("TRUNCATE consent_events CASCADE")
    assert len(admin.consent_history(db, user)) == 1
    admin.erase_user(db, user, settle_s=0)  # the one sanctioned way out
    row = db.execute("SELECT count(*) FROM consent_events WHERE user_id = %s", (user,)).fetchone()
    assert row == (0,)
    # The bypass was transaction-local: the guard is back.
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        db.execute("DELETE FROM consent_events")


def test_naive_time_is_refused(db: psycopg.Connection) -> None:
    user = unique("u")
    admin.add_user(db, user)
    with pytest.raises(Invalid, match="UTC offset"):
        admin.grant_consent(db, user_id=user, category="energy", at=T0.replace(tzinfo=None))


def test_withdraw_notifies_with_user_and_category(
    database_url: str, db: psycopg.Connection
) -> None:
    user = unique("u")
    admin.add_user(db, user)
    admin.grant_consent(db, user_id=user, category="location")
    with psycopg.connect(database_url, autocommit=True) as listener:
        listener.execute(f"LISTEN {CONSENT_CHANNEL}")
        admin.withdraw_consent(db, user_id=user, category="location", settle_s=0)
        changes = [
            parse_consent_notification(n.payload)
            for n in listener.notifies(timeout=5, stop_after=2)
        ]
    assert ledger.ConsentChange("withdraw", user, Category.LOCATION) in changes


def test_parse_consent_notification_tolerates_empty_and_junk() -> None:
    assert parse_consent_notification("") == ledger.ConsentChange(None, None, None)
    assert parse_consent_notification("not json") == ledger.ConsentChange(None, None, None)
    payload = json.dumps({"action": "erase", "user_id": "u1", "category": None})
    assert parse_consent_notification(payload) == ledger.ConsentChange("erase", "u1", None)
