"""The one RFC 3339 reader for times a person or a program hands to Hearth.

Every command flag (``--as-of``, ``--at``, ``--bound-at``), every HTTP field and every labelled
file reads times through :func:`parse_rfc3339`, so "is an offset required?" has one answer per
call site, spelled out by its arguments. Device formats have their own rules (naive local times,
epoch seconds) in ``collector.adapters.parsing``.
"""

from __future__ import annotations

from datetime import UTC, datetime

from hearth.errors import Invalid

FORMAT_HINT = "an RFC 3339 timestamp with a UTC offset, e.g. 2026-01-01T00:00:00Z"


def parse_rfc3339(
    text: str, *, what: str = "time", naive_is_utc: bool = False, date_is_midnight: bool = False
) -> datetime:
    """``text`` as an aware UTC datetime.

    An offset (``Z`` or ``±hh:mm``) is required unless ``naive_is_utc``; a bare ``YYYY-MM-DD`` is
    midnight UTC only when ``date_is_midnight``. Raises :class:`Invalid` naming ``what``.
    """
    raw = text.strip()
    try:
        if date_is_midnight and len(raw) == 10:
            return datetime.strptime(raw, "%Y-%m-%d").replace(tzinfo=UTC)
        value = datetime.fromisoformat(raw)
    except (ValueError, TypeError):
        raise Invalid(f"{what} {text[:40]!r}: not {FORMAT_HINT}") from None
    if value.tzinfo is None:
        if not naive_is_utc:
            raise Invalid(f"{what} {text[:40]!r}: needs a UTC offset (Z or +hh:mm)")
        value = value.replace(tzinfo=UTC)
    try:
        return value.astimezone(UTC)
    except OverflowError:
        raise Invalid(f"{what} {text[:40]!r}: out of range") from None
