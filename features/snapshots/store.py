"""Every statement on ``feature_snapshots`` outside the service: which snapshots exist, writing
a batch of them, and reading them back as vectors. (The service's batched lookups are its own,
tuned for its hot path: :mod:`features.service.resolve.store`.)

Snapshots are stored packed (:mod:`features.snapshots.codec`, migration 0055). A batch is
written with one binary COPY of fixed-width rows built by numpy — (user index, as_of index,
withheld index, vals, covs) — into a staging table, then one upsert names the rows: a
materialisation chunk or a backfill chunk (its users by every as_of of the range) costs one
round trip and no Python object per value.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import numpy as np
import numpy.typing as npt

from features.catalogue import FEATURE_SET_VERSION
from features.engine import FeatureVector
from features.snapshots.codec import (
    F64,
    LAYOUT,
    STORED,
    Layout,
    PackedVector,
    decode_vector,
    unpack,
)
from hearth.db import Conn
from hearth.ledger import (
    GATE_DERIVED,
    consent_kept_sql,
    consent_rule_params,
    gate_sql,
    link_end_ref,
    withdrawn_categories_sql,
)
from hearth.signals import Category

_RELATIONSHIPS = Category.RELATIONSHIPS.value


@dataclass(frozen=True)
class SnapshotBatch:
    """Snapshots of the current feature set to write: row ``r`` is user ``users[user[r]]`` as
    of ``as_ofs[as_of[r]]`` with ``values[r]``/``coverage[r]`` (the current layout, NaN =
    null) and ``withheld[r]`` (JSON text)."""

    users: Sequence[str]
    as_ofs: Sequence[datetime]
    user: npt.NDArray[np.int32]
    as_of: npt.NDArray[np.int32]
    values: npt.NDArray[np.float64]
    coverage: npt.NDArray[np.float64]
    withheld: Sequence[str]
    # The link ends the rows' relationship features used (ChunkResults.links): (user index,
    # as_of index, other user, link category), stored with the snapshot (snapshot_links).
    links: Sequence[tuple[int, int, str, str]] = ()

    def __len__(self) -> int:
        return int(self.user.size)


def existing_snapshots(
    conn: Conn,
    user_ids: Sequence[str],
    as_ofs: Sequence[datetime],
    version: str = FEATURE_SET_VERSION,
) -> set[tuple[str, datetime]]:
    """The (user, as_of) pairs among ``user_ids`` by ``as_ofs`` already stored for ``version``
    (index-only: the primary key holds all three)."""
    if not user_ids or not as_ofs:
        return set()
    rows = conn.execute(
        """SELECT user_id, as_of FROM feature_snapshots
            WHERE user_id = ANY(%s) AND as_of = ANY(%s) AND feature_set_version = %s""",
        (list(user_ids), list(as_ofs), version),
    ).fetchall()
    return {(str(u), a) for u, a in rows if isinstance(a, datetime)}


def users_with_snapshot(
    conn: Conn, user_ids: Sequence[str], as_of: datetime, version: str = FEATURE_SET_VERSION
) -> set[str]:
    """Those of ``user_ids`` with a snapshot for exactly ``as_of`` and ``version``."""
    return {u for u, _ in existing_snapshots(conn, user_ids, [as_of], version)}


# The write re-checks consent in its own transaction, under the shared DERIVED gate that a
# purge takes exclusively (hearth.ledger): features of a category withdrawn before the commit
# are withheld even though the chunk was computed from data loaded before the withdrawal, and
# users erased meanwhile are not written (docs/invariants.md#8).
# Relationship features also depend on the other ends of the row's links (staged in
# link_stage): one of them withdrew relationships or the link's category since T, or was
# erased, before this commit → the row's relationship features are withheld too
# (docs/invariants.md#9).
_STAGED = """
    us AS (
        SELECT us.user_id, us.n FROM unnest(%(users)s::text[]) WITH ORDINALITY AS us(user_id, n)
          JOIN users u ON u.user_id = us.user_id),
    ts AS (SELECT * FROM unnest(%(as_ofs)s::timestamptz[]) WITH ORDINALITY AS ts(as_of, n))"""
_UPSERT_SQL = f"""
    WITH {_STAGED},
    lost AS (
        SELECT DISTINCT l.u, l.t FROM link_stage l JOIN ts ON ts.n = l.t + 1
         WHERE NOT {consent_kept_sql("l.link_user", "l.link_category", "ts.as_of")}),
    x AS (
        SELECT us.user_id, ts.as_of, s.vals, s.covs, wh.doc,
               nullif({withdrawn_categories_sql("us.user_id")}
                      || CASE WHEN lost.u IS NULL THEN '{{}}'::text[]
                              ELSE ARRAY['{_RELATIONSHIPS}'] END, '{{}}') AS withdrawn
          FROM snapshot_packed_stage s
          JOIN us ON us.n = s.u + 1
          JOIN ts ON ts.n = s.t + 1
          JOIN unnest(%(withheld)s::jsonb[]) WITH ORDINALITY AS wh(doc, n) ON wh.n = s.w + 1
          LEFT JOIN lost ON lost.u = s.u AND lost.t = s.t)
    INSERT INTO feature_snapshots (user_id, as_of, feature_set_version, vals, covs, withheld)
    SELECT x.user_id, x.as_of, %(version)s,
           coalesce(w.vals, x.vals), coalesce(w.covs, x.covs), coalesce(w.withheld, x.doc)
      FROM x
      LEFT JOIN LATERAL hearth_snapshot_withhold(%(version)s, x.vals, x.covs, x.doc,
                                                 x.withdrawn) w ON x.withdrawn IS NOT NULL
    ON CONFLICT (user_id, as_of, feature_set_version) DO UPDATE
       SET vals = excluded.vals, covs = excluded.covs, withheld = excluded.withheld,
           computed_at = now()
