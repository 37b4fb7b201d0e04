"""device_sim publishes a small fleet to a private broker; a subscriber receives every message."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from hearth.broker import OPERATOR_USERNAME
from tests.conftest import Broker
from tests.integration.auth_broker import start_auth_broker


class Counter:
    def __init__(
        self, broker: Broker, topic: str, username: str | None = None, password: str | None = None
    ) -> None:
        self.count = 0
        self.lock = threading.Lock()
        self.ready = threading.Event()
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=f"count-{os.getpid()}-{topic[:3]}"
        )
        if username is not None:
            self.client.username_pw_set(username, password)
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe(topic, qos=1)
        self.client.on_subscribe = lambda c, u, mid, rcs, p: self.ready.set()
        self.client.on_message = self._on_message
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()
        assert self.ready.wait(10), "subscription not confirmed"

    def _on_message(self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        with self.lock:
            self.count += 1

    def wait_for(self, expected: int, deadline_s: float = 60.0) -> int:
        end = time.monotonic() + deadline_s
        while time.monotonic() < end and self.count < expected:
            time.sleep(0.05)  # polling a condition with a deadline
        return self.count

    def stop(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def _sim(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "device_sim", *args],
        capture_output=True,
        text=True,
        timeout=180,
        env=env,
    )


def _kv(stdout: str) -> dict[str, str]:
    last = stdout.strip().splitlines()[-1]
    return dict(item.split("=", 1) for item in last.split())


def test_run_publishes_every_message_including_late_ones(broker: Broker, tmp_path: Path) -> None:
    counter = Counter(broker, "#")
    try:
        out = _sim(
            "run",
            "--households",
            "6",
            "--days",
            "3",
            "--seed",
            "5",
            "--no-register",
            "--mqtt-url",
            broker.url,
            "--out",
            str(tmp_path),
            "--late-rate",
            "0.05",
            "--duplicate-rate",
            "0.05",
            "--id-prefix",
            "itest",
        )
        assert out.returncode == 0, out.stderr[-2000:]
        kv = _kv(out.stdout)
        published = int(kv["published"])
        assert published == int(kv["messages"]) == int(kv["acked"]) > 300
        assert counter.wait_for(published) == published
    finally:
        counter.stop()


def test_load_mode_reports_and_delivers(broker: Broker) -> None:
    counter = Counter(broker, "hearth/v1/#")
    try:
        out = _sim(
            "load",
            "--messages",
            "3000",
            "--processes",
            "2",
            "--devices",
            "7",
            "--mqtt-url",
            broker.url,
            "--id-prefix",
            "loadtest",
        )
        assert out.returncode == 0, out.stderr[-2000:]
        kv = _kv(out.stdout)
        assert kv["published"] == kv["acked"] == "3000"
        assert float(kv["rate"]) > 0
        assert counter.wait_for(3000) == 3000
    finally:
        counter.stop()


def test_unreachable_broker_is_one_line_error(tmp_path: Path) -> None:
    out = _sim(
        "run",
        "--households",
        "1",
        "--days",
        "1",
        "--no-register",
        "--mqtt-url",
        "mqtt://127.0.0.1:1",
        "--out",
        str(tmp_path),
    )
    assert out.returncode == 69
    assert out.stderr.strip().splitlines()[-1].startswith("error: cannot reach MQTT broker")


def test_run_registers_and_publishes_as_each_device_under_the_acl(
    database_url: str, tmp_path: Path
) -> None:
    """Authenticated broker (dynamic-security plugin): the fleet registers in batches while it
    is generated (``devices add`` makes each account through the plugin), then every device
    connects with its own credentials. Mosquitto silently drops a 3.1.1 publish the ACL denies,
    so receiving every message proves each device published only its own topics."""
    state = tmp_path / "state"
    ab = start_auth_broker(state, database_url)
    counter = Counter(ab.broker, "#", OPERATOR_USERNAME, ab.accounts[OPERATOR_USERNAME])
    env = {**os.environ, **ab.env()}  # `devices add` makes the accounts through the plugin
    try:
        out = _sim(
            "run",
            "--households",
            "120",  # three stream parts: two registration batches
            "--days",
            "1",
            "--seed",
            "9",
            "--id-prefix",
            "aclrun",
            "--mqtt-url",
            f"mqtt://127.0.0.1:{ab.broker.port}",
            "--out",
            str(tmp_path / "sim"),
            env=env,
        )
        assert out.returncode == 0, out.stderr[-2000:]
        kv = _kv(out.stdout)
        published = int(kv["published"])
        assert published == int(kv["messages"]) == int(kv["acked"]) > 2000
        assert kv["connect_failures"] == "0"
        assert counter.wait_for(published) == published
        registered = (tmp_path / "sim" / "registered_devices.jsonl").read_text().splitlines()
        assert len(registered) == int(kv["devices"])
    finally:
        counter.stop()
        ab.stop()
