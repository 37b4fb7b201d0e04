"""Sub-commands of ``python -m features`` for the service."""

from __future__ import annotations

import argparse

from hearth.errors import Invalid
from hearth.settings import get_settings


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add this family's sub-commands."""
    serve = sub.add_parser(
        "serve",
        help="run the HTTP feature service",
        description="Serve feature vectors, training rows and admin endpoints over HTTP "
        "(OpenAPI document at /openapi.json; bearer tokens from HEARTH_API_TOKENS). Logs one "
        "line naming the address and the feature-set version once listening. Exit codes: 2 "
        "usage, 69 address unavailable (e.g. port in use), 78 configuration.",
    )
    serve.add_argument("--host", help="bind address (default: HEARTH_HTTP_HOST)")
    serve.add_argument("--port", type=int, help="port (default: HEARTH_HTTP_PORT)")
    serve.add_argument(
        "--cache-entries",
        type=int,
        default=100_000,
        help="in-process vector cache size; 0 disables it (default: %(default)s)",
    )
    serve.add_argument(
        "--cache-ttl",
        type=float,
        default=5.0,
        help="seconds a cached vector lives (default: %(default)s)",
    )
    serve.set_defaults(func=_serve)


def _serve(args: argparse.Namespace) -> int:
    # Imported when the command runs: aiohttp and pydantic would slow every command (features.cli).
    from features.service.app import run_service

    settings = get_settings()
    if args.port is not None and not 1 <= args.port <= 65535:
        raise Invalid(f"--port {args.port}: use 1-65535")
    # Errors come out as one line (hearth.cli.run_main): a port in use is exit 69.
    run_service(
        settings,
        args.host or settings.http_host,
        args.port or settings.http_port,
        cache_entries=max(0, args.cache_entries),
        cache_ttl_s=max(0.0, args.cache_ttl),
    )
    return 0
