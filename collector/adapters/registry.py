"""Every device format the collector understands. Adding one = one folder + one line here."""

from __future__ import annotations

from typing import Final

from collector.adapters.base import Adapter
from collector.adapters.hearth.adapter import ADAPTER as HEARTH
from collector.adapters.owntracks.adapter import ADAPTER as OWNTRACKS
from collector.adapters.shelly.adapter import ADAPTER as SHELLY
from collector.adapters.tasmota.adapter import ADAPTER as TASMOTA
from collector.adapters.zigbee2mqtt.adapter import ADAPTER as ZIGBEE2MQTT

ADAPTERS: Final[tuple[Adapter, ...]] = (
    HEARTH,
    OWNTRACKS,
    ZIGBEE2MQTT,
    TASMOTA,
    SHELLY,
)


def _first_level(topic_filter: str) -> str | None:
    level = topic_filter.split("/", 1)[0]
    return None if level in ("+", "#") else level


# Dispatch by the topic's first level (one dict lookup), then ask the few candidates; adapters
# whose filters start with a wildcard (e.g. Shelly's <id>/events/rpc) are tried last, in order.
_BY_FIRST_LEVEL: Final[dict[str, tuple[Adapter, ...]]] = {}
for _adapter in ADAPTERS:
    for _level in {_first_level(f) for f in _adapter.topic_filters} - {None}:
        assert _level is not None
        _BY_FIRST_LEVEL[_level] = (*_BY_FIRST_LEVEL.get(_level, ()), _adapter)
_WILDCARD_FIRST: Final[tuple[Adapter, ...]] = tuple(
    a for a in ADAPTERS if any(_first_level(f) is None for f in a.topic_filters)
)


def find_adapter(topic: str) -> Adapter | None:
    """The adapter that owns ``topic`` (without any ``$share/<group>/`` prefix), or None."""
    for adapter in _BY_FIRST_LEVEL.get(topic.split("/", 1)[0], ()):
        if adapter.matches(topic):
            return adapter
    for adapter in _WILDCARD_FIRST:
        if adapter.matches(topic):
            return adapter
    return None


def topic_filters() -> list[str]:
    """All adapters' MQTT topic filters, in registry order, without duplicates."""
    return list(dict.fromkeys(f for adapter in ADAPTERS for f in adapter.topic_filters))
