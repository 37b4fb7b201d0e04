"""``python -m features``: materialise snapshots, serve them, report on them.

Argument parsing only: each command family registers its sub-commands from its own module
(:mod:`.engine`, :mod:`.service`, :mod:`.report`) and calls into the package that does the
work. The service and the report are imported when their command runs, not here: their imports
(aiohttp and pydantic; scikit-learn and matplotlib) would add seconds to every other command.
"""

from __future__ import annotations

import argparse

from features.cli import engine, report, service
from hearth.cli import dispatch


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m features",
        description="Hearth features: rollups, point-in-time feature snapshots, service, reports.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    engine.register(sub)
    service.register(sub)
    report.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    return dispatch(build_parser(), argv)
