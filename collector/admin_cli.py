"""``python -m collector devices|consent|users ...``: the operator's commands (owner: consent)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the registry, consent and data-subject sub-commands."""
