"""The operator console's tests: a seeded fleet, and every number a page should show computed
straight from the base tables — never through the console's own queries or summary tables —
so a page's number and the database's can be compared (issue 19: "every number on a page
comes from one query, which a test checks against the database directly").

Keys are the pages' ``data-k`` names (features/service/console/render.py).
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser
from typing import Any

import numpy as np

from features.book import score_log
from features.book.score_log import LogRow
from features.catalogue import DEFINITIONS, FEATURE_SET_VERSION, sync_definitions
from features.report.stats import psi
from features.service.console.render import exact, key_part
from hearth import admin
from hearth.db import Conn
from hearth.ledger import CURRENT_NOTICE_VERSION
from hearth.signals import SIGNALS, Category
from tests.support.builders import insert_categorical, insert_numeric
from tests.support.service import seed_snapshot

Numbers = dict[str, object]
# A stored snapshot's cells as JSON ({name: {"value", "coverage"[, "reason"]}}): the one place
# these expectations read how feature_snapshots stores a vector.
VECTOR_SQL = "hearth_snapshot_vector(feature_set_version, vals, covs, withheld)"
RELATIVE_TO_NOW = ("seen_ago_s", "rollup_behind_s", "summary_behind_s")  # move while we look


# --- reading numbers off a page --------------------------------------------------------------


class _NumberParser(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.found: dict[str, str] = {}
        self.duplicates: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if "data-k" in a:
            k = str(a["data-k"])
            if k in self.found:
                self.duplicates.append(k)
            self.found[k] = a.get("data-v") or ""


def html_numbers(html: str) -> dict[str, str]:
    """``data-k`` → ``data-v`` of every number in a page (each key once)."""
    parser = _NumberParser()
    parser.feed(html)
    assert not parser.duplicates, f"keys shown twice: {parser.duplicates[:5]}"
    return parser.found


def compare(
    shown: Mapping[str, str], expected: Numbers, *, zero_prefixes: Iterable[str] = ()
) -> None:
    """Every number shown is expected, with the expected value; every expected number is
    shown. Chart bars of value 0 are not drawn: a key under ``zero_prefixes`` may be absent
    when its expected value is 0."""
    zero_prefixes = tuple(zero_prefixes)
    problems = []
    for k, v in sorted(shown.items()):
        if k not in expected:
            problems.append(f"unexpected {k}={v!r}")
            continue
        if not _same(k, v, expected[k]):
            problems.append(f"{k}: page {v!r} != database {exact(expected[k])!r}")
    for k, v in sorted(expected.items()):
        if k in shown:
            continue
        if k.startswith(zero_prefixes) and (v == 0 or v is None):
            continue
        problems.append(f"missing {k} (database {exact(v)!r})")
    assert not problems, "\n".join(problems[:40]) + f"\n({len(problems)} problems)"


def _same(key: str, shown: str, expected: object) -> bool:
    if expected is None:
        return shown == ""
    if isinstance(expected, datetime):
        return shown != "" and datetime.fromisoformat(shown) == expected
    if isinstance(expected, bool | int) and not key.endswith(RELATIVE_TO_NOW):
        return shown == str(int(expected))
    if shown == "":
        return False
    value = float(shown)
    target = float(expected)  # type: ignore[arg-type]
    if key.endswith(RELATIVE_TO_NOW):
        return abs(value - target) < 120
    return math.isclose(value, target, rel_tol=1e-9, abs_tol=1e-9)


# --- the seeded fleet ------------------------------------------------------------------------


@dataclass
class Seeded:
    now: datetime
    alice: str = "con-alice"
    bob: str = "con-bob"
    carol: str = "con-carol"
    dave: str = "con-dave"  # erased
    devices: dict[str, str] = field(default_factory=dict)  # role → device id
    population: list[str] = field(default_factory=list)
    latest_as_of: datetime | None = None
    reference_as_of: datetime | None = None


def _register(conn: Conn, user: str, kind: str, fmt: str, external: str) -> str:
    creds = admin.register_device(conn, user_id=user, kind=kind, format=fmt, external_id=external)
    # Bound long ago: the seeded history predates the registration.
    conn.execute(
        "UPDATE devices SET bound_at = %s WHERE device_id = %s",
        (datetime(2020, 1, 1, tzinfo=UTC), creds.device_id),
    )
    return creds.device_id


def _vector(i: int, shifted: bool) -> dict[str, dict[str, object]]:
    """A deterministic vector: some features missing, every third shifted on the later date."""
    out: dict[str, dict[str, object]] = {}
    for j, d in enumerate(DEFINITIONS):
        if (i + j) % 6 == 0:
            out[d.name] = {"value": None, "coverage": 0.0}
            continue
        value = float((i * 7 + j * 3) % 11)
        if shifted and j % 3 == 0:
            value += 5.0 + (i % 4)
        out[d.name] = {"value": value, "coverage": round(0.5 + ((i + j) % 5) / 10, 2)}
    return out


def seed(conn: Conn) -> Seeded:
    """Registry, consent (grants, an older notice, a withdrawal), readings with chosen event
    and ingest times, snapshots on two dates, an erased user, refused readings and collector
    registry rows. Readings of the phone come from the collector (the test publishes them)."""
    now = datetime.now(UTC).replace(second=0, microsecond=0)
    s = Seeded(now=now)
    long_ago = now - timedelta(days=40)
    admin.add_user(conn, s.alice, "Europe/Berlin")
    for c in Category:
        admin.grant_consent(conn, user_id=s.alice, category=c, at=long_ago)
    admin.add_user(conn, s.bob, "UTC")
    admin.grant_consent(conn, user_id=s.bob, category=Category.ENERGY, at=long_ago)
    admin.grant_consent(
        conn, user_id=s.bob, category=Category.CLIMATE, notice_version="2025-01", at=long_ago
    )
    admin.add_user(conn, s.carol, "Asia/Shanghai")
    for c in (Category.PRESENCE, Category.CONNECTIVITY):
        admin.grant_consent(conn, user_id=s.carol, category=c, at=now - timedelta(days=5))
    admin.add_user(conn, s.dave, "UTC")
    for c in Category:
        admin.grant_consent(conn, user_id=s.dave, category=c, at=now - timedelta(days=10))

    d = s.devices
    d["phone"] = _register(conn, s.alice, "phone", "owntracks", f"{s.alice}/phone")
    d["plug"] = _register(conn, s.alice, "plug", "tasmota", "alice-plug")
    d["old_router"] = _register(conn, s.alice, "router", "hearth", "alice-router")
    d["bob_plug"] = _register(conn, s.bob, "plug", "hearth", "bob-plug")
    d["door"] = _register(conn, s.carol, "contact", "zigbee2mqtt", "carol-door")
    d["carol_router"] = _register(conn, s.carol, "router", "hearth", "carol-router")
    d["dave_plug"] = _register(conn, s.dave, "plug", "hearth", "dave-plug")

    def ingest(k: int) -> datetime:  # spread over the last 50 minutes
        return now - timedelta(minutes=50) + timedelta(seconds=(k * 37) % 2700)

    numeric = []
    # alice's plug: every minute for an hour, ending 5 hours ago → silent.
    for k in range(60):
        t = now - timedelta(hours=6) + timedelta(minutes=k)
        numeric.append((t, d["plug"], s.alice, "power_w", float(k % 9) * 10, ingest(k)))
    # alice's old router: every 5 minutes for a day, 2 days ago; retired since.
    for k in range(288):
        t = now - timedelta(days=3) + timedelta(minutes=5 * k)
        numeric.append((t, d["old_router"], s.alice, "online", 1.0, now - timedelta(hours=3)))
    # carol's door: every 30 minutes for 2 days up to 10 minutes ago → reporting.
    for k in range(96):
        t = now - timedelta(minutes=10) - timedelta(minutes=30 * k)
        numeric.append((t, d["door"], s.carol, "contact_open", float(k % 2), ingest(k + 60)))
    # carol's router: one reading → too few to know its interval.
    numeric.append((now - timedelta(hours=3), d["carol_router"], s.carol, "online", 1.0, ingest(7)))
    # dave's plug, erased below.
    for k in range(30):
        t = now - timedelta(hours=2) + timedelta(minutes=k)
        numeric.append((t, d["dave_plug"], s.dave, "power_w", 5.0, ingest(k)))
    insert_numeric(conn, numeric)
    insert_categorical(
        conn,
        [
            (
                now - timedelta(hours=5, minutes=30),
                d["plug"],
                s.alice,
                "net_type",
                "wifi",
                ingest(3),
            ),
        ],
    )

    # Snapshots: 30 population users and alice, bob and carol, on two dates.
    sync_definitions(conn)
    latest = now.replace(hour=0, minute=0)
    reference = latest - timedelta(days=28)
    s.latest_as_of, s.reference_as_of = latest, reference
    for i in range(30):
        s.population.append(f"pop-{i:03d}")
        admin.add_user(conn, s.population[-1], "UTC")
    for i, user in enumerate([*s.population, s.alice, s.bob, s.carol, s.dave]):
        for as_of, shifted in ((reference, False), (latest, True)):
            seed_snapshot(conn, user, as_of, FEATURE_SET_VERSION, _vector(i, shifted))
    seed_snapshot(conn, s.population[0], reference, "fs-old000000", {})  # another feature set

    # Scores in the log (the book, migration 0075): alice scored twice, dave once (erased below).
    score_log.append(
        conn,
        [
            LogRow(user, latest, "model-1", FEATURE_SET_VERSION, points, probability,
                   [{"feature": DEFINITIONS[0].name, "text": "why", "points": -7}],
                   "cli:test", channel)
            for user, points, probability, channel in (
                (s.alice, 612, 0.0375, "batch"), (s.alice, 640, 0.021, "online"),
                (s.dave, 580, 0.08, "batch"),
            )
        ],
    )  # fmt: skip

    # Consent changes that purge: bob withdraws energy; dave is erased; alice's router retires.
    admin.withdraw_consent(conn, user_id=s.bob, category=Category.ENERGY)
    admin.erase_user(conn, s.dave)
    admin.retire_device(conn, d["old_router"])

    # Refused readings: today, 3 days ago, and 10 days ago (out of the 7-day window).
    today = now.date()
    conn.execute(
        "INSERT INTO dropped_readings_daily (day, category, readings) VALUES "
        "(%s, 'usage', 5), (%s, 'climate', 3), (%s, 'energy', 9), (%s, 'usage', 2)",
        (today, today - timedelta(days=3), today - timedelta(days=10), today - timedelta(days=1)),
    )
    # Replicas that stopped heartbeating an hour ago, and one drained.
    conn.execute(
        "INSERT INTO collector_sessions (client_id, share_group, host, pid, session_expiry_s, "
        "started_at, last_seen, stopped_at, drained_at) VALUES "
        "('old-replica', 'hearth', 'host-a', 4242, 604800, %s, %s, NULL, NULL), "
        "('gone-replica', 'hearth', 'host-b', 4343, 604800, %s, %s, %s, %s)",
        (
            now - timedelta(days=2),
            now - timedelta(hours=1),
            now - timedelta(days=3),
            now - timedelta(days=2),
            now - timedelta(days=2),
            now - timedelta(days=1),
        ),
    )
    return s


# --- what each page should show --------------------------------------------------------------

_RAW = """
SELECT device_id, user_id, signal, time, ingested_at FROM numeric_readings
 UNION ALL
