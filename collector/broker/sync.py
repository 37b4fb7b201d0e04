"""``python -m collector broker sync [--watch]``: the broker's accounts kept in step with the
registry.

Registration, retirement and erasure change the broker's accounts themselves
(:mod:`hearth.broker`); :func:`reconcile` repairs drift: it recreates missing accounts, removes
accounts the registry does not know or has retired, and fixes ACLs. A recreated account has
**no password** (none is kept anywhere): it cannot log in until the device is registered
again, which issues a new one. A reconciliation holds the registry lock
(:data:`hearth.broker.REGISTRY_LOCK_KEY`) exclusively, so it never mistakes an account created
for a registration that has not committed yet for an unknown one.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg

from collector.broker.local_setup import AuthPaths, service_passwords
from hearth.broker import (
    DEVICE_ROLE_PREFIX,
    REGISTRY_LOCK_KEY,
    REGISTRY_MARKER_ROLE,
    SERVICE_ACCOUNTS,
    SERVICE_ROLES,
    BrokerAccounts,
    BrokerState,
    BrokerUnavailable,
    Command,
    DynsecClient,
    acl_set,
    check_answers,
    device_acls,
    device_role,
)
from hearth.db import Conn, DatabaseUnavailable
from hearth.errors import ConfigError, Unavailable
from hearth.formats import UnknownFormat, device_topics
from hearth.ledger import REGISTRY_CHANNEL, load_live_devices

log = logging.getLogger("hearth.broker")

SYNC_APPLICATION_NAME = "hearth-broker-sync"
# Errors the plugin answers that mean "already as wanted" for an idempotent caller.
_ALREADY = ("already exists", "not found")
COMMANDS_PER_MESSAGE = 500  # the plugin answers each command, and a page of answers must fit


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


class RegistryMismatch(ConfigError):
    """The broker's accounts belong to another registry; message is one line."""


class RegistryNotReady(Unavailable):
    """The registry's schema is not migrated yet; message is one line."""


def registry_id(conn: Conn) -> str:
    try:
        row = conn.execute("SELECT id::text FROM registry_identity").fetchone()
    except psycopg.errors.UndefinedTable:
        raise RegistryNotReady(
            "the registry is not migrated yet (python -m collector migrate)"
        ) from None
    if row is None:
        raise RegistryMismatch("registry_identity is empty; run `python -m collector migrate`")
    return str(row[0])


def desired_devices(conn: Conn) -> dict[str, tuple[str, ...]]:
    """Live devices' usernames → their topics (formats this version does not know: none)."""
    out: dict[str, tuple[str, ...]] = {}
    for d in load_live_devices(conn).values():
        if not d.mqtt_username:
            continue
        try:
            out[d.mqtt_username] = device_topics(d.format, d.external_id, d.device_id)
        except UnknownFormat:
            continue
    return out


def _registry_lock(conn: Conn, stop: threading.Event | None) -> None:
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
    """The commands that make the broker's ``state`` what the registry wants (noted in
    ``report``)."""
    return [
        *_plan_services(state, service_passwords, report),
        *_plan_devices(state, desired, report),
        *_plan_removals(state, desired, keep, report),
    ]


def _plan_services(
    state: BrokerState, service_passwords: Mapping[str, str], report: SyncReport
) -> list[Command]:
    """Service roles with the ACLs defined here; service clients only where we know the
    password."""
    commands: list[Command] = []
    for name, acls in SERVICE_ROLES.items():
        if name not in state.roles:
            commands.append({"command": "createRole", "rolename": name, "acls": acls})
            report.created.append(f"{name}: service role")
        elif state.roles[name] != acl_set(acls):
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
    return commands


def _plan_devices(
    state: BrokerState, desired: Mapping[str, tuple[str, ...]], report: SyncReport
) -> list[Command]:
    """Each live device: its role with exactly its topics, its client holding only that role,
    enabled. A missing client is recreated without a password."""
    commands: list[Command] = []
    for username, topics in sorted(desired.items()):
        role = device_role(username)
        acls = device_acls(topics)
        if role not in state.roles:
            commands.append({"command": "createRole", "rolename": role, "acls": acls})
        elif state.roles[role] != acl_set(acls):
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
    return commands


def _plan_removals(
    state: BrokerState,
    desired: Mapping[str, tuple[str, ...]],
    keep: frozenset[str],
    report: SyncReport,
) -> list[Command]:
    """Accounts and device roles the registry does not know (retired, erased, made by hand)."""
    commands: list[Command] = []
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
    conn: Conn,
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
            check_answers(accounts.client.run([{"command": verb, **marker}]))
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
        for start in range(0, len(commands), COMMANDS_PER_MESSAGE):
            chunk = commands[start : start + COMMANDS_PER_MESSAGE]
            check_answers(accounts.client.run(chunk), tolerate=_ALREADY)
    finally:
        conn.execute("SELECT pg_advisory_unlock(%s)", (REGISTRY_LOCK_KEY,))
    for line in report.created:
        log.info("broker sync: created %s", line)
    for line in report.removed:
        log.info("broker sync: removed %s", line)
    for line in report.repaired:
        log.info("broker sync: repaired %s", line)
    return report


