"""Ingest: rows and messages per second, collector replicas and lag, dead letters, refused data.

Rates come from ``console_ingest_minutes`` (rows stored per minute of ingest time, refreshed by
``features rollup``) over the hour and the day *before its watermark*, so they count complete
minutes only. Dead letters and refused readings are read where the collector stores them, up
to now. Replica states follow ``collector.sessions.SessionRecord.state`` (the same rule in SQL:
the console does not import the collector).
"""

from __future__ import annotations

from features.service.console.queries.common import Row, one, rows
from hearth.db import Conn

SAMPLES_PER_REASON = 3
SAMPLE_BYTES = 800  # of a stored (already scrubbed and cut) payload

_AS_OF = "(SELECT watermark FROM console_summary_watermarks WHERE name = 'console')"

RATES_SQL = f"""
SELECT w.t AS as_of,
       coalesce(sum(m.rows) FILTER (WHERE m.minute >= w.t - INTERVAL '1 hour'), 0) AS rows_1h,
       coalesce(sum(m.messages) FILTER (WHERE m.minute >= w.t - INTERVAL '1 hour'), 0)
           AS messages_1h,
       coalesce(sum(m.rows), 0) AS rows_24h,
       coalesce(sum(m.messages), 0) AS messages_24h,
       coalesce(sum(m.rows) FILTER (WHERE m.minute >= w.t - INTERVAL '1 hour'), 0) / 3600.0
           AS rows_per_s_1h,
       coalesce(sum(m.messages) FILTER (WHERE m.minute >= w.t - INTERVAL '1 hour'), 0) / 3600.0
           AS messages_per_s_1h,
       coalesce(sum(m.rows), 0) / 86400.0 AS rows_per_s_24h,
       coalesce(sum(m.messages), 0) / 86400.0 AS messages_per_s_24h,
       coalesce(max(m.rows) FILTER (WHERE m.minute >= w.t - INTERVAL '1 hour'), 0) / 60.0
           AS peak_rows_per_s_1h
  FROM (SELECT {_AS_OF} AS t) w
  LEFT JOIN console_ingest_minutes m
    ON m.minute >= w.t - INTERVAL '1 day' AND m.minute < w.t
 GROUP BY w.t
"""

PER_MINUTE_SQL = f"""
SELECT m.minute AS slot, m.rows, m.messages
  FROM console_ingest_minutes m
 WHERE m.minute >= {_AS_OF} - INTERVAL '1 hour' AND m.minute < {_AS_OF}
 ORDER BY 1
"""

PER_HOUR_SQL = f"""
SELECT time_bucket(INTERVAL '1 hour', m.minute) AS slot, sum(m.rows)::bigint AS rows,
       sum(m.messages)::bigint AS messages
  FROM console_ingest_minutes m
 WHERE m.minute >= {_AS_OF} - INTERVAL '1 day' AND m.minute < {_AS_OF}
 GROUP BY 1 ORDER BY 1
"""

LAG_SQL = f"""
SELECT (SELECT minute FROM console_ingest_minutes WHERE minute < {_AS_OF}
         ORDER BY minute DESC LIMIT 1) AS minute,
       (SELECT lag_p50_s FROM console_ingest_minutes WHERE minute < {_AS_OF}
         ORDER BY minute DESC LIMIT 1) AS lag_p50_s,
       (SELECT lag_p95_s FROM console_ingest_minutes WHERE minute < {_AS_OF}
         ORDER BY minute DESC LIMIT 1) AS lag_p95_s,
       (SELECT watermark FROM rollup_watermarks WHERE name = 'hourly') AS rollup_watermark,
       extract(epoch FROM now() - (SELECT watermark FROM rollup_watermarks
                                    WHERE name = 'hourly'))::float8 AS rollup_behind_s,
       extract(epoch FROM now() - {_AS_OF})::float8 AS summary_behind_s
"""

