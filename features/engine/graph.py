"""The household graph of a chunk of users as of T: who saw the networks they saw, and when.

A chunk needs its users' neighbours' network sightings, never their features: for every home or
daytime network (:mod:`features.catalogue.library.sightings`) a chunk user saw, the other
people whose devices saw it too, on which of the user's local nights and weekdays. Point in time
exactly as the engine (docs/invariants.md#8), and both ends consented (#9):

* the chunk users' own sightings come from the chunk's loaded bins (event time < T, ingested
  ≤ T, their categories consented at T and not withdrawn since);
* the other people's come from ``network_sightings`` (migration 0071), which the rollup job
  keeps beside the packed categorical rollups from the same per-bucket aggregate: one row per
  (device, signal, UTC day, dominant value) with the value's hours as a bit mask, found by
  (signal, value, user_id, day). A row's buckets are used as they are when each ended by T and
  every raw row in the row was ingested by T; a row with nothing ingested by T is skipped (it
  was unknown at T); the buckets of any other row, and any with raw rows newer than the rollup
  watermark, are recomputed from raw rows with time < T and ingested_at ≤ T with the rollup
  job's own aggregate (features.rollups), exactly as the chunk's own bins are;
* a person counts only if consented at T to ``relationships`` and to the key's category
  (connectivity for a Wi-Fi access point, location for a geohash) and has not withdrawn either
  since (hearth.ledger: the engine's rule for every category).

Cost: per network a chunk user saw, one index probe per person who saw it and one index range
per other person (a row per device-day), so the work grows with the chunk's users and their
neighbours, not with the fleet. A network more than :data:`PEOPLE_CAP` people saw in the 90-day
grid is not read further and links nobody (a public network; the guard counts people, never
looks at who they are, and can only remove links).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import numpy as np

from features.catalogue.library.base import Chunk
from features.catalogue.library.sightings import (
    LINK_DAYS,
    LINK_NIGHTS,
    MAX_HOME_PEOPLE,
    MAX_WORK_PEOPLE,
    NETWORK_SIGNALS,
    NIGHT_HOURS,
    WIFI_SIGNAL,
    WORK_HOURS,
    WORK_WEEKDAYS,
    Sightings,
)
from features.engine.as_of import Knowledge, known_by
from features.engine.grid import grid_bounds
from features.rollups import CATEGORICAL_AGGREGATE_FROM
from hearth import ledger
from hearth.db import Conn
from hearth.signals import Category

PEOPLE_CAP = 64  # people (whoever they are) seeing one network in the 90-day grid: beyond, public

_SIGNALS_SQL = ", ".join(f"'{s}'" for s in NETWORK_SIGNALS)
_NIGHT_SQL = ", ".join(str(h) for h in NIGHT_HOURS)
_WORK_SQL = ", ".join(str(h) for h in WORK_HOURS)
_WEEKDAYS_SQL = ", ".join(str(d + 1) for d in WORK_WEEKDAYS)  # isodow: Monday = 1

# Other people's sightings of the chunk's keys. ``n``: the keys (networks); ``k``: one row per
# (key, zone of its owners). ``walk`` steps through the people who saw a key, one index probe
# each (by user id, up to PEOPLE_CAP + 1 of them, whoever is in the chunk); a key with more is
# public and not read further. For the others (not the chunk's users), their rows of the
# window: nights and days as offsets from ``base``, the owners' first local grid day, and the
# rows not usable as they are (``stale``) as (device, bucket) to recompute from raw. The last
# rows (``user_id`` NULL) give each key's count of people. A row's hours (a 24-bit mask) become
# buckets through its three bytes joined to ``bits`` (each byte value's set bits): testing all
# 24 bits of every row (generate_series) was half of the statement's time.
_SIGHTING_KEY = """b.signal = n.signal AND b.value = n.value
                  AND b.day >= %(start_day)s AND b.day < %(as_of)s
                  AND b.first_ingested_at <= %(known_by)s"""  # else nothing in it known at T
_NEIGHBOURS_SQL = f"""
    WITH RECURSIVE
    n AS MATERIALIZED (
        SELECT * FROM unnest(%(n_key)s::int4[], %(n_signal)s::text[], %(n_value)s::text[])
                      AS n(key, signal, value)),
    k AS MATERIALIZED (
        SELECT * FROM unnest(%(k_idx)s::int4[], %(k_key)s::int4[], %(k_tz)s::text[],
                             %(k_base)s::date[]) AS k(idx, key, tz, base)),
    bits AS MATERIALIZED (
        SELECT byte, bit FROM generate_series(1, 255) AS byte, generate_series(0, 7) AS bit
         WHERE byte & (1 << bit) <> 0),
    walk(key, user_id, n) AS (
        SELECT n.key, (SELECT b.user_id FROM network_sightings b WHERE {_SIGHTING_KEY}
                        ORDER BY b.user_id LIMIT 1), 1
          FROM n
        UNION ALL
        SELECT w.key, (SELECT b.user_id FROM network_sightings b
                        WHERE {_SIGHTING_KEY} AND b.user_id > w.user_id
                        ORDER BY b.user_id LIMIT 1), w.n + 1
          FROM walk w JOIN n ON n.key = w.key
         WHERE w.user_id IS NOT NULL AND w.n <= %(cap)s),
    people AS MATERIALIZED (SELECT key, user_id FROM walk WHERE user_id IS NOT NULL),
    counted AS MATERIALIZED (SELECT key, count(*) AS n FROM people GROUP BY key),
    chunk AS MATERIALIZED (SELECT DISTINCT unnest(%(users)s::text[]) AS user_id),
    x AS MATERIALIZED (
        SELECT * FROM unnest(%(x_device)s::text[], %(x_signal)s::text[],
                             %(x_bucket)s::timestamptz[]) AS x(device_id, signal, bucket)),
    others AS MATERIALIZED (
        SELECT p.key, p.user_id FROM people p JOIN counted c USING (key)
         WHERE c.n <= %(cap)s
           AND NOT EXISTS (SELECT 1 FROM chunk WHERE chunk.user_id = p.user_id)),
    seen AS MATERIALIZED (
        SELECT q.key, q.user_id, b.device_id, b.bucket,
               b.max_ingested_at > %(known_by)s OR b.bucket + INTERVAL '1 hour' > %(as_of)s
                   OR x.device_id IS NOT NULL AS stale
          FROM others q JOIN n USING (key)
         CROSS JOIN LATERAL (
               SELECT b.signal, b.device_id, b.day, b.hours, b.max_ingested_at
                 FROM network_sightings b
                WHERE {_SIGHTING_KEY} AND b.user_id = q.user_id
               OFFSET 0) r  -- one index range per (key, person): never flattened into a join
         CROSS JOIN LATERAL (VALUES (0, r.hours & 255), (8, (r.hours >> 8) & 255),
                                    (16, r.hours >> 16)) AS part(shift, byte)
          JOIN bits ON bits.byte = part.byte
         CROSS JOIN LATERAL (
               SELECT r.signal, r.device_id,
                      r.day + (part.shift + bits.bit) * INTERVAL '1 hour' AS bucket,
                      r.max_ingested_at) b
          LEFT JOIN x ON x.device_id = b.device_id AND x.signal = b.signal
                     AND x.bucket = b.bucket
         WHERE b.bucket >= %(start)s AND b.bucket < %(as_of)s),
    o AS (
        SELECT k.idx, s.user_id, s.device_id, s.bucket, s.stale, k.base,
               s.bucket AT TIME ZONE k.tz AS local
          FROM seen s JOIN k USING (key))
    SELECT idx, user_id, NULL::int8,
           array_agg(DISTINCT ((local - INTERVAL '12 hours')::date - base))
               FILTER (WHERE NOT stale AND extract(hour FROM local) IN ({_NIGHT_SQL})),
           array_agg(DISTINCT (local::date - base))
               FILTER (WHERE NOT stale AND extract(hour FROM local) IN ({_WORK_SQL})
                       AND extract(isodow FROM local) IN ({_WEEKDAYS_SQL})),
           array_agg(device_id) FILTER (WHERE stale),
           array_agg(bucket) FILTER (WHERE stale)
      FROM o GROUP BY idx, user_id
    UNION ALL
    SELECT k.idx, NULL, c.n, NULL, NULL, NULL, NULL FROM counted c JOIN k USING (key)
