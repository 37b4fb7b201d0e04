"""The collector's only use of paho-mqtt internals: a Client with a lean receive path.

Why internals: at 10k msg/s most of the drain's CPU went into paho's per-message receive work
(three or more ``recv`` calls, a v5 ``Properties`` object, an ``MQTTMessage`` and a debug log
line per PUBLISH) and one ``send`` per PUBACK; the public API has no way around either. So
:class:`FastClient` overrides two private methods of ``paho.mqtt.client.Client``
(``_sock_recv``, ``_handle_publish``), reads one private attribute (``_in_packet``) and calls
one private method (``_packet_queue``), and :func:`message_topic` reads ``MQTTMessage._topic``.

paho-mqtt is pinned to the minor version these were written against (pyproject.toml), and
tests/unit/test_private_apis.py fails loudly when any of them changes shape. Every access is
marked ``noqa: SLF001``; nothing else in the collector touches paho's private names.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import MQTTErrorCode
from paho.mqtt.exception import MalformedPacket

READ_CHUNK = 65536
PUBACK = 0x40
_PUBACK = struct.Struct("!BBH")

# (topic, payload, mid, qos) from the lean PUBLISH decoder
PublishSink = Callable[[str, bytes, int, int], None]


class FastClient(mqtt.Client):
    """paho Client with the three per-message costs that dominate a 10k msg/s drain removed.

    - Reads: paho asks the socket for each packet's command byte, each length byte and the body
      separately (3+ ``recv`` calls per message); here they are served from one 64 KiB read.
    - PUBLISH decoding: paho builds an MQTT v5 ``Properties`` object (dozens of ``hasattr``
      and string operations), an ``MQTTMessage`` and a debug-log line per message; the collector
      needs topic, payload, mid and QoS only, so QoS 0/1 PUBLISH packets are decoded here and
      handed straight to the sink. QoS 2 (never subscribed) keeps paho's path.
    - PUBACKs: :meth:`ack_many` queues the acknowledgements of a whole batch as one buffer,
      one ``send`` instead of one per message, still in arrival order.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._rbuf = b""
        self._rpos = 0
        self.publish_sink: PublishSink | None = None

    def reset_buffer(self) -> None:
        self._rbuf = b""
        self._rpos = 0

    def buffered(self) -> bool:
        return self._rpos < len(self._rbuf)

    def _sock_recv(self, bufsize: int) -> bytes:
        """Overrides paho's: every read paho asks for is served from one buffered read."""
        if self._rpos >= len(self._rbuf):
            data = super()._sock_recv(READ_CHUNK)  # BlockingIOError when nothing is there
            if not data:
                return data  # EOF: paho turns it into "connection lost"
            self._rbuf = data
            self._rpos = 0
        start = self._rpos
        self._rpos = min(start + bufsize, len(self._rbuf))
        return self._rbuf[start : self._rpos]

    def _handle_publish(self) -> MQTTErrorCode:
        """Overrides paho's: a QoS 0/1 PUBLISH goes to ``publish_sink`` as plain values."""
        in_packet = self._in_packet  # paho private: the packet being read (command, body)
        command: int = in_packet["command"]
        qos = (command & 0x06) >> 1
        sink = self.publish_sink
        if qos == 2 or sink is None:
            return super()._handle_publish()
        packet = bytes(in_packet["packet"])  # no copy when it already is bytes
        try:
            end = 2 + int.from_bytes(packet[0:2], "big")
            topic_bytes = packet[2:end]
            mid = 0
            if qos:
                mid = int.from_bytes(packet[end : end + 2], "big")
                end += 2
            # MQTT v5: properties length as a variable byte integer, then the properties.
            props_len, mult = 0, 1
            while True:
                byte = packet[end]
                end += 1
                props_len += (byte & 0x7F) * mult
                mult *= 128
                if byte < 0x80:
                    break
            end += props_len
            if end > len(packet) or (qos and mid == 0):
                raise MalformedPacket("bad PUBLISH")
        except IndexError:
            raise MalformedPacket("truncated PUBLISH") from None
        topic = topic_bytes.decode("utf-8", "replace")
        if b"\0" in topic_bytes:  # MQTT forbids U+0000 in topics; PostgreSQL text cannot hold it
            topic = topic.replace("\0", "\ufffd")
        sink(topic, packet[end:], mid, qos)
        return MQTTErrorCode.MQTT_ERR_SUCCESS

    def ack_many(self, mids: list[int]) -> None:
        """PUBACK every mid, in order, as one write (v5 PUBACK without reason = success)."""
        if mids:
            buf = b"".join(_PUBACK.pack(0x40, 2, mid) for mid in mids)
            self._packet_queue(PUBACK, buf, 0, 0)  # paho private: its send queue


def message_topic(msg: mqtt.MQTTMessage) -> str:
    """The topic of a message paho decoded itself, also when it is not valid UTF-8 (paho's
    ``topic`` property raises then; the raw bytes are decoded with replacement instead)."""
    try:
        return msg.topic
    except UnicodeDecodeError:
        raw: bytes = msg._topic  # noqa: SLF001 - the undecoded topic bytes
        return raw.decode("utf-8", "replace")