SELECT device_id, user_id, signal, time, ingested_at FROM categorical_readings
"""


def _raw(conn: Conn) -> list[tuple[str, str, str, datetime, datetime]]:
    return [(str(a), str(b), str(c), t, i) for a, b, c, t, i in conn.execute(_RAW).fetchall()]  # type: ignore[misc]


def _watermark(conn: Conn) -> tuple[datetime | None, datetime | None]:
    row = conn.execute(
        "SELECT watermark, refreshed_at FROM console_summary_watermarks WHERE name = 'console'"
    ).fetchone()
    return (row[0], row[1]) if row else (None, None)  # type: ignore[return-value]


def _now(conn: Conn) -> datetime:
    row = conn.execute("SELECT now()").fetchone()
    assert row is not None
    return row[0]  # type: ignore[no-any-return]


def _device_activity(conn: Conn) -> dict[str, tuple[datetime, float | None]]:
    """Per device: its latest reading and its usual interval (the smallest over its signals of
    the mean gap between readings in the 7 days up to the signal's latest)."""
    times: dict[tuple[str, str], list[datetime]] = defaultdict(list)
    for device, _, signal, t, _ in _raw(conn):
        times[(device, signal)].append(t)
    out: dict[str, tuple[datetime, float | None]] = {}
    for (device, _), ts in times.items():
        last = max(ts)
        window = [t for t in ts if t >= last - timedelta(days=7)]
        usual = (
            (last - min(window)).total_seconds() / (len(window) - 1) if len(window) > 1 else None
        )
        prev = out.get(device)
        if prev is None:
            out[device] = (last, usual)
        else:
            best = [u for u in (prev[1], usual) if u is not None]
            out[device] = (max(prev[0], last), min(best) if best else None)
    return out


def fleet(conn: Conn) -> Numbers:
    watermark, refreshed = _watermark(conn)
    assert watermark is not None
    activity = _device_activity(conn)
    devices = conn.execute(
        "SELECT device_id, user_id, format, kind, registered_at, retired_at FROM devices"
    ).fetchall()
    out: Numbers = {"summary.watermark": watermark, "summary.refreshed_at": refreshed}
    groups: dict[tuple[str, str], Counter[str]] = defaultdict(Counter)
    last_seen: dict[tuple[str, str], datetime | None] = {}
    ages: Counter[str] = Counter()
    for device_id, _, fmt, kind, registered_at, retired_at in devices:
        seen, usual = activity.get(str(device_id), (None, None))
        if retired_at is not None:
            status = "retired"
        elif seen is None:
            status = "never"
        elif usual is None:
            status = "few"
        elif (watermark - seen).total_seconds() > 3 * usual:
            status = "silent"
        else:
            status = "reporting"
        for g in ((key_part(fmt), key_part(kind)), (key_part(fmt), "all"), ("all", "all")):
            groups[g][status] += 1
            groups[g]["live"] += status != "retired"
            if seen is not None and (last_seen.get(g) is None or seen > last_seen[g]):  # type: ignore[operator]
                last_seen[g] = seen
            last_seen.setdefault(g, None)
        p = f"fleet.{'silent' if status == 'silent' else 'retired'}.{key_part(device_id)}."
        if status == "silent":
            assert seen is not None and usual is not None
            silent_s = (watermark - seen).total_seconds()
            out.update({p + "last_seen": seen, p + "usual_s": usual, p + "silent_s": silent_s})
            out[p + "intervals"] = silent_s / usual
        if status == "retired":
            out.update(
                {
                    p + "registered_at": registered_at,
                    p + "retired_at": retired_at,
                    p + "last_seen": seen,
                }
            )
        if status != "retired" and seen is not None:
            age = (watermark - seen).total_seconds()
            bucket = (
                "lt1h" if age < 3600 else "1h_6h" if age < 6 * 3600 else "6h_24h"
                if age < 86400 else "1d_7d" if age < 7 * 86400 else "gt7d"
            )  # fmt: skip
            ages[bucket] += 1
    for (f, k), counts in groups.items():
        p = f"fleet.groups.{f}.{k}."
        for col in ("live", "reporting", "silent", "few", "never", "retired"):
            out[p + col] = counts[col]
        out[p + "last_seen"] = last_seen[(f, k)]
    for bucket in ("lt1h", "1h_6h", "6h_24h", "1d_7d", "gt7d"):
        out[f"fleet.ages.{bucket}.devices"] = ages[bucket]
    return out


def _minutes(conn: Conn, start: datetime, end: datetime) -> dict[datetime, tuple[int, int]]:
    rows: dict[datetime, int] = Counter()
    messages: dict[datetime, set[tuple[str, datetime]]] = defaultdict(set)
    for device, _, _, t, ingested in _raw(conn):
        if start <= ingested < end:
            minute = ingested.replace(second=0, microsecond=0)
            rows[minute] += 1
            messages[minute].add((device, t))
    return {m: (rows[m], len(messages[m])) for m in rows}


def ingest(conn: Conn, stale_after_s: float) -> Numbers:
    watermark, refreshed = _watermark(conn)
    assert watermark is not None
    now = _now(conn)
    out: Numbers = {"summary.watermark": watermark, "summary.refreshed_at": refreshed}
    hour = _minutes(conn, watermark - timedelta(hours=1), watermark)
    day = _minutes(conn, watermark - timedelta(days=1), watermark)
    r1, m1 = sum(v[0] for v in hour.values()), sum(v[1] for v in hour.values())
    r24, m24 = sum(v[0] for v in day.values()), sum(v[1] for v in day.values())
    p = "ingest.rates."
    out.update(
        {
            p + "rows_1h": r1, p + "messages_1h": m1, p + "rows_24h": r24, p + "messages_24h": m24,
            p + "rows_per_s_1h": r1 / 3600, p + "messages_per_s_1h": m1 / 3600,
            p + "rows_per_s_24h": r24 / 86400, p + "messages_per_s_24h": m24 / 86400,
            p + "peak_rows_per_s_1h": max((v[0] for v in hour.values()), default=0) / 60,
        }
    )  # fmt: skip
    for minute, (rows, messages) in hour.items():
        k = minute.strftime("%Y-%m-%dT%H:%M")
        out[f"ingest.minute.{k}.rows"] = rows
        out[f"ingest.minute.{k}.messages"] = messages
    hours: dict[datetime, list[int]] = defaultdict(lambda: [0, 0])
    for minute, (rows, messages) in day.items():
        h = minute.replace(minute=0)
        hours[h][0] += rows
        hours[h][1] += messages
    for h, (rows, messages) in hours.items():
        k = h.strftime("%Y-%m-%dT%H:%M")
        out[f"ingest.hour.{k}.rows"] = rows
        out[f"ingest.hour.{k}.messages"] = messages
    # Lag of the latest minute with rows before the watermark.
    lags: dict[datetime, list[float]] = defaultdict(list)
    for _, _, _, t, ingested in _raw(conn):
        if ingested < watermark:
            lags[ingested.replace(second=0, microsecond=0)].append((ingested - t).total_seconds())
    p = "ingest.lag."
    if lags:
        last = max(lags)
        out[p + "minute"] = last
        out[p + "lag_p50_s"] = float(np.percentile(lags[last], 50))
        out[p + "lag_p95_s"] = float(np.percentile(lags[last], 95))
    rollup = conn.execute(
        "SELECT watermark FROM rollup_watermarks WHERE name = 'hourly'"
    ).fetchone()
    out[p + "rollup_watermark"] = rollup[0] if rollup else None
    out[p + "rollup_behind_s"] = (now - rollup[0]).total_seconds() if rollup else None  # type: ignore[operator]
    out[p + "summary_behind_s"] = (now - watermark).total_seconds()
    for client, pid, started, seen in conn.execute(
        "SELECT client_id, pid, started_at, last_seen FROM collector_sessions"
    ).fetchall():
        q = f"ingest.replicas.{key_part(client)}."
        out.update({q + "pid": pid, q + "started_at": started, q + "last_seen": seen})
        out[q + "seen_ago_s"] = (now - seen).total_seconds()  # type: ignore[operator]
    dead = conn.execute(
        "SELECT id, reason, received_at, payload_bytes FROM dead_letters"
    ).fetchall()
    totals: dict[str, Counter[str]] = defaultdict(Counter)
    latest: dict[str, datetime] = {}
    this_hour = now.replace(minute=0, second=0, microsecond=0)
    for _, reason, received, _ in dead:
        for g in (key_part(reason), "all"):
            totals[g]["held"] += 1
            totals[g]["last_1h"] += received >= now - timedelta(hours=1)
            totals[g]["last_24h"] += received >= now - timedelta(days=1)
            latest[g] = max(latest.get(g, received), received)
        if received >= this_hour - timedelta(hours=23):
            k = received.replace(minute=0, second=0, microsecond=0).strftime("%Y-%m-%dT%H:%M")
            key = f"ingest.dead_hour.{k}.{key_part(reason)}"
            out[key] = int(out.get(key, 0)) + 1  # type: ignore[call-overload]
    for g, counts in totals.items():
        q = f"ingest.dead.{g}."
        out.update({q + c: counts[c] for c in ("last_1h", "last_24h", "held")})
        out[q + "latest"] = latest[g]
    by_reason: dict[str, list[tuple[datetime, int, int]]] = defaultdict(list)
    for dead_id, reason, received, size in dead:
        by_reason[reason].append((received, dead_id, size))
    for samples in by_reason.values():
        for received, dead_id, size in sorted(samples, reverse=True)[:3]:
            out[f"ingest.sample.{dead_id}.received_at"] = received
            out[f"ingest.sample.{dead_id}.payload_bytes"] = size
    today = now.astimezone(UTC).date()
    refused: dict[str, Counter[str]] = defaultdict(Counter)
    for day_, category, readings in conn.execute(
        "SELECT day, category, readings FROM dropped_readings_daily"
    ).fetchall():
        if day_ > today - timedelta(days=7):  # type: ignore[operator]
            for g in (key_part(category), "all"):
                refused[g]["last_7d"] += readings  # type: ignore[assignment]
                refused[g]["today"] += readings if day_ == today else 0  # type: ignore[assignment]
    for g, counts in refused.items():
        out[f"ingest.refused.{g}.today"] = counts["today"]
        out[f"ingest.refused.{g}.last_7d"] = counts["last_7d"]
    return out


def _latest_events(conn: Conn) -> dict[tuple[str, str], tuple[str, str]]:
    """(user, category) → (action, notice) of the latest credit-scoring event, replayed."""
    latest: dict[tuple[str, str], tuple[str, str]] = {}
    for user, category, action, notice in conn.execute(
        "SELECT user_id, category, action, notice_version FROM consent_events "
        "WHERE purpose = 'credit_scoring' ORDER BY at, event_id"
    ).fetchall():
        latest[(str(user), str(category))] = (str(action), str(notice))
    return latest


def consent(conn: Conn) -> Numbers:
    now = _now(conn)
    out: Numbers = {}
    users = [str(r[0]) for r in conn.execute("SELECT user_id FROM users").fetchall()]
    latest = _latest_events(conn)
    breadth: Counter[int] = Counter()
    for user in users:
        breadth[
            sum(latest.get((user, c.value)) == ("grant", CURRENT_NOTICE_VERSION) for c in Category)
        ] += 1
    for n, count in breadth.items():
        out[f"consent.breadth.{n}.users"] = count
    for c in Category:
        states = [latest.get((u, c.value)) for u in users]
        p = f"consent.states.{c.value}."
        out[p + "granted"] = sum(s == ("grant", CURRENT_NOTICE_VERSION) for s in states)
        out[p + "old_notice"] = sum(
            s is not None and s[0] == "grant" and s[1] != CURRENT_NOTICE_VERSION for s in states
        )
        out[p + "withdrawn"] = sum(s is not None and s[0] == "withdraw" for s in states)
        out[p + "never"] = sum(s is None for s in states)
    events = conn.execute(
        "SELECT category, action, at FROM consent_events WHERE purpose = 'credit_scoring'"
    ).fetchall()
    activity: dict[str, Counter[str]] = {
        g: Counter() for g in [c.value for c in Category] + ["all"]
    }
    per_day: dict[datetime, Counter[str]] = defaultdict(Counter)
    first_day = now.replace(hour=0, minute=0, second=0, microsecond=0) - timedelta(days=29)
    for category, action, at in events:
        plural = "grants" if action == "grant" else "withdrawals"
        for g in (str(category), "all"):
            activity[g][plural] += 1
            activity[g][plural + "_24h"] += at >= now - timedelta(days=1)
            activity[g][plural + "_30d"] += at >= now - timedelta(days=30)
        if first_day <= at <= now:
            per_day[at.replace(hour=0, minute=0, second=0, microsecond=0)][plural] += 1
    for g, counts in activity.items():
        for col in ("grants", "withdrawals"):
            for suffix in ("", "_24h", "_30d"):
                out[f"consent.activity.{key_part(g)}.{col}{suffix}"] = counts[col + suffix]
    for day, counts in per_day.items():
        for col in ("grants", "withdrawals"):
            out[f"consent.day.{day.strftime('%Y-%m-%dT%H:%M')}.{col}"] = counts[col]
    audit = conn.execute(
        "SELECT id, at, action, details FROM audit_log "
        "WHERE action IN ('purge_category', 'erase_user') ORDER BY at DESC, id DESC"
    ).fetchall()
    totals: dict[tuple[str, str], Counter[str]] = defaultdict(Counter)
    for i, (audit_id, at, action, details) in enumerate(audit):
        counts = details.get("counts", {})  # type: ignore[union-attr]
        deleted = sum(int(v) for v in counts.values())
        status = details.get("status", "unknown")  # type: ignore[union-attr]
        totals[(str(action), str(status))]["records"] += 1
        totals[(str(action), str(status))]["rows_deleted"] += deleted
        if i < 50:
            p = f"consent.purges.{audit_id}."
            out.update({p + "at": at, p + "rows_deleted": deleted})
            out[p + "rows_left"] = sum(int(v) for v in details.get("left", {}).values())  # type: ignore[union-attr]
            for table, n in counts.items():
                if n:
                    out[p + "counts." + key_part(table)] = int(n)
    for (action, status), counts in totals.items():
        p = f"consent.purge_totals.{key_part(action)}.{key_part(status)}."
        out[p + "records"] = counts["records"]
        out[p + "rows_deleted"] = counts["rows_deleted"]
    return out


def _snapshots(conn: Conn, as_of: datetime) -> list[dict[str, dict[str, Any]]]:
    return [
        r[0]  # type: ignore[misc]
        for r in conn.execute(
            f"SELECT {VECTOR_SQL} FROM feature_snapshots "
            "WHERE feature_set_version = %s AND as_of = %s",
            (FEATURE_SET_VERSION, as_of),
        ).fetchall()
    ]


def features(conn: Conn, reference: datetime) -> Numbers:
    out: Numbers = {}
    dates = conn.execute(
        "SELECT as_of, count(*), max(computed_at) FROM feature_snapshots "
        "WHERE feature_set_version = %s GROUP BY 1 ORDER BY 1 DESC",
        (FEATURE_SET_VERSION,),
    ).fetchall()
    for as_of, users, computed in dates:
        p = f"features.dates.{key_part(exact(as_of))}."
        out[p + "users"] = users
        out[p + "computed_at"] = computed
    for version, n in conn.execute(
        "SELECT feature_set_version, count(*) FROM feature_snapshots "
        "WHERE feature_set_version <> %s GROUP BY 1",
        (FEATURE_SET_VERSION,),
    ).fetchall():
        out[f"features.other_versions.{key_part(version)}.snapshots"] = n
    latest = dates[0][0]
    out["features.latest"] = latest
    out["features.psi_latest"] = latest
    out["features.reference"] = reference
    family = {str(name): str(fam) for name, fam in conn.execute(
        "SELECT name, family FROM feature_definitions WHERE feature_set_version = %s",
        (FEATURE_SET_VERSION,),
    ).fetchall()}  # fmt: skip
    cells: dict[str, list[tuple[bool, float]]] = defaultdict(list)
    for vector in _snapshots(conn, latest):
        for name, c in vector.items():
            cells[name].append((c["value"] is not None, float(c["coverage"])))
    groups: dict[str, list[tuple[bool, float]]] = defaultdict(list)
    features_in: dict[str, set[str]] = defaultdict(set)
    for name, cs in cells.items():
        fam = family.get(name, "(unknown)")
        p = f"features.feature.{key_part(name)}."
        out[p + "non_null_share"] = sum(v for v, _ in cs) / len(cs)
        out[p + "mean_coverage"] = sum(c for _, c in cs) / len(cs)
        for g in (f"family.{key_part(fam)}", "all"):
            groups[g].extend(cs)
            features_in[g].add(name)
    for g, cs in groups.items():
        p = f"features.{g}."
        non_null = sum(v for v, _ in cs)
        out.update(
            {p + "cells": len(cs), p + "non_null": non_null, p + "features": len(features_in[g])}
        )
        out[p + "non_null_share"] = non_null / len(cs)
        out[p + "mean_coverage"] = sum(c for _, c in cs) / len(cs)
        if g != "all":
            out[f"features.family_chart.{g.removeprefix('family.')}"] = non_null / len(cs)
    ref = defaultdict(list)
    now_values = defaultdict(list)
    for target, as_of in ((ref, reference), (now_values, latest)):
        for vector in _snapshots(conn, as_of):
            for name, c in vector.items():
                target[name].append(math.nan if c["value"] is None else float(c["value"]))
    bands: Counter[str] = Counter()
    for name in now_values:
        result = psi(ref[name], now_values[name])
        bands[result.status] += 1
        p = f"features.psi.{key_part(name)}."
        out[p + "psi"] = result.psi
        out[p + "reference_users"] = len(ref[name])
        out[p + "latest_users"] = len(now_values[name])
        out[p + "reference_non_null"] = sum(not math.isnan(v) for v in ref[name])
        out[p + "latest_non_null"] = sum(not math.isnan(v) for v in now_values[name])
    for band in ("stable", "watch", "shifted"):
        out[f"features.psi_bands.{band}"] = bands[band]
    return out


_CATEGORY = {s.name: s.category.value for s in SIGNALS.values()}


def person(conn: Conn, user_id: str) -> Numbers:
    out: Numbers = {}
    row = conn.execute("SELECT created_at FROM users WHERE user_id = %s", (user_id,)).fetchone()
    assert row is not None
    out["person.user.created_at"] = row[0]
    raw = [r for r in _raw(conn) if r[1] == user_id]
    signals: dict[str, set[str]] = defaultdict(set)
    last: dict[str, datetime] = {}
    for device, _, signal, t, _ in raw:
        signals[device].add(signal)
        last[device] = max(last.get(device, t), t)
    for device, registered, bound, retired in conn.execute(
        "SELECT device_id, registered_at, bound_at, retired_at FROM devices WHERE user_id = %s",
        (user_id,),
    ).fetchall():
        p = f"person.devices.{key_part(device)}."
        out.update(
            {p + "registered_at": registered, p + "bound_at": bound, p + "retired_at": retired}
        )
        out[p + "last_seen"] = last.get(str(device))
        out[p + "signals"] = len(signals[str(device)])
    states = {
        str(c): (at, since)
        for c, at, since in conn.execute(
            "SELECT category, at, since FROM consent_state WHERE user_id = %s", (user_id,)
        ).fetchall()
    }
    history = conn.execute(
        "SELECT event_id, at, category FROM consent_events WHERE user_id = %s", (user_id,)
    ).fetchall()
    latest_at: dict[str, datetime] = {}
    for event_id, at, category in history:
        out[f"person.history.{event_id}.at"] = at
        latest_at[str(category)] = max(latest_at.get(str(category), at), at)
    out["person.history.count"] = len(history)
    for c in Category:
        p = f"person.consent_now.{c.value}."
        out[p + "at"] = latest_at.get(c.value)
        out[p + "since"] = states.get(c.value, (None, None))[1]
    exported = admin.export_user(conn, user_id)
    held = {**exported["tables"], "dead_letters": exported["dead_letters"]}  # type: ignore[dict-item]
    by_category: Counter[tuple[str, str]] = Counter()
    for table, table_rows in held.items():  # type: ignore[attr-defined]
        if table_rows:
            out[f"person.tables.{key_part(table)}.rows"] = len(table_rows)
        for row in table_rows:
            if "signal" in row and "user_id" in row:  # data of a category
                category = _CATEGORY[str(row["signal"])]
                for c in (category, "all"):
                    for t in (key_part(table), "all"):
                        by_category[(c, t)] += 1
    for (c, t), n in by_category.items():
        out[f"person.rows.{c}.{t}"] = n
    snapshot = conn.execute(
        f"SELECT as_of, computed_at, {VECTOR_SQL} FROM feature_snapshots WHERE user_id = %s "
        "AND feature_set_version = %s ORDER BY as_of DESC LIMIT 1",
        (user_id, FEATURE_SET_VERSION),
    ).fetchone()
    if snapshot is not None:
        as_of, computed, vector = snapshot
        out["person.vector.as_of"] = as_of
        out["person.vector.computed_at"] = computed
        out["person.vector.features"] = len(vector)  # type: ignore[arg-type]
        out["person.vector.non_null"] = sum(c["value"] is not None for c in vector.values())  # type: ignore[union-attr]
        out["person.vector.mean_coverage"] = sum(
            float(c["coverage"])
            for c in vector.values()  # type: ignore[union-attr]
        ) / len(vector)  # type: ignore[arg-type]
        for name, c in vector.items():  # type: ignore[union-attr]
            value = c["value"]  # JSONB gives 7 for the float64 7.0
            out[f"person.vector.{key_part(name)}.value"] = None if value is None else float(value)
            out[f"person.vector.{key_part(name)}.coverage"] = float(c["coverage"])
    scored = conn.execute(
        "SELECT scored_at, points, probability FROM score_log WHERE user_id = %s "
        "ORDER BY scored_at DESC",
        (user_id,),
    ).fetchall()
    for i, (scored_at, points, probability) in enumerate(scored, start=1):
        out[f"person.scores.{i}.scored_at"] = scored_at
        out[f"person.scores.{i}.score"] = points
        out[f"person.scores.{i}.probability"] = probability
    for audit_id, at, details in conn.execute(
        "SELECT id, at, details FROM audit_log WHERE subject_ref = %s",
        (admin.audit_subject(user_id),),
    ).fetchall():
        out[f"person.audit.{audit_id}.at"] = at
        out[f"person.audit.{audit_id}.rows_deleted"] = sum(
            int(v)
            for v in details.get("counts", {}).values()  # type: ignore[union-attr]
        )
    return out
