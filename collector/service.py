"""``python -m collector run``: one collector replica (receive → batch → commit → PUBACK).

Flow of control, all on one asyncio loop:

* The MQTT link hands each message to :meth:`Collector.on_message`, which runs the pipeline at
  once and appends the result, plus (generation, mid) for the ack, to the *filling* batch.
* The batch is handed to the single writer task when it reaches the flush size or its age
  reaches ``batch_max_age_ms``. While one batch is being committed the next one fills, so the
  flush size is at most half the Receive Maximum (two batches must fit in the broker's window).
* The writer commits, then PUBACKs every message of the batch in arrival order. A write that
  fails for a transient reason (database down, deadlock, ...) is retried with backoff *forever*
  without acking: the broker stops sending once Receive Maximum messages are unacked, so memory
  stays bounded and nothing is dropped. A write the database refuses because of a message's rows
  (a data error) is split by message until the refused ones are found; they are dead-lettered
  ``unstorable``, the rest stored, and the whole batch acknowledged (collector.writer).
* Each ack entry keeps its message's topic and payload (references, no copy) until the batch is
  acknowledged, for that ``unstorable`` dead letter: at most Receive Maximum payloads of at most
  ``HEARTH_MAX_PAYLOAD_BYTES`` each are held.
* Fail closed on consent: if the registry/consent cache keeper dies, the collector stops reading,
  commits and acknowledges nothing more and exits 70; the broker redelivers the rest. If the
  caches have not been confirmed against the database for ``HEARTH_CONSENT_CACHE_MAX_AGE_S``
  (the LISTEN connection is down), it stops reading until they are fresh again.
* SIGTERM/SIGINT: stop reading, commit what is in hand, ack, disconnect, exit 0.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import time
from collections import Counter
from datetime import UTC, datetime

import psycopg

from collector.adapters.base import Reason
from collector.adapters.registry import topic_filters
from collector.identity import CacheKeeper
from collector.metrics import CollectorMetrics, start_http
from collector.minimise import Minimiser
from collector.mqtt import MqttLink
from collector.pipeline import Batch, Caches, Pipeline
from collector.sessions import run_replica
from collector.writer import BatchWriter, WriteResult, classify, describe_write_error, sub_batch
from hearth.db import DatabaseUnavailable
from hearth.settings import Settings, get_settings

log = logging.getLogger("collector.service")

SHUTDOWN_GRACE_S = 15.0  # how long SIGTERM waits for a commit when the database is down
MAX_RETRY_BACKOFF_S = 5.0
CACHE_CHECK_S = 0.5  # how often the consent cache's age is compared with its bound
EXIT_TASK_DIED = 70  # sysexits EX_SOFTWARE: a task the collector cannot run without has died

# (generation, mid, qos, topic, payload): what the PUBACK needs, and what an ``unstorable``
# dead letter needs should the database refuse the message's rows.
Ack = tuple[int, int, int, str, bytes]


def flush_size(settings: Settings) -> int:
    """Messages per batch: the configured size, but two batches must fit in the window."""
    return max(1, min(settings.batch_max_messages, settings.mqtt_receive_maximum // 2))


class Collector:
    """State of one replica; :meth:`run` returns when a stop was requested and drained."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.metrics = CollectorMetrics()
        self.caches = Caches()
        self.pipeline = Pipeline(
            settings,
            Minimiser(settings.require_pseudonym_key(), settings.geohash_precision),
            self.caches,
        )
        self.flush_size = flush_size(settings)
        self.max_age_s = settings.batch_max_age_ms / 1000
        # Memory bound: at most Receive Maximum unacknowledged messages in hand (see throttle).
        self.max_in_flight = settings.mqtt_receive_maximum
        self.keeper = CacheKeeper(settings.database_url, self.caches)
        self.max_cache_age_s = settings.consent_cache_max_age_s
        self.cache_stale = False
        self.metrics.consent_cache_age.set_function(self.cache_age_s)
        self.writer = BatchWriter(settings.database_url)
        self.link: MqttLink | None = None
        self.batch = Batch()
        self.acks: list[Ack] = []
        self.in_flight = 0
        self.db_ok = True
        self._flush = asyncio.Event()
        self._stopping = asyncio.Event()
        self._age_timer: asyncio.TimerHandle | None = None

    # -- receive side (hot path) -----------------------------------------------------------
    def on_message(self, topic: str, payload: bytes, generation: int, mid: int, qos: int) -> None:
        batch = self.batch
        if batch.messages == 0:
            batch.started = time.monotonic()
            loop = asyncio.get_running_loop()
            self._age_timer = loop.call_later(self.max_age_s, self._flush.set)
        self.pipeline.process(topic, payload, batch)
        self.acks.append((generation, mid, qos, topic, payload))
        self.in_flight += 1
        if batch.messages >= self.flush_size:
            self._flush.set()
        if self.in_flight >= self.max_in_flight and self.link is not None:
            self.link.throttle(True)

    def _take_batch(self) -> tuple[Batch, list[Ack]]:
        batch, acks = self.batch, self.acks
        self.batch, self.acks = Batch(), []
        if self._age_timer is not None:
            self._age_timer.cancel()
            self._age_timer = None
        return batch, acks

    # -- write side ------------------------------------------------------------------------
    async def writer_loop(self) -> None:
        while True:
            await self._flush.wait()
            self._flush.clear()
            if self.batch.messages == 0:
                continue
            batch, acks = self._take_batch()
            log.debug("event=flush messages=%d in_flight=%d", batch.messages, self.in_flight)
            await self.commit(batch, acks)
            self._ack(acks)
            # The next batch filled while we wrote: flush it now if it is due.
            if self.batch.messages >= self.flush_size or (
                self.batch.messages and time.monotonic() - self.batch.started >= self.max_age_s
            ):
                self._flush.set()

    async def commit(self, batch: Batch, acks: list[Ack]) -> None:
        """Write ``batch`` until every message is stored or dead-lettered (never gives up).

        The whole batch is tried first. A data error splits the part that failed in halves
        (a stack of message ranges, lower half first) until single refused messages remain;
        those become ``unstorable`` dead letters. Parts already committed stay committed, which
        is safe because every write is idempotent. Any other error retries the same part.
        """
        started = time.perf_counter()
        total = WriteResult()
        refused: list[tuple[int, str]] = []  # (message index, error description)
        pending = [(0, batch.messages)]
        while pending:
            lo, hi = pending[-1]
            part = batch if hi - lo == batch.messages else sub_batch(batch, lo, hi)
            try:
                result = await self._write_retrying(part)
            except _DataError as err:
                pending.pop()
                if hi - lo == 1:
                    refused.append((lo, err.detail))
                else:
                    mid = (lo + hi) // 2
                    pending += [(mid, hi), (lo, mid)]
                continue
            pending.pop()
            total.add(result)
        if refused:
            total.add(
                await self._write_retrying(self._unstorable(batch, acks, refused), split=False)
            )
        self._record(batch, total, time.perf_counter() - started)

    async def _write_retrying(self, part: Batch, *, split: bool = True) -> WriteResult:
        """Commit ``part``, retrying forever unless the rows themselves are refused."""
        backoff = 0.2
        while True:
            try:
                result = await self.writer.write(part)
            except (psycopg.Error, DatabaseUnavailable, OSError, UnicodeError) as exc:
                self.metrics.db_errors.inc()
                kind = classify(exc)
                if kind == "data" and split:
                    log.warning(
                        "event=batch_refused messages=%d error=%s note=splitting_by_message",
                        part.messages,
                        describe_write_error(exc),
                    )
                    raise _DataError(describe_write_error(exc)) from None
                self.db_ok = False
                log.log(
                    logging.WARNING if kind == "transient" else logging.ERROR,
                    "event=batch_write_failed messages=%d kind=%s error=%s retry_s=%.1f",
                    part.messages,
                    kind,
                    describe_write_error(exc),
                    backoff,
                )
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, MAX_RETRY_BACKOFF_S)
                continue
            self.db_ok = True
            return result

    def _unstorable(self, batch: Batch, acks: list[Ack], refused: list[tuple[int, str]]) -> Batch:
        """Dead letters for the refused messages; ``batch``'s reason counts are moved to them."""
        dead = Batch()
        for index, detail in refused:
            _gen, _mid, _qos, topic, payload = acks[index]
            before = batch.ends[index - 1][2] if index else 0
            if batch.ends[index][2] > before:  # it was a dead letter already: now it is this one
                batch.dead_by_reason[batch.dead_letters[before][1]] -= 1
            self.pipeline.quarantine(dead, topic, payload, Reason.UNSTORABLE, detail)
            log.warning(
                "event=message_unstorable topic_len=%d payload_bytes=%d error=%s",
                len(topic),
                len(payload),
                detail,
            )
        batch.dead_by_reason.update(dead.dead_by_reason)
        batch.dead_by_reason += Counter()  # drop reasons whose count went to zero
        return dead

    def _record(self, batch: Batch, result: WriteResult, seconds: float) -> None:
        m = self.metrics
        m.received.inc(batch.messages)
        m.batch_size.observe(batch.messages)
        m.commit_seconds.observe(seconds)
        for table, n in result.inserted.items():
            if table != "dead_letters":
                m.stored.labels(table).inc(n)
        for table, n in result.duplicates.items():
            m.duplicates.labels(table).inc(n)
        for table, n in result.refused.items():
            m.refused_at_commit.labels(table).inc(n)
        for reason, n in batch.dead_by_reason.items():
            m.dead_lettered.labels(reason).inc(n)
        for category, n in batch.dropped_by_category.items():
            m.dropped_no_consent.labels(category).inc(n)
        if batch.latest_event is not None:
            m.lag.set((datetime.now(UTC) - batch.latest_event).total_seconds())

    def _ack(self, acks: list[Ack]) -> None:
        link = self.link
        acked = link.ack(acks) if link is not None else 0  # arrival order
        self.in_flight -= len(acks)
        if link is not None and self.in_flight < self.max_in_flight:
            link.throttle(False)
        self.metrics.acked.inc(acked)
        self.metrics.in_flight.set(self.in_flight)

    # -- consent cache supervision ---------------------------------------------------------
    def cache_age_s(self) -> float:
        """Seconds since the registry/consent caches were last known to match the database."""
        return time.monotonic() - self.keeper.synced_at

    async def watch_cache(self) -> None:
        """Stop reading while the caches are older than their bound; read again once fresh.

        Messages already in hand were checked against caches at most the bound (plus one check
        interval) old, and are committed; nothing new is processed on older ones.
        """
        while True:
            age = self.cache_age_s()
            stale = age > self.max_cache_age_s
            if stale != self.cache_stale:
                self.cache_stale = stale
                if stale:
                    log.warning(
                        "event=consent_cache_stale age_s=%.1f bound_s=%d note=stopped_reading",
                        age,
                        self.max_cache_age_s,
                    )
                else:
                    log.info("event=consent_cache_fresh note=reading_again")
                if self.link is not None:
                    self.link.hold(stale)
            await asyncio.sleep(CACHE_CHECK_S)

    # -- lifecycle -------------------------------------------------------------------------
    def make_link(self) -> MqttLink:
        """The broker session (``collector sessions drain`` uses one that does not subscribe)."""
        return MqttLink(
            self.settings,
            topic_filters(),
            self.on_message,
            on_connect=self.metrics.mqtt_connects.inc,
        )

    def health(self) -> dict[str, object]:
        connected = self.link is not None and self.link.connected
        return {
            "ok": connected and self.db_ok and not self.cache_stale,
            "mqtt_connected": connected,
            "database_ok": self.db_ok,
            "consent_cache_fresh": not self.cache_stale,
            "consent_cache_age_s": round(self.cache_age_s(), 1),
            "in_flight": self.in_flight,
        }

    def request_stop(self) -> None:
        log.info("event=stop_requested")
        self._stopping.set()

    async def run(self) -> int:
        """Run until a stop is requested (exit code 0) or a task the collector needs dies (70)."""
        loop = asyncio.get_running_loop()
        await self.keeper.start()  # DatabaseUnavailable → one line
        await self.writer.connect()
        runner = None
        if self.settings.collector_http_port:
            runner = await start_http(self.metrics, self.health, self.settings.collector_http_port)
        link = self.link = self.make_link()
        tasks: list[asyncio.Task[None]] = []
        code = 0
        try:
            await link.connect()  # Unavailable → one line
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, self.request_stop)
            # Each of these runs forever; if one ends, the collector cannot go on safely.
            tasks = [
                asyncio.create_task(self.keeper.run(), name="cache-keeper"),
                asyncio.create_task(self.watch_cache(), name="cache-watch"),
                asyncio.create_task(link.supervise(), name="mqtt-supervisor"),
            ]
            writer = asyncio.create_task(self.writer_loop(), name="batch-writer")
            log.info(
                "event=collector_started client_id=%s group=%s flush_size=%d max_age_ms=%d",
                self.settings.mqtt_client_id,
                self.settings.mqtt_share_group,
                self.flush_size,
                self.settings.batch_max_age_ms,
            )
            stop = asyncio.create_task(self._stopping.wait())
            done, _ = await asyncio.wait(
                {writer, stop, *tasks}, return_when=asyncio.FIRST_COMPLETED
            )
            if writer in done:
                writer.result()  # a bug in the writer: surface it
            died = [t for t in tasks if t in done]
            if died:
                code = await self._fail_closed(died[0], writer)
            else:
                await self._drain(writer)
            stop.cancel()
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await link.disconnect()
            await self.writer.close()
            await self.keeper.close()
            if runner is not None:
                await runner.cleanup()
        log.info("event=collector_stopped code=%d", code)
        return code

    async def _fail_closed(self, died: asyncio.Task[None], writer: asyncio.Task[None]) -> int:
        """A needed task ended: stop reading, abandon the batches in hand unacknowledged."""
        exc = None if died.cancelled() else died.exception()
        log.error(
            "event=task_died task=%s error=%s note=stopped_without_acking in_flight=%d",
            died.get_name(),
            type(exc).__name__ if exc is not None else "returned",
            self.in_flight,
            exc_info=exc,
        )
        assert self.link is not None
        self.link.pause()
        writer.cancel()  # an open transaction rolls back; the broker redelivers what was unacked
        await asyncio.gather(writer, return_exceptions=True)
        return EXIT_TASK_DIED

    async def _drain(self, writer: asyncio.Task[None]) -> None:
        """Stop reading, let the writer finish the batch in hand and the filling one."""
        assert self.link is not None
        self.link.pause()
        deadline = time.monotonic() + SHUTDOWN_GRACE_S
        while (self.batch.messages or self.in_flight) and time.monotonic() < deadline:
            self._flush.set()
            await asyncio.sleep(0.02)
        writer.cancel()
        await asyncio.gather(writer, return_exceptions=True)
        if self.in_flight:
            log.warning(
                "event=shutdown_unacked messages=%d note=broker_redelivers_them", self.in_flight
            )


class _DataError(Exception):
    """A part of a batch was refused because of its rows (see collector.writer.classify)."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


def cmd_run(args: argparse.Namespace) -> int:
    settings = get_settings()
    collector = Collector(settings)  # ConfigError (no pseudonym key) before any connection
    return asyncio.run(run_replica(collector))  # with its heartbeat (collector/sessions.py)
