"""One spec per device format: its topics, the ACL a device of it gets, its external-id rule.

Four places must agree on a format's topics, and each reads them from here:
- the collector subscribes to :attr:`DeviceFormat.topic_filters` (each adapter declares its
  spec's filters, ``collector.adapters.registry`` collects them);
- the broker grants a device exactly :meth:`DeviceFormat.device_topics` (``hearth.broker``
  roles, ``collector.broker`` sync), so a device can never publish as another one;
- the registry (``hearth.admin``) accepts an external id only by :meth:`check_external_id`, so
  no id can reach into another device's or another format's topics;
- the collector maps a rejected message's topic back to its device (``collector.pipeline``).

Parsing a format's payloads stays in its adapter (``collector/adapters/<format>/``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from hearth.errors import Invalid
from hearth.ids import is_valid_id

# First topic levels a device-chosen id may not take: they belong to other formats or to the
# broker, so a Shelly called "owntracks" could otherwise publish into every OwnTracks topic.
RESERVED_TOPIC_ROOTS: Final = frozenset(
    {"hearth", "owntracks", "zigbee2mqtt", "tele", "cmnd", "stat", "shellies", "$share", "$SYS"}
)


class UnknownFormat(Invalid, ValueError):
    """A format name no spec has (also a ``ValueError``: callers that skip the devices of
    formats this version does not know catch that)."""


@dataclass(frozen=True, slots=True)
class DeviceFormat:
    """How devices of one format appear on MQTT and in the registry."""

    name: str  # the registry's name (``devices add --format``)
    title: str  # as its makers spell it, for messages
    # Filters the collector subscribes to: every topic of the format that Hearth reads.
    topic_filters: tuple[str, ...]
    # What one device may publish on (its ACL), with ``{external_id}`` / ``{device_id}``.
    acl_topics: tuple[str, ...]
    # ``<user>/<device>`` spans two topic levels (OwnTracks); every other id is one level.
    external_id_levels: int = 1
    external_id_shape: str = "one topic level"
    # The canonical format names a device by its topic: its device id is its external id.
    external_id_is_device_id: bool = False
    # The id is the topic's first level, so it may not be one of RESERVED_TOPIC_ROOTS.
    id_is_topic_root: bool = False
    # Ids the format uses for its own topics (Zigbee2MQTT's ``bridge``).
    own_topics: frozenset[str] = frozenset()

    def device_topics(self, external_id: str, device_id: str) -> tuple[str, ...]:
        """Topics (MQTT filters) the device may publish on (docs/invariants.md#5).

        The broker ACL grants exactly these to the device's username; the collector maps each
        topic back to (format, external id).
        """
        return tuple(
            t.format(external_id=external_id, device_id=device_id) for t in self.acl_topics
        )

    def check_external_id(self, external_id: str) -> str:
        """``external_id`` when a device of this format may be registered with it; else
        :class:`Invalid` saying why."""
        parts = external_id.split("/")
        # One topic level per id (two for OwnTracks), so no id can be a prefix of another's
        # topics.
        if len(parts) != self.external_id_levels or not all(is_valid_id(p) for p in parts):
            raise Invalid(
                f"external id {external_id!r} for {self.name}: expected "
                f"{self.external_id_shape} of A-Z a-z 0-9 . _ : -"
            )
        if self.id_is_topic_root and parts[0] in RESERVED_TOPIC_ROOTS:
            raise Invalid(f"external id {external_id!r} is a reserved topic root")
        if external_id in self.own_topics:
            raise Invalid(f"external id {external_id!r} is {self.title}'s own topic")
        return external_id


HEARTH: Final = DeviceFormat(
    name="hearth",
    title="Hearth",
    topic_filters=("hearth/v1/+/+",),
    acl_topics=("hearth/v1/{device_id}/#",),
    external_id_is_device_id=True,
)
OWNTRACKS: Final = DeviceFormat(
    name="owntracks",
    title="OwnTracks",
    topic_filters=("owntracks/+/+", "owntracks/+/+/+"),
    acl_topics=("owntracks/{external_id}/#",),  # external id "<user>/<device>" as in the topic
    external_id_levels=2,
    external_id_shape="<user>/<device>",
)
ZIGBEE2MQTT: Final = DeviceFormat(
    name="zigbee2mqtt",
    title="Zigbee2MQTT",
    topic_filters=("zigbee2mqtt/#",),
    acl_topics=("zigbee2mqtt/{external_id}", "zigbee2mqtt/{external_id}/availability"),
    own_topics=frozenset({"bridge"}),
)
TASMOTA: Final = DeviceFormat(
    name="tasmota",
    title="Tasmota",
    topic_filters=("tele/+/SENSOR", "tele/+/STATE", "tele/+/LWT"),
    acl_topics=("tele/{external_id}/#",),
)
SHELLY_SUBTOPICS: Final = ("events/rpc", "status/switch:0", "online")
SHELLY: Final = DeviceFormat(
    name="shelly",
    title="Shelly",
    topic_filters=tuple(f"+/{sub}" for sub in SHELLY_SUBTOPICS),
    # Exactly the topics the adapter reads: an id-rooted wildcard would reach other formats.
    acl_topics=tuple(f"{{external_id}}/{sub}" for sub in SHELLY_SUBTOPICS),
    id_is_topic_root=True,
)

DEVICE_FORMATS: Final[dict[str, DeviceFormat]] = {
    f.name: f for f in (HEARTH, OWNTRACKS, ZIGBEE2MQTT, TASMOTA, SHELLY)
}
FORMATS: Final = tuple(DEVICE_FORMATS)


def device_format(name: str) -> DeviceFormat:
    try:
        return DEVICE_FORMATS[name]
    except KeyError:
        raise UnknownFormat(
            f"unknown device format {name!r}; known: {', '.join(FORMATS)}"
        ) from None


def device_topics(format: str, external_id: str, device_id: str) -> tuple[str, ...]:
    """:meth:`DeviceFormat.device_topics` of the format named ``format``."""
    return device_format(format).device_topics(external_id, device_id)
