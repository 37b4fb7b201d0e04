"""Publish generated streams over MQTT: QoS 1, a bounded in-flight window, every PUBACK awaited.

Why a window: ``mosquitto_pub -l`` exits before its queue is acknowledged and paho slows to a
crawl with tens of thousands of unacknowledged publishes; so each connection keeps
at most ``window`` publishes in flight and the run ends only when every PUBACK arrived.

With credentials (from registration) each device connects as itself — the broker's ACL lets a
device publish only its own topics — publishes its history and disconnects. Without credentials
(anonymous broker) each worker process uses one connection for all its devices.
"""

from __future__ import annotations

import multiprocessing
import os
import queue
import select
import socket
import ssl
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from device_sim.paho_fast import use_prebuilt_ack_objects

DEFAULT_MQTT_URL = "mqtt://127.0.0.1:1883"
DEFAULT_WINDOW = 800


class PublishError(Exception):
    """The broker is unreachable or refused us; one line for the user."""


@dataclass(frozen=True, slots=True)
class Endpoint:
    host: str
    port: int
    tls: bool
    username: str | None = None
    password: str | None = None


def parse_mqtt_url(url: str) -> Endpoint:
    """``mqtt[s]://[user:pass@]host[:port]`` (the same grammar as ``HEARTH_MQTT_URL``)."""
    parts = urlsplit(url)
    if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
        raise ValueError(f"expected mqtt://[user:pass@]host:port, got {url!r}")
    tls = parts.scheme == "mqtts"
    return Endpoint(
        host=parts.hostname,
        port=parts.port or (8883 if tls else 1883),
        tls=tls,
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password else None,
    )


def default_mqtt_url() -> str:
    return os.environ.get("HEARTH_MQTT_URL", DEFAULT_MQTT_URL)


@dataclass(slots=True)
class Counts:
    published: int = 0
    acked: int = 0  # PUBACK with a success reason code
    refused: int = 0  # PUBACK with a failure reason code (e.g. ACL: not authorised)
    connect_failures: int = 0

    @property
    def complete(self) -> bool:
        """Every published message acknowledged by the broker, none refused, no
        connection failed: what a run or publish exits 0 on."""
        lost = self.published - self.acked - self.refused
        return lost == 0 and self.connect_failures == 0 and self.refused == 0

    def add(self, other: Counts) -> None:
        self.published += other.published
        self.acked += other.acked
        self.refused += other.refused
        self.connect_failures += other.connect_failures


