"""Test support: run a sample through adapt → check_readings → minimise, as the collector does.

Lives beside the adapters (not under tests/) so each adapter's own test file can use it.
"""

from __future__ import annotations

from collector.adapters.base import DeviceMessage, Reason, Rejected
from collector.adapters.registry import find_adapter
from collector.adapters.samples import Sample, mismatches
from collector.minimise import Minimiser, StoredReading
from collector.validate import check_readings

TEST_KEY = b"adapter-tests-pseudonym-key"


def run_pipeline(
    topic: str, payload: bytes, minimiser: Minimiser | None = None
) -> tuple[list[DeviceMessage], list[StoredReading]]:
    """The pure part of the collector pipeline; raises :class:`Rejected` like it would."""
    adapter = find_adapter(topic)
    if adapter is None:
        raise Rejected(Reason.UNKNOWN_TOPIC, topic)
    minimiser = minimiser or Minimiser(TEST_KEY)
    messages = adapter.adapt(topic, payload)
    stored: list[StoredReading] = []
    for msg in messages:
        check_readings(msg)
        stored.extend(minimiser.minimise(msg.readings))
    return messages, stored


def check_sample(sample: Sample) -> None:
    """Assert that ``sample`` gives exactly what it says (readings, identity, time, reason)."""
    if sample.reject is not None:
        try:
            run_pipeline(sample.topic, sample.payload)
        except Rejected as exc:
            assert exc.reason == sample.reject, f"{sample.name}: {exc}"
            return
        raise AssertionError(f"{sample.name}: expected rejection {sample.reject}")
    messages, stored = run_pipeline(sample.topic, sample.payload)
    for msg in messages:
        assert msg.format == sample.format, sample.name
        assert msg.external_id == sample.external_id, sample.name
        if sample.checks_event_time:
            assert msg.event_time == sample.event_time, (sample.name, msg.event_time)
            if msg.event_time is not None and sample.event_time is not None:
                assert (msg.event_time.tzinfo is None) == (sample.event_time.tzinfo is None)
    problems = mismatches(sample, [(r.signal, r.value) for r in stored])
    assert not problems, f"{sample.name}: {problems}"
