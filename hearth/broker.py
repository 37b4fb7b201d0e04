"""Device accounts in the MQTT broker, through Mosquitto's dynamic-security plugin.

The plugin keeps clients (a username and a salted PBKDF2-SHA512 password hash), roles (lists of
ACLs) and the links between them in its own JSON file, and changes them while the broker runs
through JSON commands published on ``$CONTROL/dynamic-security/v1``: no password files, no
reloads, no signals. Who may do what:

- every device has one role, ``device-<username>``, granting exactly its topics
  (:func:`hearth.ledger.device_topics`): publish, and subscribe for its own command topics;
- the collector (``hearth-collector``) may subscribe to everything (``$share/…`` included) and
  publish nothing; the operator (``hearth-operator``: bench and demo publishers) may do both;
- the broker-admin account (``hearth-broker-admin``) may only talk to the plugin, and only this
  module uses it.

One path for every change. A clear password exists only while a device is being registered,
so :mod:`hearth.admin` calls :class:`BrokerAccounts` itself, inside the registration's
transaction: the device can connect from the moment the registration commits, whether it came
from the CLI, ``--batch`` or the HTTP admin API. Retirement and erasure delete the account the
same way, which also disconnects the device. :func:`reconcile` (``python -m collector broker
sync [--watch]``) repairs drift: it recreates missing accounts, removes accounts the registry
does not know or has retired, and fixes ACLs. A recreated account has **no password** (none is
kept anywhere): it cannot log in until the device is registered again, which issues a new one.

Registrations hold a shared advisory lock (:data:`REGISTRY_LOCK_KEY`) from their broker call to
their commit, and a reconciliation holds it exclusively, so it never mistakes an account created
for a registration that has not committed yet for an unknown one.
"""

from __future__ import annotations

import json
import logging
import secrets
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import psycopg
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode

from hearth.cli import ServiceUnavailable
from hearth.errors import ConfigError
from hearth.ledger import device_topics, load_live_devices
from hearth.settings import get_settings, parse_mqtt_url

log = logging.getLogger("hearth.broker")

CONTROL_TOPIC = "$CONTROL/dynamic-security/v1"
RESPONSE_TOPIC = f"{CONTROL_TOPIC}/response"

SERVICE_USERNAME_PREFIX = "hearth-"  # device usernames may not take it
COLLECTOR_USERNAME = f"{SERVICE_USERNAME_PREFIX}collector"
OPERATOR_USERNAME = f"{SERVICE_USERNAME_PREFIX}operator"
BROKER_ADMIN_USERNAME = f"{SERVICE_USERNAME_PREFIX}broker-admin"
SERVICE_ACCOUNTS = (COLLECTOR_USERNAME, OPERATOR_USERNAME, BROKER_ADMIN_USERNAME)
DEVICE_ROLE_PREFIX = "device-"
# A role no client holds; its description names the registry whose accounts this broker keeps.
REGISTRY_MARKER_ROLE = f"{SERVICE_USERNAME_PREFIX}registry"
# Registrations (shared) vs reconciliation (exclusive); "BROKR".
REGISTRY_LOCK_KEY = 0x42524F4B52

COMMAND_TIMEOUT_S = 30.0  # the plugin rewrites its whole file per change: slow on big fleets
CONNECT_TIMEOUT_S = 10.0
LIST_PAGE = 1000

# Anything no ACL grants: devices publish nothing and subscribe to nothing but their topics.
DEFAULT_ACL_ACCESS = {
    "publishClientSend": False,
    "publishClientReceive": True,
    "subscribe": False,
    "unsubscribe": True,
}

# Errors the plugin answers that mean "already as wanted" for an idempotent caller.
_ALREADY = ("already exists", "not found")

Command = dict[str, Any]
Acl = tuple[str, str, bool]  # (acltype, topic, allow)


class BrokerUnavailable(ServiceUnavailable):
    """The broker or its dynamic-security plugin cannot be reached; message is one line."""


class BrokerError(Exception):
    """The plugin refused a command (the message quotes its answer)."""


# --- Roles -----------------------------------------------------------------------------------


def _acl(acltype: str, topic: str, allow: bool = True) -> dict[str, Any]:
    return {"acltype": acltype, "topic": topic, "allow": allow}


def device_role(username: str) -> str:
    return f"{DEVICE_ROLE_PREFIX}{username}"


def device_acls(topics: Iterable[str]) -> list[dict[str, Any]]:
    """Publish on each of the device's topics, and subscribe inside them (command topics)."""
    acls = []
    for topic in topics:
        acls += [_acl("publishClientSend", topic), _acl("subscribePattern", topic)]
    return acls


