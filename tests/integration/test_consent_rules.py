"""Consent rules an operator meets (issue 11 §3, issue 12 §2): purposes, consent times, the
consent-state table, and purge completeness, through the admin functions, the CLI and HTTP."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest
from aiohttp.test_utils import TestClient, TestServer

from features.service.app import create_app
from hearth import admin, ledger
from hearth.admin import PurgeIncomplete
from hearth.admin import purge as admin_purge
from hearth.cli import run_main
from hearth.db import Conn
from hearth.errors import EXIT_INCOMPLETE, EXIT_USAGE, Invalid
from hearth.settings import get_settings, load_settings
from hearth.signals import Category
from tests.integration.consent_fixtures import count_signal_rows, seed_user, unique

CliRun = Callable[..., tuple[int, str, str]]


@pytest.fixture
def run_cli(
    database_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> Iterator[CliRun]:
    """``python -m collector ARGS`` in-process, as ``__main__`` runs it: (exit code, out, err)."""
    from collector.cli import main

    monkeypatch.setenv("HEARTH_DATABASE_URL", database_url)
    get_settings.cache_clear()

    def run(*args: str) -> tuple[int, str, str]:
        capsys.readouterr()
        with pytest.raises(SystemExit) as exit_info:
            run_main(lambda: main(list(args)))
        out = capsys.readouterr()
        return int(exit_info.value.code or 0), out.out, out.err

    yield run
    get_settings.cache_clear()


def _energy_rows(conn: Conn, user: str) -> int:
    return sum(count_signal_rows(conn, user, Category.ENERGY).values())


# -- purposes (issue 12 §2) -------------------------------------------------------------------


def test_unknown_purpose_is_refused_and_purges_nothing(
    db: Conn, run_cli: CliRun, tmp_path: Path
) -> None:
    seeded = seed_user(db)
    user = seeded.user_id
    before = _energy_rows(db, user)
    assert before > 0
    code, out, err = run_cli(
        "consent", "withdraw", "--user-id", user, "--category", "energy", "--purpose", "marketing"
    )
    # argparse's own refusal, like an unknown --category: usage, then the error naming both.
    assert code == EXIT_USAGE and out == "" and "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert "invalid choice: 'marketing'" in last and "credit_scoring" in last
    with pytest.raises(Invalid, match="unknown purpose 'marketing'; known: credit_scoring"):
        admin.withdraw_consent(db, user_id=user, category="energy", purpose="marketing")
    with pytest.raises(Invalid, match="unknown purpose"):
        admin.grant_consent(db, user_id=user, category="energy", purpose="marketing")
    # The same refusal inside a --batch line, and nothing was purged or appended.
    batch = tmp_path / "withdraw.jsonl"
    batch.write_text(json.dumps({"user_id": user, "category": "energy", "purpose": "ads"}) + "\n")
    code, _, err = run_cli("consent", "withdraw", "--batch", str(batch))
    assert code == EXIT_USAGE and "line 1: unknown purpose 'ads'" in err
    assert _energy_rows(db, user) == before
    assert [e.action for e in admin.consent_history(db, user) if e.category == "energy"] == [
        "grant"
    ]


def test_purge_waits_until_no_purpose_using_the_data_is_consented(
    db: Conn, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Energy data serve two purposes here: withdrawing one keeps them (status ``retained``),
    withdrawing the last one purges them."""
    monkeypatch.setitem(ledger.PURPOSES, "service_quality", frozenset({Category.ENERGY}))
    seeded = seed_user(db)
    user = seeded.user_id
    before = _energy_rows(db, user)
    admin.grant_consent(db, user_id=user, category="energy", purpose="service_quality")

    kept = admin.withdraw_consent(db, user_id=user, category="energy")
    assert (kept.status, kept.retained_for, kept.total) == ("retained", ["service_quality"], 0)
    assert _energy_rows(db, user) == before > 0
    details = db.execute("SELECT details FROM audit_log WHERE id = %s", (kept.audit_id,)).fetchone()
    assert details is not None and details[0]["status"] == "retained"
    assert details[0]["retained_for"] == ["service_quality"]

    purged = admin.withdraw_consent(db, user_id=user, category="energy", purpose="service_quality")
    assert purged.status == "complete" and purged.retained_for == []
    assert purged.counts["numeric_readings"] == seeded.rows_per_signal  # power_w
    assert _energy_rows(db, user) == 0


