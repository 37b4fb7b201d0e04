"""The one module that owns the queries on the registry (users, devices) and the consent ledger.

The collector (identify, consent gate), the feature engine (consented categories at T, user time
zones) and the admin commands all read through here, so "active consent at T" has exactly one
definition.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from hearth.db import AsyncConn, Conn
from hearth.pseudonym import DOMAIN_LINK_END, keyed_hash
from hearth.settings import get_settings
from hearth.signals import PURPOSE_CREDIT_SCORING, SIGNALS, Category

REGISTRY_CHANNEL = "hearth_registry"  # NOTIFY on any change to users/devices (migration 0002)
CONSENT_CHANNEL = "hearth_consent"  # NOTIFY on any change to consent_events

# The privacy notice users consent to. A grant under an older notice does not cover this one.
CURRENT_NOTICE_VERSION = "2026-11"


@dataclass(frozen=True, slots=True)
class DeviceRecord:
    device_id: str
    user_id: str
    kind: str
    format: str
    external_id: str
    tz: str  # the device's own zone, else its user's
    mqtt_username: str | None
    bound_at: datetime | None = None  # readings dated earlier are refused (None: not checked)


_LIVE_DEVICES_SQL = """
    SELECT d.device_id, d.user_id, d.kind, d.format, d.external_id,
           coalesce(d.tz, u.tz), d.mqtt_username, d.bound_at
      FROM devices d JOIN users u USING (user_id)
     WHERE d.retired_at IS NULL
"""

# Latest event per (user, category) at or before T decides; only a grant under the current
# notice version counts as active.
_ACTIVE_CONSENT_SQL = """
    SELECT user_id, category FROM (
        SELECT DISTINCT ON (user_id, category) user_id, category, action, notice_version
          FROM consent_events
         WHERE purpose = %(purpose)s AND at <= %(at)s {user_filter}
         ORDER BY user_id, category, at DESC, event_id DESC
    ) latest
    WHERE action = 'grant' AND notice_version = %(notice)s
"""


def any_active_consent_sql(user_expr: str, at_expr: str) -> str:
    """An SQL boolean: user ``user_expr`` had active consent for *some* category at ``at_expr``.

    The same rule as :data:`_ACTIVE_CONSENT_SQL`, as a clause for queries that check many
    (user, T) rows at once (the feature service). The caller binds ``%(purpose)s`` and
    ``%(notice)s`` (see :func:`consent_rule_params`); both expressions are trusted SQL.
    """
    return f"""
    EXISTS (
        SELECT 1 FROM (
            SELECT DISTINCT ON (c.category) c.action, c.notice_version
              FROM consent_events c
             WHERE c.user_id = {user_expr} AND c.purpose = %(purpose)s AND c.at <= {at_expr}
             ORDER BY c.category, c.at DESC, c.event_id DESC
        ) latest
         WHERE latest.action = 'grant' AND latest.notice_version = %(notice)s
    )"""


# For many (user, T) rows at once (a training set): per known user among %(users)s, whether
# some category is actively consented after each of their consent event times — the rule of
# any_active_consent_sql evaluated once per (user, event time) instead of once per row. The
# answer at T is that of the last event time at or before T (none: no consent); a user without
# events has one row with NULL time. Rows ordered by user, then time.
ANY_CONSENT_STEPS_SQL = f"""
    WITH known AS (SELECT DISTINCT u.user_id
                     FROM unnest(%(users)s::text[]) AS r(user_id)
                     JOIN users u ON u.user_id = r.user_id),
         times AS (SELECT DISTINCT e.user_id, e.at FROM consent_events e
                     JOIN known k ON k.user_id = e.user_id
                    WHERE e.purpose = %(purpose)s)
    SELECT k.user_id, t.at, t.at IS NOT NULL AND {any_active_consent_sql("t.user_id", "t.at")}
      FROM known k LEFT JOIN times t ON t.user_id = k.user_id
     ORDER BY k.user_id, t.at
