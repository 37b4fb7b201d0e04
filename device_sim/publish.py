"""Publish generated streams over MQTT: QoS 1, a bounded in-flight window, every PUBACK awaited.

Why a window: ``mosquitto_pub -l`` exits before its queue is acknowledged and paho slows to a
crawl with tens of thousands of unacknowledged publishes (DESIGN §9); so each connection keeps
at most ``window`` publishes in flight and the run ends only when every PUBACK arrived.

With credentials (from registration) each device connects as itself — the broker's ACL lets a
device publish only its own topics — publishes its history and disconnects. Without credentials
(anonymous broker) each worker process uses one connection for all its devices.
"""

from __future__ import annotations

import multiprocessing
import os
import queue
import ssl
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

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

    def add(self, other: Counts) -> None:
        self.published += other.published
        self.acked += other.acked
        self.refused += other.refused
        self.connect_failures += other.connect_failures


class WindowedClient:
    """One MQTT connection publishing QoS 1 with at most ``window`` unacknowledged messages.

    No network thread: paho's threaded mode wakes its loop thread through a socket pair on
    every publish, and the two threads then fight over the GIL (measured ~2k msg/s). Here the
    publishing thread drives ``loop()`` itself, so publishes go straight to the socket and
    PUBACKs are read whenever the window is full (and every ``_POLL_EVERY`` publishes).

    MQTT 3.1.1 by default: paho decodes a v5 PUBACK's reason code and properties in Python,
    which halves throughput. A v3.1.1 broker cannot refuse a publish in its PUBACK (Mosquitto
    silently drops what the ACL denies), so ``refused`` is only counted under v5.
    """

    _POLL_EVERY = 200

    def __init__(
        self,
        endpoint: Endpoint,
        client_id: str,
        window: int = DEFAULT_WINDOW,
        username: str | None = None,
        password: str | None = None,
        connect_timeout_s: float = 10.0,
        protocol: MQTTProtocolVersion = MQTTProtocolVersion.MQTTv311,
    ) -> None:
        self.window = window
        self.counts = Counts()
        self._inflight = 0
        self._since_poll = 0
        self._connected = False
        self._connect_rc: str | None = None
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=protocol)
        # 0 = no paho-side limit: paho rescans every queued message on each PUBACK when it
        # enforces its own limit (quadratic); the window above bounds in-flight instead.
        client.max_inflight_messages_set(0)
        client.max_queued_messages_set(0)
        user = username if username is not None else endpoint.username
        pw = password if password is not None else endpoint.password
        if user is not None:
            client.username_pw_set(user, pw)
        if endpoint.tls:
            client.tls_set(cert_reqs=ssl.CERT_REQUIRED)
        client.on_connect = self._on_connect
        client.on_publish = self._on_publish
        client.on_disconnect = self._on_disconnect
        self.client = client
        try:
            client.connect(endpoint.host, endpoint.port, keepalive=60)
        except OSError as exc:
            raise PublishError(
                f"cannot reach MQTT broker {endpoint.host}:{endpoint.port}: {exc}"
            ) from None
        deadline = time.monotonic() + connect_timeout_s
        while self._connect_rc is None and time.monotonic() < deadline:
            client.loop(timeout=0.05)
        if self._connect_rc != "Success":
            client.disconnect()
            reason = self._connect_rc or "timeout"
            raise PublishError(f"MQTT connect as {user or 'anonymous'!r} refused: {reason}")

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

    _lost: str | None = None

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

    def _poll(self, timeout: float) -> None:
        rc = self.client.loop(timeout=timeout)
        if self._lost or rc not in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_AGAIN):
            raise PublishError(self._lost or f"MQTT connection lost: {mqtt.error_string(rc)}")

    def publish(self, topic: str, payload: bytes | str) -> None:
        if self._inflight >= self.window:
            deadline = time.monotonic() + 30.0
            while self._inflight >= self.window:
                if time.monotonic() > deadline:
                    raise PublishError(f"no PUBACK for 30 s with {self._inflight} in flight")
                self._poll(0.5)
        elif self._since_poll >= self._POLL_EVERY:
            self._since_poll = 0
            self._poll(0.0)
        self._since_poll += 1
        self._inflight += 1
        self.counts.published += 1
        info = self.client.publish(topic, payload, qos=1)
        if info.rc not in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_AGAIN):
            raise PublishError(f"publish failed: {mqtt.error_string(info.rc)}")

    def drain(self, timeout_s: float = 60.0) -> None:
        """Wait until every publish has its PUBACK."""
        deadline = time.monotonic() + timeout_s
        while self._inflight > 0:
            if time.monotonic() > deadline:
                raise PublishError(f"{self._inflight} publishes unacknowledged after {timeout_s} s")
            self._poll(0.2)

    def close(self) -> None:
        try:
            self.drain()
        finally:
            self.client.disconnect()


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
    files: list[str]
    credentials: Credentials | None
    window: int
    worker: int
    client_tag: str


