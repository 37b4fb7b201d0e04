"""The one shape of a feature vector's cells, wherever a vector is written or rewritten.

A vector is ``{name: cell}`` with a cell for *every* feature of its feature set, so clients see
one schema whatever was consented: ``{"value": x|null, "coverage": c}``, plus ``"reason"`` when
the value is null because of consent (:class:`CellReason`). The engine and the materialiser
write cells through :func:`cell`; the withdrawal purge (``hearth.admin``) overwrites a
withdrawn category's cells with :func:`withdrawn_cell`. It lives in ``hearth`` because the purge
must not import the feature code.
"""

from __future__ import annotations

import json
from enum import StrEnum


class CellReason(StrEnum):
    """Why a cell's value is null regardless of the data (absent when the value stands)."""

    NOT_CONSENTED = "not_consented"  # the feature's category was not consented at as_of
    CONSENT_WITHDRAWN = "consent_withdrawn"  # withdrawn since: its data is purged or unusable


def cell(
    value: float | None, coverage: float, reason: CellReason | str | None = None
) -> dict[str, object]:
    """One cell; key order value, coverage, reason (the bytes materialise writes by hand)."""
    out: dict[str, object] = {"value": value, "coverage": coverage}
    if reason is not None:
        out["reason"] = str(reason)
    return out


def withdrawn_cell() -> dict[str, object]:
    """What a withdrawal leaves in a stored snapshot: null, no coverage, and why."""
    return cell(None, 0.0, CellReason.CONSENT_WITHDRAWN)


def reason_suffix(reason: CellReason | None) -> str:
    """The JSON text a cell carries after its coverage for ``reason`` (empty for none)."""
    return "" if reason is None else ', "reason": ' + json.dumps(str(reason))
