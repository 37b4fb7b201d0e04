"""Every statement on ``feature_snapshots`` outside the service: which users already have a
snapshot, writing a chunk of them, and reading them back as vectors. (The service's batched
lookup is its own, tuned for its hot path: :mod:`features.service.store`.)"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from features.catalogue import FEATURE_SET_VERSION
from features.engine import FeatureVector
from features.snapshots.codec import decode_vector
from hearth.db import Conn
from hearth.ledger import (
    GATE_DERIVED,
    consent_kept_sql,
    consent_rule_params,
    gate_sql,
    link_end_ref,
    withdrawn_categories_sql,
    withhold_features_sql,
)
from hearth.signals import Category

_RELATIONSHIPS = Category.RELATIONSHIPS.value


def users_with_snapshot(
    conn: Conn, user_ids: Sequence[str], as_of: datetime, version: str = FEATURE_SET_VERSION
) -> set[str]:
    """Those of ``user_ids`` with a snapshot for exactly ``as_of`` and ``version``."""
    return {
        str(r[0])
        for r in conn.execute(
            """SELECT user_id FROM feature_snapshots
                WHERE as_of = %s AND feature_set_version = %s AND user_id = ANY(%s)""",
            (as_of, version, list(user_ids)),
        )
    }


# The write re-checks consent in its own transaction, under the shared DERIVED gate that a
# purge takes exclusively (hearth.ledger): features of a category withdrawn before the commit
# are withheld even though the chunk was computed from data loaded before the withdrawal, and
# users erased meanwhile are not written (docs/invariants.md#8).
# Relationship features also depend on the other ends of the user's links (staged in
# link_stage): one of them withdrew relationships or the link's category since T, or was erased,
# before this commit → the user's relationship features are withheld too (docs/invariants.md#9).
_LINK_LOST = f"""EXISTS (SELECT 1 FROM link_stage l WHERE l.user_id = s.user_id
                     AND NOT {consent_kept_sql("l.link_user", "l.link_category", "%(as_of)s")})"""
_WITHHELD = f"""{withdrawn_categories_sql("s.user_id")}
    || CASE WHEN {_LINK_LOST} THEN ARRAY['{_RELATIONSHIPS}'] ELSE ARRAY[]::text[] END"""
_UPSERT_SQL = f"""
    INSERT INTO feature_snapshots (user_id, as_of, feature_set_version, vector)
    SELECT s.user_id, %(as_of)s, %(version)s,
           {withhold_features_sql("s.vector", "%(version)s", _WITHHELD)}
      FROM snapshot_stage s JOIN users u ON u.user_id = s.user_id
    ON CONFLICT (user_id, as_of, feature_set_version) DO UPDATE
       SET vector = excluded.vector, computed_at = now()
"""
# The link ends a written snapshot's relationship features used (hearth/admin/purge.py finds
# them), for the users whose relationship features were written, not withheld.
_CLEAR_LINKS_SQL = """
    DELETE FROM snapshot_links x USING snapshot_stage s
     WHERE x.user_id = s.user_id AND x.as_of = %(as_of)s AND x.feature_set_version = %(version)s
"""
_LINKS_SQL = f"""
    WITH written AS (
        SELECT s.user_id FROM snapshot_stage s JOIN users u ON u.user_id = s.user_id
         WHERE NOT '{_RELATIONSHIPS}' = ANY({_WITHHELD}))
    INSERT INTO snapshot_links (user_id, as_of, feature_set_version, link_ref, link_category)
    SELECT DISTINCT l.user_id, %(as_of)s, %(version)s, l.link_ref, l.link_category
      FROM link_stage l JOIN written w ON w.user_id = l.user_id
"""


def write_snapshots(
    conn: Conn,
    users: Sequence[str],
    as_of: datetime,
    docs: Sequence[str],
    links: Sequence[Sequence[tuple[str, str]]] = (),
) -> None:
    """Upsert one chunk's snapshots (``docs``: cells as JSON text, one per user) in one
    transaction, so a crash loses at most this chunk. ``links``: per user, the (other user,
    category) link ends its relationship features used (``ChunkResults.links``)."""
    with conn.transaction(), conn.cursor() as cur:
        cur.execute(
            """CREATE TEMP TABLE IF NOT EXISTS snapshot_stage
                   (user_id text, vector jsonb) ON COMMIT DELETE ROWS"""
        )
        cur.execute(
            """CREATE TEMP TABLE IF NOT EXISTS link_stage
                   (user_id text, link_user text, link_ref text, link_category text)
                   ON COMMIT DELETE ROWS"""
        )
        cur.execute("CREATE INDEX IF NOT EXISTS link_stage_user ON link_stage (user_id)")
        with cur.copy("COPY snapshot_stage (user_id, vector) FROM STDIN") as copy:
            for user, doc in zip(users, docs, strict=True):
                copy.write_row((user, doc))
        refs: dict[str, str] = {}
        with cur.copy("COPY link_stage FROM STDIN") as copy:
            for user, ends in zip(users, links, strict=False):
                for other, category in ends:
                    if other not in refs:
                        refs[other] = link_end_ref(other)
                    copy.write_row((user, other, refs[other], category))
        cur.execute(gate_sql(GATE_DERIVED))  # before the upsert reads consent_state
        params = {"as_of": as_of, "version": FEATURE_SET_VERSION, **consent_rule_params()}
        cur.execute(_UPSERT_SQL, params)
        cur.execute(_CLEAR_LINKS_SQL, params)
        cur.execute(_LINKS_SQL, params)


def latest_snapshot(
    conn: Conn, user_id: str, as_of: datetime, version: str = FEATURE_SET_VERSION
) -> FeatureVector | None:
    """The stored snapshot with the latest as_of ≤ ``as_of`` for the current feature set."""
    row = conn.execute(
        """SELECT as_of, computed_at, vector FROM feature_snapshots
            WHERE user_id = %s AND feature_set_version = %s AND as_of <= %s
            ORDER BY as_of DESC LIMIT 1""",
        (user_id, version, as_of),
    ).fetchone()
    if row is None:
        return None
    return _from_row(user_id, version, row)


def read_snapshots(
    conn: Conn, user_ids: Sequence[str], as_of: datetime, version: str = FEATURE_SET_VERSION
) -> dict[str, FeatureVector]:
    """Snapshots stored for exactly ``as_of`` for the given users."""
    rows = conn.execute(
        """SELECT user_id, as_of, computed_at, vector FROM feature_snapshots
            WHERE user_id = ANY(%s) AND feature_set_version = %s AND as_of = %s""",
        (list(user_ids), version, as_of),
    ).fetchall()
    return {str(r[0]): _from_row(str(r[0]), version, r[1:]) for r in rows}


def _from_row(user_id: str, version: str, row: Sequence[object]) -> FeatureVector:
    as_of, computed_at, vector = row
    assert isinstance(as_of, datetime) and isinstance(computed_at, datetime)
    cells = vector if isinstance(vector, dict) else str(vector)
    return decode_vector(user_id, as_of, version, computed_at, cells)
