"""``python -m collector``: ingest service and the operator's commands."""

from __future__ import annotations

import argparse
import sys

from collector import admin_cli
from hearth.cli import dispatch
from hearth.db import connect
from hearth.migrate import MigrationError, migrate
from hearth.settings import get_settings


def cmd_migrate(args: argparse.Namespace) -> int:
    settings = get_settings()
    with connect(settings.database_url, autocommit=True) as conn:
        try:
            result = migrate(conn)
        except MigrationError as exc:
            print(f"error: migrate: {exc}", file=sys.stderr)
            return 1
    edition = (
        "Apache edition" if result.edition == "apache" else f"{result.edition} (Community) edition"
    )
    print(f"TimescaleDB {result.timescaledb_version}, {edition}")
    if result.applied:
        for m in result.applied:
            print(f"applied {m.version:04d}_{m.name}")
        print(f"schema now at version {result.current_version}")
    else:
        print(f"schema already at version {result.current_version}; nothing to do")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    # Imported here: the service pulls in aiohttp and the whole ingest pipeline (about a
    # second), which the operator's short commands do not need. collector.service never
    # imports this module, so the late import hides no cycle.
    from collector.service import cmd_run as run_service

    return run_service(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m collector",
        description="Hearth collector: MQTT ingest into TimescaleDB, registry, consent.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    p = sub.add_parser("migrate", help="create or upgrade the schema (idempotent)")
    p.set_defaults(func=cmd_migrate)
    p = sub.add_parser("run", help="run a collector replica until SIGTERM, then drain and exit 0")
    p.set_defaults(func=cmd_run)
    admin_cli.register(sub)  # the operator's commands, next to their code
    return parser


def main(argv: list[str] | None = None) -> int:
    return dispatch(build_parser(), argv)
