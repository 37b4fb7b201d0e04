"""What "as of T" means: which T any command or endpoint accepts, and which rows count as
known at T (docs/invariants.md#8).

An as_of is an instant with a UTC offset, no earlier than :data:`AS_OF_MIN` (no telemetry
predates it, and far-past values overflow date arithmetic) and no later than now plus
``HEARTH_MAX_CLOCK_SKEW_S``: a vector "as of" the future would be served as the latest one
while its data is still arriving.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from enum import StrEnum

AS_OF_MIN = datetime(2000, 1, 1, tzinfo=UTC)


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


class Knowledge(StrEnum):
    """When a stored row counts as known, for "as of T" (docs/invariants.md#8).

    ``INGESTED`` (the default, production): a row is known at T only if it was ingested by T, so
    a late reading never changes a past snapshot. ``EVENT``: a row counts as known at its event
    time — only for history *replayed* through the pipeline after the fact (the simulator, a
    migration import), where every row was ingested "now" and INGESTED would see nothing at a
    past T. Event time < T holds in both, so nothing from after T leaks in either.
    """

    INGESTED = "ingested"
    EVENT = "event"


def known_by(as_of: datetime, knowledge: Knowledge) -> datetime | str:
    """The latest ``ingested_at`` of a row known at T (the statements' ``known_by``)."""
    return as_of if knowledge is Knowledge.INGESTED else "infinity"
