"""Purges: deleting a user's data of one category (withdrawal) and verifying nothing is left.

Purges find their tables through ``information_schema`` instead of a list: any table with
``user_id`` and ``signal`` columns (raw readings, rollups added later) is purged by category, any
table with a ``user_id`` column is erased (:func:`user_row_filters`), so a new table cannot be
forgotten. Each purge writes an ``audit_log`` record whose subject is a keyed hash of the user id
and whose details are counts per table — no personal data. The audit record says ``complete``
only when the final verification query finds nothing left; otherwise it lists what is left and
:class:`PurgeIncomplete` is raised (the CLI exits 75). Running the command again finishes the
job.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

from psycopg import sql

from hearth.admin.audit import write_audit
from hearth.db import Conn
from hearth.errors import Incomplete
from hearth.ledger import ConsentEvent, link_end_ref, shows_snapshot_sql, withhold_snapshot_sql
from hearth.signals import LINK_CATEGORIES, Category, stored_signals


class PurgeIncomplete(Incomplete):
    """A purge's final verification found rows left; the audit record lists them."""

    def __init__(self, message: str, report: PurgeReport) -> None:
        super().__init__(message)
        self.report = report


@dataclass
class PurgeReport:
    """What a withdrawal or erasure deleted: rows per table (``table`` or ``table.field``).

    ``status`` is ``complete`` (verified: nothing left), ``incomplete`` (``left`` says what
    remains) or ``retained`` (a withdrawal of one purpose while another purpose that uses the
    category, listed in ``retained_for``, keeps an active consent: nothing is deleted).
    """

    action: str  # "purge_category" | "erase_user"
    user_id: str
    category: Category | None
    counts: dict[str, int] = field(default_factory=dict)
    elapsed_s: float = 0.0
    audit_id: int | None = None
    event: ConsentEvent | None = None
    status: str = "pending"
    left: dict[str, int] = field(default_factory=dict)
    retained_for: list[str] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic, repr=False)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def add(self, counts: Mapping[str, int]) -> None:
        for table, n in counts.items():
            self.counts[table] = self.counts.get(table, 0) + n

    def audit_details(self) -> dict[str, object]:
        details: dict[str, object] = {"status": self.status, "counts": self.counts}
        if self.category is not None:
            details["category"] = self.category.value
        if self.event is not None:
            details["purpose"] = self.event.purpose
        if self.left:
            details["left"] = self.left
        if self.retained_for:
            details["retained_for"] = self.retained_for
        return details

    def to_json(self) -> dict[str, object]:
        return {
            "action": self.action,
            "user_id": self.user_id,
            "category": str(self.category) if self.category else None,
            "status": self.status,
            "counts": dict(sorted(self.counts.items())),
            "total": self.total,
            "left": dict(sorted(self.left.items())),
            "retained_for": self.retained_for,
            "elapsed_s": round(self.elapsed_s, 3),
            "audit_id": self.audit_id,
            "event": self.event.to_json() if self.event else None,
        }

    def finish(self, conn: Conn, left: Mapping[str, int]) -> None:
        """Record the verification's result and the audit record (in the caller's
        transaction)."""
        self.left = {t: n for t, n in left.items() if n}
        if self.status != "retained":
            self.status = "incomplete" if self.left else "complete"
        self.elapsed_s = time.monotonic() - self.started
        self.audit_id = write_audit(conn, self.action, self.user_id, self.audit_details())

    def raise_if_incomplete(self) -> None:
        if self.left:
            what = ", ".join(f"{n} in {t}" for t, n in sorted(self.left.items()))
            scope = f" of {self.category.value}" if self.category else ""
            raise PurgeIncomplete(
                f"{self.action}{scope} for user {self.user_id!r} is incomplete: rows left "
                f"({what}); audit record {self.audit_id}. Run the command again",
                self,
            )


_SKIP_SCHEMAS = ("pg_catalog", "information_schema")


def user_tables(conn: Conn) -> dict[str, set[str]]:
    """Every base table of the database (schema-qualified) → its column names.

    Hypertable chunks (in TimescaleDB's internal schemas) are left out: deleting from the
    hypertable reaches them. Read from the catalogue itself (``pg_class``, ``pg_attribute``:
    ordinary and partitioned tables, live columns), not ``information_schema``, whose views
    take tens of milliseconds to answer the same.
    """
    rows = conn.execute(
        """
        SELECT n.nspname, c.relname, a.attname
          FROM pg_class c
          JOIN pg_namespace n ON n.oid = c.relnamespace
          JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
         WHERE c.relkind IN ('r', 'p')
           AND n.nspname <> ALL (%s)
           AND n.nspname NOT LIKE '\\_timescaledb%%'
           AND n.nspname NOT LIKE 'timescaledb%%'
           AND n.nspname NOT LIKE 'pg\\_%%'
        """,
        (list(_SKIP_SCHEMAS),),
    ).fetchall()
    tables: dict[str, set[str]] = {}
    for schema, table, column in rows:
        name = str(table) if schema == "public" else f"{schema}.{table}"
        tables.setdefault(name, set()).add(str(column))
    return tables