"""
# The link ends of the written rows (hearth/admin/purge.py finds them): replaced, and kept only
# where the row's relationship features were written, not withheld.
_CLEAR_LINKS_SQL = f"""
    WITH {_STAGED}
    DELETE FROM snapshot_links x
     USING (SELECT DISTINCT u, t FROM snapshot_packed_stage) s
      JOIN us ON us.n = s.u + 1 JOIN ts ON ts.n = s.t + 1
     WHERE x.user_id = us.user_id AND x.as_of = ts.as_of
       AND x.feature_set_version = %(version)s
"""
_LINKS_SQL = f"""
    WITH {_STAGED}
    INSERT INTO snapshot_links (user_id, as_of, feature_set_version, link_ref, link_category)
    SELECT DISTINCT f.user_id, f.as_of, f.feature_set_version, l.link_ref, l.link_category
      FROM link_stage l
      JOIN us ON us.n = l.u + 1 JOIN ts ON ts.n = l.t + 1
      JOIN feature_snapshots f ON f.user_id = us.user_id AND f.as_of = ts.as_of
                              AND f.feature_set_version = %(version)s
     WHERE NOT f.withheld ? '{_RELATIONSHIPS}'
"""
_COPY_HEADER = b"PGCOPY\n\xff\r\n\x00" + bytes(8)  # signature, flags, no header extension
_COPY_TRAILER = b"\xff\xff"


def _copy_rows(batch: SnapshotBatch, withheld_index: npt.NDArray[np.int32]) -> bytes:
    """The batch as binary COPY data for ``snapshot_packed_stage``: every row is the same
    size, so the whole payload is one numpy record array."""
    width = LAYOUT.width * STORED.itemsize
    row = np.dtype(
        [
            ("fields", ">i2"),
            ("u_len", ">i4"), ("u", ">i4"),
            ("t_len", ">i4"), ("t", ">i4"),
            ("w_len", ">i4"), ("w", ">i4"),
            ("vals_len", ">i4"), ("vals", STORED, (LAYOUT.width,)),
            ("covs_len", ">i4"), ("covs", STORED, (LAYOUT.width,)),
        ]
    )  # fmt: skip
    rec = np.empty(len(batch), dtype=row)
    rec["fields"] = 5
    rec["u_len"] = rec["t_len"] = rec["w_len"] = 4
    rec["vals_len"] = rec["covs_len"] = width
    rec["u"], rec["t"], rec["w"] = batch.user, batch.as_of, withheld_index
    rec["vals"], rec["covs"] = batch.values, batch.coverage
    return _COPY_HEADER + rec.tobytes() + _COPY_TRAILER


def write_snapshots(conn: Conn, batch: SnapshotBatch) -> None:
    """Upsert a batch of snapshots in one transaction, so a crash loses at most this batch,
    with the link ends their relationship features used (``batch.links``)."""
    if not len(batch):
        return
    docs, index = np.unique(np.asarray(batch.withheld, dtype=object), return_inverse=True)
    payload = _copy_rows(batch, index.astype(np.int32).ravel())
    with conn.transaction(), conn.cursor() as cur:
        cur.execute(
            """CREATE TEMP TABLE IF NOT EXISTS snapshot_packed_stage
                   (u int4, t int4, w int4, vals bytea, covs bytea) ON COMMIT DELETE ROWS"""
        )
        cur.execute(
            """CREATE TEMP TABLE IF NOT EXISTS link_stage
                   (u int4, t int4, link_user text, link_ref text, link_category text)
                   ON COMMIT DELETE ROWS"""
        )
        cur.execute("CREATE INDEX IF NOT EXISTS link_stage_row ON link_stage (u, t)")
        with cur.copy("COPY snapshot_packed_stage FROM STDIN WITH (FORMAT binary)") as copy:
            copy.write(payload)
        if batch.links:
            refs: dict[str, str] = {}
            with cur.copy("COPY link_stage FROM STDIN") as copy:
                for u, t, other, category in batch.links:
                    if other not in refs:
                        refs[other] = link_end_ref(other)
                    copy.write_row((u, t, other, refs[other], category))
        cur.execute(gate_sql(GATE_DERIVED))  # before the upsert reads consent_state
        params = {
            "users": list(batch.users),
            "as_ofs": list(batch.as_ofs),
            "withheld": [str(d) for d in docs],
            "version": FEATURE_SET_VERSION,
            **consent_rule_params(),
        }
        cur.execute(_UPSERT_SQL, params)
        cur.execute(_CLEAR_LINKS_SQL, params)
        if batch.links:
            cur.execute(_LINKS_SQL, params)


def layout_for(conn: Conn, version: str) -> Layout:
    """The column layout of ``version``: the current one's from the catalogue, any other's
    from ``feature_definitions``."""
    if version == FEATURE_SET_VERSION:
        return LAYOUT
    rows = conn.execute(
        "SELECT name, category FROM feature_definitions WHERE feature_set_version = %s",
        (version,),
    ).fetchall()
    return (
        Layout(*zip(*sorted((str(n), str(c)) for n, c in rows), strict=True))
        if rows
        else (Layout((), ()))
    )


_COLUMNS = "as_of, computed_at, vals, covs, withheld::text"


def latest_snapshot(
    conn: Conn, user_id: str, as_of: datetime, version: str = FEATURE_SET_VERSION
) -> FeatureVector | None:
    """The stored snapshot with the latest as_of ≤ ``as_of`` for the current feature set."""
    row = conn.execute(
        f"""SELECT {_COLUMNS} FROM feature_snapshots
            WHERE user_id = %s AND feature_set_version = %s AND as_of <= %s
            ORDER BY as_of DESC LIMIT 1""",
        (user_id, version, as_of),
    ).fetchone()
    if row is None:
        return None
    return _from_row(user_id, version, row, layout_for(conn, version))


def read_snapshots(
    conn: Conn, user_ids: Sequence[str], as_of: datetime, version: str = FEATURE_SET_VERSION
) -> dict[str, FeatureVector]:
    """Snapshots stored for exactly ``as_of`` for the given users."""
    rows = conn.execute(
        f"""SELECT user_id, {_COLUMNS} FROM feature_snapshots
            WHERE user_id = ANY(%s) AND feature_set_version = %s AND as_of = %s""",
        (list(user_ids), version, as_of),
    ).fetchall()
    layout = layout_for(conn, version)
    return {str(r[0]): _from_row(str(r[0]), version, r[1:], layout) for r in rows}


def _from_row(user_id: str, version: str, row: Sequence[object], layout: Layout) -> FeatureVector:
    as_of, computed_at, vals, covs, withheld = row
    assert isinstance(as_of, datetime) and isinstance(computed_at, datetime)
    packed = PackedVector(bytes(vals), bytes(covs), str(withheld))  # type: ignore[call-overload]
    return decode_vector(user_id, as_of, version, computed_at, packed, layout)


def date_matrices(
    conn: Conn, as_of: datetime, version: str = FEATURE_SET_VERSION
) -> tuple[Layout, F64, F64]:
    """Every snapshot of ``version`` on ``as_of`` as ``version``'s layout and the values and
    coverage matrices [snapshots, features] (NaN = null; rows in no particular order), in one
    statement: a date's distributions (the console's coverage and PSI)."""
    rows = conn.execute(
        "SELECT vals, covs FROM feature_snapshots WHERE feature_set_version = %s AND as_of = %s",
        (version, as_of),
        binary=True,
    ).fetchall()
    layout = layout_for(conn, version)
    packed = [PackedVector(bytes(v), bytes(c)) for v, c in rows]  # type: ignore[call-overload]
    if not packed:
        empty = np.empty((0, layout.width))
        return layout, empty, empty.copy()
    values, coverage = unpack(packed, layout)
    return layout, values, coverage