def sync(
    conn: Conn,
    admin_url: str,
    *,
    paths: AuthPaths | None = None,
    ca_file: Path | None = None,
    rebind: bool = False,
) -> SyncReport:
    """One reconciliation of the broker's accounts with the registry (:func:`reconcile`)."""
    client = DynsecClient(admin_url, ca_file=ca_file)
    try:
        return _reconcile(conn, BrokerAccounts(client), paths, rebind=rebind)
    finally:
        client.close()


def _reconcile(
    conn: Conn,
    accounts: BrokerAccounts,
    paths: AuthPaths | None,
    *,
    rebind: bool = False,
    stop: threading.Event | None = None,
) -> SyncReport:
    return reconcile(
        conn, accounts, service_passwords=service_passwords(paths), rebind=rebind, stop=stop
    )


def watch(
    database_url: str,
    admin_url: str,
    *,
    paths: AuthPaths | None = None,
    ca_file: Path | None = None,
    interval_s: float = 60.0,
    debounce_s: float = 0.2,
    stop: threading.Event | None = None,
    on_watching: Callable[[], None] | None = None,
) -> None:
    """Reconcile at start, on every registry NOTIFY (a burst becomes one pass), whenever the
    broker connection comes back, and every ``interval_s`` (drift made by hand), until ``stop``.

    Survives restarts of the database and of the broker: a lost connection is logged and
    retried with a short backoff, and every reconnection reconciles first (NOTIFYs sent while
    away are lost, the registry's state is not). Only a broker bound to another registry
    stops it (:class:`ConfigError`).
    """
    stop = stop or threading.Event()
    wake = threading.Event()  # the broker connection came back
    client: DynsecClient | None = None
    backoff = 0.5
    said = ""  # the last warning: a long outage logs once, not every retry

    def watching() -> None:
        nonlocal said, backoff
        said, backoff = "", 0.5
        if on_watching is not None:
            on_watching()

    try:
        while not stop.is_set():
            try:
                if client is None:
                    client = DynsecClient(admin_url, ca_file=ca_file, on_connect=wake.set)
                accounts = BrokerAccounts(client)
                _watch_connected(
                    database_url, accounts, paths, interval_s, debounce_s, stop, wake, watching
                )
                return
            except (psycopg.OperationalError, DatabaseUnavailable) as exc:
                text = str(exc).strip()
                warning = f"database unavailable ({text.splitlines()[0] if text else type(exc)})"
            except (BrokerUnavailable, RegistryNotReady) as exc:
                warning = str(exc)
            except InterruptedError:
                return
            if warning != said:
                log.warning("broker sync: %s; retrying", warning)
                said = warning
            stop.wait(backoff)
            backoff = min(backoff * 2, 5.0)
    finally:
        if client is not None:
            client.close()


def _watch_connected(
    database_url: str,
    accounts: BrokerAccounts,
    paths: AuthPaths | None,
    interval_s: float,
    debounce_s: float,
    stop: threading.Event,
    wake: threading.Event,
    on_watching: Callable[[], None],
) -> None:
    # Named, so an operator (or a test) can find the watcher's sessions in pg_stat_activity.
    kwargs: dict[str, Any] = {
        "autocommit": True,
        "application_name": SYNC_APPLICATION_NAME,
        "connect_timeout": 5,
    }
    with psycopg.connect(database_url, **kwargs) as listener:
        listener.execute(f"LISTEN {REGISTRY_CHANNEL}")
        with psycopg.connect(database_url, **kwargs) as conn:
            wake.clear()
            report = _reconcile(conn, accounts, paths, stop=stop)
            log.info(
                "broker sync: watching the registry (%d devices, %d changes at start)",
                report.devices,
                report.changes,
            )
            on_watching()
            last = time.monotonic()
            while not stop.is_set():
                pending = wake.is_set()
                for _ in listener.notifies(timeout=0.5, stop_after=1):
                    pending = True
                while pending and not stop.is_set():  # drain the burst, then one pass
                    if not list(listener.notifies(timeout=debounce_s, stop_after=1)):
                        break
                if pending or time.monotonic() - last >= interval_s:
                    wake.clear()
                    _reconcile(conn, accounts, paths, stop=stop)
                    last = time.monotonic()