def table_ident(name: str) -> sql.Identifier:
    return sql.Identifier(*name.split(".", 1))


def _user_device_ids(conn: Conn, user_id: str) -> list[str]:
    rows = conn.execute("SELECT device_id FROM devices WHERE user_id = %s", (user_id,)).fetchall()
    return [str(r[0]) for r in rows]


# Tables whose user_id/category columns are the consent record itself, not data of a category.
_NOT_CATEGORY_DATA = frozenset({"consent_events", "consent_state", "users", "devices"})


def _category_row_filters(conn: Conn) -> Iterator[tuple[str, sql.Composable]]:
    """(table, WHERE) for every table holding data of one category of one user. Parameters:
    user, signals, category, devices."""
    for table, columns in sorted(user_tables(conn).items()):
        if "user_id" not in columns or table in _NOT_CATEGORY_DATA:
            continue
        where: sql.Composable
        if "signal" in columns:
            where = sql.SQL("user_id = %(user)s AND signal = ANY(%(signals)s)")
        elif "category" in columns:
            where = sql.SQL("user_id = %(user)s AND category = %(category)s")
        else:
            continue
        if "device_id" in columns:  # lets the (device_id, signal, time) key index serve it
            where = sql.SQL("device_id = ANY(%(devices)s) AND ") + where
        yield table, where


def _category_params(conn: Conn, user_id: str, category: Category) -> dict[str, object]:
    return {
        "user": user_id,
        "signals": stored_signals(category),
        "category": category.value,
        "withheld": [c.value for c in withheld_categories(category)],
        "devices": _user_device_ids(conn, user_id),
    }


def withheld_categories(category: Category) -> list[Category]:
    """The categories whose features a withdrawal of ``category`` withholds in the user's
    snapshots: the category's, and the relationship features too when links are derived from
    it (docs/invariants.md#9)."""
    return [category, Category.RELATIONSHIPS] if category in LINK_CATEGORIES else [category]


def link_categories_of(category: Category) -> list[Category]:
    """The links a withdrawal of ``category`` ends: every link for ``relationships``, the
    links derived from it for a category links come from, none for the others."""
    if category is Category.RELATIONSHIPS or category in LINK_CATEGORIES:
        return [category]
    return []


_SNAPSHOT_CATEGORY = "%(withheld)s::text[]"


def purge_category_rows(conn: Conn, user_id: str, category: Category) -> dict[str, int]:
    """Delete the user's data of one category everywhere; rows deleted (or changed) per table."""
    counts: dict[str, int] = {}
    params = _category_params(conn, user_id, category)
    for table, where in _category_row_filters(conn):
        cur = conn.execute(
            sql.SQL("DELETE FROM {} WHERE {}").format(table_ident(table), where), params
        )
        counts[table] = cur.rowcount
    # A dead letter has no category (it may be any part of a message): a withdrawal removes
    # every one of the user's devices, matched by device id (issue 11 §4).
    cur = conn.execute("DELETE FROM dead_letters WHERE device_id = ANY(%(devices)s)", params)
    counts["dead_letters"] = cur.rowcount
    # Snapshots keep every feature (one schema for clients): the category's cells become null
    # with a reason (hearth.vectors), instead of losing their keys.
    withheld = withhold_snapshot_sql("s", _SNAPSHOT_CATEGORY)
    shows = shows_snapshot_sql("s", _SNAPSHOT_CATEGORY)
    cur = conn.execute(
        f"UPDATE feature_snapshots s SET {withheld} WHERE s.user_id = %(user)s AND {shows}",
        params,
    )
    counts["feature_snapshots.features"] = cur.rowcount
    counts.update(purge_links(conn, user_id, link_categories_of(category)))
    return counts


# Stored link ends (migration 0072): the snapshots whose relationship features used the user as
# the other end of a link of one of the given categories.
_LINKED_SNAPSHOTS = """SELECT DISTINCT user_id, as_of, feature_set_version FROM snapshot_links
                        WHERE link_ref = %(ref)s AND link_category = ANY(%(link_categories)s)"""