REPLICAS_SQL = """
SELECT client_id, share_group, host, pid, started_at, last_seen, stopped_at, drained_at,
       extract(epoch FROM now() - last_seen)::float8 AS seen_ago_s,
       CASE WHEN drained_at IS NOT NULL THEN 'drained'
            WHEN last_seen + make_interval(secs => session_expiry_s) <= now() THEN 'expired'
            WHEN stopped_at IS NOT NULL THEN 'stopped'
            WHEN extract(epoch FROM now() - last_seen) > %(stale_s)s THEN 'stale'
            ELSE 'running' END AS state
  FROM collector_sessions
 ORDER BY share_group, client_id
"""

DEAD_BY_REASON_SQL = """
SELECT grouping(reason) AS level, reason,
       count(*) FILTER (WHERE received_at >= now() - INTERVAL '1 hour') AS last_1h,
       count(*) FILTER (WHERE received_at >= now() - INTERVAL '1 day') AS last_24h,
       count(*) AS held,
       max(received_at) AS latest
  FROM dead_letters
 GROUP BY ROLLUP (reason)
 ORDER BY grouping(reason), count(*) DESC, reason
"""

DEAD_PER_HOUR_SQL = """
SELECT time_bucket(INTERVAL '1 hour', received_at) AS slot, reason, count(*) AS n
  FROM dead_letters
 WHERE received_at >= time_bucket(INTERVAL '1 hour', now()) - INTERVAL '23 hours'
 GROUP BY 1, 2 ORDER BY 1, 2
"""

# The newest few of each reason, through the (reason, received_at) index: the reasons by a
# loose index scan, then each one's latest rows.
DEAD_SAMPLES_SQL = f"""
WITH RECURSIVE reasons(reason) AS (
    SELECT min(reason) FROM dead_letters
    UNION ALL
    SELECT (SELECT min(d.reason) FROM dead_letters d WHERE d.reason > r.reason)
      FROM reasons r WHERE r.reason IS NOT NULL
)
SELECT s.*
  FROM reasons r
 CROSS JOIN LATERAL (
       SELECT d.id, d.reason, d.received_at, d.topic, d.detail, d.payload_bytes,
              substring(d.payload FROM 1 FOR {SAMPLE_BYTES}) AS payload
         FROM dead_letters d
        WHERE d.reason = r.reason
        ORDER BY d.received_at DESC, d.id DESC
        LIMIT {SAMPLES_PER_REASON}) s
 WHERE r.reason IS NOT NULL
 ORDER BY s.reason, s.received_at DESC, s.id DESC
"""

REFUSED_SQL = """
SELECT grouping(category) AS level, category,
       coalesce(sum(readings) FILTER (WHERE day = (now() AT TIME ZONE 'UTC')::date), 0)
           AS today,
       coalesce(sum(readings), 0) AS last_7d
  FROM dropped_readings_daily
 WHERE day > (now() AT TIME ZONE 'UTC')::date - 7
 GROUP BY ROLLUP (category)
 ORDER BY grouping(category), sum(readings) DESC, category
"""


def rates(conn: Conn) -> Row:
    return one(conn, RATES_SQL)


def per_minute(conn: Conn) -> list[Row]:
    return rows(conn, PER_MINUTE_SQL)


def per_hour(conn: Conn) -> list[Row]:
    return rows(conn, PER_HOUR_SQL)


def lag(conn: Conn) -> Row:
    return one(conn, LAG_SQL)


def replicas(conn: Conn, stale_after_s: float) -> list[Row]:
    return rows(conn, REPLICAS_SQL, {"stale_s": stale_after_s})


def dead_by_reason(conn: Conn) -> list[Row]:
    return rows(conn, DEAD_BY_REASON_SQL)


def dead_per_hour(conn: Conn) -> list[Row]:
    return rows(conn, DEAD_PER_HOUR_SQL)


def dead_samples(conn: Conn) -> list[Row]:
    """The stored form only: topic, detail and payload as the collector kept them (scrubbed
    of identifiers, then cut; ``no_consent`` rows keep none). Payloads are shown as text,
    undecodable bytes replaced."""
    found = rows(conn, DEAD_SAMPLES_SQL)
    for r in found:
        raw = r["payload"]
        r["payload"] = None if raw is None else bytes(raw).decode("utf-8", errors="replace")
    return found


def refused(conn: Conn) -> list[Row]:
    return rows(conn, REFUSED_SQL)
