"""The collector under bad input, real device formats, replicas, crashes and a database outage."""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import secrets
import threading
import time
from collections import Counter
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest

from collector.adapters.samples import load_samples, value_matches
from hearth.db import Conn
from tests.conftest import Broker
from tests.integration.fleet import (
    BASE_TIME,
    CollectorFactory,
    add_device,
    add_user,
    canonical_messages,
    count_rows,
    grant,
    publish_all,
    register_fleet,
    wait_until,
)

RSS_BOUND_BYTES = 150 * 2**20  # issue 3: peak RSS ≤ 150 MB per replica


def acked(collectors: list[Any]) -> float:
    return sum(c.metrics().get("hearth_collector_messages_acked_total", 0) for c in collectors)


# -- malformed input --------------------------------------------------------------------------
def malformed(tag: str, device: str, i: int) -> tuple[str, bytes, str]:
    """The i-th bad message (unique, so dead-letter digests differ) and its expected reason."""
    topic = f"hearth/v1/{device}/bad"
    ts = (BASE_TIME + _ms(i)).isoformat()
    kind = i % 7
    if kind == 0:
        return topic, f'{{"ts": "{ts}", "readings": {{"battery_pct": {i}'.encode(), "bad_json"
    if kind == 1:
        body = {"ts": ts, "readings": {"battery_pct": f"high-{i}"}}
        return topic, json.dumps(body).encode(), "schema"
    if kind == 2:
        return topic, json.dumps({"seq": i, "readings": {"battery_pct": 1}}).encode(), "schema"
    if kind == 3:
        return topic, f'{{"ts": "{ts}", "readings": {{"battery_pct": NaN}}}}'.encode(), "schema"
    if kind == 4:
        return topic, b"x" * 70_000 + str(i).encode(), "too_large"
    if kind == 5:
        return topic, b"\x00\xff\xfe" + secrets.token_bytes(64), "bad_json"
    body = {"ts": f"2099-01-01T00:00:{i % 60:02d}Z", "readings": {"battery_pct": i % 100}}
    return topic, json.dumps(body).encode(), "bad_timestamp"


def _ms(i: int) -> Any:
    from datetime import timedelta

    return timedelta(milliseconds=i)


def test_malformed_payloads_are_quarantined_and_good_ones_stored(
    db: Conn, broker: Broker, tag: str, make_collector: CollectorFactory
) -> None:
    devices = register_fleet(db, tag, 20)
    good = canonical_messages(devices, 3_000)
    bad = [malformed(tag, devices[i % len(devices)], i) for i in range(1_000)]
    stream: list[tuple[str, bytes]] = good + [(t, p) for t, p, _ in bad]
    random.Random(3).shuffle(stream)
    collector = make_collector()
    collector.start()
    pid = collector.pid
    publish_all(broker.host, broker.port, stream)
    wait_until(lambda: acked([collector]) >= len(stream), 90, "every message acknowledged")
    assert collector.alive() and collector.pid == pid and collector.starts == 1
    assert count_rows(db, "numeric_readings", tag) == 3_000
    rows = db.execute(
        "SELECT reason, count(*) FROM dead_letters WHERE topic LIKE %s GROUP BY reason",
        (f"hearth/v1/{tag}-%",),
    ).fetchall()
    assert dict((str(r), int(str(n))) for r, n in rows) == dict(Counter(r for _, _, r in bad))
    big = db.execute(
        "SELECT max(length(payload)), max(payload_bytes) FROM dead_letters WHERE topic LIKE %s",
        (f"hearth/v1/{tag}-%",),
    ).fetchone()
    assert big is not None and int(str(big[0])) <= 4096 and int(str(big[1])) > 70_000
    m = collector.metrics()
    assert (
        m['hearth_collector_dead_lettered_total{reason="too_large"}']
        == Counter(r for _, _, r in bad)["too_large"]
    )


# -- real device formats ------------------------------------------------------------------------
RAW_KEYS = {"lat", "lon", "SSID", "BSSID", "ssid", "wifi_ssid", "wifi_bssid"}


