"""Snapshot reads: one prepared statement answers a whole batch of (user, as_of) requests.

For every requested row the statement returns, in request order, whether the user exists,
whether they have active credit-scoring consent now and at ``as_of``, and the matching snapshot
(the exact ``as_of`` when given, else the latest) with its vector as JSON *text*, so the hot path
splices it into the response without parsing and re-serialising it.

"Active consent at T" follows ``hearth.ledger``: the latest event per category at or before T
decides, and only a grant under the current notice version counts.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Final

from psycopg_pool import AsyncConnectionPool

from hearth.ledger import any_active_consent_sql, consent_rule_params

_CONSENTED_NOW = any_active_consent_sql("r.user_id", "'infinity'::timestamptz")
_CONSENTED_AT_AS_OF = any_active_consent_sql("r.user_id", "r.as_of")
LOOKUP_SQL: Final = f"""
SELECT u.user_id IS NOT NULL,
       u.user_id IS NOT NULL AND {_CONSENTED_NOW},
       u.user_id IS NOT NULL AND (r.as_of IS NULL OR {_CONSENTED_AT_AS_OF}),
       s.as_of, s.computed_at, s.vector::text
  FROM unnest(%(users)s::text[], %(as_ofs)s::timestamptz[]) WITH ORDINALITY
       AS r(user_id, as_of, ord)
  LEFT JOIN users u ON u.user_id = r.user_id
  LEFT JOIN LATERAL (
        SELECT f.as_of, f.computed_at, f.vector
          FROM feature_snapshots f
         WHERE u.user_id IS NOT NULL
           AND f.user_id = r.user_id
           AND f.feature_set_version = %(version)s
           AND (r.as_of IS NULL OR f.as_of = r.as_of)
         ORDER BY f.as_of DESC
         LIMIT 1
  ) s ON true
 ORDER BY r.ord
"""


@dataclass(frozen=True, slots=True)
class Lookup:
    known: bool
    consented_now: bool
    consented_at_as_of: bool
    snapshot_as_of: datetime | None
    computed_at: datetime | None
    vector_json: str | None


class SnapshotStore:
    def __init__(self, pool: AsyncConnectionPool) -> None:
        self._pool = pool

    async def lookup(
        self, rows: Sequence[tuple[str, datetime | None]], version: str
    ) -> list[Lookup]:
        """One ``Lookup`` per row, in order (as_of None = latest snapshot)."""
        params = {
            "users": [u for u, _ in rows],
            "as_ofs": [a for _, a in rows],
            "version": version,
            **consent_rule_params(),
        }
        async with self._pool.connection() as conn:
            cur = await conn.execute(LOOKUP_SQL, params, prepare=True)
            records = await cur.fetchall()
        return [Lookup(*rec) for rec in records]

    async def ping(self) -> bool:
        try:
            async with self._pool.connection(timeout=2.0) as conn:
                await conn.execute("SELECT 1")
        except Exception:
            return False
        return True