# -- consent times (issue 11 §3) --------------------------------------------------------------


def test_future_consent_times_are_refused(db: Conn, run_cli: CliRun) -> None:
    user = unique("u")
    admin.add_user(db, user)
    skew = get_settings().max_clock_skew_s
    future = datetime.now(UTC) + timedelta(seconds=skew + 60)
    for call in (
        lambda: admin.grant_consent(db, user_id=user, category="energy", at=future),
        lambda: admin.withdraw_consent(db, user_id=user, category="energy", at=future),
    ):
        with pytest.raises(Invalid, match="in the future"):
            call()
    code, _, err = run_cli(
        "consent", "grant", "--user-id", user, "--category", "energy", "--at", future.isoformat()
    )
    assert code == EXIT_USAGE and "in the future" in err and "HEARTH_MAX_CLOCK_SKEW_S" in err
    assert admin.consent_history(db, user) == []
    # Within the allowance a device-side clock a little ahead is accepted.
    admin.grant_consent(
        db, user_id=user, category="energy", at=datetime.now(UTC) + timedelta(seconds=5)
    )


def test_withdrawal_dated_before_the_latest_grant_is_refused(db: Conn, run_cli: CliRun) -> None:
    user = unique("u")
    admin.add_user(db, user)
    granted = datetime(2026, 10, 1, tzinfo=UTC)
    admin.grant_consent(db, user_id=user, category="climate", at=granted)
    with pytest.raises(Invalid, match="before the latest grant of climate"):
        admin.withdraw_consent(db, user_id=user, category="climate", at=granted - timedelta(days=1))
    code, _, err = run_cli(
        "consent", "withdraw", "--user-id", user, "--category", "climate",
        "--at", "2026-09-01T00:00:00Z",
    )  # fmt: skip
    assert code == EXIT_USAGE and "before the latest grant" in err
    assert [e.action for e in admin.consent_history(db, user)] == ["grant"]
    # At the grant's own time, or later, is fine; the later event wins.
    report = admin.withdraw_consent(db, user_id=user, category="climate", at=granted)
    assert report.status == "complete"
    assert ledger.consented_categories(db, user, granted + timedelta(days=1)) == set()


def test_undated_event_is_never_older_than_the_latest_one(db: Conn) -> None:
    """A grant dated a few seconds ahead (within the skew allowance), then an undated
    withdrawal: the withdrawal is dated at the grant, so it is the latest event and wins."""
    user = unique("u")
    admin.add_user(db, user)
    ahead = datetime.now(UTC) + timedelta(seconds=30)
    admin.grant_consent(db, user_id=user, category="usage", at=ahead)
    report = admin.withdraw_consent(db, user_id=user, category="usage")
    assert report.event is not None and report.event.at >= ahead
    assert (user, Category.USAGE) not in ledger.consent_since(db)


async def test_http_admin_refuses_bad_consent_times_with_400(database_url: str) -> None:
    token = "admin-token-consent-rules-0123"
    settings = load_settings(database_url=database_url, api_tokens=json.dumps({token: ["admin"]}))
    headers = {"Authorization": f"Bearer {token}"}
    user = unique("h")
    with psycopg.connect(database_url, autocommit=True) as conn:
        admin.add_user(conn, user)
        admin.grant_consent(
            conn, user_id=user, category="energy", at=datetime(2026, 10, 1, tzinfo=UTC)
        )
    future = (datetime.now(UTC) + timedelta(days=2)).isoformat()
    async with TestClient(TestServer(create_app(settings))) as client:
        for path, body, message in (
            ("grant", {"user_id": user, "category": "energy", "at": future}, "in the future"),
            ("withdraw", {"user_id": user, "category": "energy", "at": future}, "in the future"),
            (
                "withdraw",
                {"user_id": user, "category": "energy", "at": "2026-09-01T00:00:00Z"},
                "before the latest grant",
            ),
        ):
            resp = await client.post(f"/v1/admin/consent/{path}", json=body, headers=headers)
            assert resp.status == 400, await resp.text()
            assert message in (await resp.json())["error"]["message"]


