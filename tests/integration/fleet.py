"""Test helpers for the collector: a registered fleet, a lossless publisher, a collector process.

- Registration writes users, devices and consent grants directly with SQL (the admin CLI is
  another part's product; these tests are about ingest).
- :func:`publish_all` is an independent MQTT client that waits for every PUBACK with a bounded
  window of unacknowledged publishes (``mosquitto_pub -l`` exits before its queue is
  acknowledged and loses most of a bulk load).
- :class:`CollectorProcess` runs ``python -m collector run`` as a real subprocess.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import paho.mqtt.client as mqtt
import psutil
from paho.mqtt.enums import CallbackAPIVersion

from hearth.db import Conn
from hearth.ledger import CURRENT_NOTICE_VERSION
from hearth.signals import Category
from tests.conftest import Broker, free_port

ROOT = Path(__file__).resolve().parents[2]

# -- registry and consent -------------------------------------------------------------------
LONG_AGO = "'2000-01-01 00:00:00+00'::timestamptz"  # before any reading, samples included


def add_user(conn: Conn, user_id: str, tz: str = "UTC") -> None:
    conn.execute(
        "INSERT INTO users (user_id, tz) VALUES (%s, %s) ON CONFLICT DO NOTHING", (user_id, tz)
    )


def add_device(
    conn: Conn,
    device_id: str,
    user_id: str,
    *,
    format: str = "hearth",
    external_id: str | None = None,
    kind: str = "sensor",
    tz: str | None = None,
) -> None:
    # Bound and consented long before any test reading (readings dated before either are
    # refused): these tests replay history "now".
    conn.execute(
        "INSERT INTO devices (device_id, user_id, kind, format, external_id, tz, bound_at) "
        f"VALUES (%s, %s, %s, %s, %s, %s, {LONG_AGO})",
        (device_id, user_id, kind, format, external_id or device_id, tz),
    )


def grant(conn: Conn, user_id: str, categories: Iterable[Category] = tuple(Category)) -> None:
    with conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO consent_events (user_id, category, notice_version, action, at) "
            f"VALUES (%s, %s, %s, 'grant', {LONG_AGO})",
            [(user_id, str(c), CURRENT_NOTICE_VERSION) for c in categories],
        )


def register_fleet(conn: Conn, prefix: str, devices: int, *, grant_all: bool = True) -> list[str]:
    """``devices`` canonical-format devices, one user each, every category granted."""
    ids = [f"{prefix}-d{i}" for i in range(devices)]
    for i, device_id in enumerate(ids):
        user = f"{prefix}-u{i}"
        add_user(conn, user)
        add_device(conn, device_id, user)
        if grant_all:
            grant(conn, user)
    return ids


# -- payloads -------------------------------------------------------------------------------
BASE_TIME = datetime.now(UTC).replace(microsecond=0) - timedelta(days=1)


def canonical_messages(
    device_ids: Sequence[str], count: int, *, offset: int = 0
) -> list[tuple[str, bytes]]:
    """``count`` distinct canonical messages (one numeric reading each, unique natural key);
    different ``offset`` ranges never collide."""
    out = []
    for i in range(offset, offset + count):
        device = device_ids[i % len(device_ids)]
        ts = (BASE_TIME + timedelta(milliseconds=i)).isoformat().replace("+00:00", "Z")
        body = {"ts": ts, "readings": {"temperature_c": 20.0 + (i % 100) / 10}}
        out.append((f"hearth/v1/{device}/climate", json.dumps(body).encode()))
    return out


# -- publisher ------------------------------------------------------------------------------
def publish_all(
    url_host: str,
    port: int,
    messages: Sequence[tuple[str, bytes]],
    *,
    window: int = 500,
    client_id: str | None = None,
    timeout_s: float = 300.0,
) -> None:
    """Publish at QoS 1 and return only when the broker acknowledged every message."""
    client = mqtt.Client(
        callback_api_version=CallbackAPIVersion.VERSION2,
        client_id=client_id or f"pub-{os.getpid()}-{time.monotonic_ns()}",
        protocol=mqtt.MQTTv311,
    )
    client.max_inflight_messages_set(window)
    client.max_queued_messages_set(0)
    free = threading.Semaphore(window)
    acked = 0
    lock = threading.Lock()

    def on_publish(_c: object, _u: object, _mid: int, _rc: object, _p: object) -> None:
        nonlocal acked
        with lock:
            acked += 1
        free.release()

    client.on_publish = on_publish
    client.connect(url_host, port, keepalive=30)
    client.loop_start()
    try:
        deadline = time.monotonic() + timeout_s
        for topic, payload in messages:
            if not free.acquire(timeout=max(0.0, deadline - time.monotonic())):
                raise TimeoutError("broker stopped acknowledging publishes")
            info = client.publish(topic, payload, qos=1)
            if info.rc != mqtt.MQTT_ERR_SUCCESS:
                raise RuntimeError(f"publish failed: {info.rc}")
        while True:
            with lock:
                if acked >= len(messages):
                    break
            if time.monotonic() > deadline:
                raise TimeoutError(f"only {acked}/{len(messages)} publishes acknowledged")
            time.sleep(0.01)
    finally:
        client.disconnect()
        client.loop_stop()


# -- the collector under test -----------------------------------------------------------------
def replay_env(start: datetime) -> dict[str, str]:
    """Settings under which a collector stores a simulated history that began at ``start``.

    A replayed fleet has a fixed end in the past (so its stream is the same on every run): the
    collector must accept events that old, and keep them (retention may not be shorter).
    """
    days = str(max((datetime.now(UTC) - start).days + 2, 90))
    return {"HEARTH_MAX_EVENT_AGE_DAYS": days, "HEARTH_RETENTION_DAYS": days}


def wait_until(
    condition: Callable[[], bool], deadline_s: float, what: str, interval_s: float = 0.1
) -> None:
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        if condition():
            return
        time.sleep(interval_s)
    raise AssertionError(f"timed out after {deadline_s}s waiting for {what}")


_METRIC_LINE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)$")


def parse_metrics(text: str) -> dict[str, float]:
    """``name{labels}`` → value (labels kept verbatim, e.g. ``x_total{table="t"}``)."""
    out = {}
    for line in text.splitlines():
        m = _METRIC_LINE.match(line)
        if m:
            out[m.group(1) + (m.group(2) or "")] = float(m.group(3))
    return out


class CollectorProcess:
    """``python -m collector run`` with its own client id, share group and metrics port."""

    def __init__(
        self,
        *,
        database_url: str,
        mqtt_url: str,
        client_id: str,
        share_group: str,
        http_port: int,
        log_path: Path,
        extra_env: dict[str, str] | None = None,
    ) -> None:
        self.http_port = http_port
        self.log_path = log_path
        self.env = {
            **os.environ,
            "HEARTH_DATABASE_URL": database_url,
            "HEARTH_MQTT_URL": mqtt_url,
            "HEARTH_MQTT_CLIENT_ID": client_id,
            "HEARTH_MQTT_SHARE_GROUP": share_group,
            "HEARTH_COLLECTOR_HTTP_PORT": str(http_port),
            **(extra_env or {}),
        }
        self.proc: subprocess.Popen[str] | None = None
        self.starts = 0

    def start(self, *, wait_healthy: bool = True) -> None:
        # stderr to a file, not a pipe: a full pipe would block the collector's logging.
        with self.log_path.open("a") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "collector", "run"],
                env=self.env,
                cwd=ROOT,
                stdout=subprocess.DEVNULL,
                stderr=log,
                text=True,
            )
        self.starts += 1
        if wait_healthy:
            wait_until(self.healthy, 20, "collector /healthz")

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def _get(self, path: str) -> tuple[int, str] | None:
        import urllib.error
        import urllib.request

        try:
            with urllib.request.urlopen(
                f"http://127.0.0.1:{self.http_port}{path}", timeout=2
            ) as resp:
                return resp.status, resp.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()
        except OSError:
            return None

    def healthy(self) -> bool:
        if not self.alive():
            assert self.proc is not None
            raise AssertionError(f"collector exited {self.proc.returncode}: {self.log()[-2000:]}")
        got = self._get("/healthz")
        return got is not None and got[0] == 200

    def metrics(self) -> dict[str, float]:
        got = self._get("/metrics")
        return parse_metrics(got[1]) if got else {}

    def acked(self) -> float:
        """Messages this replica has acknowledged so far."""
        return self.metrics().get("hearth_collector_messages_acked_total", 0)

    def health(self) -> dict[str, object]:
        """The /healthz body (given with 503 too), or {} when the collector does not answer."""
        got = self._get("/healthz")
        return dict(json.loads(got[1])) if got else {}

    def rss_bytes(self) -> int:
        return int(psutil.Process(self.pid).memory_info().rss)

    def kill(self) -> None:
        if self.alive():
            assert self.proc is not None
            self.proc.kill()
            self.proc.wait(timeout=10)

    def log(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ""

    def terminate(self, timeout_s: float = 30) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=timeout_s)

    def stop(self) -> None:
        """Best-effort cleanup for fixtures."""
        if self.alive():
            try:
                self.terminate(timeout_s=20)
            except subprocess.TimeoutExpired:
                self.kill()


def collector_cli(
    database_url: str, *args: str, stdin: str | None = None, **env: str
) -> subprocess.CompletedProcess[str]:
    """``python -m collector ARGS`` as a user runs it: a real process, its exit code and output."""
    return subprocess.run(
        [sys.executable, "-m", "collector", *args],
        input=stdin,
        env={**os.environ, "HEARTH_DATABASE_URL": database_url, **env},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def count_rows(conn: Conn, table: str, device_prefix: str) -> int:
    row = conn.execute(
        f"SELECT count(*) FROM {table} WHERE device_id LIKE %s", (device_prefix + "%",)
    ).fetchone()
    assert row is not None
    return int(str(row[0]))


class CollectorFactory:
    """Makes collectors of one test (same share group) and stops them all at the end."""

    def __init__(self, database_url: str, broker: Broker, tag: str, tmp_path: Path) -> None:
        self.database_url = database_url
        self.broker = broker
        self.tag = tag
        self.tmp_path = tmp_path
        self.made: list[CollectorProcess] = []

    def __call__(self, replica: int = 0, **extra_env: str) -> CollectorProcess:
        c = CollectorProcess(
            database_url=extra_env.pop("database_url", self.database_url),
            mqtt_url=self.broker.url,
            client_id=f"{self.tag}-collector-{replica}",
            share_group=f"{self.tag}-group",
            http_port=free_port(),
            log_path=self.tmp_path / f"collector-{replica}.log",
            extra_env=extra_env,
        )
        self.made.append(c)
        return c

    def stop_all(self) -> None:
        for c in self.made:
            c.stop()
