"""Historical requests in columns: up to 100,000 (user, t) rows resolved without a Python object
per row or per cell, for ``POST /v1/features/historical``.

The same decisions as :mod:`features.service.resolve.vectors`, first match wins, per row:

1. ``unknown_user``; 2. ``no_active_consent`` (now); 3. ``no_consent_at_as_of`` (at t);
4. mode ``snapshot``: the latest snapshot with as_of in [t - max_age, t], else ``no_snapshot``
   (never computed); mode ``exact``: the snapshot stored for exactly t, else computed by the
   engine at t, else ``not_computed``.

The consent decisions are made once per user for the whole request (:class:`Population`: each
user's "some category consented" as a step function of time, one query,
:data:`hearth.ledger.ANY_CONSENT_STEPS_SQL`); each chunk of rows then costs one statement whose
answer comes back as a handful of byte strings — the snapshots' packed values laid end to end
— decoded by ``np.frombuffer`` (:func:`resolve_chunk`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Final

import numpy as np
import numpy.typing as npt
from psycopg_pool import AsyncConnectionPool

from features.engine import latest_as_of
from features.service.errors import ApiError
from features.service.resolve.engine_gateway import ComputedVector, EngineGateway
from features.service.resolve.replica import ReplicaGate
from features.snapshots.codec import LAYOUT, NO_WITHHELD, STORED, unpack
from hearth.ledger import ANY_CONSENT_STEPS_SQL, consent_rule_params

I64 = npt.NDArray[np.int64]
F64 = npt.NDArray[np.float64]
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
NO_TIME: Final = np.iinfo(np.int64).min  # µs columns: no value
# Why a row has no vector, by code (0: it has one); the strings of models.Reason.
REASONS: tuple[str | None, ...] = (
    None,
    "unknown_user",
    "no_active_consent",
    "no_consent_at_as_of",
    "not_computed",
    "no_snapshot",
)
UNKNOWN_USER, NO_ACTIVE_CONSENT, NO_CONSENT_AT_AS_OF, NOT_COMPUTED, NO_SNAPSHOT = range(1, 6)
SOURCES: tuple[str | None, ...] = (None, "snapshot", "computed")
SNAPSHOT, COMPUTED = 1, 2


def to_us(t: datetime) -> int:
    """An aware datetime as µs since 1970-01-01 UTC (the columns' time unit)."""
    return (t - EPOCH) // timedelta(microseconds=1)


def from_us(us: int) -> datetime:
    return EPOCH + timedelta(microseconds=us)


@dataclass(frozen=True)
class Population:
    """The users of a request: per row, the user's index among the distinct users, and what
    consent says of it (known, consented now, consented at the row's t)."""

    known: npt.NDArray[np.bool_]
    consented_now: npt.NDArray[np.bool_]
    consented_at: npt.NDArray[np.bool_]

    def reasons(self) -> npt.NDArray[np.int8]:
        """Per row, the first consent reason that applies (0: none)."""
        out = np.zeros(self.known.size, dtype=np.int8)
        out[~self.consented_at] = NO_CONSENT_AT_AS_OF
        out[~self.consented_now] = NO_ACTIVE_CONSENT
        out[~self.known] = UNKNOWN_USER
        return out


@dataclass
class ResolvedRows:
    """A chunk of a request's rows, resolved: per row its reason and source codes, the
    snapshot's as_of and the vector's computed_at (µs, :data:`NO_TIME` when none), and the
    vectors' values and coverage in the current layout (NaN / 0 without a vector)."""

    start: int  # index of the chunk's first row in the request
    user_ids: Sequence[str]
    as_of_us: I64
    reason: npt.NDArray[np.int8]
    source: npt.NDArray[np.int8]
    snapshot_as_of_us: I64
    computed_at_us: I64
    values: F64
    coverage: F64
    withheld: list[str]

    def __len__(self) -> int:
        return int(self.as_of_us.size)


async def population(
    pool: AsyncConnectionPool, user_ids: Sequence[str], as_of_us: I64
) -> Population:
    """Consent of every row of a request, with one statement for all its users."""
    index: dict[str, int] = {}
    inverse = np.fromiter(
        (index.setdefault(u, len(index)) for u in user_ids), dtype=np.int64, count=len(user_ids)
    )
    users = list(index)
    params = {"users": users, **consent_rule_params()}
    async with pool.connection() as conn:
        cur = await conn.execute(ANY_CONSENT_STEPS_SQL, params, prepare=True)
        steps = await cur.fetchall()
    known = np.zeros(len(users), dtype=bool)
    step_user, step_at, step_active = [], [], []
    for user, at, active in steps:
        i = index[str(user)]
        known[i] = True
        if isinstance(at, datetime):
            step_user.append(i)
            step_at.append(to_us(at))
            step_active.append(bool(active))
    su = np.asarray(step_user, dtype=np.int64)
    sa = np.asarray(step_at, dtype=np.int64)
    act = np.asarray(step_active, dtype=bool)
    # The last step of each user (at or before "now", i.e. any time) decides consent now.
    now = np.zeros(len(users), dtype=bool)
    if su.size:
        last = np.r_[su[1:] != su[:-1], True]
        now[su[last]] = act[last]
    # The last step at or before each row's t: one search over (user, time) pairs.
    at = np.zeros(inverse.size, dtype=bool)
    if su.size:
        order = np.lexsort((sa, su))
        su, sa, act = su[order], sa[order], act[order]
        pos = _last_at_or_before(su, sa, inverse.astype(np.int64), as_of_us)
        ok = pos >= 0
        at[ok] = act[pos[ok]]
    return Population(known[inverse], now[inverse], at)


def _last_at_or_before(su: I64, sa: I64, users: I64, times: I64) -> I64:
    """For each (user, time), the index of the last (su, sa) pair of that user with
    sa ≤ time, -1 when none; pairs sorted by (su, sa)."""
    # Ranks keep the comparison exact: (user, time) pairs as one sortable int64 key.
    all_times = np.unique(np.concatenate([sa, times]))
    width = np.int64(all_times.size + 1)
    key = su * width + np.searchsorted(all_times, sa)
    probe = users * width + np.searchsorted(all_times, times)
    pos = np.searchsorted(key, probe, side="right") - 1
    valid = pos >= 0
    valid[valid] = su[pos[valid]] == users[valid]
    out: I64 = np.where(valid, pos, -1)
    return out


def _probe_sql(mode: str) -> str:
    """The snapshot of each (user, t) row (``exact``: as of exactly t; ``snapshot``: the
    latest in [t - max_age, t]) as byte strings of the rows laid end to end, in row order:
    snapshot as_of and computed_at (int8 µs, -1 none), vals and covs (fillers for none),
    withheld (newline-separated JSON)."""
    if mode == "exact":
        match = "f.as_of = r.t"
    else:
        match = "f.as_of <= r.t AND f.as_of >= r.t - %(max_age)s::interval"
    return f"""
    SELECT string_agg(int8send(coalesce((extract(epoch FROM s.as_of) * 1000000)::int8, -1)),
                      ''::bytea ORDER BY r.ord),
           string_agg(int8send(coalesce((extract(epoch FROM s.computed_at) * 1000000)::int8,
                                        -1)), ''::bytea ORDER BY r.ord),
           string_agg(coalesce(s.vals, %(no_vals)s), ''::bytea ORDER BY r.ord),
           string_agg(coalesce(s.covs, %(no_covs)s), ''::bytea ORDER BY r.ord),
           string_agg(coalesce(s.withheld::text, '{NO_WITHHELD}'), E'\\n' ORDER BY r.ord)
      FROM (SELECT r.user_id, r.ord,
                   'epoch'::timestamptz + r.us * INTERVAL '1 microsecond' AS t
              FROM unnest(%(users)s::text[], %(us)s::int8[]) WITH ORDINALITY AS r(user_id, us, ord)
           ) r
      LEFT JOIN LATERAL (
            SELECT f.as_of, f.computed_at, f.vals, f.covs, f.withheld
              FROM feature_snapshots f
             WHERE f.user_id = r.user_id AND f.feature_set_version = %(version)s
               AND {match} AND f.as_of <= %(latest)s
             ORDER BY f.as_of DESC
             LIMIT 1
      ) s ON true
    """


PROBE_SQL = {mode: _probe_sql(mode) for mode in ("exact", "snapshot")}
_NO_VALS = np.full(LAYOUT.width, np.nan).astype(STORED).tobytes()
_NO_COVS = np.zeros(LAYOUT.width).astype(STORED).tobytes()


class BulkResolver:
    """Resolves chunks of a historical request on the service's read pool (and the engine for
    ``exact`` rows without a snapshot)."""

    def __init__(
        self,
        pool: AsyncConnectionPool,
        engine: EngineGateway,
        max_clock_skew_s: float,
        gate: ReplicaGate | None = None,
    ) -> None:
        self._pool = pool
        self._engine = engine
        self._max_clock_skew_s = max_clock_skew_s
        self._gate = gate  # the pool reads a replica: wait for it (resolve.replica)

    async def population(self, user_ids: Sequence[str], as_of_us: I64) -> Population:
        """Consent of a request's users; on a replica, once it has replayed the primary's
        position of now (a withdrawal made before the request is seen), which the request's
        snapshot probes then read too."""
        if self._gate is not None:
            async with self._pool.connection() as conn:
                await self._gate.wait(conn)
        return await population(self._pool, user_ids, as_of_us)

    async def resolve(
        self,
        start: int,
        user_ids: Sequence[str],
        as_of_us: I64,
        consent: npt.NDArray[np.int8],
        *,
        mode: str,
        max_age: timedelta,
        version: str,
    ) -> ResolvedRows:
        """Rows ``start``… of a request (their users, t in µs and consent reasons)."""
        n = len(user_ids)
        reason = consent.copy()
        source = np.zeros(n, dtype=np.int8)
        snap_at = np.full(n, NO_TIME, dtype=np.int64)
        computed = np.full(n, NO_TIME, dtype=np.int64)
        values = np.full((n, LAYOUT.width), np.nan)
        coverage = np.zeros((n, LAYOUT.width))
        withheld = [NO_WITHHELD] * n
        todo = np.flatnonzero(reason == 0)
        if todo.size:
            # Probed in (user, t) order: neighbouring lookups share index and heap pages.
            order = sorted(todo.tolist(), key=lambda i: (user_ids[i], int(as_of_us[i])))
            todo = np.array(order, dtype=np.int64)
            found = await self._probe(
                [user_ids[i] for i in order], as_of_us[todo], mode, max_age, version
            )
            p_at, p_computed, p_values, p_coverage, p_withheld = found
            hit = p_at != -1
            rows = todo[hit]
            source[rows] = SNAPSHOT
            snap_at[rows] = p_at[hit]
            computed[rows] = p_computed[hit]
            values[rows] = p_values[hit]
            coverage[rows] = p_coverage[hit]
            for i, w in zip(rows.tolist(), np.asarray(p_withheld, dtype=object)[hit], strict=True):
                withheld[i] = str(w)
            missing = todo[~hit]
            if missing.size and mode == "snapshot":
                reason[missing] = NO_SNAPSHOT
            elif missing.size:
                vectors = await self._compute(
                    [user_ids[i] for i in missing.tolist()], as_of_us[missing]
                )
                reason[missing] = NOT_COMPUTED
                got = [(i, v) for i, v in zip(missing.tolist(), vectors, strict=True) if v]
                if got:
                    rows = np.array([i for i, _ in got], dtype=np.int64)
                    values[rows], coverage[rows] = unpack([v.vector for _, v in got])
                    reason[rows] = 0
                    source[rows] = COMPUTED
                    computed[rows] = [to_us(v.computed_at) for _, v in got]
                    for i, v in got:
                        withheld[i] = v.vector.withheld
        return ResolvedRows(
            start, user_ids, as_of_us, reason, source, snap_at, computed, values, coverage,
            withheld,
        )  # fmt: skip

    async def _probe(
        self,
        user_ids: list[str],
        as_of_us: I64,
        mode: str,
        max_age: timedelta,
        version: str,
    ) -> tuple[I64, I64, F64, F64, list[str]]:
        params = {
            "users": user_ids,
            "us": as_of_us.tolist(),
            "version": version,
            "max_age": max_age,
            "latest": latest_as_of(self._max_clock_skew_s),
            "no_vals": _NO_VALS,
            "no_covs": _NO_COVS,
        }
        async with self._pool.connection() as conn:
            cur = await conn.execute(PROBE_SQL[mode], params, binary=True)
            row = await cur.fetchone()
        assert row is not None
        at_b, computed_b, vals_b, covs_b, withheld_text = row
        n = len(user_ids)
        at = np.frombuffer(bytes(at_b), dtype=">i8").astype(np.int64)
        computed = np.frombuffer(bytes(computed_b), dtype=">i8").astype(np.int64)
        width = LAYOUT.width * STORED.itemsize
        vals, covs = bytes(vals_b), bytes(covs_b)
        withheld = str(withheld_text).split("\n")
        if at.size != n or len(vals) != n * width or len(covs) != n * width or len(withheld) != n:
            raise RuntimeError("snapshot probe returned misaligned columns")  # never misalign
        values = np.frombuffer(vals, dtype=STORED).reshape(n, -1).astype(np.float64)
        coverage = np.frombuffer(covs, dtype=STORED).reshape(n, -1).astype(np.float64)
        return at, computed, values, coverage, withheld

    async def _compute(self, user_ids: Sequence[str], as_of_us: I64) -> list[ComputedVector | None]:
        """Exact rows without a snapshot: computed by the engine at t, each distinct (user, t)
        once (None when it gives nothing; every row None when the engine is not installed)."""
        rows = list(zip(user_ids, as_of_us.tolist(), strict=True))
        distinct = list(dict.fromkeys(rows))
        try:
            vectors = await self._engine.historical([(u, from_us(t)) for u, t in distinct])
        except ApiError:  # engine not installed: say so per row, not for the batch
            return [None] * len(rows)
        found = dict(zip(distinct, vectors, strict=True))
        return [found[r] for r in rows]
