"""Fuzzing every adapter and the pipeline down to the database (issue 11 §1).

For each format, hypothesis mutates the documented samples (tests/fuzz.py) into 10,000 hostile
variants. Each one goes through the collector's pipeline, which must never raise and must give
exactly one outcome: rows, one dead letter with a reason, or nothing when the adapter says
"understood, nothing to store". Then all of them are written, 1,000 to a batch, through the
service's own commit path (the real BatchWriter, and the split that isolates rows the database
refuses) into a database of their own, and every variant is accounted for there: its rows are
stored, or its dead letter is. A planted CHECK constraint refuses one plausible value
(``POISON``), so batches mixing good and refused rows go through the split path too.

Deterministic: ``derandomize=True`` and no example database, so CI runs the same examples.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

import psycopg
import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings

from collector.adapters.base import Reason, has_unstorable_text
from collector.adapters.registry import ADAPTERS, find_adapter
from collector.adapters.samples import load_samples
from collector.minimise import Minimiser
from collector.pipeline import Batch
from collector.service import Ack, Collector
from hearth.ledger import CURRENT_NOTICE_VERSION
from hearth.settings import load_settings
from hearth.signals import Category
from tests.fuzz import POISON, hostile_messages
from tests.integration.private_db import private_database

EXAMPLES = 10_000  # per format
BATCH = 1_000
# The samples carry their documentation's dates (2021-2024): "now", for the pipeline, is just
# after them. Events up to 100 years old are accepted, and the devices were bound and consent
# granted before that, so every accepted event time is covered by both.
RECEIVED_AT = datetime(2024, 5, 2, tzinfo=UTC)
MAX_EVENT_AGE_DAYS = 36_500
SETUP_AT = datetime(1920, 1, 1, tzinfo=UTC)
FORMATS = sorted(a.format for a in ADAPTERS)
REASONS = frozenset(str(r) for r in Reason)

Key = tuple[str, str, datetime]  # (device_id, signal, time): the natural key of a reading


@pytest.fixture(scope="module")
def fuzz_database() -> Iterator[str]:
    """Every sample device registered to one user who consented to everything, in 1920."""
    with private_database() as (url, _), psycopg.connect(url, autocommit=True) as conn:
        conn.execute("INSERT INTO users (user_id, created_at) VALUES ('fz-u', %s)", (SETUP_AT,))
        pairs = sorted({(s.format, s.external_id) for s in load_samples()})
        for i, (fmt, external_id) in enumerate(pairs):
            conn.execute(
                "INSERT INTO devices (device_id, user_id, kind, format, external_id, "
                "registered_at, bound_at) VALUES (%s, 'fz-u', 'sensor', %s, %s, %s, %s)",
                (
                    external_id if fmt == "hearth" else f"fz-{i}",
                    fmt,
                    external_id,
                    SETUP_AT,
                    SETUP_AT,
                ),
            )
        with conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO consent_events (user_id, category, notice_version, action, at) "
                "VALUES ('fz-u', %s, %s, 'grant', %s)",
                [(str(c), CURRENT_NOTICE_VERSION, SETUP_AT) for c in Category],
            )
        conn.execute(
            f"ALTER TABLE numeric_readings ADD CONSTRAINT refuse_poison CHECK (value <> {POISON})"
        )
        yield url


@dataclass(frozen=True)
class Outcome:
    """What the pipeline made of one variant."""

    topic: str
    payload: bytes
    keys: tuple[Key, ...]  # rows to store
    dead_reason: str | None
    poisoned: bool  # a numeric row holds POISON: the database will refuse it


def outcomes(batch: Batch, messages: list[tuple[str, bytes]]) -> list[Outcome]:
    out = []
    start = (0, 0, 0)
    for (topic, payload), end in zip(messages, batch.ends, strict=True):
        numeric = batch.numeric[start[0] : end[0]]
        categorical = batch.categorical[start[1] : end[1]]
        dead = batch.dead_letters[start[2] : end[2]]
        keys = tuple((r[1], r[3], r[0]) for r in numeric) + tuple(
            (r[1], r[3], r[0]) for r in categorical
        )
        poisoned = any(r[4] == POISON for r in numeric)
        out.append(Outcome(topic, payload, keys, dead[0][1] if dead else None, poisoned))
        start = end
    return out


async def _load_caches(collector: Collector) -> None:
    await collector.keeper.start()
    await collector.keeper.close()


async def _write_all(collector: Collector, messages: list[tuple[str, bytes]]) -> list[Outcome]:
    await collector.writer.connect()
    done: list[Outcome] = []
    try:
        for first in range(0, len(messages), BATCH):
            chunk = messages[first : first + BATCH]
            batch = Batch()
            acks: list[Ack] = []
            for i, (topic, payload) in enumerate(chunk):
                collector.pipeline.process(topic, payload, batch, received_at=RECEIVED_AT)
                acks.append((0, i + 1, 1, topic, payload))
            done += outcomes(batch, chunk)
            await collector.commit(batch, acks)
    finally:
        await collector.writer.close()
    return done


@pytest.mark.slow  # about 10 s per format on a quiet machine; CI runs it
@pytest.mark.parametrize("fmt", FORMATS)
def test_every_hostile_variant_is_stored_or_dead_lettered(fmt: str, fuzz_database: str) -> None:
    settings = load_settings(
        database_url=fuzz_database,
        max_event_age_days=MAX_EVENT_AGE_DAYS,
        retention_days=MAX_EVENT_AGE_DAYS,
    )
    collector = Collector(settings)
    asyncio.run(_load_caches(collector))
    pipeline = collector.pipeline
    seen: list[tuple[str, bytes]] = []

    @hypothesis_settings(
        max_examples=EXAMPLES,
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(hostile_messages(load_samples(fmt)))
    def one_variant(message: tuple[str, bytes]) -> None:
        topic, payload = message
        batch = Batch()
        pipeline.process(topic, payload, batch, received_at=RECEIVED_AT)  # never raises
        [outcome] = outcomes(batch, [message])
        if outcome.dead_reason is not None:
            assert not outcome.keys
            assert outcome.dead_reason in REASONS
            _, _, detail, *_ = batch.dead_letters[0]
            assert not detail.startswith("unexpected error"), detail  # an adapter bug
            assert not has_unstorable_text(detail) and not has_unstorable_text(topic)
        elif not outcome.keys:  # only when the adapter understood it and found nothing to store
            adapter = find_adapter(topic)
            assert adapter is not None and adapter.adapt(topic, payload) == []
        seen.append(message)

    one_variant()
    assert len(seen) >= EXAMPLES

    written = asyncio.run(_write_all(collector, seen))
    with psycopg.connect(fuzz_database) as conn:
        stored: set[Key] = set()
        for table in ("numeric_readings", "categorical_readings"):
            stored |= {
                (str(d), str(s), t)
                for d, s, t in conn.execute(f"SELECT device_id, signal, time FROM {table}")
            }
        dead = {
            bytes(digest): str(reason)
            for digest, reason in conn.execute("SELECT digest, reason FROM dead_letters")
        }
    digest_of = Minimiser(
        settings.require_pseudonym_key(), settings.geohash_precision
    ).dead_letter_digest
    tally: Counter[str] = Counter()
    for o in written:
        letter = dead.get(digest_of(o.topic, o.payload))
        if o.dead_reason is not None:
            assert letter == o.dead_reason, (o, letter)
            tally["dead-lettered"] += 1
        elif o.poisoned:
            assert letter == "unstorable", (o, letter)
            tally["unstorable"] += 1
        elif o.keys:
            missing = [k for k in o.keys if k not in stored]
            assert not missing and letter is None, (o, missing, letter)
            tally["stored"] += 1
        else:
            tally["nothing to store"] += 1
    assert sum(tally.values()) == len(written)
    # A good share is proven stored in the database, and the split path was taken.
    assert tally["stored"] >= len(written) // 10, tally
    assert tally["unstorable"] >= 1, tally
    print(f"{fmt}: {dict(tally)}")
