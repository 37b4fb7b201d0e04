"""Retention: raw telemetry older than ``HEARTH_RETENTION_DAYS`` (default 90) is dropped by chunk.

``drop_chunks`` is in TimescaleDB's Apache edition (retention *policies* need the job scheduler
of the Community edition, so Hearth runs this itself: ``python -m collector retention run``,
from cron or a systemd timer, daily). Dropping whole chunks costs no row-by-row DELETE and no
vacuum; a chunk is dropped only once *all* its rows are older than the cutoff, so up to one
chunk interval (7 days) beyond the retention age may remain until the next run.

Only raw readings go: the hypertables named ``*_readings`` (the raw-table naming convention).
Rollups, feature snapshots and the audit log are kept — features as of past dates stay
reproducible from the snapshots.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

import psycopg

from hearth.admin import write_audit

Conn = psycopg.Connection[tuple[object, ...]]


def raw_hypertables(conn: Conn) -> list[str]:
    rows = conn.execute(
        "SELECT hypertable_name FROM timescaledb_information.hypertables "
        "WHERE hypertable_schema = 'public' AND hypertable_name LIKE '%\\_readings' "
        "ORDER BY hypertable_name"
    ).fetchall()
    return [str(r[0]) for r in rows]


@dataclass
class RetentionReport:
    cutoff: datetime
    chunks_dropped: dict[str, int] = field(default_factory=dict)
    audit_id: int | None = None

    def to_json(self) -> dict[str, object]:
        return {
            "cutoff": self.cutoff.isoformat(),
            "chunks_dropped": self.chunks_dropped,
            "total_chunks": sum(self.chunks_dropped.values()),
            "audit_id": self.audit_id,
        }


def run_retention(
    conn: Conn, older_than_days: int, *, now: datetime | None = None
) -> RetentionReport:
    """Drop raw chunks entirely older than ``now - older_than_days``; audit what went."""
    if older_than_days < 1:
        raise ValueError("older_than_days must be at least 1")
    with conn.transaction():
        row = conn.execute("SELECT coalesce(%s, now())", (now,)).fetchone()
        assert row is not None and isinstance(row[0], datetime)
        report = RetentionReport(cutoff=row[0] - timedelta(days=older_than_days))
        for table in raw_hypertables(conn):
            dropped = conn.execute(
                "SELECT drop_chunks(%s::regclass, older_than => %s::timestamptz)",
                (table, report.cutoff),
            ).fetchall()
            report.chunks_dropped[table] = len(dropped)
        report.audit_id = write_audit(
            conn,
            "retention",
            None,
            {
                "older_than_days": older_than_days,
                "cutoff": report.cutoff.isoformat(),
                "chunks_dropped": report.chunks_dropped,
            },
        )
    return report
