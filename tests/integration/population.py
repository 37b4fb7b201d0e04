"""A population of users with a month of varied readings, written server-side in a few
statements (for tests that need more users than hand-made rows allow: distributed and replica
runs). Readings are back-dated with ingest stamps a minute after their event time, then rolled
up, so every as_of after the month sees the same history."""

from __future__ import annotations

from datetime import datetime, timedelta

from features.rollups import refresh_rollups
from hearth.db import Conn
from hearth.ledger import CURRENT_NOTICE_VERSION

ZONES = ["UTC", "Europe/Berlin", "Asia/Shanghai", "America/New_York"]


def populate(conn: Conn, prefix: str, n_users: int, as_of: datetime, days: int = 30) -> list[str]:
    """``n_users`` users ``<prefix>-0000…`` with a phone and a router, every category consented
    before the month, and ``days`` days of readings before ``as_of``; their ids, sorted."""
    params = {
        "p": prefix,
        "n": n_users,
        "zones": ZONES,
        "start": as_of - timedelta(days=days),
        "days": days,
        "granted": as_of - timedelta(days=days + 1),
        "notice": CURRENT_NOTICE_VERSION,
    }
    conn.execute(
        """CREATE TEMP TABLE IF NOT EXISTS pop_users AS
           SELECT ''::text AS user_id, 0 AS i, ''::text AS tz, 0.0::float8 AS s LIMIT 0"""
    )
    conn.execute("TRUNCATE pop_users")
    conn.execute(
        """INSERT INTO pop_users
           SELECT format('%%s-%%s', %(p)s::text, lpad(i::text, 4, '0')), i,
                  (%(zones)s::text[])[1 + i %% 4], ((i * 7919) %% 1000) / 1000.0
             FROM generate_series(0, %(n)s - 1) i""",
        params,
    )
    conn.execute("INSERT INTO users (user_id, tz) SELECT user_id, tz FROM pop_users")
    for suffix, kind in (("phone", "phone"), ("router", "router")):
        conn.execute(
            """INSERT INTO devices (device_id, user_id, kind, format, external_id)
               SELECT user_id || '-' || %(sfx)s, user_id, %(kind)s, 'hearth',
                      user_id || '-' || %(sfx)s FROM pop_users""",
            {"sfx": suffix, "kind": kind},
        )
    conn.execute(
        """INSERT INTO consent_events (user_id, purpose, category, notice_version, action, at)
           SELECT user_id, 'credit_scoring', c, %(notice)s, 'grant', %(granted)s
             FROM pop_users, unnest(ARRAY['location','connectivity','device_health','energy',
                                          'presence','climate','usage']) c""",
        params,
    )
    # Battery every 2 hours (unstable users skip more), router online hourly with outages,
    # a geohash 4 times a day (stable users stay home): varied vectors, identical on rereads.
    conn.execute(
        """INSERT INTO numeric_readings (time, device_id, user_id, signal, value, ingested_at)
           SELECT t, user_id || '-phone', user_id, 'battery_pct',
                  greatest(1, 95 - extract(hour FROM t) * 3 - (1 - s) * (i %% 7) * 5),
                  t + INTERVAL '1 minute'
             FROM pop_users,
                  generate_series(%(start)s::timestamptz, %(start)s::timestamptz
                                  + (%(days)s * 24 - 2) * INTERVAL '1 hour',
                                  INTERVAL '2 hours') t
            WHERE (extract(epoch FROM t)::bigint / 7200 + i) %% 10 >= (1 - s) * 5""",
        params,
    )
    conn.execute(
        """INSERT INTO numeric_readings (time, device_id, user_id, signal, value, ingested_at)
           SELECT t, user_id || '-router', user_id, 'online',
                  CASE WHEN (extract(epoch FROM t)::bigint / 3600 + i) %% 97 < (1 - s) * 6
                       THEN 0 ELSE 1 END,
                  t + INTERVAL '1 minute'
             FROM pop_users,
                  generate_series(%(start)s::timestamptz, %(start)s::timestamptz
                                  + (%(days)s * 24 - 1) * INTERVAL '1 hour',
                                  INTERVAL '1 hour') t""",
        params,
    )
    conn.execute(
        """INSERT INTO categorical_readings (time, device_id, user_id, signal, value, ingested_at)
           SELECT t, user_id || '-phone', user_id, 'geohash',
                  CASE WHEN (extract(epoch FROM t)::bigint / 21600 + i) %% 10 < s * 10
                       THEN 'wtw3sj' || substr('0123456789bcdefg', 1 + i %% 16, 1)
                       ELSE 'wtw3e' || substr('0123456789bcdefg', 1 + (i + d) %% 16, 2) END,
                  t + INTERVAL '1 minute'
             FROM pop_users,
                  generate_series(0, %(days)s * 4 - 1) d,
                  LATERAL (SELECT %(start)s::timestamptz + d * INTERVAL '6 hours'
                                  + INTERVAL '30 minutes' AS t) x""",
        params,
    )
    refresh_rollups(conn, full=True)
    return [str(r[0]) for r in conn.execute("SELECT user_id FROM pop_users ORDER BY 1")]
