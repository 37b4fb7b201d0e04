"""Sample messages of every format, used as test vectors (adapter tests, end-to-end tests).

Each ``collector/adapters/<fmt>/samples/*.json`` file is one message::

    {"description": "...", "source": "doc URL or 'Hearth'", "topic": "...",
     "payload": <JSON value, or a string for a plain-text payload such as an LWT>,
     "format": "<fmt>", "external_id": "...",
     "expected": [{"signal": "...", "value": ...}, ...],      # readings as STORED
     "event_time": "ISO 8601" | null,                          # optional: adapter's event time
     "reject": "<reason>"}                                     # optional: expected dead letter

``expected`` lists the readings after minimisation (geohash at precision 7; ``"<hashed>"``
stands for "a 32-hex-char keyed hash, not the raw value"), flattened across the messages the
adapter returns. An empty list means "understood, nothing to store".
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Final

HASHED: Final = "<hashed>"
_HASH_RE: Final = re.compile(r"[0-9a-f]{32}")
SAMPLES_ROOT: Final = Path(__file__).resolve().parent
_NO_EVENT_TIME_CHECK: Final = object()


@dataclass(frozen=True, slots=True)
class ExpectedReading:
    signal: str
    value: float | str  # number, string, or HASHED


@dataclass(frozen=True, slots=True)
class Sample:
    name: str  # "<fmt>/<file stem>", unique
    path: Path
    description: str
    source: str
    topic: str
    payload: bytes  # exactly what a device would publish
    format: str
    external_id: str
    expected: tuple[ExpectedReading, ...]
    checks_event_time: bool  # whether the file states the adapter's event time
    event_time: datetime | None  # naive for local wall-clock formats (Tasmota)
    reject: str | None  # a Reason value when the message must be dead-lettered


def _payload_bytes(payload: Any) -> bytes:
    if isinstance(payload, str):
        return payload.encode("utf-8")
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def _load(path: Path) -> Sample:
    data = json.loads(path.read_text(encoding="utf-8"))
    expected = tuple(
        ExpectedReading(str(item["signal"]), item["value"]) for item in data["expected"]
    )
    raw_time = data.get("event_time", _NO_EVENT_TIME_CHECK)
    return Sample(
        name=f"{path.parent.parent.name}/{path.stem}",
        path=path,
        description=str(data["description"]),
        source=str(data["source"]),
        topic=str(data["topic"]),
        payload=_payload_bytes(data["payload"]),
        format=str(data["format"]),
        external_id=str(data["external_id"]),
        expected=expected,
        checks_event_time=raw_time is not _NO_EVENT_TIME_CHECK,
        event_time=datetime.fromisoformat(raw_time) if isinstance(raw_time, str) else None,
        reject=data.get("reject"),
    )


def load_samples(fmt: str | None = None) -> list[Sample]:
    """All samples (or one format's), sorted by name."""
    pattern = f"{fmt}/samples/*.json" if fmt else "*/samples/*.json"
    return [_load(p) for p in sorted(SAMPLES_ROOT.glob(pattern))]


def value_matches(expected: float | str, actual: float | str) -> bool:
    """Whether a stored value is what a sample expects (numbers to 1e-9 relative)."""
    if expected == HASHED:
        return isinstance(actual, str) and _HASH_RE.fullmatch(actual) is not None
    if isinstance(expected, str) or isinstance(actual, str):
        return expected == actual
    return math.isclose(float(expected), float(actual), rel_tol=1e-9, abs_tol=1e-12)


def mismatches(sample: Sample, stored: Sequence[tuple[str, float | str]]) -> list[str]:
    """Differences between ``sample.expected`` and stored ``(signal, value)`` pairs, in order."""
    problems = []
    if len(stored) != len(sample.expected):
        problems.append(f"expected {len(sample.expected)} readings, got {len(stored)}")
    for want, (signal, value) in zip(sample.expected, stored, strict=False):
        if want.signal != signal or not value_matches(want.value, value):
            problems.append(f"expected {want.signal}={want.value!r}, got {signal}={value!r}")
    return problems
