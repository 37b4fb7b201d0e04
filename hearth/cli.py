"""What every ``python -m <package>`` entry point shares: one-line errors and exit codes."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable

from hearth.db import DatabaseUnavailable
from hearth.errors import ConfigError

EXIT_USAGE = 2
EXIT_UNAVAILABLE = 69  # sysexits EX_UNAVAILABLE: a service we need is down or refused us
EXIT_CONFIG = 78  # sysexits EX_CONFIG
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE: what the shell reports for any tool whose reader left
EXIT_INCOMPLETE = 75  # sysexits EX_TEMPFAIL: part of the work is left; running it again is safe


class ServiceUnavailable(Exception):
    """A required service (broker, database) is unreachable; message is one line."""


class UsageError(Exception):
    """The user asked for something impossible (unknown user, bad flag combination)."""


class Incomplete(Exception):
    """The command did part of its work; the message says what is left (one line)."""


def run_main(main: Callable[[], int]) -> None:
    """Run ``main`` and turn the errors a user can fix into one line on stderr."""
    try:
        code = main()
        sys.stdout.flush()  # a reader that left (`| head`) shows up here, not at exit
    except BrokenPipeError:
        # Python docs' recipe: point stdout at /dev/null so the interpreter's final flush
        # does not raise again; the reader got what it asked for, so no message.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        code = EXIT_BROKEN_PIPE
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        code = EXIT_CONFIG
    except (DatabaseUnavailable, ServiceUnavailable) as exc:
        print(f"error: {exc}", file=sys.stderr)
        code = EXIT_UNAVAILABLE
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        code = EXIT_USAGE
    except Incomplete as exc:
        print(f"error: {exc}", file=sys.stderr)
        code = EXIT_INCOMPLETE
    except KeyboardInterrupt:
        code = 130
    sys.exit(code)


def configure_logging(level: str) -> None:
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
        stream=sys.stderr,
    )
