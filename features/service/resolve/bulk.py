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
answer comes back as a handful of byte strings — the requested features of the snapshots'
packed values laid end to end — decoded by ``np.frombuffer`` (:func:`probe_sql`,
:func:`decode_probe`).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final

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


# hearth.ledger's consent steps, with times as µs since 1970 (no datetime object per step).
_STEPS_SQL = f"""
    SELECT s.user_id, (extract(epoch FROM s.at) * 1000000)::int8, s.active
      FROM ({ANY_CONSENT_STEPS_SQL}) AS s (user_id, at, active)
"""


def array_literal(ids: Sequence[str]) -> str:
    """Ids (``hearth.ids.ID_PATTERN``: no quote, backslash, comma or brace) as the text of a
    PostgreSQL array, each quoted (an unquoted NULL would be a null): psycopg sends one string
    instead of dumping a list item by item in Python."""
    return '{"' + '","'.join(ids) + '"}'


async def population(
    pool: AsyncConnectionPool, user_ids: Sequence[str], as_of_us: I64
) -> Population:
    """Consent of every row of a request, with one statement for all its users."""
    users = list(dict.fromkeys(user_ids))  # distinct, first seen first
    index = {u: i for i, u in enumerate(users)}
    inverse = np.fromiter(map(index.__getitem__, user_ids), dtype=np.int64, count=len(user_ids))
    params = {"users": array_literal(users), **consent_rule_params()}
    async with pool.connection() as conn:
        cur = await conn.execute(_STEPS_SQL, params, prepare=True)
        steps = await cur.fetchall()
    known = np.zeros(len(users), dtype=bool)
    known[[index[str(user)] for user, _, _ in steps]] = True
    timed = [(index[str(user)], at, bool(active)) for user, at, active in steps if at is not None]
    su = np.fromiter((u for u, _, _ in timed), dtype=np.int64, count=len(timed))
    sa = np.fromiter((t for _, t, _ in timed), dtype=np.int64, count=len(timed))
    act = np.fromiter((a for _, _, a in timed), dtype=bool, count=len(timed))
    order = np.lexsort((sa, su))  # (user, time) order, whatever order the rows came in
    su, sa, act = su[order], sa[order], act[order]
    # The last step of each user (at or before "now", i.e. any time) decides consent now.
    now = np.zeros(len(users), dtype=bool)
    if su.size:
        last = np.r_[su[1:] != su[:-1], True]
        now[su[last]] = act[last]
    # The last step at or before each row's t: one search over (user, time) pairs.
    at = np.zeros(inverse.size, dtype=bool)
    if su.size:
        pos = _last_at_or_before(su, sa, inverse, as_of_us)
        ok = pos >= 0
        at[ok] = act[pos[ok]]
    return Population(known[inverse], now[inverse], at)


def _last_at_or_before(su: I64, sa: I64, users: I64, times: I64) -> I64:
    """For each (user, time), the index of the last (su, sa) pair of that user with
    sa ≤ time, -1 when none; pairs sorted by (su, sa)."""
    # Ranks keep the comparison exact: (user, time) pairs as one sortable int64 key. A time's
    # rank is the number of distinct step times at or before it, so sa <= t exactly when
    # rank(sa) <= rank(t); only the steps' times are sorted, not the rows'.
    step_times = np.unique(sa)
    width = np.int64(step_times.size + 1)
    key = su * width + np.searchsorted(step_times, sa, side="right")
    probe = users * width + np.searchsorted(step_times, times, side="right")
    pos = np.searchsorted(key, probe, side="right") - 1
    valid = pos >= 0
    valid[valid] = su[pos[valid]] == users[valid]
    out: I64 = np.where(valid, pos, -1)
    return out


Runs = tuple[tuple[int, int], ...]  # (first position, count) of adjacent layout positions


def runs_of(positions: npt.NDArray[np.intp]) -> Runs:
    """Sorted distinct layout positions as runs of adjacent ones: ``[0, 1, 2, 7]`` →
    ``((0, 3), (7, 1))``."""
    out: list[list[int]] = []
    for p in sorted(set(positions.tolist())):
        if out and out[-1][0] + out[-1][1] == p:
            out[-1][1] += 1
        else:
            out.append([p, 1])
    return tuple((first, count) for first, count in out)


