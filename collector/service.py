"""``python -m collector run``: one collector replica (receive → batch → commit → PUBACK).

Flow of control, all on one asyncio loop:

* The MQTT link hands each message to :meth:`Collector.on_message`, which runs the pipeline at
  once and appends the result, plus (generation, mid) for the ack, to the *filling* batch.
* The batch is handed to the single writer task when it reaches the flush size or its age
  reaches ``batch_max_age_ms``. While one batch is being committed the next one fills, so the
  flush size is at most half the Receive Maximum (two batches must fit in the broker's window).
* The writer commits, then PUBACKs every message of the batch in arrival order. A failed write
  is retried with backoff *forever* without acking: the broker stops sending once Receive
  Maximum messages are unacked, so memory stays bounded and nothing is dropped.
* SIGTERM/SIGINT: stop reading, commit what is in hand, ack, disconnect, exit 0.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import time
from datetime import UTC, datetime

import psycopg

from collector.adapters.registry import topic_filters
from collector.identity import CacheKeeper
from collector.metrics import CollectorMetrics, start_http
from collector.minimise import Minimiser
from collector.mqtt import MqttLink
from collector.pipeline import Batch, Caches, Pipeline
from collector.writer import BatchWriter, WriteResult
from hearth.db import DatabaseUnavailable
from hearth.settings import Settings, get_settings

log = logging.getLogger("collector.service")

SHUTDOWN_GRACE_S = 15.0  # how long SIGTERM waits for a commit when the database is down
MAX_RETRY_BACKOFF_S = 5.0

Ack = tuple[int, int, int]  # (generation, mid, qos)


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
        self.acks.append((generation, mid, qos))
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
            await self._commit_with_retry(batch)
            self._ack(acks)
            # The next batch filled while we wrote: flush it now if it is due.
            if self.batch.messages >= self.flush_size or (
                self.batch.messages and time.monotonic() - self.batch.started >= self.max_age_s
            ):
                self._flush.set()

    async def _commit_with_retry(self, batch: Batch) -> None:
        backoff = 0.2
        while True:
            started = time.perf_counter()
            try:
                result = await self.writer.write(batch)
            except (psycopg.Error, DatabaseUnavailable, OSError) as exc:
                self.db_ok = False
                self.metrics.db_errors.inc()
                log.warning(
                    "event=batch_write_failed messages=%d error=%s retry_s=%.1f",
                    batch.messages,
                    type(exc).__name__,
                    backoff,
                )
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, MAX_RETRY_BACKOFF_S)
                continue
            self.db_ok = True
            self._record(batch, result, time.perf_counter() - started)
            return

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

    # -- lifecycle -------------------------------------------------------------------------
    def health(self) -> dict[str, object]:
        connected = self.link is not None and self.link.connected
        return {
            "ok": connected and self.db_ok,
            "mqtt_connected": connected,
            "database_ok": self.db_ok,
            "in_flight": self.in_flight,
        }

    def request_stop(self) -> None:
        log.info("event=stop_requested")
        self._stopping.set()

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        await self.keeper.start()  # DatabaseUnavailable → one line
        await self.writer.connect()
        runner = None
        if self.settings.collector_http_port:
            runner = await start_http(self.metrics, self.health, self.settings.collector_http_port)
        link = self.link = MqttLink(self.settings, topic_filters(), self.on_message)
        tasks: list[asyncio.Task[None]] = []
        try:
            await link.connect()  # ServiceUnavailable → one line
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, self.request_stop)
            tasks = [
                asyncio.create_task(self.keeper.run(), name="cache-keeper"),
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
            done, _ = await asyncio.wait({writer, stop}, return_when=asyncio.FIRST_COMPLETED)
            if writer in done:
                writer.result()  # a bug in the writer: surface it
            await self._drain(writer)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await link.disconnect()
            await self.writer.close()
            await self.keeper.close()
            if runner is not None:
                await runner.cleanup()
        log.info("event=collector_stopped")
        return 0

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


def cmd_run(args: argparse.Namespace) -> int:
    settings = get_settings()
    collector = Collector(settings)  # ConfigError (no pseudonym key) before any connection
    return asyncio.run(collector.run())