def _worker_main(job: _Job, progress: Any) -> None:
    """Publish the given part files; report ``("n", count)`` progress and a final result."""
    endpoint = parse_mqtt_url(job.mqtt_url)
    counts = Counts()
    shared: WindowedClient | None = None
    pending = 0
    try:
        for name in job.files:
            for key, messages in read_device_groups(Path(name)):
                if job.credentials is not None:
                    cred = job.credentials.get(key)
                    if cred is None:  # not registered (e.g. --no-register mixed in): skip
                        counts.connect_failures += 1
                        continue
                    try:
                        client = WindowedClient(
                            endpoint, cred[0], job.window, username=cred[0], password=cred[1]
                        )
                    except PublishError:
                        counts.connect_failures += 1
                        continue
                else:
                    if shared is None:
                        shared = WindowedClient(
                            endpoint,
                            f"device-sim-{job.client_tag}-{job.worker}-{os.getpid()}",
                            job.window,
                        )
                    client = shared
                for topic, payload in messages:
                    client.publish(topic, payload)
                    pending += 1
                    if pending >= 2000:
                        progress.put(("n", pending))
                        pending = 0
                if client is not shared:
                    client.close()
                    counts.add(client.counts)
        if shared is not None:
            shared.close()
            counts.add(shared.counts)
        progress.put(("n", pending))
        progress.put(("done", counts))
    except PublishError as exc:
        progress.put(("error", str(exc)))
    except Exception as exc:  # report, don't hang the parent
        progress.put(("error", f"{type(exc).__name__}: {exc}"))


def publish_files(
    mqtt_url: str,
    files: Iterable[Path],
    credentials: Credentials | None,
    processes: int = 2,
    window: int = DEFAULT_WINDOW,
    on_progress: Callable[[int], None] | None = None,
    client_tag: str = "main",
) -> Counts:
    """Publish part files across ``processes`` worker processes; wait for every PUBACK."""
    names = [str(f) for f in files if f.stat().st_size > 0]
    if not names:
        return Counts()
    parse_mqtt_url(mqtt_url)  # fail early on a bad URL
    n = max(1, min(processes, len(names)))
    ctx = multiprocessing.get_context("fork")
    progress: Any = ctx.Queue()
    workers = []
    for w in range(n):
        job = _Job(mqtt_url, names[w::n], credentials, window, w, client_tag)
        proc = ctx.Process(target=_worker_main, args=(job, progress), daemon=True)
        proc.start()
        workers.append(proc)
    total = Counts()
    done = 0
    errors: list[str] = []
    while done < n:
        try:
            kind, value = progress.get(timeout=1.0)
        except queue.Empty:
            if all(not p.is_alive() for p in workers) and progress.empty():
                errors.append("a publisher process died")
                break
            continue
        if kind == "n":
            if on_progress is not None:
                on_progress(int(value))
        elif kind == "done":
            total.add(value)
            done += 1
        else:
            errors.append(str(value))
            done += 1
    for p in workers:
        p.join(timeout=10)
    if errors:
        raise PublishError(errors[0])
    return total


@dataclass(slots=True)
class LoadResult:
    counts: Counts = field(default_factory=Counts)
    elapsed_s: float = 0.0
