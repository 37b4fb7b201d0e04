"""Each user's vector at a date D, as the book sees it: the latest stored snapshot with
``as_of ≤ D`` within ``max_age``, with only the categories consented at D.

A user is in the book at D when they have an active credit-scoring consent at D for at least one
category (``hearth.ledger``: the latest event at or before D is a grant under the current
notice) and a snapshot of the current feature set no older than ``max_age``; otherwise they are
left out with a reason (:data:`NO_CONSENT`, :data:`NO_SNAPSHOT`). Features of a category not
consented at D, or withdrawn since (docs/invariants.md#8), are null whatever the snapshot holds.
The export (:mod:`.export`) and online scores (``POST /v1/scores``) both read through here, so
the same (user, D) gives the same vector. Both queries give one row per user: user id, the
categories consented at D as bits of an int (bit k: ``CATEGORIES[k]``; granted minus withdrawn,
subtracted in SQL), the snapshot's as_of and its packed vector (null without consent).

The storage-specific part — which columns hold the vector and how they are decoded — is
:data:`_VECTOR_COLUMNS` and :func:`_decode_vectors`, nothing else: snapshots are packed
(``vals``/``covs``, big-endian float64 in the feature set's column order, migration 0055;
read by :func:`features.snapshots.codec.stored_matrix`). A withheld category's values are
already null in ``vals``; the book applies consent at D on top.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import numpy as np
from numpy.typing import NDArray

from features.catalogue import DEFINITIONS, FEATURE_SET_VERSION
from features.snapshots.codec import CATALOGUE_COLUMNS, stored_matrix
from hearth.db import Conn
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
# SQL aggregate: the bits of the categories in column {} (for str.format).
_BITS = f"bit_or(1 << (array_position({_CATEGORY_ARRAY}, {{}}) - 1))"


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
    in_book: Bool  # [n]: left_out[i] is None
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


def _decode_vectors(vals: Sequence[Any], covs: Sequence[Any]) -> tuple[F64, F64]:
    """The storage-specific decoding: rows' packed ``vals``, ``covs`` (None: no vector) →
    (values, coverage) [n, len(NAMES)] in NAMES order, NaN and 0 without a vector; column-major
    (each feature's column contiguous, as Arrow takes it)."""
    values = np.full((len(NAMES), len(vals)), np.nan)
    coverage = np.zeros((len(NAMES), len(vals)))
    have = [i for i, v in enumerate(vals) if v is not None]
    rows: slice | list[int] = slice(None) if len(have) == len(vals) else have
    if have:
        for out, packed in ((values, vals), (coverage, covs)):
            stored = stored_matrix(packed if isinstance(rows, slice) else [packed[i] for i in rows])
            out[:, rows] = stored.T[CATALOGUE_COLUMNS]  # layout → NAMES order, native floats
    return values.T, coverage.T


def decode(rows: Sequence[Sequence[Any]]) -> BookVectors:
    """Rows of :data:`RANGE_SQL` / :data:`USERS_SQL` — user id, consented categories as bits,
    snapshot as_of, vals, covs, then any columns of the caller's own — as arrays, consent
    applied."""
    users, bits, as_of, vals, covs = (
        (list(c) for c in list(zip(*rows, strict=True))[:5]) if rows else ([] for _ in range(5))
    )
    consented = (np.array(bits, dtype=np.int64)[:, None] >> np.arange(len(CATEGORIES))) & 1 == 1
    values, coverage = _decode_vectors(vals, covs)
    allowed = consented[:, [CATEGORIES.index(c) for c in FEATURE_CATEGORIES]]
    values[~allowed] = np.nan
    coverage[~allowed] = 0.0
    has_consent = consented.any(axis=1)
    has_snapshot = np.array([t is not None for t in as_of], dtype=np.bool_)
    in_book = has_consent & has_snapshot
    left_out = [
        None if ok else (NO_SNAPSHOT if consent else NO_CONSENT)
        for ok, consent in zip(in_book.tolist(), has_consent.tolist(), strict=True)
    ]
    return BookVectors(
        user_ids=users,
        snapshot_as_of=as_of,
        left_out=left_out,
        in_book=in_book,
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
