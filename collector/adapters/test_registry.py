"""Registry and samples: every format is registered, dispatch is right, samples are complete."""

from __future__ import annotations

from pathlib import Path

import pytest

from collector.adapters.registry import ADAPTERS, find_adapter, topic_filters
from collector.adapters.samples import HASHED, load_samples, value_matches
from hearth.formats import FORMATS, device_topics

HERE = Path(__file__).parent


def test_formats_are_unique_and_each_has_a_folder() -> None:
    formats = [a.format for a in ADAPTERS]
    assert len(formats) == len(set(formats))
    for fmt in formats:
        folder = HERE / fmt
        assert (folder / "adapter.py").is_file()
        assert (folder / "README.md").is_file()
        assert (folder / f"test_{fmt}.py").is_file()
        assert list((folder / "samples").glob("*.json")), fmt


def test_every_format_the_registry_accepts_has_an_adapter() -> None:
    # A device registered in a format without an adapter would publish into the void.
    assert set(FORMATS) == {a.format for a in ADAPTERS}


def _filter_matches(topic_filter: str, topic: str) -> bool:
    """MQTT topic-filter matching (``+`` one level, ``#`` the rest)."""
    want, have = topic_filter.split("/"), topic.split("/")
    for i, level in enumerate(want):
        if level == "#":
            return True
        if i >= len(have) or level not in ("+", have[i]):
            return False
    return len(want) == len(have)


def test_the_broker_grants_every_sample_topic_and_only_what_the_adapter_reads() -> None:
    for sample in (s for s in load_samples() if s.expected):  # those that store something
        # A canonical device's external id is its device id.
        granted = device_topics(sample.format, sample.external_id, sample.external_id)
        assert any(_filter_matches(f, sample.topic) for f in granted), sample.name
    shelly = device_topics("shelly", "shellyplus1pm-a1", "dev-1")
    assert all("+" not in t and "#" not in t for t in shelly)
    for topic in shelly:
        adapter = find_adapter(topic)
        assert adapter is not None and adapter.format == "shelly", topic


def test_topic_filters_have_no_duplicates() -> None:
    filters = topic_filters()
    assert len(filters) == len(set(filters))
    assert "hearth/v1/+/+" in filters
    assert "owntracks/+/+" in filters


@pytest.mark.parametrize(
    ("topic", "fmt"),
    [
        ("hearth/v1/d/phone", "hearth"),
        ("owntracks/u/d", "owntracks"),
        ("owntracks/u/d/event", "owntracks"),
        ("zigbee2mqtt/lamp", "zigbee2mqtt"),
        ("tele/plug/SENSOR", "tasmota"),
        ("tele/plug/LWT", "tasmota"),
        ("shellyplus1-a1/events/rpc", "shelly"),
        ("shellyplus1-a1/status/switch:0", "shelly"),
        ("shellyplus1-a1/online", "shelly"),
    ],
)
def test_find_adapter(topic: str, fmt: str) -> None:
    adapter = find_adapter(topic)
    assert adapter is not None and adapter.format == fmt


@pytest.mark.parametrize("topic", ["", "x", "hearth/v1/d", "tele/plug/INFO1", "random/topic"])
def test_unknown_topics(topic: str) -> None:
    assert find_adapter(topic) is None


def test_samples_cover_every_format_and_use_its_topics() -> None:
    samples = load_samples()
    assert {s.format for s in samples} == {a.format for a in ADAPTERS}
    assert len({s.name for s in samples}) == len(samples)
    for sample in samples:
        adapter = find_adapter(sample.topic)
        assert adapter is not None and adapter.format == sample.format, sample.name
        assert sample.source and sample.description


def test_value_matching() -> None:
    assert value_matches(HASHED, "0123456789abcdef0123456789abcdef")
    assert not value_matches(HASHED, "HomeNet")
    assert value_matches(1, 1.0)
    assert not value_matches(1, 1.5)
    assert value_matches("wifi", "wifi")
    assert not value_matches("wifi", 1.0)