class WindowedClient:
    """One MQTT connection publishing QoS 1 with at most ``window`` unacknowledged messages.

    paho drives the protocol; this class drives paho's socket through its external-loop API
    (``loop_read``/``loop_write``/``loop_misc``, ``on_socket_register_write``), because the
    convenient paths cost more than the publishing itself:

    * no network thread: paho's threaded mode wakes its loop thread through a socket pair on
      every publish and the two threads then fight over the GIL (measured ~2k msg/s);
    * no ``loop()`` either: it creates that socket pair too, and every ``publish()`` then writes
      a wake-up byte into it (one extra system call per message);
    * ``publish()`` only queues (a registered write callback tells paho an event loop will
      write); queued packets go out every ``_FLUSH_EVERY`` publishes in one ``loop_write``, with
      ``TCP_CORK`` on the socket so they leave as a few full segments instead of one segment
      (and one broker wake-up) per message. PUBACKs are read at each flush and whenever the
      window is full.

    MQTT 3.1.1 by default: paho decodes a v5 PUBACK's reason code and properties in Python,
    which halves throughput. A v3.1.1 broker cannot refuse a publish in its PUBACK (Mosquitto
    silently drops what the ACL denies), so ``refused`` is only counted under v5.

    ``wait=False`` sends CONNECT and returns at once; :meth:`wait_connected` then waits for the
    CONNACK, so a caller can overlap one connection's handshake with another's last PUBACKs.
    """

    _FLUSH_EVERY = 64

    def __init__(
        self,
        endpoint: Endpoint,
        client_id: str,
        window: int = DEFAULT_WINDOW,
        username: str | None = None,
        password: str | None = None,
        connect_timeout_s: float = 10.0,
        protocol: MQTTProtocolVersion = MQTTProtocolVersion.MQTTv311,
        wait: bool = True,
    ) -> None:
        self.window = window
        self.counts = Counts()
        self._inflight = 0
        self._queued = 0
        self._connect_rc: str | None = None
        self._lost: str | None = None
        self._connect_timeout_s = connect_timeout_s
        self._user = username if username is not None else endpoint.username
        use_prebuilt_ack_objects()
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=protocol)
        # 0 = no paho-side limit: paho rescans every queued message on each PUBACK when it
        # enforces its own limit (quadratic); the window above bounds in-flight instead.
        client.max_inflight_messages_set(0)
        client.max_queued_messages_set(0)
        pw = password if password is not None else endpoint.password
        if self._user is not None:
            client.username_pw_set(self._user, pw)
        if endpoint.tls:
            client.tls_set(cert_reqs=ssl.CERT_REQUIRED)
        client.on_connect = self._on_connect
        client.on_publish = self._on_publish
        client.on_disconnect = self._on_disconnect
        # With a write callback registered, paho queues packets instead of writing them at once.
        client.on_socket_register_write = _ignore_socket
        client.on_socket_unregister_write = _ignore_socket
        self.client = client
        try:
            client.connect(endpoint.host, endpoint.port, keepalive=60)
        except OSError as exc:
            raise PublishError(
                f"cannot reach MQTT broker {endpoint.host}:{endpoint.port}: {exc}"
            ) from None
        sock: Any = client.socket()  # a socket.socket (or ssl.SSLSocket) once connected
        assert sock is not None
        self._sock = sock
        self._pending = getattr(sock, "pending", None)  # TLS: bytes decrypted, not yet read
        self._cork = _TCP_CORK is not None and not endpoint.tls
        if self._cork:
            # NODELAY too: uncorking must push the tail out now, not after a delayed ACK.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.setsockopt(socket.IPPROTO_TCP, _TCP_CORK, 1)
        self._flush()  # the CONNECT packet
        if wait:
            self.wait_connected()

    def _on_connect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: Any,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        self._connect_rc = "Success" if not reason_code.is_failure else str(reason_code)

    def _on_disconnect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: Any,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if self._connect_rc is None:
            self._connect_rc = str(reason_code)
        elif self._inflight:
            self._lost = f"broker disconnected us: {reason_code}"

    def _on_publish(
        self,
        client: mqtt.Client,
        userdata: Any,
        mid: int,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        self._inflight -= 1
        if reason_code.is_failure:
            self.counts.refused += 1
        else:
            self.counts.acked += 1

    def _check(self, rc: int) -> None:
        if self._lost or rc not in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_AGAIN):
            raise PublishError(self._lost or f"MQTT connection lost: {mqtt.error_string(rc)}")

    def _flush(self) -> None:
        """Write every queued packet, then push them out of the corked socket."""
        self._queued = 0
        deadline = 0.0
        while self.client.want_write():
            self._check(self.client.loop_write())
            if self.client.want_write():  # socket buffer full: wait until it drains
                now = time.monotonic()
                deadline = deadline or now + 30.0
                if now > deadline:
                    raise PublishError("the broker stopped reading for 30 s")
                select.select([], [self._sock], [], 1.0)
        if self._cork:
            self._sock.setsockopt(socket.IPPROTO_TCP, _TCP_CORK, 0)
            self._sock.setsockopt(socket.IPPROTO_TCP, _TCP_CORK, 1)

    def _read(self, timeout: float) -> None:
        """Handle what the broker sent (PUBACKs, CONNACK), waiting up to ``timeout`` for it."""
        if timeout > 0 and not (self._pending and self._pending()):
            readable, _, _ = select.select([self._sock], [], [], timeout)
            if not readable:
                self._check(self.client.loop_misc())  # keepalive
                return
        self._check(self.client.loop_read())
        self._check(self.client.loop_misc())

    def wait_connected(self) -> None:
        deadline = time.monotonic() + self._connect_timeout_s
        while self._connect_rc is None and time.monotonic() < deadline:
            try:
                self._read(0.05)
            except PublishError:
                break
        if self._connect_rc != "Success":
            self.client.disconnect()
            reason = self._connect_rc or "timeout"
            raise PublishError(f"MQTT connect as {self._user or 'anonymous'!r} refused: {reason}")

    def publish(self, topic: str, payload: bytes | str) -> None:
        if self._inflight >= self.window:
            self._flush()
            deadline = time.monotonic() + 30.0
            while self._inflight >= self.window:
                if time.monotonic() > deadline:
                    raise PublishError(f"no PUBACK for 30 s with {self._inflight} in flight")
                self._read(0.5)
        self._inflight += 1
        self.counts.published += 1
        info = self.client.publish(topic, payload, qos=1)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            raise PublishError(f"publish failed: {mqtt.error_string(info.rc)}")
        self._queued += 1
        if self._queued >= self._FLUSH_EVERY:
            self._flush()
            self._read(0.0)

    def drain(self, timeout_s: float = 60.0) -> None:
        """Wait until every publish has its PUBACK."""
        self._flush()
        deadline = time.monotonic() + timeout_s
        while self._inflight > 0:
            if time.monotonic() > deadline:
                raise PublishError(f"{self._inflight} publishes unacknowledged after {timeout_s} s")
            self._read(0.2)

    def close(self) -> None:
        try:
            self.drain()
        finally:
            # Queues DISCONNECT; once written, paho closes the socket, which sends whatever
            # the cork still holds.
            self.client.disconnect()
            self.client.loop_write()