# -- the consent-state table ------------------------------------------------------------------


def test_consent_state_follows_the_ledger(db: Conn) -> None:
    """consent_state (kept by a trigger) agrees with "active at now" of the ledger, and its
    ``since`` is the start of the run of grants in force."""
    user = unique("u")
    admin.add_user(db, user)
    t = datetime(2026, 6, 1, tzinfo=UTC)
    epoch = _epoch(db)
    admin.grant_consent(db, user_id=user, category="location", at=t)
    admin.grant_consent(db, user_id=user, category="location", at=t + timedelta(days=1))
    assert ledger.consent_since(db)[(user, Category.LOCATION)] == t  # a re-grant continues
    assert _epoch(db) == epoch  # grants revoke nothing
    admin.withdraw_consent(db, user_id=user, category="location", at=t + timedelta(days=2))
    assert (user, Category.LOCATION) not in ledger.consent_since(db)
    assert _epoch(db) == epoch + 1  # a revocation: collector batches checked before re-check
    admin.grant_consent(db, user_id=user, category="location", at=t + timedelta(days=3))
    admin.grant_consent(db, user_id=user, category="energy", notice_version="2020-01", at=t)
    since = ledger.consent_since(db)
    assert since[(user, Category.LOCATION)] == t + timedelta(days=3)  # not across the withdrawal
    assert (user, Category.ENERGY) not in since  # an old notice does not count
    now = {c for (u, c) in since if u == user}
    assert now == {c for (u, c) in ledger.active_consents(db) if u == user}
    epoch = _epoch(db)
    admin.erase_user(db, user)
    assert _epoch(db) > epoch


def _epoch(conn: Conn) -> int:
    row = conn.execute(ledger.CONSENT_EPOCH_SQL).fetchone()
    assert row is not None
    return int(row[0])


# -- purge completeness (issue 11 §2) ---------------------------------------------------------


def test_purge_that_finds_rows_left_is_incomplete_and_says_what(
    database_url: str, db: Conn, monkeypatch: pytest.MonkeyPatch, run_cli: CliRun
) -> None:
    """A writer that ignores the consent gate commits a row between the delete and the final
    verification: the audit record says ``incomplete`` with what is left, the command fails
    (exit 75); running it again completes."""
    seeded = seed_user(db)
    user, phone = seeded.user_id, seeded.device_ids[0]
    real_purge = admin.purge_category_rows

    def purge_then_rogue_write(conn: Conn, user_id: str, category: Category) -> dict[str, int]:
        counts = real_purge(conn, user_id, category)
        with psycopg.connect(database_url, autocommit=True) as rogue:
            rogue.execute(
                "INSERT INTO categorical_readings (time, device_id, user_id, signal, value) "
                "VALUES (now(), %s, %s, 'geohash', 'u33dc0d')",
                (phone, user),
            )
        return counts

    monkeypatch.setattr(admin_purge, "purge_category_rows", purge_then_rogue_write)
    with pytest.raises(PurgeIncomplete, match=r"rows left \(1 in categorical_readings\)") as exc:
        admin.withdraw_consent(db, user_id=user, category="location")
    report = exc.value.report
    assert report.status == "incomplete" and report.left == {"categorical_readings": 1}
    audit = db.execute("SELECT details FROM audit_log WHERE id = %s", (report.audit_id,)).fetchone()
    assert audit is not None and audit[0]["status"] == "incomplete"
    assert audit[0]["left"] == {"categorical_readings": 1}

    # The CLI prints the report, then one error line, and exits 75 (run it again).
    code, out, err = run_cli("consent", "withdraw", "--user-id", user, "--category", "location")
    assert code == EXIT_INCOMPLETE and json.loads(out)["status"] == "incomplete"
    assert "incomplete" in err and len(err.strip().splitlines()) == 1

    monkeypatch.setattr(admin_purge, "purge_category_rows", real_purge)
    done = admin.withdraw_consent(db, user_id=user, category="location")
    assert done.status == "complete" and done.counts["categorical_readings"] == 1
    assert sum(count_signal_rows(db, user, Category.LOCATION).values()) == 0
