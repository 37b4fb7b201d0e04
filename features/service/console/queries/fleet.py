"""Fleet: devices by format and kind with their last reading, silent devices, retired ones.

A device's *last seen* is the event time of its latest stored reading; its *usual interval* is
the mean time between readings of its most frequent signal over the 7 days up to that reading
(``console_device_signals``, refreshed by ``features rollup``). It is *silent* when, at the
summaries' watermark, more than ``SILENT_FACTOR`` usual intervals have passed since its last
reading. Judged at the watermark, not at now: a summary ten minutes old must not call a
device that reports every minute silent.
"""

from __future__ import annotations

from features.service.console.queries.common import Row, rows
from hearth.db import Conn

SILENT_FACTOR = 3
LIST_LIMIT = 100

# One row per device with its status. ``few``: fewer than two readings in its last 7 days,
# too few to know its usual interval.
DEVICE_STATUS_SQL = f"""
SELECT d.device_id, d.user_id, d.format, d.kind, d.registered_at, d.retired_at,
       a.last_seen, a.usual_s, asof.t AS as_of,
       extract(epoch FROM asof.t - a.last_seen)::float8 AS silent_s,
       CASE WHEN d.retired_at IS NOT NULL THEN 'retired'
            WHEN a.last_seen IS NULL THEN 'never'
            WHEN a.usual_s IS NULL THEN 'few'
            WHEN extract(epoch FROM asof.t - a.last_seen) > {SILENT_FACTOR} * a.usual_s
                THEN 'silent'
            ELSE 'reporting' END AS status
  FROM devices d
 CROSS JOIN (SELECT coalesce(max(watermark), now()) AS t FROM console_summary_watermarks
              WHERE name = 'console') asof
  LEFT JOIN (SELECT device_id, max(last_time) AS last_seen,
                    min(extract(epoch FROM last_time - first_time_7d)::float8
                        / (readings_7d - 1)) FILTER (WHERE readings_7d > 1) AS usual_s
               FROM console_device_signals GROUP BY device_id) a USING (device_id)
"""

STATUSES = ("reporting", "silent", "few", "never", "retired")

GROUPS_SQL = f"""
SELECT grouping(s.format, s.kind) AS level, s.format, s.kind,
       count(*) FILTER (WHERE s.status <> 'retired') AS live,
       {", ".join(f"count(*) FILTER (WHERE s.status = '{x}') AS {x}" for x in STATUSES)},
       max(s.last_seen) AS last_seen
  FROM ({DEVICE_STATUS_SQL}) s
 GROUP BY GROUPING SETS ((s.format, s.kind), (s.format), ())
 ORDER BY s.format NULLS LAST, grouping(s.format, s.kind), s.kind
"""

# Live devices by time since their last reading (at the watermark).
AGE_BUCKETS = (
    ("lt1h", "< 1 h", 3600),
    ("1h_6h", "1-6 h", 6 * 3600),
    ("6h_24h", "6-24 h", 24 * 3600),
    ("1d_7d", "1-7 d", 7 * 86400),
    ("gt7d", "> 7 d", None),
)
_AGE_CASE = (
    "CASE "
    + " ".join(f"WHEN s.silent_s < {limit} THEN '{key}'" for key, _, limit in AGE_BUCKETS if limit)
    + f" ELSE '{AGE_BUCKETS[-1][0]}' END"
)
AGES_SQL = f"""
SELECT {_AGE_CASE} AS bucket, count(*) AS devices
  FROM ({DEVICE_STATUS_SQL}) s
 WHERE s.status <> 'retired' AND s.last_seen IS NOT NULL
 GROUP BY 1
"""

SILENT_SQL = f"""
SELECT s.device_id, s.user_id, s.format, s.kind, s.last_seen, s.usual_s, s.silent_s,
       s.silent_s / s.usual_s AS intervals
  FROM ({DEVICE_STATUS_SQL}) s
 WHERE s.status = 'silent'
 ORDER BY s.silent_s / s.usual_s DESC, s.device_id
 LIMIT {LIST_LIMIT}
"""

RETIRED_SQL = f"""
SELECT s.device_id, s.user_id, s.format, s.kind, s.registered_at, s.retired_at, s.last_seen
  FROM ({DEVICE_STATUS_SQL}) s
 WHERE s.status = 'retired'
 ORDER BY s.retired_at DESC, s.device_id
 LIMIT {LIST_LIMIT}
"""


def groups(conn: Conn) -> list[Row]:
    """Per (format, kind), per format and in all: live devices, each status, last seen.
    ``level`` 0: a (format, kind) row; 1: a format's subtotal; 3: everything."""
    return rows(conn, GROUPS_SQL)


def ages(conn: Conn) -> dict[str, int]:
    return {str(r["bucket"]): int(r["devices"]) for r in rows(conn, AGES_SQL)}


def silent(conn: Conn) -> list[Row]:
    """The silent devices, most overdue first (at most ``LIST_LIMIT``)."""
    return rows(conn, SILENT_SQL)


def retired(conn: Conn) -> list[Row]:
    return rows(conn, RETIRED_SQL)
