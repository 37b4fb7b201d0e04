"""paho-mqtt 2.x driven by the asyncio event loop, with manual, generation-checked PUBACKs.

Why paho and not aiomqtt: aiomqtt 2.x acknowledges before the application sees a message, which
breaks "no acknowledged message is lost" (docs/invariants.md#1). paho with ``manual_ack=True``
lets the service PUBACK only after the batch holding the message is committed.

Event-loop integration uses paho's socket callbacks (``on_socket_open``/``…register_write``): the
loop watches the socket and calls ``loop_read``/``loop_write``, so everything runs on one thread
(no GIL hand-offs, no locks between receive and ack). paho reads every packet with at least three
``recv()`` calls (command byte, each length byte, body); ``FastClient`` (collector/paho_fast.py,
the one place that touches paho's internals) serves those from one 64 KiB read, which is most of
paho's receive cost at 10k msg/s.

Session: MQTT v5, ``clean_start=False``, a stable client id and a session expiry, so unacked and
queued messages wait in the broker while we are away. The Receive Maximum we announce bounds the
unacknowledged messages the broker sends us: that is the collector's memory bound and its
back-pressure (no acks → no new messages).

Every connection gets a new *generation*; a message id is only acknowledged on the connection it
arrived on. After a reconnect the broker redelivers what was unacked, and idempotent writes absorb
the repeat.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Callable, Sequence
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from collector.paho_fast import FastClient, message_topic
from hearth.errors import Unavailable
from hearth.settings import Settings

log = logging.getLogger(__name__)

# (topic, payload, generation, mid, qos)
MessageHandler = Callable[[str, bytes, int, int, int], None]

MAX_PACKETS_PER_WAKEUP = 200  # then yield to the loop so the writer and HTTP get a turn
# Long enough that a database outage (reading paused, no PUBACKs) does not end the session at
# once: paho pings every keepalive and gives up after a second one unanswered.
KEEPALIVE_S = 60
CONNECT_TIMEOUT_S = 10.0


def subscription_topics(share_group: str, filters: list[str]) -> list[str]:
    return [f"$share/{share_group}/{f}" for f in filters]


class MqttLink:
    """One persistent MQTT session whose socket is serviced by the running asyncio loop."""

    def __init__(
        self,
        settings: Settings,
        filters: list[str],
        on_message: MessageHandler,
        *,
        subscribe: bool = True,
        on_connect: Callable[[], None] | None = None,
    ) -> None:
        self._settings = settings
        self._subscribe = subscribe  # False: resume a session as it is (sessions drain)
        self.session_present = False  # the last CONNACK's flag
        self._endpoint = settings.mqtt
        self._topics = subscription_topics(settings.mqtt_share_group, filters)
        self._handler = on_message
        self._connected_hook = on_connect  # called on every successful CONNACK
        self._loop = asyncio.get_running_loop()
        self.generation = 0
        self.connected = False
        self.connects = 0
        # Reasons not to read the socket; unread data waits in TCP buffers, then in the broker.
        self._paused = False  # shutdown: never read again
        self._throttled = False  # too many unacked messages in hand: read again after acks
        self._held = False  # the consent cache is stale: read again once it is fresh
        self._reading = False  # whether the loop watches the socket for reading
        self._sock: socket.socket | None = None
        self._connack: asyncio.Future[ReasonCode] | None = None
        self._disconnected = asyncio.Event()
        self._client = self._make_client()

    # -- paho setup ---------------------------------------------------------------------
    def _make_client(self) -> FastClient:
        s = self._settings
        client = FastClient(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=s.mqtt_client_id,
            protocol=mqtt.MQTTv5,
            manual_ack=True,
        )
        ep = self._endpoint
        if ep.username is not None:
            client.username_pw_set(
                ep.username, ep.password.get_secret_value() if ep.password else None
            )
        if ep.tls:
            client.tls_set(ca_certs=str(s.mqtt_ca_file) if s.mqtt_ca_file else None)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message  # only for packets the fast path leaves to paho
        client.publish_sink = self._on_publish
        client.on_socket_open = self._on_socket_open
        client.on_socket_close = self._on_socket_close
        client.on_socket_register_write = self._on_register_write
        client.on_socket_unregister_write = self._on_unregister_write
        return client

    def _connect_properties(self) -> Properties:
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = self._settings.mqtt_session_expiry_s
        props.ReceiveMaximum = self._settings.mqtt_receive_maximum
        return props

    # -- socket callbacks (all on the loop thread) ----------------------------------------
    def _on_socket_open(self, client: mqtt.Client, _u: Any, sock: Any) -> None:
        self._sock = sock
        self._client.reset_buffer()
        self._reading = False
        self._update_reader()

    def _on_socket_close(self, client: mqtt.Client, _u: Any, sock: Any) -> None:
        self._loop.remove_reader(sock)
        self._loop.remove_writer(sock)
        self._sock = None
        self._reading = False

    def _update_reader(self) -> None:
        """Watch the socket for reading exactly when no reason to stop reading holds."""
        sock = self._sock
        want = sock is not None and not (self._paused or self._throttled or self._held)
        if want == self._reading:
            return
        self._reading = want
        if sock is None:
            return
        if want:
            self._loop.add_reader(sock, self._on_readable)
            if self._client.buffered():  # the socket may never be readable again for these
                self._loop.call_soon(self._on_readable)
        else:
            self._loop.remove_reader(sock)

    def _on_register_write(self, client: mqtt.Client, _u: Any, sock: Any) -> None:
        self._loop.add_writer(sock, client.loop_write)

    def _on_unregister_write(self, client: mqtt.Client, _u: Any, sock: Any) -> None:
        self._loop.remove_writer(sock)

    def _on_readable(self) -> None:
        client = self._client
        for _ in range(MAX_PACKETS_PER_WAKEUP):
            if not self._reading:  # stopped since this call was scheduled
                return
            client.loop_read()
            if self._sock is None or not self._reading or not client.buffered():
                return
        # Still buffered data but the socket may not be readable again: continue next turn.
        self._loop.call_soon(self._on_readable)

    # -- protocol callbacks ---------------------------------------------------------------
    def _on_connect(
        self, client: mqtt.Client, _u: Any, flags: Any, reason: ReasonCode, _p: Any
    ) -> None:
        if self._connack is not None and not self._connack.done():
            self._connack.set_result(reason)
        if reason.is_failure:
            log.error("event=mqtt_connack_refused reason=%s", reason)
            return
        self.generation += 1
        self.connected = True
        self.connects += 1
        if self._connected_hook is not None:
            self._connected_hook()
        self._disconnected.clear()
        self.session_present = bool(getattr(flags, "session_present", False))
        if self._subscribe:
            client.subscribe([(t, SubscribeOptions(qos=1)) for t in self._topics])
        log.info(
            "event=mqtt_connected generation=%d session_present=%s topics=%d",
            self.generation,
            self.session_present,
            len(self._topics) if self._subscribe else 0,
        )

    def _on_disconnect(
        self, client: mqtt.Client, _u: Any, flags: Any, reason: ReasonCode, _p: Any
    ) -> None:
        was = self.connected
        self.connected = False
        self._disconnected.set()
        if was:
            log.warning("event=mqtt_disconnected generation=%d reason=%s", self.generation, reason)

    def _on_publish(self, topic: str, payload: bytes, mid: int, qos: int) -> None:
        self._handler(topic, payload, self.generation, mid, qos)

    def _on_message(self, client: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        topic = message_topic(msg).replace("\0", "\ufffd")
        self._handler(topic, bytes(msg.payload), self.generation, msg.mid, msg.qos)

    # -- public API -----------------------------------------------------------------------
    async def connect(self) -> None:
        """First connection; a broker that is down or refuses us is a one-line error."""
        ep = self._endpoint
        where = f"{ep.host}:{ep.port}"
        self._connack = self._loop.create_future()
        try:
            self._client.connect(
                ep.host,
                ep.port,
                keepalive=KEEPALIVE_S,
                clean_start=False,
                properties=self._connect_properties(),
            )
        except (OSError, ValueError) as exc:
            raise Unavailable(f"HEARTH_MQTT_URL: cannot connect to {where}: {exc}") from None
        try:
            reason = await asyncio.wait_for(self._connack, CONNECT_TIMEOUT_S)
        except TimeoutError:
            raise Unavailable(f"HEARTH_MQTT_URL: no CONNACK from {where}") from None
        if reason.is_failure:
            raise Unavailable(f"HEARTH_MQTT_URL: {where} refused the connection: {reason}")

    def ack(self, acks: Sequence[tuple[int, int, int, str, bytes]]) -> int:
        """PUBACK ``(generation, mid, qos, topic, payload)`` entries in order — only those that
        arrived on the current connection (older ones the broker redelivers). Returns how many
        were acknowledged."""
        if not self.connected:
            return 0
        current = self.generation
        mids = [ack[1] for ack in acks if ack[2] and ack[0] == current]
        self._client.ack_many(mids)
        return len(mids)

    def throttle(self, on: bool) -> None:
        """Stop/resume reading the socket: the in-flight bound the broker should keep for us.

        Mosquitto 2.0.11 does not always honour our Receive Maximum (after a reconnect, acking
        the redelivered messages lets it send far more), so the collector enforces the bound
        itself; unread data waits in TCP buffers and then in the broker.
        """
        self._throttled = on
        self._update_reader()

    def hold(self, on: bool) -> None:
        """Stop/resume reading for a reason of the service's own (a stale consent cache)."""
        self._held = on
        self._update_reader()

    def pause(self) -> None:
        """Stop reading from the socket (shutdown: take no new messages)."""
        self._paused = True
        self._update_reader()

    async def supervise(self) -> None:
        """Keepalive pings, and reconnect with backoff after a lost connection."""
        backoff = 0.5
        while True:
            if self.connected:
                self._client.loop_misc()
                await asyncio.sleep(1.0)
                backoff = 0.5
                continue
            if self._sock is not None:  # connecting: waiting for CONNACK
                self._client.loop_misc()
                await asyncio.sleep(0.2)
                continue
            try:
                self._client.reconnect()
                log.info("event=mqtt_reconnecting")
            except (OSError, ValueError) as exc:
                log.warning("event=mqtt_reconnect_failed error=%s retry_s=%.1f", exc, backoff)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 10.0)

    async def unsubscribe(self, timeout_s: float = CONNECT_TIMEOUT_S) -> list[ReasonCode]:
        """UNSUBSCRIBE from the group's topics and wait for the UNSUBACK's reason codes.

        After it the broker routes no new message to this session; what it had queued is
        still delivered (Mosquitto keeps a session's queue across an UNSUBSCRIBE).
        """
        done: asyncio.Future[list[ReasonCode]] = self._loop.create_future()

        def on_unsubscribe(_c: mqtt.Client, _u: Any, _mid: int, reasons: Any, _p: Any) -> None:
            if not done.done():
                done.set_result(list(reasons))

        self._client.on_unsubscribe = on_unsubscribe
        result, _ = self._client.unsubscribe(self._topics)
        if result != MQTTErrorCode.MQTT_ERR_SUCCESS:
            raise Unavailable(f"HEARTH_MQTT_URL: UNSUBSCRIBE failed: {result.name}")
        try:
            return await asyncio.wait_for(done, timeout_s)
        except TimeoutError:
            raise Unavailable("HEARTH_MQTT_URL: no UNSUBACK from the broker") from None

    async def disconnect(self, timeout_s: float = 5.0, *, end_session: bool = False) -> None:
        """Send pending PUBACKs, then DISCONNECT. The session stays on the broker, unless
        ``end_session``: Session Expiry Interval 0 on DISCONNECT ends it with its queue."""
        if self._sock is None:
            return
        props = None
        if end_session:
            props = Properties(PacketTypes.DISCONNECT)  # type: ignore[no-untyped-call]
            props.SessionExpiryInterval = 0
        self._client.disconnect(properties=props)
        deadline = time.monotonic() + timeout_s
        while self._sock is not None and time.monotonic() < deadline:
            self._client.loop_write()
            if self._sock is not None:
                self._client.loop_read()  # lets paho notice the socket close
            await asyncio.sleep(0.01)