def _ignore_socket(client: mqtt.Client, userdata: Any, sock: Any) -> None:
    """Write-interest callback: registering one is what makes paho queue instead of send."""


_TCP_CORK: int | None = getattr(socket, "TCP_CORK", None)  # Linux


Credentials = dict[str, tuple[str, str]]  # device key → (mqtt username, password)


def read_device_groups(path: Path) -> Iterator[tuple[str, list[tuple[str, bytes]]]]:
    """(device key, [(topic, payload), ...]) for each contiguous device run of a part file."""
    key: str | None = None
    batch: list[tuple[str, bytes]] = []
    with path.open("rb") as f:
        for raw in f:
            k, _, topic, payload = raw.rstrip(b"\n").split(b"\t", 3)
            dk = k.decode()
            if dk != key:
                if key is not None:
                    yield key, batch
                key, batch = dk, []
            batch.append((topic.decode(), payload))
    if key is not None:
        yield key, batch


@dataclass(slots=True)
class _Job:
    mqtt_url: str
    window: int
    worker: int
    client_tag: str
    rate: float | None = None  # this process's messages per second (None: as fast as it can)


class _DeviceStream:
    """A worker's publishing state: the shared connection (anonymous broker) or the device
    connection still collecting its last PUBACKs while the next device connects."""

    def __init__(self, job: _Job, progress: Any) -> None:
        self.job = job
        self.endpoint = parse_mqtt_url(job.mqtt_url)
        self.progress = progress
        self.counts = Counts()
        self.shared: WindowedClient | None = None
        self.previous: WindowedClient | None = None
        self.unreported = 0
        self.started: float | None = None
        self.sent = 0

    def _close_previous(self) -> None:
        if self.previous is not None:
            client, self.previous = self.previous, None
            client.close()
            self.counts.add(client.counts)

    def _client(self, key: str, credentials: Credentials | None) -> WindowedClient | None:
        if credentials is None:
            if self.shared is None:
                job = self.job
                self.shared = WindowedClient(
                    self.endpoint,
                    f"device-sim-{job.client_tag}-{job.worker}-{os.getpid()}",
                    job.window,
                )
            return self.shared
        cred = credentials.get(key)
        if cred is None:  # not registered (e.g. --no-register mixed in): skip
            self.counts.connect_failures += 1
            return None
        try:
            client = WindowedClient(
                self.endpoint,
                cred[0],
                self.job.window,
                username=cred[0],
                password=cred[1],
                wait=False,
            )
        except PublishError:
            self.counts.connect_failures += 1
            return None
        # The previous device's last PUBACKs and this one's CONNACK are in flight together.
        self._close_previous()
        try:
            client.wait_connected()
        except PublishError:
            self.counts.connect_failures += 1
            return None
        self.previous = client
        return client

    def publish_file(self, path: Path, credentials: Credentials | None) -> None:
        for key, messages in read_device_groups(path):
            client = self._client(key, credentials)
            if client is None:
                continue
            publish = client.publish
            for topic, payload in messages:
                publish(topic, payload)
            self._pace(len(messages))
            self.unreported += len(messages)
            if self.unreported >= 2000:
                self.progress.put(("n", self.unreported))
                self.unreported = 0

    def _pace(self, n: int) -> None:
        """Hold this process to ``job.rate`` messages a second on average. A broker queues
        what its subscribers have not taken yet, up to a limit past which Mosquitto drops
        messages (``max_queued_messages``, config/mosquitto/mosquitto.conf): a fleet replaying
        months of history must not publish faster than the collectors store."""
        if not self.job.rate:
            return
        now = time.monotonic()
        if self.started is None:
            self.started = now
        self.sent += n
        ahead = self.sent / self.job.rate - (now - self.started)
        if ahead > 0:
            time.sleep(ahead)

    def finish(self) -> Counts:
        self._close_previous()
        if self.shared is not None:
            self.shared.close()
            self.counts.add(self.shared.counts)
            self.shared = None
        self.progress.put(("n", self.unreported))
        self.unreported = 0
        return self.counts


