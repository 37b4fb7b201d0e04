"""Pure parts of "no message can stall ingest": error classes, batch splitting, storable text."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from psycopg import errors

from collector.adapters.base import (
    DeviceMessage,
    Reading,
    Reason,
    Rejected,
    has_unstorable_text,
    storable_text,
)
from collector.minimise import Minimiser
from collector.pipeline import Batch, Caches, Pipeline
from collector.validate import check_readings
from collector.writer import classify, describe_write_error, sub_batch
from hearth.db import DatabaseUnavailable
from hearth.ledger import DeviceRecord
from hearth.settings import load_settings
from hearth.signals import Category

NOW = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("exc", "kind"),
    [
        (errors.lookup("22021")("NUL"), "data"),  # character_not_in_repertoire
        (errors.lookup("22003")("x"), "data"),  # numeric_value_out_of_range
        (errors.lookup("23514")("x"), "data"),  # check_violation
        (errors.lookup("23505")("x"), "data"),  # unique_violation
        (UnicodeEncodeError("utf-8", "\ud800", 0, 1, "surrogates not allowed"), "data"),
        (psycopg.DataError("client-side"), "data"),
        (errors.lookup("08006")("x"), "transient"),  # connection_failure
        (errors.lookup("40001")("x"), "transient"),  # serialization_failure
        (errors.lookup("40P01")("x"), "transient"),  # deadlock_detected
        (errors.lookup("55P03")("x"), "transient"),  # lock_not_available
        (errors.lookup("53100")("x"), "transient"),  # disk_full
        (errors.lookup("53300")("x"), "transient"),  # too_many_connections
        (errors.lookup("57P01")("x"), "transient"),  # admin_shutdown
        (errors.lookup("57014")("x"), "transient"),  # query_canceled
        (psycopg.OperationalError("connection lost"), "transient"),
        (psycopg.InterfaceError("the connection is closed"), "transient"),
        (DatabaseUnavailable("down"), "transient"),
        (ConnectionResetError(), "transient"),
        (errors.lookup("42P01")("x"), "other"),  # undefined_table: no message causes that
        (errors.lookup("XX000")("x"), "other"),
        (psycopg.ProgrammingError("x"), "other"),
    ],
)
def test_write_errors_are_classified(exc: BaseException, kind: str) -> None:
    assert classify(exc) == kind


def test_error_descriptions_quote_no_value() -> None:
    exc = errors.lookup("22P02")('invalid input syntax for type uuid: "alice@example.org"')
    assert describe_write_error(exc) == "InvalidTextRepresentation (SQLSTATE 22P02)"
    assert describe_write_error(UnicodeEncodeError("utf-8", "x", 0, 1, "r")) == "UnicodeEncodeError"


def _pipeline() -> Pipeline:
    device = DeviceRecord("dev1", "u1", "phone", "hearth", "dev1", "UTC", None)
    since = datetime(2000, 1, 1, tzinfo=UTC)  # consented long before any reading
    caches = Caches(
        devices={("hearth", "dev1"): device}, consents={("u1", c): since for c in Category}
    )
    return Pipeline(load_settings(), Minimiser(b"unit-test-pseudonym-key-0123456789"), caches)


def _body(i: int, **readings: object) -> bytes:
    ts = (NOW - timedelta(minutes=i)).isoformat()
    return json.dumps({"ts": ts, "readings": readings}).encode()


def test_a_batch_records_message_boundaries_and_splits_on_them() -> None:
    pipeline, batch = _pipeline(), Batch()
    messages = [
        _body(1, battery_pct=1, net_type="wifi"),  # 1 numeric, 1 categorical
        b"{broken",  # a dead letter
        _body(2, battery_pct=2, screen_on=1),  # 2 numeric
        _body(3, net_type="mobile"),  # 1 categorical
    ]
    for payload in messages:
        pipeline.process("hearth/v1/dev1/p", payload, batch, received_at=NOW)
    assert batch.ends == [(1, 1, 0), (1, 1, 1), (3, 1, 1), (3, 2, 1)]
    middle = sub_batch(batch, 1, 3)
    assert middle.messages == 2 and middle.ends == [(0, 0, 1), (2, 0, 1)]
    assert [r[3] for r in middle.numeric] == ["battery_pct", "screen_on"]
    assert middle.categorical == [] and len(middle.dead_letters) == 1
    last = sub_batch(batch, 3, 4)
    assert [r[4] for r in last.categorical] == ["mobile"] and last.numeric == []
    assert sub_batch(batch, 0, 4).numeric == batch.numeric


def test_quarantine_adds_one_dead_letter_message() -> None:
    pipeline, batch = _pipeline(), Batch()
    pipeline.quarantine(batch, "hearth/v1/dev1/p", b"{}", Reason.UNSTORABLE, "CheckViolation")
    assert batch.messages == 1 and batch.ends == [(0, 0, 1)]
    assert batch.dead_letters[0][1:3] == ("unstorable", "CheckViolation")
    assert batch.dead_by_reason == {"unstorable": 1}


def test_text_postgresql_cannot_store_is_refused_or_escaped() -> None:
    assert has_unstorable_text("a\x00b") and has_unstorable_text("\ud800")
    assert not has_unstorable_text("Zürich \U0001f600 \x01")
    assert storable_text("k\x00ey \udcff é") == "k\\x00ey \\udcff é"
    assert storable_text("plain") == "plain"
    assert (
        Rejected(Reason.SCHEMA, "readings.bat\x00tery: bad").detail == "readings.bat\\x00tery: bad"
    )
    pipeline = _pipeline()
    for value, reason in (("wi\x00fi", "schema"), ("\udc80", "bad_json")):  # JSON refuses \udc80
        batch = Batch()
        pipeline.process("hearth/v1/dev1/p", _body(1, net_type=value), batch, received_at=NOW)
        assert batch.categorical == [] and batch.dead_by_reason == {reason: 1}, value
    for value in ("wi\x00fi", "\udc80", "ssid\x00"):  # whatever an adapter hands over
        msg = DeviceMessage("hearth", "dev1", NOW, (Reading("net_type", value),))
        with pytest.raises(Rejected, match="NUL or lone surrogate") as info:
            check_readings(msg)
        assert info.value.reason is Reason.SCHEMA