def raw_values(node: Any) -> set[str]:
    """Raw coordinates and network ids inside a sample payload (what must never be stored)."""
    found: set[str] = set()
    if isinstance(node, dict):
        for key, value in node.items():
            if key in RAW_KEYS and isinstance(value, str | float) and not isinstance(value, bool):
                found.add(str(value))
            found |= raw_values(value)
    elif isinstance(node, list):
        for value in node:
            found |= raw_values(value)
    return found


def test_documented_samples_are_stored_as_expected_readings_and_minimised(
    db: Conn, broker: Broker, tag: str, make_collector: CollectorFactory
) -> None:
    samples = load_samples()
    assert samples, "no documented samples found"
    add_user(db, f"{tag}-u")
    grant(db, f"{tag}-u")
    device_of: dict[tuple[str, str], str] = {}
    for s in samples:
        key = (s.format, s.external_id)
        if key not in device_of:
            device_of[key] = f"{tag}-s{len(device_of)}"
            add_device(db, device_of[key], f"{tag}-u", format=s.format, external_id=s.external_id)
    # Sample payloads carry their documentation's dates (years old): accept them here.
    collector = make_collector(HEARTH_MAX_EVENT_AGE_DAYS="36500", HEARTH_RETENTION_DAYS="36500")
    collector.start()
    publish_all(broker.host, broker.port, [(s.topic, s.payload) for s in samples])
    wait_until(lambda: acked([collector]) >= len(samples), 60, "every sample acknowledged")

    stored: dict[str, list[tuple[str, float | str]]] = {}
    for table in ("numeric_readings", "categorical_readings"):
        for device, signal, value in db.execute(
            f"SELECT device_id, signal, value FROM {table} WHERE device_id LIKE %s",
            (f"{tag}-%",),
        ).fetchall():
            stored.setdefault(str(device), []).append((str(signal), value))  # type: ignore[arg-type]
    expected: dict[str, list[Any]] = {}
    for s in samples:
        if s.reject is None:
            expected.setdefault(device_of[(s.format, s.external_id)], []).extend(s.expected)
    for device, wants in expected.items():
        have = list(stored.get(device, []))
        for want in wants:
            match = next(
                (h for h in have if h[0] == want.signal and value_matches(want.value, h[1])), None
            )
            assert match is not None, f"{device}: {want} not stored; have {have}"
            have.remove(match)
        assert have == [], f"{device}: unexpected rows {have}"

    for s in samples:
        if s.reject is not None:
            row = db.execute(
                "SELECT reason FROM dead_letters WHERE topic = %s AND reason = %s",
                (s.topic, s.reject),
            ).fetchone()
            assert row is not None, f"{s.name}: no {s.reject} dead letter"

    # Invariant 7: no raw coordinate, SSID or BSSID anywhere (readings and dead letters).
    secrets_ = set().union(
        *(raw_values(json.loads(s.payload)) for s in samples if _is_json(s.payload))
    )
    assert secrets_, "samples carry no raw identifiers to check for"
    dump = "\n".join(
        str(r[0])
        for table in ("numeric_readings", "categorical_readings", "dead_letters")
        for r in db.execute(f"SELECT t::text FROM {table} t")
    )
    dump += "\n".join(
        bytes(r[0]).decode("utf-8", "replace")  # type: ignore[arg-type]
        for r in db.execute("SELECT payload FROM dead_letters WHERE payload IS NOT NULL")
    )
    leaked = sorted(v for v in secrets_ if v in dump)
    assert leaked == []


def _is_json(payload: bytes) -> bool:
    try:
        json.loads(payload)
    except ValueError:
        return False
    return True


# -- replicas ------------------------------------------------------------------------------
def test_two_replicas_share_the_load_and_store_everything_once(
    db: Conn, broker: Broker, tag: str, make_collector: CollectorFactory
) -> None:
    devices = register_fleet(db, tag, 40)
    replicas = [make_collector(0), make_collector(1)]
    for c in replicas:
        c.start()
    publish_all(broker.host, broker.port, canonical_messages(devices, 10_000))
    wait_until(lambda: acked(replicas) >= 10_000, 90, "every message acknowledged")
    assert count_rows(db, "numeric_readings", tag) == 10_000
    work = [c.metrics()["hearth_collector_messages_received_total"] for c in replicas]
    assert all(w > 0 for w in work) and sum(work) == 10_000, work


