"""Each user's vector at a date D, as the book sees it: the latest stored snapshot with
``as_of ≤ D`` within ``max_age``, with only the categories consented at D.

A user is in the book at D when they have an active credit-scoring consent at D for at least one
category (``hearth.ledger``: the latest event at or before D is a grant under the current
notice) and a snapshot of the current feature set no older than ``max_age``; otherwise they are
left out with a reason (:data:`NO_CONSENT`, :data:`NO_SNAPSHOT`). Features of a category not
consented at D, or withdrawn since (docs/invariants.md#8), are null whatever the snapshot holds.
The export (:mod:`.export`) and online scores (``POST /v1/scores``) both read through here, so
the same (user, D) gives the same vector.

The storage-specific part — which columns hold the vector and how they are decoded — is
:data:`_VECTOR_COLUMNS` and :func:`_decode_vectors`, nothing else: snapshots are packed
(``vals``/``covs``, big-endian float64 in the feature set's column order, migration 0055;
decoded by :func:`features.snapshots.codec.unpack`). A withheld category's values are already
null in ``vals``; the book applies consent at D on top.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import numpy as np
from numpy.typing import NDArray

from features.catalogue import DEFINITIONS, FEATURE_SET_VERSION
from features.snapshots.codec import CATALOGUE_COLUMNS, PackedVector, unpack
from hearth.db import AsyncConn, Conn
from hearth.ledger import (
    consent_rule_params,
    consented_categories_by_user_sql,
    consented_categories_sql,
    withdrawn_categories_by_user_sql,
    withdrawn_categories_sql,
)
from hearth.signals import Category

NO_CONSENT = "no_consent"  # no category consented at D (or the user is unknown at D)
NO_SNAPSHOT = "no_snapshot"  # consented, but no snapshot within max_age before D
UNKNOWN_USER = "unknown_user"  # online only: no such user

CATEGORIES: tuple[str, ...] = tuple(c.value for c in Category)
NAMES: tuple[str, ...] = tuple(d.name for d in DEFINITIONS)
FEATURE_CATEGORIES: tuple[str, ...] = tuple(d.category for d in DEFINITIONS)

F64 = NDArray[np.float64]
Bool = NDArray[np.bool_]

# The storage-specific columns: the stored vector, packed (features.snapshots.codec).
_VECTOR_COLUMNS = "f.vals, f.covs"

# A set of categories as an int, bit k for CATEGORIES[k] (a category not there: no bit), so a
# row carries one int, not a text[] (cheaper to aggregate, send and decode).
_CATEGORY_ARRAY = "ARRAY[" + ", ".join(f"'{c}'" for c in CATEGORIES) + "]::text[]"
_BITS = f"bit_or(1 << (array_position({_CATEGORY_ARRAY}, {{}}) - 1))"  # aggregate of {} rows


def _bits_of(categories: str) -> str:
    """SQL int: the bits of text[] ``categories`` (0: none)."""
    return f"(SELECT coalesce({_BITS.format('x')}, 0) FROM unnest({categories}) x)"


# Online (a few users): per user, lateral lookups.
_SQL = f"""
SELECT u.user_id, c.consented, s.as_of, s.vals, s.covs
  FROM users u
 CROSS JOIN LATERAL (
       SELECT {_bits_of(consented_categories_sql("u.user_id", "%(as_of)s"))}
              & ~{_bits_of(withdrawn_categories_sql("u.user_id"))} AS consented
 ) c
  LEFT JOIN LATERAL (
       SELECT f.as_of, {_VECTOR_COLUMNS} FROM feature_snapshots f
        WHERE f.user_id = u.user_id AND f.feature_set_version = %(version)s
          AND f.as_of <= %(as_of)s AND f.as_of > %(oldest)s
          AND c.consented <> 0
        ORDER BY f.as_of DESC LIMIT 1
 ) s ON true
 WHERE {{users}}
 ORDER BY u.user_id
