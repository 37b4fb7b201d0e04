"""Person: what Hearth holds about one user — devices, consent, rows per category and per
table, the latest feature vector, scores, and the purges recorded about them.

"Rows per table" counts, in one statement, the rows of every table an export reads and an
erasure empties (:func:`hearth.admin.purge.user_tables` finds them by their columns).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from psycopg import sql

from features.book.score_log import read_scores
from features.catalogue import DEFINITIONS
from features.engine import FeatureVector
from features.service.console.queries.common import Row, rows
from features.snapshots.store import latest_snapshot
from hearth import ledger
from hearth.admin import audit_subject
from hearth.admin.purge import table_ident, user_tables
from hearth.db import Conn
from hearth.errors import ConfigError
from hearth.signals import PURPOSE_CREDIT_SCORING, SIGNALS, Category
from hearth.times import parse_rfc3339

SEARCH_LIMIT = 20
_REGISTRY = ("users", "devices", "consent_events", "consent_state")  # shown as such above

USER_SQL = "SELECT user_id, tz, created_at FROM users WHERE user_id = %(user)s"

# Prefix search; LIKE's wildcards in the input are taken literally.
SEARCH_SQL = f"""
SELECT user_id FROM users
 WHERE user_id LIKE replace(replace(replace(%(text)s, '\\', '\\\\'), '%%', '\\%%'), '_', '\\_')
                    || '%%'
 ORDER BY user_id LIMIT {SEARCH_LIMIT}
"""

DEVICES_SQL = """
SELECT d.device_id, d.kind, d.format, d.external_id, d.registered_at, d.bound_at, d.retired_at,
       max(a.last_time) AS last_seen,
       count(a.signal) AS signals
  FROM devices d
  LEFT JOIN console_device_signals a USING (device_id)
 WHERE d.user_id = %(user)s
 GROUP BY d.device_id
 ORDER BY d.registered_at, d.device_id
"""

CONSENT_NOW_SQL = """
SELECT c.category, s.action, s.notice_version, s.at, s.since
  FROM unnest(%(categories)s::text[]) WITH ORDINALITY c(category, ord)
  LEFT JOIN consent_state s
    ON s.user_id = %(user)s AND s.purpose = %(purpose)s AND s.category = c.category
 ORDER BY c.ord
"""

_SIGNAL_CATEGORY = (
    "(VALUES " + ", ".join(f"('{s.name}', '{s.category.value}')" for s in SIGNALS.values()) + ")"
)
AUDIT_SQL = """
SELECT a.id, a.at, a.action, a.details ->> 'category' AS category,
       coalesce(a.details ->> 'status', 'unknown') AS status,
       (SELECT coalesce(sum(c.value::bigint), 0) FROM jsonb_each_text(a.details -> 'counts') c)
           AS rows_deleted
  FROM audit_log a
 WHERE a.subject_ref = %(subject)s
 ORDER BY a.at DESC, a.id DESC
 LIMIT 50
