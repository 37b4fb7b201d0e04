"""``python -m features``: materialise snapshots, serve them, report on them."""

from __future__ import annotations

import argparse

from hearth.cli import configure_logging
from hearth.settings import get_settings


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m features",
        description="Hearth features: rollups, point-in-time feature snapshots, service, reports.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    # Each command family registers its own sub-commands, next to its code.
    from features import commands_engine, commands_report, commands_service

    commands_engine.register(sub)
    commands_service.register(sub)
    commands_report.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(get_settings().log_level)
    code: int = args.func(args)
    return code