def _worker_main(job: _Job, tasks: Any, progress: Any) -> None:
    """Publish part files from ``tasks`` until ``None``; report ``("n", count)`` progress and a
    final ``("done", Counts)`` or ``("error", message)``."""
    try:
        stream = _DeviceStream(job, progress)
        while (task := tasks.get()) is not None:
            name, credentials = task
            stream.publish_file(Path(name), credentials)
        progress.put(("done", stream.finish()))
    except PublishError as exc:
        progress.put(("error", str(exc)))
    except Exception as exc:  # report, don't hang the parent
        progress.put(("error", f"{type(exc).__name__}: {exc}"))


class PartPublisher:
    """Publisher processes fed one part file at a time, so a fleet is published while it is
    still being generated. Each task carries the credentials of its part's devices (``None``:
    anonymous broker, one connection per worker); :meth:`finish` returns when every publish
    of every submitted part has its PUBACK.

    Create it before starting threads (it forks). ``poll`` forwards progress and raises the
    first worker error, so a dead broker stops a run early."""

    def __init__(
        self,
        mqtt_url: str,
        processes: int = 2,
        window: int = DEFAULT_WINDOW,
        on_progress: Callable[[int], None] | None = None,
        client_tag: str = "main",
        rate: float | None = None,
    ) -> None:
        parse_mqtt_url(mqtt_url)  # fail early on a bad URL
        if rate is not None and rate <= 0:
            raise ValueError("the publish rate must be positive")
        ctx = multiprocessing.get_context("fork")
        self._tasks: Any = ctx.Queue()
        self._progress: Any = ctx.Queue()
        self._on_progress = on_progress
        self.total = Counts()
        self._done = 0
        self._errors: list[str] = []
        self._workers = []
        n = max(1, processes)
        for w in range(n):
            job = _Job(mqtt_url, window, w, client_tag, rate / n if rate else None)
            proc = ctx.Process(
                target=_worker_main, args=(job, self._tasks, self._progress), daemon=True
            )
            proc.start()
            self._workers.append(proc)

    def submit(self, path: Path, credentials: Credentials | None) -> None:
        self._tasks.put((str(path), credentials))

    def _handle(self, kind: str, value: Any) -> None:
        if kind == "n":
            if self._on_progress is not None:
                self._on_progress(int(value))
        elif kind == "done":
            self.total.add(value)
            self._done += 1
        else:
            self._errors.append(str(value))
            self._done += 1

    def poll(self, timeout: float = 0.0) -> None:
        """Handle progress reports (waiting up to ``timeout`` for the first one)."""
        try:
            item = (
                self._progress.get(timeout=timeout) if timeout > 0 else self._progress.get_nowait()
            )
            self._handle(*item)
            while True:
                self._handle(*self._progress.get_nowait())
        except queue.Empty:
            pass
        if self._errors:
            self.abort()
            raise PublishError(self._errors[0])

    def finish(self) -> Counts:
        for _ in self._workers:
            self._tasks.put(None)
        while self._done < len(self._workers):
            try:
                self._handle(*self._progress.get(timeout=1.0))
            except queue.Empty:
                if all(not p.is_alive() for p in self._workers) and self._progress.empty():
                    self._errors.append("a publisher process died")
                    break
        for p in self._workers:
            p.join(timeout=10)
        if self._errors:
            self.abort()
            raise PublishError(self._errors[0])
        return self.total

    def abort(self) -> None:
        for p in self._workers:
            if p.is_alive():
                p.terminate()
        for p in self._workers:
            p.join(timeout=5)


def publish_files(
    mqtt_url: str,
    files: Iterable[Path],
    credentials: Credentials | None,
    processes: int = 2,
    window: int = DEFAULT_WINDOW,
    on_progress: Callable[[int], None] | None = None,
    client_tag: str = "main",
    rate: float | None = None,
) -> Counts:
    """Publish part files across ``processes`` worker processes (at most ``rate`` messages a
    second in total); wait for every PUBACK."""
    names = [f for f in files if f.stat().st_size > 0]
    if not names:
        return Counts()
    publisher = PartPublisher(
        mqtt_url, min(processes, len(names)), window, on_progress, client_tag, rate
    )
    for name in names:
        publisher.submit(name, credentials)
    return publisher.finish()