"""


def consented_categories_sql(user_expr: str, at_expr: str) -> str:
    """SQL text[]: the categories user ``user_expr`` had active credit-scoring consent for at
    ``at_expr`` (the rule of :data:`_ACTIVE_CONSENT_SQL`; empty: none). For queries over many
    users at once (the bulk export); the caller binds :func:`consent_rule_params`."""
    return f"""ARRAY(
        SELECT latest.category FROM (
            SELECT DISTINCT ON (c.category) c.category, c.action, c.notice_version
              FROM consent_events c
             WHERE c.user_id = {user_expr} AND c.purpose = %(purpose)s AND c.at <= {at_expr}
             ORDER BY c.category, c.at DESC, c.event_id DESC
        ) latest
         WHERE latest.action = 'grant' AND latest.notice_version = %(notice)s)"""


def consented_categories_by_user_sql(
    user_filter: str, at_expr: str, aggregate: str = "array_agg({})"
) -> str:
    """SQL relation ``(user_id, categories)``: for the users of ``user_filter`` (a condition on
    ``c.user_id``) with active credit-scoring consent at ``at_expr`` for some category, those
    categories — :func:`consented_categories_sql` for a range of users in one index scan (the
    bulk export). ``categories`` is ``aggregate`` over the category column (``{}`` stands for
    it; by default a text[]). The caller binds :func:`consent_rule_params`."""
    categories = aggregate.format("latest.category")
    return f"""(
        SELECT latest.user_id, {categories} AS categories FROM (
            SELECT DISTINCT ON (c.user_id, c.category)
                   c.user_id, c.category, c.action, c.notice_version
              FROM consent_events c
             WHERE c.purpose = %(purpose)s AND c.at <= {at_expr} AND {user_filter}
             ORDER BY c.user_id, c.category, c.at DESC, c.event_id DESC
        ) latest
         WHERE latest.action = 'grant' AND latest.notice_version = %(notice)s
         GROUP BY latest.user_id)"""


def consent_rule_params() -> dict[str, object]:
    """The parameters :func:`any_active_consent_sql` needs."""
    return {"purpose": PURPOSE_CREDIT_SCORING, "notice": CURRENT_NOTICE_VERSION}


def _devices(rows: Iterable[tuple[object, ...]]) -> dict[tuple[str, str], DeviceRecord]:
    out = {}
    for r in rows:
        device_id, user_id, kind, format, external_id, tz, username, bound_at = r
        assert bound_at is None or isinstance(bound_at, datetime)
        rec = DeviceRecord(
            str(device_id),
            str(user_id),
            str(kind),
            str(format),
            str(external_id),
            str(tz),
            None if username is None else str(username),
            bound_at,
        )
        out[(rec.format, rec.external_id)] = rec
    return out


def load_live_devices(conn: Conn) -> dict[tuple[str, str], DeviceRecord]:
    """Registered, not retired devices keyed by (format, external id)."""
    return _devices(conn.execute(_LIVE_DEVICES_SQL).fetchall())


async def load_live_devices_async(conn: AsyncConn) -> dict[tuple[str, str], DeviceRecord]:
    cur = await conn.execute(_LIVE_DEVICES_SQL)
    return _devices(await cur.fetchall())


def _consent_params(at: datetime | None, user_id: str | None) -> tuple[str, dict[str, object]]:
    sql = _ACTIVE_CONSENT_SQL.format(user_filter="AND user_id = %(user)s" if user_id else "")
    params: dict[str, object] = {
        "purpose": PURPOSE_CREDIT_SCORING,
        "at": at if at is not None else "infinity",
        "notice": CURRENT_NOTICE_VERSION,
        "user": user_id,
    }
    return sql, params


def active_consents(conn: Conn, at: datetime | None = None) -> set[tuple[str, Category]]:
    """(user, category) pairs with active credit-scoring consent at ``at`` (default: now)."""
    sql, params = _consent_params(at, None)
    return {(str(u), Category(str(c))) for u, c in conn.execute(sql, params).fetchall()}


# --- Consent now: the state table, purposes and the consent gate ----------------------------

# The purposes a user can consent to, and the data categories each one uses. The CLI and the
# API accept only these; a withdrawal purges a category's data only when no purpose that uses
# the category keeps an active consent (issue 12 §2). The collector stores data under the
# credit-scoring consent alone (docs/invariants.md#6).
PURPOSES: dict[str, frozenset[Category]] = {PURPOSE_CREDIT_SCORING: frozenset(Category)}

# consent_state (migration 0035) holds the latest ledger event per (user, purpose, category),
# kept by a trigger in the same transaction as every append. A pair is consented now when that
# event is a grant under the current notice; ``since`` is when that run of grants began, and a
# reading dated earlier is refused (consented at its event time *and* now; a withdrawal in
# between purged the category, so older data stays out).
_CONSENT_NOW_SQL = """
    SELECT user_id, category, since FROM consent_state
     WHERE purpose = %(purpose)s AND action = 'grant' AND notice_version = %(notice)s
