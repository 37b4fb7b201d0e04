"""The one rule for the ids people and devices are known by (users, devices, external-id levels).

The database's CHECK constraints on ``users.user_id`` and ``devices.device_id`` spell the same
pattern (migration 0001); the HTTP models and the admin commands validate with it before a query.
"""

from __future__ import annotations

import re
from typing import Final

from hearth.errors import Invalid

ID_PATTERN: Final = r"^[A-Za-z0-9._:-]{1,64}$"
_ID: Final = re.compile(ID_PATTERN)


def is_valid_id(value: str) -> bool:
    return _ID.fullmatch(value) is not None


def check_id(what: str, value: str) -> str:
    """``value`` when it is a valid id; :class:`Invalid` naming ``what`` otherwise."""
    if not is_valid_id(value):
        raise Invalid(f"{what} {value[:80]!r}: use 1-64 of A-Z a-z 0-9 . _ : -")
    return value
