"""The statements on ``feature_snapshots`` of the engine side: reading snapshots back as
vectors (the service's batched lookup lives with the service, :mod:`features.service.store`)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from features.catalogue import FEATURE_SET_VERSION
from features.engine import FeatureVector
from features.snapshots.codec import decode_vector
from hearth.db import Conn


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
