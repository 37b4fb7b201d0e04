"""Consent: users by consent state, grants and withdrawals over time, purges and erasures.

States come from ``consent_state`` (the latest ledger event per user and category, kept by a
trigger, migration 0035); activity from the append-only ledger ``consent_events``; purges and
erasures from ``audit_log``, which names nobody (its subject is a keyed hash) and records the
rows deleted per table and whether the final check found anything left.
"""

from __future__ import annotations

from features.service.console.queries.common import Row, rows
from hearth.db import Conn
from hearth.ledger import CURRENT_NOTICE_VERSION
from hearth.signals import PURPOSE_CREDIT_SCORING, Category

CATEGORIES = [c.value for c in Category]
RECENT_AUDIT = 50
ACTIVITY_DAYS = 30
PURGE_ACTIONS = ("purge_category", "erase_user")

_PARAMS = {
    "purpose": PURPOSE_CREDIT_SCORING,
    "notice": CURRENT_NOTICE_VERSION,
    "categories": CATEGORIES,
}

STATES_SQL = """
SELECT c.category,
       count(s.user_id) FILTER (WHERE s.action = 'grant' AND s.notice_version = %(notice)s)
           AS granted,
       count(s.user_id) FILTER (WHERE s.action = 'grant' AND s.notice_version <> %(notice)s)
           AS old_notice,
       count(s.user_id) FILTER (WHERE s.action = 'withdraw') AS withdrawn,
       (SELECT count(*) FROM users) - count(s.user_id) AS never
  FROM unnest(%(categories)s::text[]) WITH ORDINALITY c(category, ord)
  LEFT JOIN consent_state s ON s.category = c.category AND s.purpose = %(purpose)s
 GROUP BY c.category, c.ord
 ORDER BY c.ord
"""

# Users by how many categories they consent to now (current notice).
BREADTH_SQL = """
SELECT n AS categories, count(*) AS users
  FROM (SELECT count(s.user_id) AS n
          FROM users u
          LEFT JOIN consent_state s
            ON s.user_id = u.user_id AND s.purpose = %(purpose)s AND s.action = 'grant'
           AND s.notice_version = %(notice)s
         GROUP BY u.user_id) x
 GROUP BY n ORDER BY n
"""

ACTIVITY_SQL = f"""
SELECT grouping(c.category) AS level, c.category,
       count(e.event_id) FILTER (WHERE e.action = 'grant' AND e.at >= now() - INTERVAL '1 day')
           AS grants_24h,
       count(e.event_id) FILTER (WHERE e.action = 'withdraw'
                                   AND e.at >= now() - INTERVAL '1 day') AS withdrawals_24h,
       count(e.event_id) FILTER (WHERE e.action = 'grant'
                                   AND e.at >= now() - INTERVAL '{ACTIVITY_DAYS} days')
           AS grants_30d,
       count(e.event_id) FILTER (WHERE e.action = 'withdraw'
                                   AND e.at >= now() - INTERVAL '{ACTIVITY_DAYS} days')
           AS withdrawals_30d,
       count(e.event_id) FILTER (WHERE e.action = 'grant') AS grants,
       count(e.event_id) FILTER (WHERE e.action = 'withdraw') AS withdrawals
  FROM unnest(%(categories)s::text[]) WITH ORDINALITY c(category, ord)
  LEFT JOIN consent_events e ON e.category = c.category AND e.purpose = %(purpose)s
 GROUP BY ROLLUP ((c.category, c.ord))
 ORDER BY grouping(c.category), c.ord
"""

PER_DAY_SQL = f"""
SELECT time_bucket(INTERVAL '1 day', at) AS slot,
       count(*) FILTER (WHERE action = 'grant') AS grants,
       count(*) FILTER (WHERE action = 'withdraw') AS withdrawals
  FROM consent_events
 WHERE purpose = %(purpose)s
   AND at >= time_bucket(INTERVAL '1 day', now()) - INTERVAL '{ACTIVITY_DAYS - 1} days'
   AND at <= now()
 GROUP BY 1 ORDER BY 1
"""

_ACTIONS = ", ".join(f"'{a}'" for a in PURGE_ACTIONS)
_ROWS_DELETED = (
    "(SELECT coalesce(sum(c.value::bigint), 0) FROM jsonb_each_text(a.details -> 'counts') c)"
)
_ROWS_LEFT = (
    "(SELECT coalesce(sum(c.value::bigint), 0) FROM jsonb_each_text(a.details -> 'left') c)"
)

PURGE_TOTALS_SQL = f"""
SELECT a.action, coalesce(a.details ->> 'status', 'unknown') AS status, count(*) AS records,
       sum({_ROWS_DELETED})::bigint AS rows_deleted
  FROM audit_log a
 WHERE a.action IN ({_ACTIONS})
 GROUP BY 1, 2 ORDER BY 1, 2
"""

RECENT_PURGES_SQL = f"""
SELECT a.id, a.at, a.action, a.details ->> 'category' AS category,
       coalesce(a.details ->> 'status', 'unknown') AS status, {_ROWS_DELETED} AS rows_deleted,
       {_ROWS_LEFT} AS rows_left, left(a.subject_ref, 12) AS subject,
       a.details -> 'counts' AS counts
  FROM audit_log a
 WHERE a.action IN ({_ACTIONS})
 ORDER BY a.at DESC, a.id DESC
 LIMIT {RECENT_AUDIT}
"""


def states(conn: Conn) -> list[Row]:
    """Per category: users consenting under the current notice, under an older one (asked
    again before use), withdrawn, never asked."""
    return rows(conn, STATES_SQL, _PARAMS)


def breadth(conn: Conn) -> list[Row]:
    return rows(conn, BREADTH_SQL, _PARAMS)


def activity(conn: Conn) -> list[Row]:
    return rows(conn, ACTIVITY_SQL, _PARAMS)


def per_day(conn: Conn) -> list[Row]:
    return rows(conn, PER_DAY_SQL, _PARAMS)


def purge_totals(conn: Conn) -> list[Row]:
    return rows(conn, PURGE_TOTALS_SQL)


def recent_purges(conn: Conn) -> list[Row]:
    """The latest purges and erasures: rows deleted per table, status of the final check; the
    subject only as the first characters of its keyed hash. ``by_table``: the tables with rows
    deleted, by name."""
    found = rows(conn, RECENT_PURGES_SQL)
    for r in found:
        counts = r.pop("counts") or {}
        r["by_table"] = sorted((str(t), int(n)) for t, n in counts.items() if int(n))
    return found
