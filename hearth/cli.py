"""What every ``python -m <package>`` entry point shares: one-line errors and exit codes."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Sequence

from hearth.errors import EXIT_BROKEN_PIPE, HearthError
from hearth.settings import get_settings

EXIT_INTERRUPTED = 130  # 128 + SIGINT


def error_line(exc: HearthError) -> str:
    """The one line a person at a terminal reads: the message, then the hint (if any)."""
    return f"error: {exc.message}; {exc.hint}" if exc.hint else f"error: {exc.message}"


def run_main(main: Callable[[], int]) -> None:
    """Run ``main``; a :class:`~hearth.errors.HearthError` becomes one line on stderr and its
    class's exit code."""
    try:
        code = main()
        sys.stdout.flush()  # a reader that left (`| head`) shows up here, not at exit
    except BrokenPipeError:
        # Python docs' recipe: point stdout at /dev/null so the interpreter's final flush
        # does not raise again; the reader got what it asked for, so no message.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        code = EXIT_BROKEN_PIPE
    except HearthError as exc:
        print(error_line(exc), file=sys.stderr)
        code = exc.exit_code
    except KeyboardInterrupt:
        code = EXIT_INTERRUPTED
    sys.exit(code)


def configure_logging(level: str) -> None:
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
        stream=sys.stderr,
    )


def dispatch(parser: argparse.ArgumentParser, argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` with a command tree whose leaves set ``func``, configure logging from the
    settings (a bad setting fails here, as one line) and run the command."""
    args = parser.parse_args(argv)
    configure_logging(get_settings().log_level)
    code: int = args.func(args)
    return code
