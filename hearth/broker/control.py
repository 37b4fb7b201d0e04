"""The request/response client of Mosquitto's dynamic-security plugin (its control topic).

The plugin changes accounts while the broker runs through JSON commands published on
:data:`CONTROL_TOPIC` and answers on :data:`RESPONSE_TOPIC`; this module sends them and matches
the answers. What the commands mean for Hearth's accounts is :mod:`hearth.broker.accounts`.
"""

from __future__ import annotations

import json
import secrets
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode

from hearth.errors import ConfigError, Unavailable
from hearth.settings import parse_mqtt_url

CONTROL_TOPIC = "$CONTROL/dynamic-security/v1"
RESPONSE_TOPIC = f"{CONTROL_TOPIC}/response"

COMMAND_TIMEOUT_S = 30.0  # the plugin rewrites its whole file per change: slow on big fleets
CONNECT_TIMEOUT_S = 10.0

Command = dict[str, Any]


class BrokerUnavailable(Unavailable):
    """The broker or its dynamic-security plugin cannot be reached; message is one line."""


class BrokerError(Exception):
    """The plugin refused a command (the message quotes its answer)."""


class DynsecClient:
    """A synchronous request/response client for the plugin's control topic.

    Commands go out in one PUBLISH, each with its own ``correlationData``; the plugin answers on
    :data:`RESPONSE_TOPIC`, which every admin client receives, so answers are matched by that
    id. Thread-safe (the feature service calls it from worker threads); paho's network thread
    reconnects by itself, and ``on_connect`` (if given) runs after each (re)connection.
    """

    def __init__(
        self,
        url: str,
        *,
        ca_file: Path | None = None,
        timeout_s: float = COMMAND_TIMEOUT_S,
        on_connect: Callable[[], None] | None = None,
    ) -> None:
        try:
            endpoint = parse_mqtt_url(url)
        except ValueError as exc:
            raise ConfigError(f"HEARTH_BROKER_ADMIN_URL: {exc}") from None
        if not endpoint.username or endpoint.password is None:
            raise ConfigError("HEARTH_BROKER_ADMIN_URL: needs the admin's user:password@")
        self.username = endpoint.username
        self.where = f"{endpoint.host}:{endpoint.port}"
        self.timeout_s = timeout_s
        self._on_connect_hook = on_connect
        self._cond = threading.Condition()
        self._ready = False
        self._generation = 0
        self._failure: str | None = None
        self._sub_mid: int | None = None
        self._waiting: set[str] = set()
        self._answers: dict[str, dict[str, Any]] = {}
        client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=f"hearth-admin-{secrets.token_hex(6)}",
            protocol=mqtt.MQTTv5,
        )
        client.username_pw_set(endpoint.username, endpoint.password.get_secret_value())
        if endpoint.tls:
            client.tls_set(ca_certs=str(ca_file) if ca_file else None)
        client.reconnect_delay_set(min_delay=1, max_delay=2)
        client.on_connect = self._handle_connect
        client.on_disconnect = self._handle_disconnect
        client.on_subscribe = self._handle_subscribe
        client.on_message = self._handle_message
        self._client = client
        try:
            client.connect(endpoint.host, endpoint.port, keepalive=30)
        except OSError as exc:
            raise BrokerUnavailable(f"broker admin: cannot reach {self.where} ({exc})") from None
        client.loop_start()
        try:
            self._wait_ready(time.monotonic() + CONNECT_TIMEOUT_S)
        except BrokerUnavailable:
            self.close()
            raise

    # paho callbacks (network thread)

    def _handle_connect(self, c: mqtt.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        if reason.is_failure:
            with self._cond:
                self._failure = f"the broker refused the admin account ({reason})"
                self._cond.notify_all()
            return
        _, mid = c.subscribe(RESPONSE_TOPIC, qos=1)
        with self._cond:
            self._sub_mid = mid

    def _handle_subscribe(self, _c: Any, _u: Any, mid: int, reasons: Any, _p: Any) -> None:
        hook = None
        with self._cond:
            if mid != self._sub_mid:
                return
            if any(r.is_failure for r in reasons):
                self._failure = (
                    f"the broker does not let {self.username!r} read {RESPONSE_TOPIC} "
                    "(not a dynamic-security admin, or the plugin is not loaded)"
                )
            else:
                self._ready = True
                self._failure = None
                hook = self._on_connect_hook
            self._cond.notify_all()
        if hook is not None:
            hook()

    def _handle_disconnect(self, _c: Any, _u: Any, _f: Any, _r: Any, _p: Any) -> None:
        with self._cond:
            self._ready = False
            self._generation += 1
            self._cond.notify_all()

    def _handle_message(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        try:
            responses = json.loads(msg.payload)["responses"]
        except (ValueError, KeyError, TypeError):
            return
        with self._cond:
            for r in responses:
                key = r.get("correlationData") if isinstance(r, dict) else None
                if key in self._waiting:
                    self._answers[key] = r
            self._cond.notify_all()

    # requests

    @property
    def connected(self) -> bool:
        with self._cond:
            return self._ready

    def _wait_ready(self, deadline: float) -> None:
        with self._cond:
            while not self._ready:
                if self._failure is not None:
                    raise BrokerUnavailable(f"broker admin at {self.where}: {self._failure}")
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise BrokerUnavailable(f"broker admin: no connection to {self.where}")
                self._cond.wait(remaining)

    def run(self, commands: Sequence[Command]) -> list[dict[str, Any]]:
        """Send ``commands`` in one message; their answers, in order (each may hold ``error``)."""
        if not commands:
            return []
        keys = [secrets.token_hex(8) for _ in commands]
        payload = json.dumps(
            {"commands": [{**c, "correlationData": k} for c, k in zip(commands, keys, strict=True)]}
        )
        deadline = time.monotonic() + self.timeout_s
        self._wait_ready(deadline)
        with self._cond:
            generation = self._generation
            self._waiting.update(keys)
        try:
            info = self._client.publish(CONTROL_TOPIC, payload, qos=1)
            if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                raise BrokerUnavailable(f"broker admin: publish to {self.where} failed ({info.rc})")
            with self._cond:
                while not all(k in self._answers for k in keys):
                    if self._generation != generation:
                        raise BrokerUnavailable(f"broker admin: lost {self.where} mid-command")
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        raise BrokerUnavailable(
                            f"broker admin: no answer from the dynamic-security plugin at "
                            f"{self.where} in {self.timeout_s:.0f} s"
                        )
                    self._cond.wait(remaining)
                return [self._answers[k] for k in keys]
        finally:
            with self._cond:
                self._waiting.difference_update(keys)
                for k in keys:
                    self._answers.pop(k, None)

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()


def check_answers(answers: Iterable[Mapping[str, Any]], tolerate: tuple[str, ...] = ()) -> None:
    """Raise on the first refusal that is not one of ``tolerate`` (substrings)."""
    for a in answers:
        error = a.get("error")
        if error and not any(t in str(error) for t in tolerate):
            raise BrokerError(f"broker refused {a.get('command')}: {error}")