"""


def _in_range(column: str) -> str:
    return f"{column} > %(after)s AND (%(upto)s::text IS NULL OR {column} <= %(upto)s)"


# The export (a range of user ids): each table read once, in user-id order, merge-joined; no
# per-user subquery. A user's latest snapshot is their row with no later one (lead() over the
# primary key's order: no sort, no second lookup for vals/covs).
RANGE_SQL = f"""
WITH s AS (
    SELECT l.user_id, l.as_of, l.vals, l.covs FROM (
        SELECT f.user_id, f.as_of, {_VECTOR_COLUMNS},
               lead(f.as_of) OVER (PARTITION BY f.user_id ORDER BY f.as_of) AS later
          FROM feature_snapshots f
         WHERE f.feature_set_version = %(version)s AND f.as_of <= %(as_of)s
           AND f.as_of > %(oldest)s AND {_in_range("f.user_id")}
    ) l
     WHERE l.later IS NULL
)
SELECT u.user_id, c.consented, s.as_of,
       CASE WHEN c.consented <> 0 THEN s.vals END AS vals,
       CASE WHEN c.consented <> 0 THEN s.covs END AS covs
  FROM users u
  LEFT JOIN {consented_categories_by_user_sql(_in_range("c.user_id"), "%(as_of)s", _BITS)} g
         ON g.user_id = u.user_id
  LEFT JOIN {withdrawn_categories_by_user_sql(_in_range("ws.user_id"), _BITS)} w
         ON w.user_id = u.user_id
 CROSS JOIN LATERAL (
       SELECT coalesce(g.categories & ~coalesce(w.categories, 0), 0) AS consented
 ) c
  LEFT JOIN s ON s.user_id = u.user_id
 WHERE {_in_range("u.user_id")}
 ORDER BY u.user_id
"""
USERS_SQL = _SQL.format(users="u.user_id = ANY(%(users)s)")


@dataclass(frozen=True)
class BookVectors:
    """Rows of users in user-id order; ``left_out[i]`` is None for a user in the book."""

    user_ids: list[str]
    snapshot_as_of: list[datetime | None]
    left_out: list[str | None]
    consented: Bool  # [n, len(CATEGORIES)]
    values: F64  # [n, len(NAMES)], NaN: null, or category not consented
    coverage: F64  # [n, len(NAMES)], 0 where not consented

    def __len__(self) -> int:
        return len(self.user_ids)

    def consent_of(self, category: str) -> Bool:
        return np.asarray(self.consented[:, CATEGORIES.index(category)], dtype=np.bool_)


def params(as_of: datetime, max_age: timedelta, **extra: object) -> dict[str, object]:
    return {
        **consent_rule_params(),
        "as_of": as_of,
        "oldest": as_of - max_age,
        "version": FEATURE_SET_VERSION,
        **extra,
    }


def _decode_vectors(rows: Sequence[Sequence[Any]]) -> tuple[F64, F64]:
    """The storage-specific decoding: rows' packed ``vals``, ``covs`` (columns 3 and 4; None:
    no vector) → (values, coverage) in NAMES order, NaN and 0 without a vector."""
    values = np.full((len(rows), len(NAMES)), np.nan)
    coverage = np.zeros((len(rows), len(NAMES)))
    have = [i for i, r in enumerate(rows) if r[3] is not None]
    if have:
        packed = [PackedVector(bytes(rows[i][3]), bytes(rows[i][4])) for i in have]
        stored_values, stored_coverage = unpack(packed)  # in the layout's column order
        values[have] = stored_values[:, CATALOGUE_COLUMNS]
        coverage[have] = stored_coverage[:, CATALOGUE_COLUMNS]
    return values, coverage


def decode(rows: Sequence[Sequence[Any]]) -> BookVectors:
    """Rows of :data:`RANGE_SQL` / :data:`USERS_SQL` as arrays, consent applied."""
    users = [str(r[0]) for r in rows]
    bits = np.array([r[1] or 0 for r in rows], dtype=np.int64)
    consented = (bits[:, None] >> np.arange(len(CATEGORIES))) & 1 == 1
    values, coverage = _decode_vectors(rows)
    allowed = consented[:, [CATEGORIES.index(c) for c in FEATURE_CATEGORIES]]
    values[~allowed] = np.nan
    coverage[~allowed] = 0.0
    has_consent: list[bool] = [bool(x) for x in np.asarray(consented.any(axis=1)).tolist()]
    left_out = [
        None if ok and r[2] is not None else (NO_CONSENT if not ok else NO_SNAPSHOT)
        for ok, r in zip(has_consent, rows, strict=True)
    ]
    return BookVectors(
        user_ids=users,
        snapshot_as_of=[r[2] if isinstance(r[2], datetime) else None for r in rows],
        left_out=left_out,
        consented=consented,
        values=values,
        coverage=coverage,
    )


def read_users(
    conn: Conn, user_ids: Sequence[str], as_of: datetime, max_age: timedelta
) -> BookVectors:
    """The vectors at ``as_of`` of the given users that exist (unknown ones are absent)."""
    rows = conn.execute(USERS_SQL, params(as_of, max_age, users=list(user_ids))).fetchall()
    return decode(rows)


async def read_users_async(
    conn: AsyncConn, user_ids: Sequence[str], as_of: datetime, max_age: timedelta
) -> BookVectors:
    cur = await conn.execute(USERS_SQL, params(as_of, max_age, users=list(user_ids)))
    return decode(await cur.fetchall())
