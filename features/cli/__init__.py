"""``python -m features``: materialise snapshots, serve them, report on them, feed the book.

Argument parsing only: each command family registers its sub-commands from its own module
(:mod:`.engine`, :mod:`.service`, :mod:`.report`, :mod:`.book`) and calls into the package that
does the work. The service, the report and the model are imported when their command runs, not
here: their imports (aiohttp and pydantic; scikit-learn, skops and matplotlib) would add seconds
to every other command; pyarrow (the export) adds about 0.15 s and is imported here.
"""

from __future__ import annotations

import argparse

from features.cli import book, engine, report, service
from hearth.cli import dispatch


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m features",
        description="Hearth features: rollups, point-in-time feature snapshots, service, reports, "
        "models, bulk export and scores.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    engine.register(sub)
    service.register(sub)
    report.register(sub)
    book.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    return dispatch(build_parser(), argv)
