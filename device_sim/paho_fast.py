"""The simulator's only use of paho-mqtt internals: cheaper PUBACK decoding for the publisher.

Why: paho's packet decoder (the private module ``paho.mqtt._packet``) builds a ``ReasonCode``
and a ``Properties`` object for every PUBACK, even under MQTT 3.1.1, and both build their
lookup tables per instance: ~40 us per PUBACK, more than the rest of a publish. The public API
cannot change that, so :func:`use_prebuilt_ack_objects` rebinds the two names inside that
module to constructors that copy prebuilt instances.

paho-mqtt is pinned to the minor version this was written against (pyproject.toml), and
tests/unit/test_private_apis.py fails loudly when the module stops looking as expected.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from paho.mqtt import _packet
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode


def _prebuilt(cls: Any) -> Callable[..., Any]:
    """A constructor for ``cls`` that copies a prebuilt instance when called with a packet type
    only. The copies share the prebuilt lookup tables (read-only) and own their attributes, so
    unpacking a v5 reason code or property into one changes only it."""
    templates: dict[int, Any] = {}

    def make(packet_type: int, *args: Any, **kwargs: Any) -> Any:
        if args or kwargs:
            return cls(packet_type, *args, **kwargs)
        template = templates.get(packet_type)
        if template is None:
            template = templates[packet_type] = cls(packet_type)
        obj = cls.__new__(cls)
        obj.__dict__.update(template.__dict__)
        return obj

    return make


def use_prebuilt_ack_objects() -> bool:
    """Make paho's packet decoder copy prebuilt ``ReasonCode``/``Properties`` objects instead
    of building them per packet. Idempotent; a decoder that does not use the public classes
    under those names is left alone (publishing is then just slower) and False returned."""
    if getattr(_packet, "_hearth_prebuilt", False):
        return True
    if getattr(_packet, "ReasonCode", None) is not ReasonCode or (
        getattr(_packet, "Properties", None) is not Properties
    ):
        return False
    _packet.ReasonCode = _prebuilt(ReasonCode)  # type: ignore[attr-defined,assignment]
    _packet.Properties = _prebuilt(Properties)  # type: ignore[attr-defined,assignment]
    _packet._hearth_prebuilt = True  # type: ignore[attr-defined]  # noqa: SLF001 - our marker
    return True
