"""Users: pseudonymous ids with an IANA time zone."""

from __future__ import annotations

from hearth.admin.common import check_tz
from hearth.db import Conn
from hearth.errors import Conflict, NotFound
from hearth.ids import check_id

ADD_USER_HINT = "add it with `python -m collector users add`"


def unknown_user(user_id: str, *, hint: str | None = ADD_USER_HINT) -> NotFound:
    return NotFound(f"unknown user {user_id!r}", code="unknown_user", hint=hint)


def user_tz(conn: Conn, user_id: str) -> str | None:
    row = conn.execute("SELECT tz FROM users WHERE user_id = %s", (user_id,)).fetchone()
    return None if row is None else str(row[0])


def require_user(conn: Conn, user_id: str, *, lock: bool = False) -> None:
    """Unknown user → :class:`NotFound`. ``lock`` also locks the user's row against other
    consent changes until the transaction ends (FOR NO KEY UPDATE leaves foreign-key checks
    free)."""
    found = (
        conn.execute(
            "SELECT 1 FROM users WHERE user_id = %s FOR NO KEY UPDATE", (user_id,)
        ).fetchone()
        if lock
        else user_tz(conn, user_id)
    )
    if found is None:
        raise unknown_user(user_id)


def add_user(conn: Conn, user_id: str, tz: str = "UTC") -> bool:
    """Register a pseudonymous user with an IANA zone; the same call again is a no-op.

    Returns whether the user was created (False: it existed already, with this zone)."""
    check_id("user id", user_id)
    check_tz(tz)
    with conn.transaction():
        cur = conn.execute(
            "INSERT INTO users (user_id, tz) VALUES (%s, %s) ON CONFLICT (user_id) DO NOTHING",
            (user_id, tz),
        )
        created = cur.rowcount == 1
        existing = user_tz(conn, user_id)
    if existing != tz:
        raise Conflict(f"user {user_id!r} already exists with time zone {existing}, not {tz}")
    return created
