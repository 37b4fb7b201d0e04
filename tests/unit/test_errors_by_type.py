"""Errors by type, never by text (issue 14): each class carries its exit code and HTTP status;
the CLI prints the hint, HTTP bodies never carry it; device formats validate external ids."""

from __future__ import annotations

import pytest

from hearth.broker import BrokerUnavailable
from hearth.cli import error_line, run_main
from hearth.db import DatabaseUnavailable
from hearth.errors import (
    EXIT_CONFIG,
    EXIT_INCOMPLETE,
    EXIT_UNAVAILABLE,
    EXIT_USAGE,
    ConfigError,
    Conflict,
    HearthError,
    Incomplete,
    Invalid,
    NotFound,
    Unavailable,
)
from hearth.formats import DEVICE_FORMATS, FORMATS, UnknownFormat, device_format
from hearth.ids import check_id, is_valid_id


@pytest.mark.parametrize(
    ("error", "exit_code"),
    [
        (Invalid("bad"), EXIT_USAGE),
        (NotFound("unknown user 'u'", code="unknown_user"), EXIT_USAGE),
        (Conflict("taken"), EXIT_USAGE),
        (Unavailable("down"), EXIT_UNAVAILABLE),
        (BrokerUnavailable("broker down"), EXIT_UNAVAILABLE),
        (DatabaseUnavailable("db down"), EXIT_UNAVAILABLE),
        (Incomplete("rows left"), EXIT_INCOMPLETE),
        (ConfigError("HEARTH_X: bad"), EXIT_CONFIG),
    ],
)
def test_run_main_maps_by_class(
    error: HearthError, exit_code: int, capsys: pytest.CaptureFixture[str]
) -> None:
    def main() -> int:
        raise error

    with pytest.raises(SystemExit) as exited:
        run_main(main)
    assert exited.value.code == exit_code
    assert capsys.readouterr().err == f"error: {error.message}\n"


def test_the_hint_is_for_the_terminal_only() -> None:
    error = NotFound("unknown user 'u'", code="unknown_user", hint="add it with `users add`")
    assert (error.http_status, error.code, error.message) == (
        404,
        "unknown_user",
        "unknown user 'u'",
    )
    assert error_line(error) == "error: unknown user 'u'; add it with `users add`"
    located = error.within("line 3")
    assert isinstance(located, NotFound) and located.code == "unknown_user"
    assert error_line(located) == "error: line 3: unknown user 'u'; add it with `users add`"
    assert error.message == "unknown user 'u'"  # the original is unchanged


def test_a_located_error_leaves_the_original_alone_with_tblib_installed() -> None:
    # Dask's distributed installs tblib's pickling support for every exception on import; with
    # it, copy.copy of an exception shares the original's attribute dict.
    tblib = pytest.importorskip("tblib.pickling_support")
    tblib.install()
    error = NotFound("unknown user 'u'", code="unknown_user", hint="add it")
    located = error.within("line 3")
    assert (located.message, located.code, located.hint) == ("line 3: unknown user 'u'",
                                                             "unknown_user", "add it")  # fmt: skip
    assert (error.message, error.args) == ("unknown user 'u'", ("unknown user 'u'",))


def test_http_statuses() -> None:
    assert [c.http_status for c in (Invalid, NotFound, Conflict, Unavailable)] == [
        400,
        404,
        409,
        503,
    ]


def test_one_id_rule_without_a_trailing_newline() -> None:
    assert is_valid_id("u-1.a:b_c") and not is_valid_id("u1\n") and not is_valid_id("")
    with pytest.raises(Invalid, match="user id"):
        check_id("user id", "u1\n")


def test_every_format_spec_checks_its_external_ids() -> None:
    assert tuple(DEVICE_FORMATS) == FORMATS
    with pytest.raises(UnknownFormat, match="unknown device format 'x10'") as raised:
        device_format("x10")
    assert isinstance(raised.value, Invalid) and isinstance(raised.value, ValueError)
    owntracks, shelly, z2m = (device_format(f) for f in ("owntracks", "shelly", "zigbee2mqtt"))
    assert owntracks.check_external_id("alice/phone") == "alice/phone"
    with pytest.raises(Invalid, match="expected <user>/<device>"):
        owntracks.check_external_id("alice")
    with pytest.raises(Invalid, match="one topic level"):
        shelly.check_external_id("a/b")
    with pytest.raises(Invalid, match="one topic level"):
        shelly.check_external_id("plug\n")
    with pytest.raises(Invalid, match="reserved topic root"):
        shelly.check_external_id("owntracks")
    with pytest.raises(Invalid, match="Zigbee2MQTT's own topic"):
        z2m.check_external_id("bridge")
    assert z2m.device_topics("door", "d1") == ("zigbee2mqtt/door", "zigbee2mqtt/door/availability")
