"""``python -m device_sim``: a simulated fleet of households (owner: simulator)."""

from __future__ import annotations

import argparse


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m device_sim")
    parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    parser.parse_args(argv)
    return 0
