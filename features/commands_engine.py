"""Sub-commands of ``python -m features`` for the engine."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add this family's sub-commands."""
