"""``python -m collector sessions drain --client-id ID``: empty a retired replica's session.

Scale-down is "stop the replica, drain its session". The drain resumes the replica's broker
session and runs it through the ordinary :class:`~collector.service.Collector` (same pipeline,
same writer, PUBACK only after commit), then ends it:

1. CONNECT as ``ID`` with clean start off (MQTT 5). CONNACK's *session present* flag says
   whether the broker still holds the session; without one there is nothing queued, and the
   empty session this CONNECT created is ended at once.
2. Do not subscribe; UNSUBSCRIBE the group's shared subscriptions instead and wait for the
   UNSUBACK. From then on the broker routes no new message to this session, while the messages
   it had queued for it are still delivered (Mosquitto keeps the queue across UNSUBSCRIBE).
3. Store and acknowledge them as a replica would. The broker sends the next queued messages as
   soon as PUBACKs free its window (Receive Maximum), so the queue is empty when everything
   received is committed and acknowledged and no message arrived for ``--idle`` seconds
   (Mosquitto 2.0 reports no per-client queue length, so an idle period is the only signal).
4. DISCONNECT with Session Expiry Interval 0: the broker deletes the session, its
   subscriptions and (empty) queue; the group's traffic now goes only to live replicas.

Nothing is lost on any failure: without step 4 the session stays as it was (minus what was
stored and acknowledged) and the drain can simply be run again.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from collector.adapters.registry import topic_filters
from collector.mqtt import MqttLink
from collector.service import Collector
from hearth.errors import Unavailable
from hearth.settings import Settings

log = logging.getLogger(__name__)

DEFAULT_IDLE_S = 3.0
_NO_SUBSCRIPTION = 17  # UNSUBACK reason 0x11 "No subscription existed"


@dataclass
class DrainReport:
    client_id: str
    share_group: str
    session_present: bool = False
    unsubscribed: int = 0
    messages: int = 0
    acked: int = 0
    rows_stored: dict[str, int] = field(default_factory=dict)
    ended: bool = False
    elapsed_s: float = 0.0

    def to_json(self) -> dict[str, object]:
        return {
            "client_id": self.client_id,
            "share_group": self.share_group,
            "session_present": self.session_present,
            "unsubscribed": self.unsubscribed,
            "messages": self.messages,
            "acked": self.acked,
            "rows_stored": self.rows_stored,
            "session_ended": self.ended,
            "elapsed_s": round(self.elapsed_s, 3),
        }


class _DrainLink(MqttLink):
    """The resumed session: never subscribes; its final DISCONNECT may end the session."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, subscribe=False, **kwargs)
        self.end_when_clean = False
        self.clean: Callable[[], bool] = lambda: False  # set by the drainer: nothing unacked
        self.ended = False

    async def disconnect(self, timeout_s: float = 5.0, *, end_session: bool = False) -> None:
        # Collector.run disconnects last, after its shutdown drain; end the session only when
        # the drain decided the queue is empty and every received message was acknowledged.
        end = end_session or (self.end_when_clean and bool(self.clean()))
        await super().disconnect(timeout_s, end_session=end)
        self.ended = end and self._sock is None


class Drainer(Collector):
    """A collector for one retired session: no registry heartbeat, no HTTP port."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self.last_message = time.monotonic()
        self.messages = 0

    def make_link(self) -> MqttLink:
        link = _DrainLink(self.settings, topic_filters(), self.on_message)
        link.clean = lambda: self.in_flight == 0 and self.batch.messages == 0
        return link

    def on_message(self, topic: str, payload: bytes, generation: int, mid: int, qos: int) -> None:
        self.last_message = time.monotonic()
        self.messages += 1
        super().on_message(topic, payload, generation, mid, qos)


async def drain_session(
    settings: Settings, client_id: str, share_group: str, *, idle_s: float = DEFAULT_IDLE_S
) -> DrainReport:
    """Store everything queued for ``client_id``'s session, then end the session."""
    started = time.monotonic()
    drainer = Drainer(
        settings.model_copy(
            update={
                "mqtt_client_id": client_id,
                "mqtt_share_group": share_group,
                "collector_http_port": 0,  # a replica on this host may hold the port
            }
        )
    )
    report = DrainReport(client_id, share_group)
    runner = asyncio.create_task(drainer.run(), name="drain-collector")
    watcher = asyncio.create_task(_watch(drainer, report, idle_s), name="drain-watcher")
    try:
        done, _ = await asyncio.wait({runner, watcher}, return_when=asyncio.FIRST_COMPLETED)
        if watcher in done and watcher.exception() is not None:
            drainer.request_stop()  # e.g. no UNSUBACK: stop cleanly, keep the session
            await asyncio.gather(runner, return_exceptions=True)
            watcher.result()
        await runner  # Unavailable / DatabaseUnavailable at start → one line
    finally:
        for task in (runner, watcher):
            task.cancel()
        await asyncio.gather(runner, watcher, return_exceptions=True)
    link = drainer.link
    report.ended = isinstance(link, _DrainLink) and link.ended
    report.messages = drainer.messages
    registry = drainer.metrics.registry
    report.acked = int(registry.get_sample_value("hearth_collector_messages_acked_total") or 0)
    for table in ("numeric_readings", "categorical_readings"):
        n = registry.get_sample_value("hearth_collector_rows_stored_total", {"table": table})
        report.rows_stored[table] = int(n or 0)
    report.elapsed_s = time.monotonic() - started
    if not link_decided(link):
        # The collector stopped before the queue was found empty: SIGINT/SIGTERM.
        print(
            f"drain of {client_id!r} interrupted after {report.acked} message(s); "
            "its session keeps the rest: run the drain again",
            file=sys.stderr,
        )
        raise KeyboardInterrupt
    if not report.ended:
        raise Unavailable(
            f"session {client_id!r} was not ended: {report.messages - report.acked} message(s) "
            "not acknowledged (database down?); it keeps its queue — run the drain again"
        )
    return report


def link_decided(link: MqttLink | None) -> bool:
    """Did the drain decide the queue was empty (rather than being stopped by a signal)?"""
    return isinstance(link, _DrainLink) and link.end_when_clean


async def _watch(drainer: Drainer, report: DrainReport, idle_s: float) -> None:
    """Decide when the session's queue is empty (module docstring, steps 1-3), then stop."""
    unsubscribed_at: float | None = None
    while True:
        await asyncio.sleep(0.05)
        link = drainer.link
        if not isinstance(link, _DrainLink) or not link.connected:
            continue  # connecting, or reconnecting after a lost connection
        if unsubscribed_at is None:
            report.session_present = link.session_present
            if not link.session_present:
                log.info("event=drain_no_session client_id=%s", report.client_id)
                break
            reasons = await link.unsubscribe()
            unsubscribed_at = time.monotonic()
            report.unsubscribed = sum(1 for r in reasons if not r.is_failure)
            if all(r.value == _NO_SUBSCRIPTION for r in reasons):
                log.warning(
                    "event=drain_no_subscriptions client_id=%s group=%s note=the_session_"
                    "has_none_in_this_group_so_it_was_taking_no_traffic_of_it",
                    report.client_id,
                    report.share_group,
                )
            continue
        quiet_since = max(drainer.last_message, unsubscribed_at)
        if (
            drainer.in_flight == 0
            and drainer.batch.messages == 0
            and time.monotonic() - quiet_since >= idle_s
        ):
            break
    log.info("event=drain_queue_empty client_id=%s messages=%d", report.client_id, drainer.messages)
    link.end_when_clean = True
    drainer.request_stop()