_SAME_SNAPSHOT = """{t}.user_id = l.user_id AND {t}.as_of = l.as_of
                    AND {t}.feature_set_version = l.feature_set_version"""
_RELATIONSHIP_FEATURES = f"ARRAY['{Category.RELATIONSHIPS.value}']::text[]"


def purge_links(conn: Conn, user_id: str, categories: list[Category]) -> dict[str, int]:
    """A withdrawal or erasure at one end of relationship links: every stored snapshot whose
    relationship features used the user through a link of ``categories`` gets them withheld
    (null with a reason) and loses its stored link ends; the user's own link ends go as well.
    Afterwards no row names the user as a link end (docs/invariants.md#9)."""
    if not categories:
        return {}
    params = {
        "user": user_id,
        "ref": link_end_ref(user_id),
        "link_categories": [c.value for c in categories],
    }
    withheld = withhold_snapshot_sql("s", _RELATIONSHIP_FEATURES)
    shows = shows_snapshot_sql("s", _RELATIONSHIP_FEATURES)
    counts: dict[str, int] = {}
    cur = conn.execute(
        f"UPDATE feature_snapshots s SET {withheld} FROM ({_LINKED_SNAPSHOTS}) l "
        f"WHERE {_SAME_SNAPSHOT.format(t='s')} AND {shows}",
        params,
    )
    counts["feature_snapshots.linked"] = cur.rowcount
    cur = conn.execute(
        f"DELETE FROM snapshot_links x USING ({_LINKED_SNAPSHOTS}) l "
        f"WHERE {_SAME_SNAPSHOT.format(t='x')}",
        params,
    )
    counts["snapshot_links.linked"] = cur.rowcount
    cur = conn.execute("DELETE FROM snapshot_links WHERE user_id = %(user)s", params)
    counts["snapshot_links"] = cur.rowcount
    return counts


def links_left(conn: Conn, user_id: str, categories: list[Category]) -> dict[str, int]:
    """The verification of :func:`purge_links`: link ends still naming the user, and the
    user's own."""
    if not categories:
        return {}
    row = conn.execute(
        """SELECT (SELECT count(*) FROM snapshot_links
                    WHERE link_ref = %s AND link_category = ANY(%s)),
                  (SELECT count(*) FROM snapshot_links WHERE user_id = %s)""",
        (link_end_ref(user_id), [c.value for c in categories], user_id),
    ).fetchone()
    assert row is not None and isinstance(row[0], int) and isinstance(row[1], int)
    return {"snapshot_links.linked": row[0], "snapshot_links": row[1]}


def category_rows_left(conn: Conn, user_id: str, category: Category) -> dict[str, int]:
    """The final verification of a withdrawal: rows of the category still held, per table
    (the same tables and snapshot features :func:`purge_category_rows` deletes)."""
    params = _category_params(conn, user_id, category)
    left = {
        table: count_rows(conn, sql.SQL("SELECT count(*) FROM {} WHERE {}"), table, where, params)
        for table, where in _category_row_filters(conn)
    }
    shows = shows_snapshot_sql("s", _SNAPSHOT_CATEGORY)
    row = conn.execute(
        f"SELECT count(*) FROM feature_snapshots s WHERE s.user_id = %(user)s AND {shows}",
        params,
    ).fetchone()
    assert row is not None and isinstance(row[0], int)
    left["feature_snapshots.features"] = row[0]
    left.update(links_left(conn, user_id, link_categories_of(category)))
    return left


def count_rows(
    conn: Conn, query: sql.SQL, table: str, where: sql.Composable, params: Mapping[str, object]
) -> int:
    row = conn.execute(query.format(table_ident(table), where), params).fetchone()
    assert row is not None and isinstance(row[0], int)
    return row[0]


def user_row_filters(conn: Conn) -> Iterator[tuple[str, sql.Composable]]:
    """(table, WHERE) for every table holding rows of a user or of the user's devices, beside
    the registry itself. Export reads and erasure deletes exactly these rows, so an export
    before erasure returns everything the erasure removes. Parameters: user, devices."""
    for table, columns in sorted(user_tables(conn).items()):
        if table in ("users", "devices", "consent_events", "consent_state"):
            continue  # the registry and the ledger: exported as such, erased last
        if "user_id" in columns and "device_id" in columns:
            yield table, sql.SQL("(device_id = ANY(%(devices)s) OR user_id = %(user)s)")
        elif "user_id" in columns:
            yield table, sql.SQL("user_id = %(user)s")
        elif "device_id" in columns:
            yield table, sql.SQL("device_id = ANY(%(devices)s)")