_CONTROL_ALL = "$CONTROL/dynamic-security/#"
SERVICE_ROLES: dict[str, list[dict[str, Any]]] = {
    # "#" as a subscribe pattern also covers "$share/<group>/…" filters; nothing to publish.
    COLLECTOR_USERNAME: [_acl("subscribePattern", "#"), _acl("publishClientReceive", "#")],
    OPERATOR_USERNAME: [
        _acl("publishClientSend", "#"),
        _acl("subscribePattern", "#"),
        _acl("publishClientReceive", "#"),
    ],
    # Unlike `mosquitto_ctrl dynsec init`'s admin role: the plugin's topics only, no "#" read.
    BROKER_ADMIN_USERNAME: [
        _acl("publishClientSend", _CONTROL_ALL),
        _acl("publishClientReceive", _CONTROL_ALL),
        _acl("subscribePattern", _CONTROL_ALL),
    ],
}


def _acl_set(acls: Iterable[Mapping[str, Any]]) -> frozenset[Acl]:
    return frozenset(
        (str(a["acltype"]), str(a["topic"]), bool(a.get("allow", False))) for a in acls
    )


# --- The control-topic client ----------------------------------------------------------------


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


def _check(answers: Iterable[Mapping[str, Any]], tolerate: tuple[str, ...] = ()) -> None:
    """Raise on the first refusal that is not one of ``tolerate`` (substrings)."""
    for a in answers:
        error = a.get("error")
        if error and not any(t in str(error) for t in tolerate):
            raise BrokerError(f"broker refused {a.get('command')}: {error}")


# --- Accounts --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ClientState:
    username: str
    roles: tuple[str, ...]
    groups: tuple[str, ...]
    disabled: bool
    textdescription: str | None


@dataclass(frozen=True, slots=True)
class BrokerState:
    clients: dict[str, ClientState]
    roles: dict[str, frozenset[Acl]]
    role_descriptions: dict[str, str | None]


class BrokerAccounts:
    """Device and service accounts, in terms of the plugin's commands."""

    def __init__(self, client: DynsecClient) -> None:
        self.client = client

    def create_device(self, username: str, password: str, topics: Sequence[str]) -> None:
        """A new device's role and client. Leftovers of the same name (drift, an interrupted
        registration) are overwritten: the new password and exactly these topics win."""
        role = device_role(username)
        answers = self.client.run(
            [
                {"command": "createRole", "rolename": role, "acls": device_acls(topics)},
                {
                    "command": "createClient",
                    "username": username,
                    "password": password,
                    "roles": [{"rolename": role}],
                },
            ]
        )
        _check(answers, tolerate=("already exists",))
        if any(a.get("error") for a in answers):
            self._overwrite_device(username, password, topics)

    def _overwrite_device(self, username: str, password: str, topics: Sequence[str]) -> None:
        role = device_role(username)
        answers = self.client.run(
            [
                {"command": "modifyRole", "rolename": role, "acls": device_acls(topics)},
                {
                    "command": "modifyClient",
                    "username": username,
                    "password": password,
                    "roles": [{"rolename": role}],
                    "groups": [],
                },
                {"command": "enableClient", "username": username},
            ]
        )
        _check(answers)

    def set_device_password(self, username: str, password: str, topics: Sequence[str]) -> None:
        """Credential rotation: the new password replaces the old one at once (the plugin drops
        connections that used the old one). An account missing from the broker is created."""
        answers = self.client.run(
            [{"command": "setClientPassword", "username": username, "password": password}]
        )
        if answers[0].get("error") == "Client not found":
            self.create_device(username, password, topics)
            return
        _check(answers)

    def delete_devices(self, usernames: Iterable[str]) -> None:
        """Delete clients (which disconnects them) and their roles; missing ones are fine."""
        commands: list[Command] = []
        for u in usernames:
            commands += [
                {"command": "deleteClient", "username": u},
                {"command": "deleteRole", "rolename": device_role(u)},
            ]
        _check(self.client.run(commands), tolerate=("not found",))

    def state(self) -> BrokerState:
        """Every client (with its roles) and role (with its ACLs), page by page."""
        clients: dict[str, ClientState] = {}
        for c in self._list("listClients", "clients"):
            clients[str(c["username"])] = ClientState(
                username=str(c["username"]),
                roles=tuple(sorted(str(r["rolename"]) for r in c.get("roles", []))),
                groups=tuple(sorted(str(g["groupname"]) for g in c.get("groups", []))),
                disabled=bool(c.get("disabled", False)),
                textdescription=c.get("textdescription"),
            )
        roles: dict[str, frozenset[Acl]] = {}
        descriptions: dict[str, str | None] = {}
        for r in self._list("listRoles", "roles"):
            roles[str(r["rolename"])] = _acl_set(r.get("acls", []))
            descriptions[str(r["rolename"])] = r.get("textdescription")
        return BrokerState(clients, roles, descriptions)

    def _list(self, command: str, key: str) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        while True:
            (answer,) = self.client.run(
                [{"command": command, "verbose": True, "count": LIST_PAGE, "offset": len(out)}]
            )
            _check([answer])
            data = answer.get("data", {})
            page = data.get(key, [])
            out += page
            if not page or len(out) >= int(data.get("totalCount", 0)):
                return out