"""

ConsentSince = dict[tuple[str, Category], datetime]


def _consent_since(rows: Iterable[tuple[object, ...]]) -> ConsentSince:
    out: ConsentSince = {}
    for user, category, since in rows:
        assert isinstance(since, datetime)
        out[(str(user), Category(str(category)))] = since
    return out


# consent_epoch (migration 0037) counts revocations. Read it *before* consent_state: a cache
# then never claims an epoch newer than its consents, which is what lets a writer skip the
# per-row consent join for a batch checked at the epoch still current (collector.writer).
CONSENT_EPOCH_SQL = "SELECT epoch FROM consent_epoch"


async def consent_cache_async(conn: AsyncConn) -> tuple[int, ConsentSince]:
    """(epoch, (user, category) consented now for credit scoring → start of that consent)."""
    cur = await conn.execute(CONSENT_EPOCH_SQL)
    row = await cur.fetchone()
    assert row is not None
    cur = await conn.execute(_CONSENT_NOW_SQL, consent_rule_params())
    return int(str(row[0])), _consent_since(await cur.fetchall())


def consent_since(conn: Conn) -> ConsentSince:
    return _consent_since(conn.execute(_CONSENT_NOW_SQL, consent_rule_params()).fetchall())


def signal_categories_sql() -> str:
    """``(VALUES ('signal', 'category'), ...)``: the catalogue as an SQL relation (signal,
    category), for joins that check consent per stored row. Names are catalogue constants."""
    pairs = ", ".join(f"('{s.name}', '{s.category.value}')" for s in SIGNALS.values())
    return f"(VALUES {pairs})"


def consented_now_sql(row: str, category_expr: str) -> str:
    """An SQL join clause (``JOIN consent_state ... ON``) keeping the rows of alias ``row`` (with
    ``user_id`` and ``time``) whose category ``category_expr`` is consented now and was at the
    row's time. The caller binds ``%(purpose)s`` and ``%(notice)s``
    (:func:`consent_rule_params`)."""
    return f"""JOIN consent_state cs
          ON cs.user_id = {row}.user_id AND cs.purpose = %(purpose)s
         AND cs.category = {category_expr} AND cs.action = 'grant'
         AND cs.notice_version = %(notice)s AND {row}.time >= cs.since"""


# The consent gate: writers of personal data and consent changes serialise on two advisory
# locks (transaction level), so that nothing of a category withdrawn, or of a user erased,
# before a write commits is ever written (issue 11 §2).
# - INGEST: the collector holds it shared while it moves a batch into the raw tables (tens of
#   ms); a consent change holds it exclusively while it commits the ledger event. A batch
#   either committed before the change (the purge that follows sees its rows) or moves its rows
#   after it, and then sees the bumped consent_epoch and joins consent_state, which drops the
#   withdrawn category.
# - DERIVED: writers computing from stored data (rollups, snapshots) hold it shared per
#   transaction; a purge holds it exclusively while it deletes and verifies, so nothing
#   computed from the rows it deletes can commit after it. Kept apart from INGEST so a long
#   rollup transaction never stalls ingest behind a waiting purge.
# Every statement after the lock sees what committed before it (READ COMMITTED), and a
# transaction holds one lock, never one per user (max_locks_per_transaction).
GATE_INGEST = 0x48434749  # "HCGI"
GATE_DERIVED = 0x48434744  # "HCGD"


def gate_sql(gate: int, *, exclusive: bool = False) -> str:
    """The statement that takes ``gate`` for the rest of the transaction. It must run as a
    statement of its own, before the statements it protects take their snapshots."""
    fn = "pg_advisory_xact_lock" if exclusive else "pg_advisory_xact_lock_shared"
    return f"SELECT {fn}({gate})"


def withdrawn_categories_sql(user_expr: str) -> str:
    """SQL text[]: the categories user ``user_expr`` has withdrawn from credit scoring (latest
    event a withdrawal). Their features are never written into a snapshot."""
    return f"""ARRAY(SELECT ws.category FROM consent_state ws
                 WHERE ws.user_id = {user_expr} AND ws.purpose = '{PURPOSE_CREDIT_SCORING}'
                   AND ws.action = 'withdraw')"""


def withdrawn_categories_by_user_sql(user_filter: str, aggregate: str = "array_agg({})") -> str:
    """SQL relation ``(user_id, categories)``: :func:`withdrawn_categories_sql` for the users of
    ``user_filter`` (a condition on ``ws.user_id``) in one scan, ``categories`` being
    ``aggregate`` over the category column (as in :func:`consented_categories_by_user_sql`);
    users without a withdrawal are absent."""
    return f"""(
        SELECT ws.user_id, {aggregate.format("ws.category")} AS categories FROM consent_state ws
         WHERE ws.purpose = '{PURPOSE_CREDIT_SCORING}' AND ws.action = 'withdraw'
           AND {user_filter}
         GROUP BY ws.user_id)"""


# What a snapshot holds of a category it may not show (packed vectors, migration 0055). These
# two change together: the purge writes with the first and verifies with the second.
def withhold_snapshot_sql(row: str, categories_expr: str) -> str:
    """SQL assignment for ``UPDATE feature_snapshots {row} SET ...``: the features of the
    categories in text[] ``categories_expr`` (by ``feature_definitions``) made withdrawn
    cells — null, coverage 0, the reason in ``withheld`` (hearth.vectors: one schema)."""
    return f"""(vals, covs, withheld) = (
        SELECT w.vals, w.covs, w.withheld FROM hearth_snapshot_withhold(
            {row}.feature_set_version, {row}.vals, {row}.covs, {row}.withheld,
            {categories_expr}) w)"""


def shows_snapshot_sql(row: str, categories_expr: str) -> str:
    """SQL boolean: snapshot ``row`` still shows a feature of one of ``categories_expr`` (a
    cell that is not the withdrawn cell)."""
    return f"""hearth_snapshot_shows({row}.feature_set_version, {row}.vals, {row}.covs,
                                  {row}.withheld, {categories_expr})"""


def consent_kept_sql(user_expr: str, category_expr: str, at_expr: str) -> str:
    """SQL boolean: user ``user_expr``'s credit-scoring consent to ``category_expr`` is a grant
    under the current notice now, unbroken since ``at_expr`` or earlier — nothing withdrawn it
    since T. A stored snapshot's relationship features keep a link end only while this holds
    for it (docs/invariants.md#9). Binds ``%(purpose)s`` and ``%(notice)s``."""
    return f"""EXISTS (SELECT 1 FROM consent_state kept
                 WHERE kept.user_id = {user_expr} AND kept.purpose = %(purpose)s
                   AND kept.category = {category_expr} AND kept.action = 'grant'
                   AND kept.notice_version = %(notice)s AND kept.since <= {at_expr})"""


def link_end_ref(user_id: str) -> str:
    """How a stored snapshot names the other end of a relationship link: a keyed hash of the
    user id (``snapshot_links.link_ref``), so no table holds one user's id in another's rows."""
    return keyed_hash(get_settings().require_pseudonym_key(), DOMAIN_LINK_END, user_id)


def consented_categories(conn: Conn, user_id: str, at: datetime) -> set[Category]:
    """Categories the user had consented to (credit scoring, current notice) at ``at``."""
    sql, params = _consent_params(at, user_id)
    return {Category(str(c)) for _, c in conn.execute(sql, params).fetchall()}


# --- Consent history -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ConsentEvent:
    """One append-only ledger entry: a grant or a withdrawal of one category for one purpose."""

    event_id: int
    user_id: str
    purpose: str
    category: Category
    notice_version: str
    action: str  # "grant" | "withdraw"
    at: datetime
    evidence_hash: str | None

    def to_json(self) -> dict[str, object]:
        return {
            "event_id": self.event_id,
            "user_id": self.user_id,
            "purpose": self.purpose,
            "category": str(self.category),
            "notice_version": self.notice_version,
            "action": self.action,
            "at": self.at.isoformat(),
            "evidence_hash": self.evidence_hash,
        }


CONSENT_EVENT_COLUMNS = (
    "event_id, user_id, purpose, category, notice_version, action, at, evidence_hash"
)


def consent_event_from_row(row: tuple[object, ...]) -> ConsentEvent:
    event_id, user_id, purpose, category, notice, action, at, evidence = row
    assert isinstance(event_id, int) and isinstance(at, datetime)
    return ConsentEvent(
        event_id=event_id,
        user_id=str(user_id),
        purpose=str(purpose),
        category=Category(str(category)),
        notice_version=str(notice),
        action=str(action),
        at=at,
        evidence_hash=None if evidence is None else str(evidence),
    )


def consent_history(conn: Conn, user_id: str) -> list[ConsentEvent]:
    """Every ledger event of the user, oldest first (the order "active at T" resolves ties in)."""
    rows = conn.execute(
        f"SELECT {CONSENT_EVENT_COLUMNS} FROM consent_events WHERE user_id = %s "
        "ORDER BY at, event_id",
        (user_id,),
    ).fetchall()
    return [consent_event_from_row(r) for r in rows]


# --- Consent change notifications ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ConsentChange:
    """What a NOTIFY on :data:`CONSENT_CHANNEL` says.

    The statement trigger of migration 0002 sends an empty payload on every ledger change
    (reload everything); the admin operations additionally send a JSON payload naming the user,
    category and action, after a purge too, so a cache can drop just that user's vectors.
    ``user_id``/``category`` are None for the empty payload: treat it as "anything changed".
    """

    action: str | None
    user_id: str | None
    category: Category | None


def parse_consent_notification(payload: str) -> ConsentChange:
    if not payload:
        return ConsentChange(None, None, None)
    try:
        data = json.loads(payload)
        category = data.get("category")
        return ConsentChange(
            action=data.get("action"),
            user_id=data.get("user_id"),
            category=Category(category) if category else None,
        )
    except (ValueError, AttributeError):
        return ConsentChange(None, None, None)


def consent_notification(action: str, user_id: str, category: Category | None) -> str:
    return json.dumps(
        {"action": action, "user_id": user_id, "category": str(category) if category else None}
    )


def notify_consent(conn: Conn, action: str, user_id: str, category: Category | None) -> None:
    """Tell caches (collectors, feature service) at commit, with the JSON payload: sent by
    every consent change, and again after each purge."""
    conn.execute(
        "SELECT pg_notify(%s, %s)",
        (CONSENT_CHANNEL, consent_notification(action, user_id, category)),
    )


# --- Batch reads for the feature engine (features.engine) ------------------------------------


@dataclass(frozen=True, slots=True)
class UserDevice:
    """A device ever bound to a user (retired ones included: their past data still counts)."""

    device_id: str
    user_id: str
    kind: str
    retired_at: datetime | None = None  # no data is accepted from the device after this


def user_timezones(conn: Conn, user_ids: Iterable[str]) -> dict[str, str]:
    """IANA zone of each *known* user among ``user_ids`` (unknown ids are absent)."""
    rows = conn.execute(
        "SELECT user_id, tz FROM users WHERE user_id = ANY(%s)", (list(user_ids),)
    ).fetchall()
    return {str(u): str(tz) for u, tz in rows}


def devices_of_users(conn: Conn, user_ids: Iterable[str]) -> list[UserDevice]:
    """Every device bound to one of ``user_ids``, retired or not, ordered by device id."""
    rows = conn.execute(
        "SELECT device_id, user_id, kind, retired_at FROM devices WHERE user_id = ANY(%s)"
        " ORDER BY device_id",
        (list(user_ids),),
    ).fetchall()
    return [
        UserDevice(str(d), str(u), str(k), r if isinstance(r, datetime) else None)
        for d, u, k, r in rows
    ]


def consented_categories_many(
    conn: Conn, user_ids: Iterable[str], at: datetime
) -> dict[str, set[Category]]:
    """:func:`consented_categories` for many users in one query (users without any: absent)."""
    sql = _ACTIVE_CONSENT_SQL.format(user_filter="AND user_id = ANY(%(users)s)")
    params: dict[str, object] = {
        "purpose": PURPOSE_CREDIT_SCORING,
        "at": at,
        "notice": CURRENT_NOTICE_VERSION,
        "users": list(user_ids),
    }
    out: dict[str, set[Category]] = {}
    for u, c in conn.execute(sql, params).fetchall():
        out.setdefault(str(u), set()).add(Category(str(c)))
    return out


def categories_withdrawn_after(
    conn: Conn, user_ids: Iterable[str], at: datetime
) -> dict[str, set[Category]]:
    """Categories each user withdrew (credit scoring) *after* ``at``: a withdrawal purges the
    category's data whatever its date, so features as of ``at`` must not treat the category
    as measured, even though it was consented then (users without any: absent)."""
    rows = conn.execute(
        """SELECT DISTINCT user_id, category FROM consent_events
            WHERE purpose = %s AND action = 'withdraw' AND at > %s AND user_id = ANY(%s)""",
        (PURPOSE_CREDIT_SCORING, at, list(user_ids)),
    ).fetchall()
    out: dict[str, set[Category]] = {}
    for u, c in rows:
        out.setdefault(str(u), set()).add(Category(str(c)))
    return out


def consent_change_times(
    conn: Conn, user_ids: Iterable[str], after: datetime, until: datetime
) -> list[datetime]:
    """The times in (``after``, ``until``] of the users' credit-scoring consent events,
    ascending: between two of them, what :func:`consented_categories_many` and
    :func:`categories_withdrawn_after` say of these users cannot change (a backfill asks them
    once per stretch instead of once per as_of)."""
    rows = conn.execute(
        """SELECT DISTINCT at FROM consent_events
            WHERE purpose = %s AND at > %s AND at <= %s AND user_id = ANY(%s)
            ORDER BY at""",
        (PURPOSE_CREDIT_SCORING, after, until, list(user_ids)),
    ).fetchall()
    return [r[0] for r in rows if isinstance(r[0], datetime)]