"""

_FAMILY = {d.name: d.family for d in DEFINITIONS}


def _with_devices(conn: Conn, user_id: str) -> dict[str, object]:
    """Parameters of the per-row counts: the user and their devices (retired ones too)."""
    devices = [
        str(r[0])
        for r in conn.execute("SELECT device_id FROM devices WHERE user_id = %s", (user_id,))
    ]
    return {"user": user_id, "devices": devices}


def user(conn: Conn, user_id: str) -> Row | None:
    found = rows(conn, USER_SQL, {"user": user_id})
    return found[0] if found else None


def search(conn: Conn, text: str) -> list[str]:
    return [str(r["user_id"]) for r in rows(conn, SEARCH_SQL, {"text": text})]


def devices(conn: Conn, user_id: str) -> list[Row]:
    return rows(conn, DEVICES_SQL, {"user": user_id})


def consent_now(conn: Conn, user_id: str) -> list[Row]:
    params = {
        "user": user_id,
        "categories": [c.value for c in Category],
        "purpose": PURPOSE_CREDIT_SCORING,
    }
    return rows(conn, CONSENT_NOW_SQL, params)


def consent_history(conn: Conn, user_id: str) -> list[ledger.ConsentEvent]:
    return ledger.consent_history(conn, user_id)


def rows_by_category(conn: Conn, user_id: str) -> list[Row]:
    """Rows of the user's devices per consent category and table — in every table holding a
    category's data (``user_id`` and ``signal`` columns: raw readings, rollups, the console's
    device summary), what a withdrawal of the category deletes — with totals per category
    (``table`` None), per table (``category`` None) and overall, in one statement."""
    parts = [
        sql.SQL(
            "SELECT {name} AS table_name, signal, count(*) AS n FROM {table} "
            "WHERE device_id = ANY(%(devices)s) AND user_id = %(user)s GROUP BY signal"
        ).format(name=sql.Literal(table), table=table_ident(table))
        for table, columns in sorted(user_tables(conn).items())
        if {"user_id", "signal", "device_id"} <= columns
    ]
    if not parts:
        return []
    query = sql.SQL(
        "SELECT sc.category, x.table_name AS table, sum(x.n)::bigint AS rows "
        "FROM {pairs} sc(signal, category) JOIN ({parts}) x USING (signal) "
        "GROUP BY GROUPING SETS ((sc.category, x.table_name), (sc.category), (x.table_name), ()) "
        "ORDER BY sc.category NULLS LAST, x.table_name NULLS LAST"
    ).format(pairs=sql.SQL(_SIGNAL_CATEGORY), parts=sql.SQL(" UNION ALL ").join(parts))
    with conn.cursor() as cur:
        cur.execute(query, _with_devices(conn, user_id))
        return [
            {"category": c, "table": t, "rows": int(n)}  # type: ignore[call-overload]
            for c, t, n in cur.fetchall()
        ]


def rows_by_table(conn: Conn, user_id: str) -> list[Row]:
    """Rows held about the user per table, in one statement (tables with none left out):
    in every table with a ``device_id`` column the rows of their devices, in the others with
    a ``user_id`` column the rows of their id — the tables an export reads and an erasure
    empties (:func:`hearth.admin.purge.user_tables`). By device where there is one: that
    filter has an index, "device or user" (the export's) scans the raw tables; a device's rows
    carry its user's id, so both count the same rows."""
    parts = []
    for table, columns in sorted(user_tables(conn).items()):
        if table in _REGISTRY:
            continue
        if "device_id" in columns:
            where = sql.SQL("device_id = ANY(%(devices)s)")
        elif "user_id" in columns:
            where = sql.SQL("user_id = %(user)s")
        else:
            continue
        parts.append(
            sql.SQL("SELECT {name} AS table_name, count(*) AS n FROM {table} WHERE {where}").format(
                name=sql.Literal(table), table=table_ident(table), where=where
            )
        )
    query = sql.SQL("SELECT table_name, n FROM ({}) x WHERE n > 0 ORDER BY table_name").format(
        sql.SQL(" UNION ALL ").join(parts)
    )
    with conn.cursor() as cur:
        cur.execute(query, _with_devices(conn, user_id))
        return [{"table": str(t), "rows": int(n)} for t, n in cur.fetchall()]  # type: ignore[call-overload]


@dataclass(frozen=True)
class VectorView:
    as_of: datetime
    computed_at: datetime
    cells: list[Row]  # feature, family, value, coverage, reason
    mean_coverage: float | None
    non_null: int


def latest_vector(conn: Conn, user_id: str, version: str, latest: datetime) -> VectorView | None:
    """The user's newest snapshot of ``version`` dated no later than ``latest``."""
    vector: FeatureVector | None = latest_snapshot(conn, user_id, latest, version)
    if vector is None:
        return None
    cells = [
        {
            "feature": name,
            "family": _FAMILY.get(name, "(unknown)"),
            "value": c.value,
            "coverage": c.coverage,
            "reason": None if c.reason is None else str(c.reason),
        }
        for name, c in sorted(vector.values.items(), key=lambda kv: (_FAMILY.get(kv[0], ""), kv[0]))
    ]
    coverages = [c.coverage for c in vector.values.values()]
    return VectorView(
        as_of=vector.as_of,
        computed_at=vector.computed_at,
        cells=cells,
        mean_coverage=sum(coverages) / len(coverages) if coverages else None,
        non_null=sum(c["value"] is not None for c in cells),
    )


SCORES_SHOWN = 20  # the newest of a user's scores on the page


def scores(conn: Conn, user_id: str) -> list[Row]:
    """The user's newest scores, as the score log keeps them (migration 0075, read by
    :func:`features.book.score_log.read_scores`, as ``GET /v1/users/{id}/scores`` does): when,
    the points and probability, model and feature set, and the reason codes (feature, text,
    points: never the applicant's values)."""
    return [
        {
            "scored_at": parse_rfc3339(str(e["scored_at"])),
            "score": int(e["points"]),
            "probability": float(e["probability"]),
            "model_version": str(e["model_version"]),
            "feature_set_version": str(e["feature_set_version"]),
            "channel": str(e["channel"]),
            "reasons": [f"{r['text']} ({int(r['points']):+d})" for r in e["reasons"]],
        }
        for e in read_scores(conn, user_id, limit=SCORES_SHOWN)
    ]


def audit(conn: Conn, user_id: str) -> list[Row] | None:
    """Purges and erasures recorded about the user (found by the keyed subject hash); None
    when no pseudonym key is configured to compute it."""
    try:
        subject = audit_subject(user_id)
    except ConfigError:
        return None
    return rows(conn, AUDIT_SQL, {"subject": subject})
