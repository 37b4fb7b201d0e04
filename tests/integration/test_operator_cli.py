"""The operator's first hour with ``python -m collector`` (issue 12 §5): per-action help, input
checks with one-line errors, a closed pipe, verifying an erasure, refused data in the database."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime

import pytest

from hearth.admin import audit_subject
from hearth.db import Conn
from hearth.signals import Category
from tests.conftest import Broker
from tests.integration.consent_fixtures import unique
from tests.integration.fleet import (
    ROOT,
    CollectorFactory,
    add_device,
    add_user,
    canonical_messages,
    collector_cli,
    grant,
    publish_all,
    wait_until,
)

GROUPS = {
    "users": ("add", "export", "erase"),
    "devices": ("add", "list", "retire"),
    "consent": ("grant", "withdraw", "show"),
    "retention": ("run",),
    "broker": ("sync", "init"),
    "sessions": ("list", "drain"),
}


def help_text(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    from collector.cli import build_parser

    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args([*args, "--help"])
    assert exit_info.value.code == 0
    return capsys.readouterr().out


def test_every_action_has_its_own_help(capsys: pytest.CaptureFixture[str]) -> None:
    for group, actions in GROUPS.items():
        listing = help_text(capsys, group)
        assert all(a in listing for a in actions), (group, listing)
        for action in actions:
            text = help_text(capsys, group, action)
            assert text.startswith(f"usage: python -m collector {group} {action} "), text
    # Only that action's options: no --tz on export, no --kind on retire, no --watch on init.
    assert "--tz" in help_text(capsys, "users", "add")
    assert "--tz" not in help_text(capsys, "users", "export")
    assert "--kind" not in help_text(capsys, "devices", "retire")
    assert "--watch" not in help_text(capsys, "broker", "init")
    assert "--idle" in help_text(capsys, "sessions", "drain")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("retention", "run", "--older-than-days", "-5"), "must be at least 1, got -5"),
        (("retention", "run", "--older-than-days", "0"), "must be at least 1, got 0"),
        (("devices", "retire"), "the following arguments are required: --device-id"),
        (("devices", "add", "--kind", "toaster"), "argument --kind: invalid choice: 'toaster'"),
        (("devices", "add", "--format", "x10"), "argument --format: invalid choice: 'x10'"),
        (("sessions", "drain"), "the following arguments are required: --client-id"),
        (("users", "add", "--user-id", "u", "--kind", "plug"), "unrecognized arguments: --kind"),
    ],
)
def test_bad_arguments_exit_2_naming_the_problem(
    capsys: pytest.CaptureFixture[str], args: tuple[str, ...], message: str
) -> None:
    from collector.cli import build_parser

    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(list(args))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err, err


def test_errors_from_the_real_process_are_one_line(database_url: str) -> None:
    proc = collector_cli(database_url, "retention", "run", "--older-than-days", "-5")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].endswith("must be at least 1, got -5")
    batch = json.dumps({"user_id": "u", "kind": "toaster", "format": "tasmota", "external_id": "x"})
    proc = collector_cli(database_url, "devices", "add", "--batch", "-", stdin=batch)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip() == (
        "error: line 1: unknown device kind 'toaster'; known: phone, phone_app, router, plug, "
        "door, contact, motion, climate, thermostat, sensor"
    )


def test_a_reader_that_leaves_early_is_not_an_error(db: Conn, database_url: str) -> None:
    """``devices list | head -1``: no BrokenPipe traceback, the shell's 141 (128 + SIGPIPE)."""
    user = unique("pipe")
    add_user(db, user)
    for i in range(400):  # > 64 KiB of JSON lines: more than a pipe buffer holds
        add_device(db, f"{user}-d{i}", user, kind="plug")
    proc = subprocess.Popen(
        [sys.executable, "-m", "collector", "devices", "list", "--user-id", user],
        env={**os.environ, "HEARTH_DATABASE_URL": database_url},
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stderr is not None
    first = json.loads(proc.stdout.readline())
    assert first["user_id"] == user
    proc.stdout.close()  # what `head -1` does after its line
    code = proc.wait(timeout=120)
    err = proc.stderr.read()
    assert code == 141 and err == "", err


def test_export_of_an_erased_user_says_nothing_is_held(database_url: str) -> None:
    user = unique("gone")
    assert collector_cli(database_url, "users", "add", "--user-id", user).returncode == 0
    erased = collector_cli(database_url, "users", "erase", "--user-id", user)
    assert erased.returncode == 0, erased.stderr
    audit_id = json.loads(erased.stdout)["audit_id"]

    proc = collector_cli(database_url, "users", "export", "--user-id", user)
    assert proc.returncode == 0, proc.stderr
    answer = json.loads(proc.stdout)
    assert answer["held"] == "nothing" and answer["audit_id"] == audit_id, answer
    assert answer["audit_subject"] == audit_subject(user) and answer["deleted"]["users"] == 1

    never = collector_cli(database_url, "users", "export", "--user-id", unique("never"))
    assert never.returncode == 2 and "unknown user" in never.stderr


def dropped_today(db: Conn, category: Category) -> int:
    row = db.execute(
        "SELECT coalesce(sum(readings), 0) FROM dropped_readings_daily "
        "WHERE day = %s AND category = %s",
        (datetime.now(UTC).date(), category.value),
    ).fetchone()
    assert row is not None
    return int(str(row[0]))


def test_refused_readings_are_counted_per_day_and_category_in_the_database(
    db: Conn, broker: Broker, tag: str, make_collector: CollectorFactory
) -> None:
    consented, refused = f"{tag}-ok", f"{tag}-no"
    for user in (consented, refused):
        add_user(db, user)
        add_device(db, f"{user}-d", user)
    grant(db, consented)
    grant(db, refused, [c for c in Category if c is not Category.CLIMATE])
    before = dropped_today(db, Category.CLIMATE)
    collector = make_collector()
    collector.start()
    messages = canonical_messages([f"{consented}-d", f"{refused}-d"], 300)  # climate readings
    publish_all(broker.host, broker.port, messages)
    acked = "hearth_collector_messages_acked_total"
    wait_until(lambda: collector.metrics().get(acked, 0) >= 300, 60, "all acknowledged")
    assert dropped_today(db, Category.CLIMATE) - before == 150
    key = 'hearth_collector_readings_dropped_no_consent_total{category="climate"}'
    assert collector.metrics()[key] == 150
