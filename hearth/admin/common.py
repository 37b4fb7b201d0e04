"""What every admin operation shares: its transaction and the checks on the times and zones it
is given."""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import psycopg

from hearth.db import Conn
from hearth.errors import Invalid
from hearth.settings import get_settings


def atomic(conn: Conn) -> AbstractContextManager[object]:
    """A transaction of our own, or none inside the caller's: a ``--batch`` import is one
    transaction and rolls back as a whole on any error, so per-item savepoints (two extra
    round trips each) would buy nothing."""
    if conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE:
        return conn.transaction()
    return nullcontext()


def check_tz(tz: str) -> str:
    try:
        ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError):
        raise Invalid(
            f"unknown IANA time zone {tz!r} (e.g. Europe/Berlin, Asia/Shanghai)"
        ) from None
    return tz


def check_at(at: datetime | None) -> None:
    """An explicit time needs an offset and may not lie in the future beyond the clock-skew
    allowance (``HEARTH_MAX_CLOCK_SKEW_S``): a future-dated grant would consent ahead of the
    user, a future-dated withdrawal would leave the category collected until then."""
    if at is None:
        return
    if at.utcoffset() is None:
        raise Invalid(f"time {at.isoformat()} has no UTC offset; use RFC 3339 with Z or +hh:mm")
    skew = get_settings().max_clock_skew_s
    if at > datetime.now(UTC) + timedelta(seconds=skew):
        raise Invalid(
            f"time {at.isoformat()} is in the future (beyond HEARTH_MAX_CLOCK_SKEW_S={skew} s)"
        )