"""

# Buckets of other people's raw rows the rollups have not seen yet (ingested after the
# watermark) but known at T, holding one of the keys. Only needed when the watermark is before T.
_NEW_RAW_SQL = f"""
    SELECT DISTINCT r.device_id, r.signal, time_bucket(INTERVAL '1 hour', r.time)
      FROM categorical_readings r
      JOIN unnest(%(k_signal)s::text[], %(k_value)s::text[]) AS k(signal, value)
        ON r.signal = k.signal AND r.value = k.value
     WHERE r.ingested_at > %(watermark)s AND r.ingested_at <= %(known_by)s
       AND r.signal IN ({_SIGNALS_SQL})
       AND r.time >= %(start)s AND r.time < %(as_of)s
       AND r.user_id <> ALL(%(users)s::text[])
"""

# Those buckets "as they were at T": the rollup job's dominant value over raw rows with time < T
# and ingested_at ≤ T.
_RECOMPUTE_SQL = f"""
    WITH s AS (SELECT * FROM unnest(%(s_device)s::text[], %(s_signal)s::text[],
                                    %(s_bucket)s::timestamptz[]) AS s(device_id, signal, bucket))
    SELECT b.user_id, b.signal, b.bucket, b.value
      FROM s CROSS JOIN LATERAL ({
    CATEGORICAL_AGGREGATE_FROM.format(
        source="categorical_readings r",
        where='''WHERE r.device_id = s.device_id AND r.signal = s.signal
                   AND r.time >= s.bucket AND r.time < s.bucket + INTERVAL '1 hour'
                   AND r.time < %(as_of)s AND r.ingested_at <= %(known_by)s''',
    )
}) b
"""


def _zone(tz: str) -> ZoneInfo:
    """The user's zone; an unknown one is UTC (as the engine's local grid does)."""
    try:
        return ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError):
        return ZoneInfo("UTC")


_SLOT_SPAN = 1 << 12  # slots are days around the 90-day grid (-1 .. ~95), coded offset by half


class _Rows:
    """Sighting rows being collected: (owner, person, key, slot, night), deduplicated at the
    end through one int64 code per row."""

    def __init__(self) -> None:
        self.parts: list[tuple[np.ndarray, ...]] = []

    def add(
        self,
        owner: np.ndarray,
        person: np.ndarray,
        key: np.ndarray,
        slot: np.ndarray,
        night: np.ndarray,
    ) -> None:
        """Rows from equal-length int64 arrays (``night`` bool)."""
        if slot.size:
            self.parts.append((owner, person, key, slot, night))

    def arrays(self, n_people: int, n_keys: int) -> tuple[np.ndarray, ...]:
        if not self.parts:
            z = np.zeros(0, dtype=np.int64)
            return z, z, z, z, np.zeros(0, dtype=bool)
        o, p, k, t, n = (np.concatenate([part[i] for part in self.parts]) for i in range(5))
        span = _SLOT_SPAN
        code = (((o * n_people + p) * n_keys + k) * span + (t + span // 2)) * 2 + n
        code = np.unique(code)
        night = (code % 2).astype(bool)
        code //= 2
        slot = code % span - span // 2
        code //= span
        key = code % n_keys
        code //= n_keys
        return code // n_people, code % n_people, key, slot, night


def _networks(
    owner: np.ndarray, key: np.ndarray, slot: np.ndarray, night: np.ndarray, U: int, K: int
) -> tuple[np.ndarray, np.ndarray]:
    """[U, K] each chunk user's home networks (seen on ≥ LINK_NIGHTS nights of the grid) and
    daytime networks (seen on ≥ LINK_DAYS weekdays): the only ones that can link them."""
    out = []
    for flag, least in ((True, LINK_NIGHTS), (False, LINK_DAYS)):
        m = night == flag
        span = _SLOT_SPAN
        distinct = np.unique((owner[m] * K + key[m]) * span + slot[m] + span // 2)
        count = np.bincount(distinct // span, minlength=U * K)
        out.append((count >= least).reshape(U, K))
    return out[0], out[1]


def _chunk_pairs(
    rows: _Rows,
    owner: np.ndarray,
    key: np.ndarray,
    slot: np.ndarray,
    night: np.ndarray,
    base_ord: np.ndarray,
    n_users: int,
    home: np.ndarray,
    daytime: np.ndarray,
) -> None:
    """Chunk users who saw a common key: each one's sightings of the other's (usable) home and
    daytime networks, in the other's calendar."""
    receives = home | daytime  # [U, K]
    if not key.size or not receives.any():
        return
    # Distinct (key, user) seen, and per key who may receive others' sightings of it.
    ku = np.unique(key * n_users + owner)
    k_of, u_of = ku // n_users, ku % n_users
    keys, start, count = np.unique(k_of, return_index=True, return_counts=True)
    pu, pv, pk = [], [], []
    for s, c, k in zip(start.tolist(), count.tolist(), keys.tolist(), strict=True):
        if c < 2:
            continue
        seen = u_of[s : s + c]
        takers = seen[receives[seen, k]]
        if not takers.size:
            continue
        u = np.repeat(takers, c)
        v = np.tile(seen, takers.size)
        other = u != v
        pu.append(u[other])
        pv.append(v[other])
        pk.append(np.full(int(other.sum()), k, dtype=np.int64))
    if not pu:
        return
    u, v, k = np.concatenate(pu), np.concatenate(pv), np.concatenate(pk)
    # Each pair takes v's rows of key k, in u's calendar, of the kinds u may receive.
    order = np.lexsort((owner, key))
    row_code = (key * n_users + owner)[order]
    lo = np.searchsorted(row_code, k * n_users + v, side="left")
    hi = np.searchsorted(row_code, k * n_users + v, side="right")
    n = hi - lo
    pair = np.repeat(np.arange(u.size), n)
    within = np.arange(int(n.sum())) - np.repeat(np.cumsum(n) - n, n)
    taken = order[np.repeat(lo, n) + within]
    up, kt = u[pair], key[taken]
    keep = np.where(night[taken], home[up, kt], daytime[up, kt])
    shift = (base_ord[v[pair]] - base_ord[up])[keep]
    rows.add(up[keep], v[pair][keep], kt[keep], slot[taken][keep] + shift, night[taken][keep])


