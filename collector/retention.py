"""Retention: raw telemetry older than ``HEARTH_RETENTION_DAYS`` (default 90) is dropped by chunk,
dead letters older than ``HEARTH_DEAD_LETTER_RETENTION_DAYS`` (default 14) are deleted.

``drop_chunks`` is in TimescaleDB's Apache edition (retention *policies* need the job scheduler
of the Community edition, so Hearth runs this itself: ``python -m collector retention run``,
from cron or a systemd timer, daily). Dropping whole chunks costs no row-by-row DELETE and no
vacuum; a chunk is dropped only once *all* its rows are older than the cutoff, so up to one
chunk interval (7 days) beyond the retention age may remain until the next run.

Only raw readings go: the hypertables named ``*_readings`` (the raw-table naming convention).
Rollups, feature snapshots and the audit log are kept — features as of past dates stay
reproducible from the snapshots. Each raw table's cutoff is recorded as its *horizon*
(``raw_retention_horizons``): the rollup job never rebuilds a bucket before it, because the raw
rows it would be rebuilt from may be gone (``features.rollups``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from hearth.admin.audit import write_audit
from hearth.db import Conn
from hearth.errors import Invalid
from hearth.settings import get_settings

DEAD_LETTER_DELETE_BATCH = 10_000  # rows per DELETE: short locks even after a flood


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
    dead_letter_cutoff: datetime | None = None
    dead_letters_deleted: int = 0
    audit_id: int | None = None

    def to_json(self) -> dict[str, object]:
        return {
            "cutoff": self.cutoff.isoformat(),
            "chunks_dropped": self.chunks_dropped,
            "total_chunks": sum(self.chunks_dropped.values()),
            "dead_letter_cutoff": (
                self.dead_letter_cutoff.isoformat() if self.dead_letter_cutoff else None
            ),
            "dead_letters_deleted": self.dead_letters_deleted,
            "audit_id": self.audit_id,
        }


def run_retention(
    conn: Conn,
    older_than_days: int,
    *,
    dead_letter_days: int | None = None,
    now: datetime | None = None,
) -> RetentionReport:
    """Drop raw chunks entirely older than ``now - older_than_days`` and delete dead letters
    received before ``now - dead_letter_days`` (default ``HEARTH_DEAD_LETTER_RETENTION_DAYS``);
    record each raw table's horizon; audit what went."""
    settings = get_settings()
    if dead_letter_days is None:
        dead_letter_days = settings.dead_letter_retention_days
    if older_than_days < 1 or dead_letter_days < 1:
        raise Invalid("retention: days must be at least 1")
    if older_than_days < settings.max_event_age_days:
        # The collector would still accept readings into the range being dropped, and they
        # would be the only raw rows left of their hours (issue 11 §6).
        raise Invalid(
            f"retention: {older_than_days} days is less than HEARTH_MAX_EVENT_AGE_DAYS "
            f"({settings.max_event_age_days}); lower that first"
        )
    with conn.transaction():
        row = conn.execute("SELECT coalesce(%s, now())", (now,)).fetchone()
        assert row is not None and isinstance(row[0], datetime)
        at: datetime = row[0]
        report = RetentionReport(
            cutoff=at - timedelta(days=older_than_days),
            dead_letter_cutoff=at - timedelta(days=dead_letter_days),
        )
        _drop_raw_chunks(conn, report)
    report.dead_letters_deleted = _delete_dead_letters(conn, at - timedelta(days=dead_letter_days))
    with conn.transaction():
        report.audit_id = write_audit(
            conn,
            "retention",
            None,
            {
                "older_than_days": older_than_days,
                "cutoff": report.cutoff.isoformat(),
                "chunks_dropped": report.chunks_dropped,
                "dead_letter_days": dead_letter_days,
                "dead_letters_deleted": report.dead_letters_deleted,
            },
        )
    return report


def _drop_raw_chunks(conn: Conn, report: RetentionReport) -> None:
    """Drop each raw table's chunks older than the cutoff and move its horizon (in the
    caller's transaction)."""
    for table in raw_hypertables(conn):
        dropped = conn.execute(
            "SELECT drop_chunks(%s::regclass, older_than => %s::timestamptz)",
            (table, report.cutoff),
        ).fetchall()
        report.chunks_dropped[table] = len(dropped)
        if dropped:  # the horizon only moves forward (a later run may use more days)
            conn.execute(
                """INSERT INTO raw_retention_horizons (hypertable, horizon) VALUES (%s, %s)
                   ON CONFLICT (hypertable) DO UPDATE
                      SET horizon = greatest(raw_retention_horizons.horizon,
                                             excluded.horizon),
                          updated_at = now()""",
                (table, report.cutoff),
            )


def _delete_dead_letters(conn: Conn, received_before: datetime) -> int:
    """Delete dead letters received before the cutoff in batches, each committed: a flood of
    rejects must not hold one long lock. Returns how many went."""
    deleted = 0
    while True:
        with conn.transaction():
            cur = conn.execute(
                """DELETE FROM dead_letters WHERE id IN (
                       SELECT id FROM dead_letters WHERE received_at < %s LIMIT %s)""",
                (received_before, DEAD_LETTER_DELETE_BATCH),
            )
        deleted += max(cur.rowcount, 0)
        if cur.rowcount < DEAD_LETTER_DELETE_BATCH:
            return deleted
