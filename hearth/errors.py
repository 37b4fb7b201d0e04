"""Typed errors: domain code raises them, the CLI and HTTP layers map them by class.

Each class carries the HTTP status and the CLI exit code of its kind of failure, the way aiohttp's
``HTTPNotFound`` carries 404, so no layer ever maps an error by its message text. ``code`` is the
machine-readable code of JSON error bodies (``{"error": {"code", "message", "details"}}``);
``hint`` is advice for a person at a terminal (the CLI prints it; HTTP bodies never carry it).

Exit codes follow sysexits where one fits: 2 usage (argparse's own), 69 a service we need is
unavailable, 75 part of the work is left (running it again is safe), 78 configuration.
"""

from __future__ import annotations

import copy
from typing import ClassVar, Self

EXIT_USAGE = 2
EXIT_UNAVAILABLE = 69  # sysexits EX_UNAVAILABLE: a service we need is down or refused us
EXIT_INCOMPLETE = 75  # sysexits EX_TEMPFAIL: part of the work is left; running it again is safe
EXIT_CONFIG = 78  # sysexits EX_CONFIG
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE: what the shell reports for any tool whose reader left


class HearthError(Exception):
    """A failure a person can act on; its message is one line."""

    http_status: ClassVar[int] = 500
    exit_code: ClassVar[int] = 1
    default_code: ClassVar[str] = "error"

    def __init__(self, message: str, *, code: str | None = None, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code or self.default_code
        self.hint = hint

    def within(self, where: str) -> Self:
        """The same error, located: ``<where>: <message>`` (a ``--batch`` line, a flag)."""
        located = copy.copy(self)
        # A fresh attribute dict: with tblib's pickling support installed (Dask's distributed
        # does so on import) copy.copy hands the copy the original's own __dict__.
        located.__dict__ = {**self.__dict__, "message": f"{where}: {self.message}"}
        located.args = (located.message,)
        return located


class Invalid(HearthError):
    """The request itself is wrong: a bad value, a missing field, an impossible combination."""

    http_status = 400
    exit_code = EXIT_USAGE
    default_code = "invalid_request"


class TooLarge(Invalid):
    """The request asks for more work than one request may cause."""

    http_status = 413
    default_code = "too_large"


class NotFound(Invalid):
    """The request names something that does not exist (an unknown user, device, model)."""

    http_status = 404
    default_code = "not_found"


class Conflict(Invalid):
    """The request clashes with what exists (an id already taken by someone else)."""

    http_status = 409
    default_code = "conflict"


class Unavailable(HearthError):
    """A service we need (database, broker, replica) is unreachable or refused us."""

    http_status = 503
    exit_code = EXIT_UNAVAILABLE
    default_code = "unavailable"


class Incomplete(HearthError):
    """Part of the work is done and part is left; running the command again finishes it."""

    http_status = 500
    exit_code = EXIT_INCOMPLETE
    default_code = "incomplete"


class ConfigError(HearthError):
    """The configuration (environment, TOML file) is wrong; the message names the variable."""

    http_status = 500
    exit_code = EXIT_CONFIG
    default_code = "configuration"