# --- Accounts from the settings --------------------------------------------------------------

_shared: dict[str, BrokerAccounts] = {}  # by admin URL
_shared_lock = threading.Lock()


def accounts_from_settings() -> BrokerAccounts | None:
    """The process's admin connection when ``HEARTH_BROKER_ADMIN_URL`` is set, else None.

    Opened on first use and kept (it reconnects by itself), so a CLI command pays one connect
    and the feature service none per request.
    """
    settings = get_settings()
    url = settings.broker_admin_url
    if not url:
        return None
    with _shared_lock:
        if url not in _shared:
            _shared[url] = BrokerAccounts(DynsecClient(url, ca_file=settings.mqtt_ca_file))
        return _shared[url]


def lock_for_change(conn: psycopg.Connection[Any]) -> None:
    """Inside a registry transaction about to change broker accounts: hold off reconciliation
    until it commits or rolls back (see the module docstring)."""
    conn.execute("SELECT pg_advisory_xact_lock_shared(%s)", (REGISTRY_LOCK_KEY,))


# --- Reconciliation --------------------------------------------------------------------------


@dataclass
class SyncReport:
    """What a reconciliation changed; each entry is ``"<name>: <what>"``."""

    devices: int = 0
    created: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    repaired: list[str] = field(default_factory=list)

    @property
    def changes(self) -> int:
        return len(self.created) + len(self.removed) + len(self.repaired)

    def to_json(self) -> dict[str, object]:
        return {
            "devices": self.devices,
            "created": self.created,
            "removed": self.removed,
            "repaired": self.repaired,
        }


class RegistryMismatch(Exception):
    """The broker's accounts belong to another registry; message is one line."""


class RegistryNotReady(ServiceUnavailable):
    """The registry's schema is not migrated yet; message is one line."""


def registry_id(conn: psycopg.Connection[Any]) -> str:
    try:
        row = conn.execute("SELECT id::text FROM registry_identity").fetchone()
    except psycopg.errors.UndefinedTable:
        raise RegistryNotReady(
            "the registry is not migrated yet (python -m collector migrate)"
        ) from None
    if row is None:
        raise RegistryMismatch("registry_identity is empty; run `python -m collector migrate`")
    return str(row[0])


def desired_devices(conn: psycopg.Connection[Any]) -> dict[str, tuple[str, ...]]:
    """Live devices' usernames → their topics (formats this version does not know: none)."""
    out: dict[str, tuple[str, ...]] = {}
    for d in load_live_devices(conn).values():
        if not d.mqtt_username:
            continue
        try:
            out[d.mqtt_username] = device_topics(d.format, d.external_id, d.device_id)
        except ValueError:
            continue
    return out


def _registry_lock(conn: psycopg.Connection[Any], stop: threading.Event | None) -> None:
    """The exclusive registry lock, polled so that waiting never queues ahead of (and blocks)
    new registrations behind a long ``--batch`` transaction."""
    while True:
        row = conn.execute("SELECT pg_try_advisory_lock(%s)", (REGISTRY_LOCK_KEY,)).fetchone()
        if row is not None and row[0]:
            return
        if (stop or threading.Event()).wait(0.2):
            raise InterruptedError("stopped while waiting for the registry lock")