# -- crashes -------------------------------------------------------------------------------
@pytest.mark.slow
def test_sigkill_every_few_seconds_loses_and_duplicates_nothing(
    db: Conn, broker: Broker, tag: str, make_collector: CollectorFactory
) -> None:
    devices = register_fleet(db, tag, 50)
    messages = canonical_messages(devices, 20_000)
    collector = make_collector()
    collector.start()
    errors: list[BaseException] = []

    def publish() -> None:
        try:
            # A slow trickle, so that kills land mid-stream.
            for start in range(0, len(messages), 1_000):
                publish_all(broker.host, broker.port, messages[start : start + 1_000])
                time.sleep(0.4)
        except BaseException as exc:
            errors.append(exc)

    publisher = threading.Thread(target=publish)
    publisher.start()
    kills = 0
    rng = random.Random(11)
    while publisher.is_alive():
        time.sleep(rng.uniform(1.5, 3.0))
        collector.kill()
        kills += 1
        collector.start()
    publisher.join()
    assert not errors, errors
    wait_until(lambda: count_rows(db, "numeric_readings", tag) >= 20_000, 120, "all rows")
    assert kills >= 3
    assert count_rows(db, "numeric_readings", tag) == 20_000  # 0 lost; the key forbids dups
    dup = db.execute(
        "SELECT count(*) FROM (SELECT device_id, signal, time FROM numeric_readings "
        "WHERE device_id LIKE %s GROUP BY 1, 2, 3 HAVING count(*) > 1) d",
        (f"{tag}-%",),
    ).fetchone()
    assert dup is not None and int(str(dup[0])) == 0


# -- database outage -----------------------------------------------------------------------
class FlakyProxy:
    """TCP proxy to PostgreSQL that can drop every connection and refuse new ones.

    The shared PostgreSQL serves other sessions too, so the outage is simulated here instead
    of stopping the server.
    """

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.down = False
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._writers: set[asyncio.StreamWriter] = set()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        self._ready.wait(10)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        server = self._loop.run_until_complete(asyncio.start_server(self._handle, "127.0.0.1", 0))
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        self._loop.run_forever()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.down:
            writer.close()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        self._writers |= {writer, up_writer}

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError, ConnectionError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        self._writers -= {writer, up_writer}

    def outage(self) -> None:
        def cut() -> None:
            self.down = True
            for w in list(self._writers):
                w.transport.abort()

        self._loop.call_soon_threadsafe(cut)

    def restore(self) -> None:
        self._loop.call_soon_threadsafe(lambda: setattr(self, "down", False))

    def close(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)


@pytest.mark.slow
def test_database_outage_loses_nothing_and_memory_stays_bounded(
    database_url: str, db: Conn, broker: Broker, tag: str, make_collector: CollectorFactory
) -> None:
    devices = register_fleet(db, tag, 50)
    parts = urlsplit(database_url)
    proxy = FlakyProxy(parts.hostname or "127.0.0.1", parts.port or 5432)
    proxied = urlunsplit(
        parts._replace(netloc=f"{parts.username}:{parts.password}@127.0.0.1:{proxy.port}")
    )
    try:
        collector = make_collector(database_url=proxied)
        collector.start()
        messages = canonical_messages(devices, 20_000)
        publisher = threading.Thread(
            target=publish_all, args=(broker.host, broker.port, messages), daemon=True
        )
        publisher.start()
        wait_until(lambda: count_rows(db, "numeric_readings", tag) >= 3_000, 60, "ingest under way")
        proxy.outage()
        peak = 0
        end = time.monotonic() + 30
        while time.monotonic() < end:
            peak = max(peak, collector.rss_bytes())
            assert collector.alive()
            time.sleep(0.2)
        stalled = count_rows(db, "numeric_readings", tag)
        proxy.restore()
        publisher.join(timeout=120)
        wait_until(lambda: count_rows(db, "numeric_readings", tag) >= 20_000, 120, "all rows")
        assert count_rows(db, "numeric_readings", tag) == 20_000
        assert stalled < 20_000, "the outage happened after the stream had ended"
        assert peak < RSS_BOUND_BYTES, f"peak RSS {peak / 2**20:.0f} MB"
        assert collector.metrics()["hearth_collector_db_errors_total"] >= 1
    finally:
        proxy.close()
