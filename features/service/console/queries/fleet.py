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

_STATUS = f"WITH s AS MATERIALIZED ({DEVICE_STATUS_SQL})"

# Live devices by time since their last reading (at the watermark).
AGE_BUCKETS = (
    ("lt1h", "< 1 h", 3600),
    ("1h_6h", "1-6 h", 6 * 3600),
    ("6h_24h", "6-24 h", 24 * 3600),
    ("1d_7d", "1-7 d", 7 * 86400),
    ("gt7d", "> 7 d", None),
)
_AGE_CASE = (
    "CASE WHEN s.status = 'retired' OR s.last_seen IS NULL THEN NULL "
    + " ".join(f"WHEN s.silent_s < {limit} THEN '{key}'" for key, _, limit in AGE_BUCKETS if limit)
    + f" ELSE '{AGE_BUCKETS[-1][0]}' END"
)

# Per (format, kind), per format, in all, and per age bucket, in one pass over the devices.
# grouping(format, kind, age): 1 a (format, kind) row, 3 a format's, 7 all, 6 an age bucket.
GROUPS_SQL = f"""
{_STATUS}
SELECT grouping(a.format, a.kind, a.age) AS grouping_set, a.format, a.kind, a.age,
       count(*) FILTER (WHERE a.status <> 'retired') AS live,
       {", ".join(f"count(*) FILTER (WHERE a.status = '{x}') AS {x}" for x in STATUSES)},
       max(a.last_seen) AS last_seen
  FROM (SELECT s.*, {_AGE_CASE} AS age FROM s) a
 GROUP BY GROUPING SETS ((a.format, a.kind), (a.format), (), (a.age))
 ORDER BY a.format NULLS LAST, grouping(a.format, a.kind, a.age), a.kind
"""

# The silent devices, most overdue first, and the retired ones, latest first.
LISTS_SQL = f"""
{_STATUS}
SELECT x.* FROM (
    SELECT s.device_id, s.user_id, s.format, s.kind, s.registered_at, s.retired_at,
           s.last_seen, s.usual_s, s.silent_s, s.silent_s / s.usual_s AS intervals, s.status,
           row_number() OVER (
               PARTITION BY s.status
               ORDER BY CASE WHEN s.status = 'silent' THEN -(s.silent_s / s.usual_s)
                             ELSE -extract(epoch FROM s.retired_at) END,
                        s.device_id) AS rank
      FROM s WHERE s.status IN ('silent', 'retired')) x
 WHERE x.rank <= {LIST_LIMIT}
 ORDER BY x.status, x.rank
"""


def groups_and_ages(conn: Conn) -> tuple[list[Row], dict[str, int]]:
    """Per (format, kind), per format and in all: live devices, each status, last seen
    (``level`` 0: a (format, kind) row; 1: a format's subtotal; 3: everything); and live
    devices per time since their last reading."""
    groups, ages = [], {}
    for r in rows(conn, GROUPS_SQL):
        level = int(r.pop("grouping_set"))
        if level == 6:
            if r["age"] is not None:
                ages[str(r["age"])] = int(r["live"])
        else:
            groups.append({**r, "level": level >> 1})
    return groups, ages


def lists(conn: Conn) -> tuple[list[Row], list[Row]]:
    """(silent, retired) devices, at most ``LIST_LIMIT`` of each."""
    found = rows(conn, LISTS_SQL)
    return (
        [r for r in found if r["status"] == "silent"],
        [r for r in found if r["status"] == "retired"],
    )
