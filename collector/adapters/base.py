"""The contract between device-format adapters and the collector pipeline.

An adapter turns one MQTT message of its format into zero or more :class:`DeviceMessage` —
canonical readings of one device at one event time — or raises :class:`Rejected` with a reason
code. Adapters are pure: no I/O, no clock, no registry. Identity (registered? bound? spoofed?),
consent, minimisation and storage happen downstream, in that order.

Adding a format is one new folder under ``collector/adapters/`` holding ``adapter.py`` (a
module-level ``ADAPTER`` object), a README, ``samples/`` and tests; ``registry.py`` lists it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Protocol


class Reason(StrEnum):
    """Dead-letter reason codes (also the ``reason`` label of the rejection counter)."""

    BAD_JSON = "bad_json"  # not UTF-8 JSON, or not an object
    SCHEMA = "schema"  # wrong types, missing fields, NaN/inf, out-of-range values
    TOO_LARGE = "too_large"  # payload over the size bound
    BAD_TIMESTAMP = "bad_timestamp"  # unparseable, out of range or too far in the future
    TOO_OLD = "too_old"  # older than HEARTH_MAX_EVENT_AGE_DAYS (raw retention): history is final
    UNKNOWN_TOPIC = "unknown_topic"  # no adapter claims the topic
    UNSUPPORTED = "unsupported"  # a known format's message type we do not store
    UNKNOWN_DEVICE = "unknown_device"  # not registered, or retired
    SPOOFED = "spoofed"  # payload/client identity disagrees with the topic's device
    NO_CONSENT = "no_consent"  # user has no active consent for the category (redacted)
    UNSTORABLE = "unstorable"  # the database refused its rows (a data error), see collector.writer
    BEFORE_CONSENT = "before_consent"  # dated before the category's consent began (redacted)
    BEFORE_BINDING = "before_binding"  # dated before the device was bound to its user (redacted)


# PostgreSQL text cannot hold NUL, and UTF-8 cannot encode a lone surrogate; Python strings can
# hold both (JSON "\u0000", bytes decoded with "surrogateescape"). Either one in a row makes its
# whole batch fail, so no such text may reach the database.
_UNSTORABLE_TEXT = re.compile("[\x00\ud800-\udfff]")


def has_unstorable_text(text: str) -> bool:
    """Whether ``text`` holds a NUL or a lone surrogate (which PostgreSQL text cannot store)."""
    return _UNSTORABLE_TEXT.search(text) is not None


def storable_text(text: str) -> str:
    """``text`` with NUL and lone surrogates escaped as ``\\x00`` / ``\\udXXX`` (for messages)."""
    if text.isascii() and "\x00" not in text:  # the common case: nothing to scan for
        return text
    return _UNSTORABLE_TEXT.sub(_escape, text)


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


class Rejected(Exception):
    """The message cannot be stored; ``reason`` is a :class:`Reason`, ``detail`` one line."""

    def __init__(self, reason: Reason, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else str(reason))
        self.reason = reason
        # Not cut here: the pipeline scrubs identifiers first, then truncates (a cut identifier
        # would escape the scrubber; collector.minimise.scrub_detail). Details quote input
        # (pydantic copies a bad key into its error text): keep them storable.
        self.detail = storable_text(detail)


@dataclass(frozen=True, slots=True)
class GeoPoint:
    """Raw coordinates. Only ever in memory: the minimise step turns them into a geohash."""

    lat: float
    lon: float


ReadingValue = float | str | GeoPoint


@dataclass(frozen=True, slots=True)
class Reading:
    """One signal value; ``signal`` is a name from :mod:`hearth.signals`."""

    signal: str
    value: ReadingValue


@dataclass(frozen=True, slots=True)
class DeviceMessage:
    """Canonical readings of one device at one instant, as the adapter understood them.

    ``event_time`` is timezone-aware when the format carries an absolute time; naive when the
    device sends local wall-clock time (Tasmota ``Time``) — the pipeline localises it with the
    device's zone after identification; ``None`` when the format has no timestamp — the pipeline
    uses the receive time and marks the stored rows ``time_received``.
    """

    format: str
    external_id: str  # the id the registry maps (format, external_id) → device
    event_time: datetime | None
    readings: tuple[Reading, ...]
    claimed_id: str | None = None  # an id inside the payload that must match the topic's device
    extras: dict[str, str] = field(default_factory=dict)


class Adapter(Protocol):
    """One device format."""

    @property
    def format(self) -> str:
        """Registry name of the format, e.g. ``owntracks``."""
        ...

    @property
    def topic_filters(self) -> tuple[str, ...]:
        """MQTT topic filters this format publishes on (the collector subscribes to them)."""
        ...

    def matches(self, topic: str) -> bool:
        """Whether this adapter owns ``topic``."""
        ...

    def adapt(self, topic: str, payload: bytes) -> list[DeviceMessage]:
        """Parse and validate one message; raise :class:`Rejected` if it cannot be stored.

        An empty list means "understood, nothing to store" (e.g. an OwnTracks ``cmd``).
        """
        ...
