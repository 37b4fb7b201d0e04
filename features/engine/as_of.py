"""The one rule for an ``as_of`` any command or endpoint accepts.

An as_of is an instant with a UTC offset, no earlier than :data:`AS_OF_MIN` (no telemetry
predates it, and far-past values overflow date arithmetic) and no later than now plus
``HEARTH_MAX_CLOCK_SKEW_S``: a vector "as of" the future would be served as the latest one
while its data is still arriving.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

AS_OF_MIN = datetime(2000, 1, 1, tzinfo=UTC)
FORMAT_HINT = "an RFC 3339 timestamp with a UTC offset, e.g. 2026-01-01T00:00:00Z"


def latest_as_of(max_clock_skew_s: float, now: datetime | None = None) -> datetime:
    return (now or datetime.now(UTC)) + timedelta(seconds=max_clock_skew_s)


def as_of_problem(value: datetime, latest: datetime) -> str | None:
    """Why ``value`` (timezone-aware) is refused, or None when it is a valid as_of."""
    if value < AS_OF_MIN:
        return f"must not be before {AS_OF_MIN.date().isoformat()}"
    if value > latest:
        return (
            "must not be in the future (later than now plus HEARTH_MAX_CLOCK_SKEW_S, "
            f"i.e. {latest.replace(microsecond=0).isoformat()})"
        )
    return None