def _plan(
    state: BrokerState,
    desired: Mapping[str, tuple[str, ...]],
    service_passwords: Mapping[str, str],
    keep: frozenset[str],
    report: SyncReport,
) -> list[Command]:
    commands: list[Command] = []
    # Service roles and accounts: ACLs as defined here; clients only where we know the password.
    for name, acls in SERVICE_ROLES.items():
        if name not in state.roles:
            commands.append({"command": "createRole", "rolename": name, "acls": acls})
            report.created.append(f"{name}: service role")
        elif state.roles[name] != _acl_set(acls):
            commands.append({"command": "modifyRole", "rolename": name, "acls": acls})
            report.repaired.append(f"{name}: service role ACLs")
        if name not in state.clients and name in service_passwords:
            commands.append(
                {
                    "command": "createClient",
                    "username": name,
                    "password": service_passwords[name],
                    "roles": [{"rolename": name}],
                }
            )
            report.created.append(f"{name}: service account")
    # Devices.
    for username, topics in sorted(desired.items()):
        role = device_role(username)
        acls = device_acls(topics)
        if role not in state.roles:
            commands.append({"command": "createRole", "rolename": role, "acls": acls})
        elif state.roles[role] != _acl_set(acls):
            commands.append({"command": "modifyRole", "rolename": role, "acls": acls})
            report.repaired.append(f"{username}: topics {', '.join(topics)}")
        client = state.clients.get(username)
        if client is None:
            commands.append(
                {
                    "command": "createClient",
                    "username": username,
                    "roles": [{"rolename": role}],
                    "textdescription": "recreated by hearth broker sync without a password: "
                    "register the device again to issue one",
                }
            )
            report.created.append(f"{username}: recreated without a password")
            continue
        if client.roles != (role,) or client.groups:
            commands.append(
                {
                    "command": "modifyClient",
                    "username": username,
                    "roles": [{"rolename": role}],
                    "groups": [],
                }
            )
            report.repaired.append(f"{username}: roles {list(client.roles)} → [{role}]")
        if client.disabled:
            commands.append({"command": "enableClient", "username": username})
            report.repaired.append(f"{username}: enabled")
    # Accounts and device roles the registry does not know (retired, erased, made by hand).
    for username in sorted(state.clients):
        if username in desired or username in keep:
            continue
        commands.append({"command": "deleteClient", "username": username})
        report.removed.append(f"{username}: not a live device in the registry")
    for role in sorted(state.roles):
        if role.startswith(DEVICE_ROLE_PREFIX) and role[len(DEVICE_ROLE_PREFIX) :] not in desired:
            commands.append({"command": "deleteRole", "rolename": role})
    return commands


def reconcile(
    conn: psycopg.Connection[Any],
    accounts: BrokerAccounts,
    *,
    service_passwords: Mapping[str, str] | None = None,
    rebind: bool = False,
    stop: threading.Event | None = None,
) -> SyncReport:
    """Make the broker's accounts match the registry; idempotent. ``conn`` in autocommit.

    Logs every change. Refuses (:class:`RegistryMismatch`) a broker whose marker role names
    another registry, unless ``rebind`` (the registry was restored or moved).
    """
    report = SyncReport()
    _registry_lock(conn, stop)
    try:
        ours = registry_id(conn)
        desired = desired_devices(conn)
        report.devices = len(desired)
        state = accounts.state()
        bound = state.role_descriptions.get(REGISTRY_MARKER_ROLE, None)
        if REGISTRY_MARKER_ROLE not in state.roles or rebind:
            marker = {"rolename": REGISTRY_MARKER_ROLE, "textdescription": ours, "acls": []}
            verb = "modifyRole" if REGISTRY_MARKER_ROLE in state.roles else "createRole"
            _check(accounts.client.run([{"command": verb, **marker}]))
            if bound != ours:
                report.repaired.append(f"{REGISTRY_MARKER_ROLE}: bound to registry {ours}")
        elif bound != ours:
            raise RegistryMismatch(
                f"the broker at {accounts.client.where} keeps the accounts of registry {bound}, "
                f"but this database is registry {ours}; check HEARTH_DATABASE_URL, or run "
                "`python -m collector broker sync --rebind` if the registry was restored or moved"
            )
        keep = frozenset((*SERVICE_ACCOUNTS, accounts.client.username))
        commands = _plan(state, desired, service_passwords or {}, keep, report)
        # Bounded messages: the plugin answers each command, and a page of answers must fit.
        for start in range(0, len(commands), 500):
            _check(accounts.client.run(commands[start : start + 500]), tolerate=_ALREADY)
    finally:
        conn.execute("SELECT pg_advisory_unlock(%s)", (REGISTRY_LOCK_KEY,))
    for line in report.created:
        log.info("broker sync: created %s", line)
    for line in report.removed:
        log.info("broker sync: removed %s", line)
    for line in report.repaired:
        log.info("broker sync: repaired %s", line)
    return report