def _slices(column: str, runs: Runs) -> str:
    """SQL: the bytes of ``runs`` of a packed vector column, laid end to end."""
    if runs == ((0, LAYOUT.width),):
        return column
    size = STORED.itemsize
    return " || ".join(
        f"substring({column} FROM {1 + first * size} FOR {count * size})" for first, count in runs
    )


def _scatter(out: F64, rows: I64, runs: Runs, got: F64) -> None:
    """``out[rows]`` at the layout positions of ``runs`` = ``got`` (its columns in runs'
    order): a slice per run, cheaper than one fancy (rows by columns) assignment."""
    start = 0
    for first, count in runs:
        out[rows, first : first + count] = got[:, start : start + count]
        start += count


@functools.lru_cache(maxsize=64)
def probe_sql(mode: str, runs: Runs, coverage: bool = True) -> str:
    """The snapshot of each (user, t) row (``exact``: as of exactly t; ``snapshot``: the
    latest in [t - max_age, t]) as byte strings of the rows laid end to end: the row's
    ordinal, snapshot as_of and computed_at (timestamptz wire format, -infinity for none),
    the ``runs`` of vals and of covs (fillers for none; no covs but the fillers without
    ``coverage``), withheld (newline-separated JSON).

    Only the features asked for leave the database: 24 of 83 are 29 % of the bytes. The
    aggregates have no ORDER BY: PostgreSQL 15 would sort the rows once per aggregate (five
    sorts of wide rows, a third of the statement's time); all of them read the same rows in the
    same order, so the ordinals say where each row goes (:func:`decode_probe`). The rows come
    as two texts (ids are ``hearth.ids.ID_PATTERN``: no newline, no comma), which psycopg
    sends as they are; lists would be dumped item by item in Python."""
    if mode == "exact":
        match = "f.as_of = r.t"
    else:
        match = "f.as_of <= r.t AND f.as_of >= r.t - %(max_age)s::interval"
    covs = f"coalesce({_slices('s.covs', runs)}, %(no_covs)s)" if coverage else "%(no_covs)s"
    return f"""
    SELECT string_agg(int8send(r.ord), ''::bytea),
           string_agg(timestamptz_send(coalesce(s.as_of, '-infinity')), ''::bytea),
           string_agg(timestamptz_send(coalesce(s.computed_at, '-infinity')), ''::bytea),
           string_agg(coalesce({_slices("s.vals", runs)}, %(no_vals)s), ''::bytea),
           string_agg({covs}, ''::bytea),
           string_agg(coalesce(s.withheld::text, '{NO_WITHHELD}'), E'\\n')
      FROM (SELECT r.user_id, r.ord,
                   'epoch'::timestamptz + r.us * INTERVAL '1 microsecond' AS t
              FROM unnest(string_to_array(%(users)s, E'\\n'),
                          string_to_array(%(us)s, ',')::int8[])
                   WITH ORDINALITY AS r(user_id, us, ord)
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


# PostgreSQL's binary timestamptz: int64 µs since 2000-01-01 UTC, -infinity the int64 minimum.
_PG_EPOCH_US = to_us(datetime(2000, 1, 1, tzinfo=UTC))


def _wire_us(data: bytes) -> I64:
    """Binary timestamptz values laid end to end → µs since 1970 (:data:`NO_TIME`: none)."""
    wire = np.frombuffer(data, dtype=">i8").astype(np.int64)
    out: I64 = np.where(wire == NO_TIME, NO_TIME, wire + _PG_EPOCH_US)
    return out


Probed = tuple[I64, I64, F64, F64, list[str]]  # as_of, computed_at, values, coverage, withheld


def decode_probe(row: Sequence[Any], n: int, k: int = LAYOUT.width) -> Probed:
    """A :func:`probe_sql` answer for ``n`` rows of ``k`` features → per row (in the rows'
    order, whatever order the database aggregated them in) snapshot as_of and computed_at in
    µs (:data:`NO_TIME`: no snapshot), values and coverage [n, k] in the runs' order, and
    withheld JSON."""
    ord_b, at_b, computed_b, vals_b, covs_b, withheld_text = row
    where = np.frombuffer(bytes(ord_b), dtype=">i8") - 1  # each arriving row's place
    at = _wire_us(bytes(at_b))
    computed = _wire_us(bytes(computed_b))
    width = k * STORED.itemsize
    vals, covs = bytes(vals_b), bytes(covs_b)
    withheld = str(withheld_text).split("\n")
    if (
        not np.array_equal(np.sort(where), np.arange(n))
        or at.size != n
        or computed.size != n
        or len(vals) != n * width
        or len(covs) != n * width
        or len(withheld) != n
    ):
        raise RuntimeError("snapshot probe returned misaligned columns")  # never misalign
    values = np.frombuffer(vals, dtype=STORED).reshape(n, -1).astype(np.float64)
    coverage = np.frombuffer(covs, dtype=STORED).reshape(n, -1).astype(np.float64)
    if not np.array_equal(where, np.arange(n)):
        back = np.argsort(where)
        at, computed, values, coverage = at[back], computed[back], values[back], coverage[back]
        withheld = [withheld[i] for i in back.tolist()]
    return at, computed, values, coverage, withheld


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
        columns: npt.NDArray[np.intp] | None = None,
        coverage: bool = True,
    ) -> ResolvedRows:
        """Rows ``start``… of a request (their users, t in µs and consent reasons). Of a
        stored snapshot only the layout positions ``columns`` (all when None) are read, and
        its coverage only when ``coverage`` (the response shows it); the rest is NaN / 0 as if
        the snapshot did not have it."""
        n = len(user_ids)
        reason = consent.copy()
        source = np.zeros(n, dtype=np.int8)
        snap_at = np.full(n, NO_TIME, dtype=np.int64)
        computed = np.full(n, NO_TIME, dtype=np.int64)
        values = np.full((n, LAYOUT.width), np.nan)
        covered = np.zeros((n, LAYOUT.width))
        withheld = np.full(n, NO_WITHHELD, dtype=object)
        todo = np.flatnonzero(reason == 0)
        if todo.size:
            # Probed in (user, t) order: neighbouring lookups share index and heap pages.
            todo = todo[np.lexsort((as_of_us[todo], np.asarray(user_ids)[todo]))]
            runs = ((0, LAYOUT.width),) if columns is None else runs_of(columns)
            found = await self._probe(
                [user_ids[i] for i in todo.tolist()], as_of_us[todo], mode, max_age, version,
                runs, coverage,
            )  # fmt: skip
            p_at, p_computed, p_values, p_coverage, p_withheld = found
            hit = p_at != NO_TIME
            rows = todo[hit]
            source[rows] = SNAPSHOT
            snap_at[rows] = p_at[hit]
            computed[rows] = p_computed[hit]
            _scatter(values, rows, runs, p_values[hit])
            if coverage:
                _scatter(covered, rows, runs, p_coverage[hit])
            withheld[rows] = np.asarray(p_withheld, dtype=object)[hit]
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
                    values[rows], covered[rows] = unpack([v.vector for _, v in got])
                    reason[rows] = 0
                    source[rows] = COMPUTED
                    computed[rows] = [to_us(v.computed_at) for _, v in got]
                    for i, v in got:
                        withheld[i] = v.vector.withheld
        return ResolvedRows(
            start, user_ids, as_of_us, reason, source, snap_at, computed, values, covered,
            withheld.tolist(),
        )  # fmt: skip

    async def _probe(
        self,
        user_ids: list[str],
        as_of_us: I64,
        mode: str,
        max_age: timedelta,
        version: str,
        runs: Runs,
        coverage: bool,
    ) -> Probed:
        k = sum(count for _, count in runs)
        params = {
            "users": "\n".join(user_ids),
            "us": ",".join(map(str, as_of_us.tolist())),
            "version": version,
            "max_age": max_age,
            "latest": latest_as_of(self._max_clock_skew_s),
            "no_vals": np.full(k, np.nan).astype(STORED).tobytes(),
            "no_covs": np.zeros(k).astype(STORED).tobytes(),
        }
        async with self._pool.connection() as conn:
            cur = await conn.execute(probe_sql(mode, runs, coverage), params, binary=True)
            row = await cur.fetchone()
        assert row is not None
        return decode_probe(row, len(user_ids), k)

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