def _own_sightings(
    chunk: Chunk, eligible: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The chunk users' own sightings from the loaded bins: (owner, signal index, value code,
    slot, night) of the eligible users' night and weekday working-hours network bins."""
    cat, grid = chunk.categorical, chunk.grid
    sid = {chunk.signal_index[name]: name for name in NETWORK_SIGNALS}
    wifi = chunk.signal_index[WIFI_SIGNAL]
    m = np.isin(cat.s, list(sid))
    if eligible.size:
        m &= eligible[cat.u]
    u, h, s, code = cat.u[m], cat.h[m], cat.s[m], cat.code[m]
    hod = np.floor(grid.tod[u, h]).astype(np.int64) % 24
    day = grid.day[u, h].astype(np.int64)
    night = np.isin(hod, NIGHT_HOURS)
    work = np.isin(hod, WORK_HOURS) & np.isin(grid.weekday[u, h], WORK_WEEKDAYS) & (s == wifi)
    keep = night | work
    slot = np.where(night, day - (hod < 12), day)
    return u[keep], s[keep], code[keep], slot[keep], night[keep]


def load_sightings(
    conn: Conn,
    users: Sequence[str],
    tzs: Sequence[str],
    chunk: Chunk,
    as_of: datetime,
    watermark: datetime | None,
    knowledge: Knowledge = Knowledge.INGESTED,
    public: set[tuple[str, str]] | None = None,
) -> Sightings:
    """The shared-network sightings of ``users`` (the chunk's, in order) as of ``as_of``.

    ``public``: (signal, value) of networks found to be seen by more than :data:`PEOPLE_CAP` at
    this as_of, shared by the chunks of one run (the finding does not depend on the chunk): they
    are not read again, and the ones this chunk finds are added."""
    public = set() if public is None else public
    U = len(users)
    eligible = chunk.consented.get(Category.RELATIONSHIPS, np.zeros(U, dtype=bool))
    if U == 0 or not eligible.any():
        return Sightings.empty(U, tuple(users))
    start, _, _ = grid_bounds(as_of)
    zones = [_zone(tz) for tz in tzs]
    base = [start.astimezone(z).date() for z in zones]
    base_ord = np.array([b.toordinal() for b in base], dtype=np.int64)

    owner, sig, code, slot, night = _own_sightings(chunk, eligible)
    sig_names = {chunk.signal_index[name]: name for name in NETWORK_SIGNALS}
    n_values = len(chunk.categorical_values) + 1
    key_code, key_of_row = np.unique(sig * n_values + code, return_inverse=True)
    key_of_row = key_of_row.ravel()
    keys = [
        (sig_names[int(kc // n_values)], chunk.categorical_values[int(kc % n_values)])
        for kc in key_code
    ]
    K = len(keys)
    home, daytime = _networks(owner, key_of_row, slot, night, U, K)
    found = _neighbours(conn, users, keys, zones, base, home | daytime, public,
                        _Params(start, as_of, watermark, knowledge))  # fmt: skip
    others = sorted({user for (_, user, _) in found.sightings})
    consent = _linkable(conn, others, as_of)
    people = list(users) + [u for u in others if u in consent]
    person_of = {u: i for i, u in enumerate(people)}
    theirs: list[tuple[int, int, int, np.ndarray, np.ndarray]] = []  # owner, person, key, ...
    for (k, user, tz), (ts, flags) in sorted(found.sightings.items()):
        if k in found.capped or user not in person_of:
            continue
        if NETWORK_SIGNALS[keys[k][0]] not in consent[user]:
            continue
        for u in found.owners[(k, tz)]:
            keep = np.where(flags, home[u, k], daytime[u, k])
            theirs.append((u, person_of[user], k, ts[keep], flags[keep]))
    key_home, key_work = _uncrowded(K, key_of_row, owner, night, theirs, found.capped)

    rows = _Rows()
    rows.add(owner, owner, key_of_row, slot, night)
    usable = (home & key_home[None, :], daytime & key_work[None, :])
    _chunk_pairs(rows, owner, key_of_row, slot, night, base_ord, U, *usable)
    for u, p, k, ts, flags in theirs:
        keep = np.where(flags, usable[0][u, k], usable[1][u, k])
        same = np.ones(int(keep.sum()), dtype=np.int64)
        rows.add(same * u, same * p, same * k, ts[keep], flags[keep])
    o, p_, k_, t, nt = rows.arrays(len(people), max(K, 1))
    return Sightings(
        n_users=U,
        owner=o,
        person=p_,
        key=k_,
        slot=t,
        night=nt,
        key_wifi=np.array([name == WIFI_SIGNAL for name, _ in keys], dtype=bool),
        key_home=key_home,
        key_work=key_work,
        people=tuple(people),
    )


@dataclass(frozen=True)
class _Params:
    start: datetime
    as_of: datetime
    watermark: datetime | None
    knowledge: Knowledge


@dataclass
class _Found:
    """Other people's sightings of the chunk's keys: (key, user, zone) → (slots, night flags),
    the owners of each (key, zone), and the keys that are public (too many people)."""

    sightings: dict[tuple[int, str, str], tuple[np.ndarray, np.ndarray]]
    owners: dict[tuple[int, str], list[int]]
    capped: set[int]


def _neighbours(
    conn: Conn,
    users: Sequence[str],
    keys: list[tuple[str, str]],
    zones: list[ZoneInfo],
    base: list[date],
    wanted: np.ndarray,
    public: set[tuple[str, str]],
    at: _Params,
) -> _Found:
    """The other people who saw the networks in ``wanted`` [U, K] (each owner's home and
    daytime networks), with point-in-time corrections from raw rows."""
    entries: dict[tuple[int, str], date] = {}
    owners_of: dict[tuple[int, str], list[int]] = {}
    known_public = {k for k, key in enumerate(keys) if key in public}
    for u, k in zip(*np.nonzero(wanted), strict=True):
        u, k = int(u), int(k)
        if k in known_public:
            continue
        tz = zones[u].key
        entries.setdefault((k, tz), base[u])
        owners_of.setdefault((k, tz), []).append(u)
    entry_list = sorted(entries)
    queried = sorted({k for k, _ in entry_list})
    params: dict[str, object] = {
        "n_key": queried,
        "n_signal": [keys[k][0] for k in queried],
        "n_value": [keys[k][1] for k in queried],
        "k_idx": list(range(len(entry_list))),
        "k_key": [k for k, _ in entry_list],
        "k_signal": [keys[k][0] for k, _ in entry_list],
        "k_value": [keys[k][1] for k, _ in entry_list],
        "k_tz": [tz for _, tz in entry_list],
        "k_base": [entries[e] for e in entry_list],
        "users": list(users),
        "start": at.start,
        "start_day": at.start.replace(hour=0),  # UTC: network_sightings rows are UTC days
        "as_of": at.as_of,
        "known_by": known_by(at.as_of, at.knowledge),
        "watermark": at.watermark or "-infinity",
        "cap": PEOPLE_CAP,
    }
    fresh: list[tuple[object, ...]] = []
    if entry_list and (
        at.watermark is None or at.watermark < at.as_of or at.knowledge is Knowledge.EVENT
    ):
        fresh = conn.execute(_NEW_RAW_SQL, params).fetchall()
    params.update(
        x_device=[str(r[0]) for r in fresh],
        x_signal=[str(r[1]) for r in fresh],
        x_bucket=[r[2] for r in fresh],
    )
    found: list[tuple[object, ...]] = []
    if entry_list:
        with conn.transaction():
            # Planned as costly enough to JIT-compile (~1 s), which saves nothing here: index
            # probes and small aggregates (the engine's loaders turn it off for their reads).
            conn.execute("SET LOCAL jit = off")
            found = conn.execute(_NEIGHBOURS_SQL, params).fetchall()

    slots: dict[tuple[int, str], list[tuple[int, bool]]] = {}  # (entry, user) → slots
    people_on_key = np.zeros(len(entry_list), dtype=np.int64)
    stale: set[tuple[str, str, datetime]] = set()
    for device, signal_name, bucket in fresh:
        assert isinstance(bucket, datetime)
        stale.add((str(device), str(signal_name), bucket))
    for idx, user, n, nights, days, stale_devices, stale_buckets in found:
        assert isinstance(idx, int)
        assert isinstance(nights, list | None) and isinstance(days, list | None)
        assert isinstance(stale_devices, list | None) and isinstance(stale_buckets, list | None)
        if user is None:  # how many people saw the key in the grid, up to the cap + 1
            assert isinstance(n, int)
            people_on_key[idx] = n
            continue
        got = slots.setdefault((idx, str(user)), [])
        got.extend((int(t), True) for t in nights or ())
        got.extend((int(t), False) for t in days or ())
        signal = keys[entry_list[idx][0]][0]
        for device, bucket in zip(stale_devices or (), stale_buckets or (), strict=True):
            assert isinstance(bucket, datetime)
            stale.add((str(device), signal, bucket))
    _recomputed(conn, params, stale, entry_list, keys, zones, owners_of, base, slots)

    capped = {entry_list[i][0] for i in np.flatnonzero(people_on_key > PEOPLE_CAP)}
    public.update(keys[k] for k in capped)
    sightings = {
        (entry_list[idx][0], user, entry_list[idx][1]): (
            np.array([t for t, _ in got], dtype=np.int64),
            np.array([f for _, f in got], dtype=bool),
        )
        for (idx, user), got in slots.items()
        if got
    }
    return _Found(sightings, owners_of, capped | known_public)


def _recomputed(
    conn: Conn,
    params: dict[str, object],
    stale: set[tuple[str, str, datetime]],
    entry_list: list[tuple[int, str]],
    keys: list[tuple[str, str]],
    zones: list[ZoneInfo],
    owners_of: dict[tuple[int, str], list[int]],
    base: list[date],
    sightings: dict[tuple[int, str], list[tuple[int, bool]]],
) -> None:
    """Buckets not usable as they are in the rollups, as they were at T: the slots of those
    whose dominant value is one of the keys, added to ``sightings``."""
    if not stale:
        return
    ordered = sorted(stale, key=lambda x: (x[0], x[1], x[2]))
    rows = conn.execute(
        _RECOMPUTE_SQL,
        {
            "s_device": [d for d, _, _ in ordered],
            "s_signal": [s for _, s, _ in ordered],
            "s_bucket": [b for _, _, b in ordered],
            "as_of": params["as_of"],
            "known_by": params["known_by"],
        },
    ).fetchall()
    entries_of: dict[tuple[str, str], list[int]] = {}
    for i, (k, _) in enumerate(entry_list):
        entries_of.setdefault(keys[k], []).append(i)
    for user, signal, bucket, value in rows:
        assert isinstance(bucket, datetime)
        for i in entries_of.get((str(signal), str(value)), ()):
            u = owners_of[entry_list[i]][0]
            local = bucket.astimezone(zones[u])
            day = (local.date() - base[u]).days
            slots = sightings.setdefault((i, str(user)), [])
            if local.hour in NIGHT_HOURS:
                slots.append(((local - timedelta(hours=12)).date().toordinal()
                              - base[u].toordinal(), True))  # fmt: skip
            if local.hour in WORK_HOURS and local.weekday() in WORK_WEEKDAYS:
                slots.append((day, False))


def _linkable(conn: Conn, people: Sequence[str], as_of: datetime) -> dict[str, set[Category]]:
    """For each person consented at T to ``relationships`` (and not withdrawn since): the
    network categories they consented to as well (the same rule as the chunk's own consent)."""
    if not people:
        return {}
    consent = ledger.consented_categories_many(conn, people, as_of)
    since = ledger.categories_withdrawn_after(conn, people, as_of)
    out: dict[str, set[Category]] = {}
    for person in people:
        cats = consent.get(person, set()) - since.get(person, set())
        if Category.RELATIONSHIPS in cats:
            out[person] = cats & set(NETWORK_SIGNALS.values())
    return out


def _uncrowded(
    n_keys: int,
    key: np.ndarray,
    owner: np.ndarray,
    night: np.ndarray,
    theirs: list[tuple[int, int, int, np.ndarray, np.ndarray]],
    capped: set[int],
) -> tuple[np.ndarray, np.ndarray]:
    """Per key: whether at most MAX_HOME_PEOPLE consenting people saw it at night, and at most
    MAX_WORK_PEOPLE during working hours (the chunk's users and the others; a public key
    neither)."""
    out = []
    span = 1 << 32  # people are chunk users (-1 - owner) or others (person index)
    for flag, limit in ((True, MAX_HOME_PEOPLE), (False, MAX_WORK_PEOPLE)):
        mine = night == flag
        codes = [key[mine] * span + (span // 2 - 1 - owner[mine])]
        codes += [
            np.array([k * span + span // 2 + p], dtype=np.int64)
            for _, p, k, _, flags in theirs
            if (flags == flag).any()
        ]
        people = np.unique(np.concatenate(codes))
        count = np.bincount(people // span, minlength=n_keys)
        ok = count <= limit
        ok[list(capped)] = False
        out.append(ok)
    return out[0], out[1]
