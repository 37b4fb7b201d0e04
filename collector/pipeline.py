"""The ingest pipeline for one MQTT message, in one direction and without I/O.

size check → adapt → check readings → identify → event time → binding and consent gate →
minimise → batch.

A message is atomic: either all of its rows go into the batch, or it becomes exactly one dead
letter with a reason code. Nothing here touches the network or the database, so the hot path is
plain Python that unit tests can drive directly; the registry and consent caches are read from
:class:`Caches`, which the service swaps wholesale when LISTEN/NOTIFY says they changed.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from paho.mqtt.client import topic_matches_sub

from collector.adapters.base import DeviceMessage, Reading, Reason, Rejected
from collector.adapters.registry import find_adapter
from collector.minimise import Minimiser, scrub_detail, scrub_payload
from collector.validate import check_readings, resolve_event_time
from hearth.formats import FORMATS, device_topics
from hearth.ledger import ConsentSince, DeviceRecord
from hearth.settings import Settings
from hearth.signals import SIGNALS

log = logging.getLogger(__name__)

# (time, device_id, user_id, signal, value, time_received) — the column order of the staging
# tables in collector.writer.
NumericRow = tuple[datetime, str, str, str, float, bool]
CategoricalRow = tuple[datetime, str, str, str, str, bool]
# (topic or "" when redacted, reason, detail, payload or None when redacted, payload_bytes,
#  keyed digest, device_id or None when no live device publishes on the topic)
DeadLetterRow = tuple[str, str, str, bytes | None, int, bytes, str | None]


@dataclass(slots=True)
class Caches:
    """Registry and consent snapshots; replaced as a whole on reload, never mutated."""

    devices: dict[tuple[str, str], DeviceRecord] = field(default_factory=dict)
    # (user, category) consented now → since when: a reading is stored only if its category
    # is consented now and its event time is not earlier (hearth.ledger.consent_since).
    consents: ConsentSince = field(default_factory=dict)
    # consent_epoch when ``consents`` was loaded; -1: unknown (the commit then checks each row).
    consent_epoch: int = -1


@dataclass(slots=True)
class Batch:
    """Everything a group of messages turns into, committed in one transaction."""

    numeric: list[NumericRow] = field(default_factory=list)
    categorical: list[CategoricalRow] = field(default_factory=list)
    dead_letters: list[DeadLetterRow] = field(default_factory=list)
    messages: int = 0
    # After each message, in arrival order: (len(numeric), len(categorical), len(dead_letters)).
    # Message boundaries let the writer split a batch the database refuses (collector.writer).
    ends: list[tuple[int, int, int]] = field(default_factory=list)
    dead_by_reason: Counter[str] = field(default_factory=Counter)
    dropped_by_category: Counter[str] = field(default_factory=Counter)
    latest_event: datetime | None = None
    started: float = field(default_factory=time.monotonic)
    # The consent epoch its first message was checked at (the oldest: epochs only grow).
    consent_epoch: int | None = None

    def __len__(self) -> int:
        return self.messages


def device_for_topic(
    devices: dict[tuple[str, str], DeviceRecord], topic: str
) -> DeviceRecord | None:
    """The live device allowed to publish on ``topic`` (its :func:`hearth.formats.device_topics`,
    which the broker ACL grants), or None. Dead letters carry its id, so erasure and withdrawal
    find them by device, even those rejected before the payload named a device (bad_json)."""
    levels = topic.split("/")
    for fmt in FORMATS:  # external ids are one or two topic levels, in the first three
        for start in range(min(3, len(levels))):
            for end in (start + 1, start + 2):
                device = devices.get((fmt, "/".join(levels[start:end])))
                if device is not None and any(
                    topic_matches_sub(f, topic)
                    for f in device_topics(fmt, device.external_id, device.device_id)
                ):
                    return device
    return None


# Refusals for consent or binding keep no payload: it is data the user did not consent to.
_REDACTED = frozenset({Reason.NO_CONSENT, Reason.BEFORE_CONSENT, Reason.BEFORE_BINDING})


def _consented(
    readings: Sequence[Reading],
    user: str,
    when: datetime,
    consents: ConsentSince,
    dropped: list[str],
) -> tuple[list[Reading], bool]:
    """The readings whose category the user consents to now and did at ``when``; the
    categories of the others go to ``dropped``. Also whether one was refused only for
    predating its consent."""
    kept: list[Reading] = []
    early = False
    for r in readings:
        category = SIGNALS[r.signal].category
        since = consents.get((user, category))
        if since is not None and when >= since:
            kept.append(r)
        else:
            dropped.append(category)
            early = early or since is not None
    return kept, early


class Pipeline:
    """Turns (topic, payload) into rows or a dead letter, appended to a :class:`Batch`."""

    def __init__(self, settings: Settings, minimiser: Minimiser, caches: Caches) -> None:
        self.caches = caches
        self._minimiser = minimiser
        self._max_payload = settings.max_payload_bytes
        self._dead_payload_bytes = settings.dead_letter_payload_bytes
        self._max_skew_s = settings.max_clock_skew_s
        self._max_age_days = settings.max_event_age_days

    def process(
        self, topic: str, payload: bytes, batch: Batch, received_at: datetime | None = None
    ) -> None:
        batch.messages += 1
        if batch.consent_epoch is None:
            batch.consent_epoch = self.caches.consent_epoch
        if received_at is None:
            received_at = datetime.now(UTC)
        try:
            self._process(topic, payload, batch, received_at)
        except Rejected as rej:
            redact = rej.reason in _REDACTED
            self._dead_letter(batch, topic, payload, rej.reason, rej.detail, redact=redact)
        except Exception as exc:  # an adapter bug must quarantine one message, not kill us
            log.exception("event=pipeline_error topic_len=%d error=%s", len(topic), type(exc))
            self._dead_letter(
                batch, topic, payload, Reason.SCHEMA, f"unexpected error: {type(exc).__name__}"
            )
        batch.ends.append((len(batch.numeric), len(batch.categorical), len(batch.dead_letters)))

    def quarantine(
        self, batch: Batch, topic: str, payload: bytes, reason: Reason, detail: str
    ) -> None:
        """Add a message to ``batch`` as a dead letter only (the writer's ``unstorable``)."""
        batch.messages += 1
        self._dead_letter(batch, topic, payload, reason, detail)
        batch.ends.append((len(batch.numeric), len(batch.categorical), len(batch.dead_letters)))

    def _process(self, topic: str, payload: bytes, batch: Batch, received_at: datetime) -> None:
        size = len(payload)
        if size > self._max_payload:
            raise Rejected(Reason.TOO_LARGE, f"{size} bytes > {self._max_payload}")
        adapter = find_adapter(topic)
        if adapter is None:
            raise Rejected(Reason.UNKNOWN_TOPIC, "no adapter claims this topic")
        messages = adapter.adapt(topic, payload)
        devices = self.caches.devices
        consents = self.caches.consents
        numeric: list[NumericRow] = []
        categorical: list[CategoricalRow] = []
        dropped: list[str] = []
        early = False  # a reading was refused for predating its (current) consent
        latest: datetime | None = None
        for msg in messages:
            check_readings(msg)
            device = self._identify(devices, msg)
            when, time_received = resolve_event_time(
                msg.event_time,
                received_at=received_at,
                tz=device.tz,
                max_skew_s=self._max_skew_s,
                max_age_days=self._max_age_days,
            )
            if device.bound_at is not None and when < device.bound_at:
                # Dated before this device was bound to its user: possibly another owner's.
                raise Rejected(Reason.BEFORE_BINDING)
            user = device.user_id
            readings, refused_early = _consented(msg.readings, user, when, consents, dropped)
            early = early or refused_early
            if not readings:
                continue
            dev = device.device_id
            for stored in self._minimiser.minimise(readings):
                if stored.kind == "numeric":
                    numeric.append(
                        (when, dev, user, stored.signal, float(stored.value), time_received)
                    )
                else:
                    categorical.append(
                        (when, dev, user, stored.signal, str(stored.value), time_received)
                    )
            if latest is None or when > latest:
                latest = when
        if dropped:
            batch.dropped_by_category.update(dropped)
            if not numeric and not categorical:
                # Redacted: a user who did not consent must not have the content kept anywhere.
                reason = Reason.BEFORE_CONSENT if early else Reason.NO_CONSENT
                self._dead_letter(batch, topic, payload, reason, "", redact=True)
                return
        batch.numeric.extend(numeric)
        batch.categorical.extend(categorical)
        if latest is not None and (batch.latest_event is None or latest > batch.latest_event):
            batch.latest_event = latest

    @staticmethod
    def _identify(devices: dict[tuple[str, str], DeviceRecord], msg: DeviceMessage) -> DeviceRecord:
        device = devices.get((msg.format, msg.external_id))
        if device is None:
            raise Rejected(Reason.UNKNOWN_DEVICE, f"no live {msg.format} device with this id")
        claimed = msg.claimed_id
        if claimed is not None and claimed not in (device.external_id, device.device_id):
            raise Rejected(Reason.SPOOFED, "payload device id differs from the topic's device")
        return device

    def _dead_letter(
        self,
        batch: Batch,
        topic: str,
        payload: bytes,
        reason: Reason,
        detail: str,
        *,
        redact: bool = False,
    ) -> None:
        device = device_for_topic(self.caches.devices, topic)
        device_id = device.device_id if device is not None else None
        digest = self._minimiser.dead_letter_digest(topic, payload)
        row: DeadLetterRow
        if redact:  # no content at all: the keyed digest, the size and the device id
            row = ("", str(reason), "", None, len(payload), digest, device_id)
        else:  # scrubbed first, then cut to size (collector.minimise)
            kept = scrub_payload(payload, self._dead_payload_bytes)
            row = (topic, str(reason), scrub_detail(detail), kept, len(payload), digest, device_id)
        batch.dead_letters.append(row)
        batch.dead_by_reason[str(reason)] += 1
