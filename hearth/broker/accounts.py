"""Device and service accounts in the broker, in terms of the plugin's commands.

A clear password exists only while a device is being registered, so :mod:`hearth.admin` calls
:class:`BrokerAccounts` itself, inside the registration's transaction: the device can connect
from the moment the registration commits. Registrations hold a shared advisory lock
(:data:`REGISTRY_LOCK_KEY`, :func:`lock_for_change`) from their broker call to their commit; a
reconciliation (``collector.broker.sync``) holds it exclusively.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from hearth.broker.acl import Acl, acl_set, device_acls, device_role
from hearth.broker.control import Command, DynsecClient, check_answers
from hearth.db import Conn
from hearth.settings import get_settings

# Registrations (shared) vs reconciliation (exclusive); "BROKR".
REGISTRY_LOCK_KEY = 0x42524F4B52
LIST_PAGE = 1000


@dataclass(frozen=True, slots=True)
class ClientState:
    username: str
    roles: tuple[str, ...]
    groups: tuple[str, ...]
    disabled: bool


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
        check_answers(answers, tolerate=("already exists",))
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
        check_answers(answers)

    def set_device_password(self, username: str, password: str, topics: Sequence[str]) -> None:
        """Credential rotation: the new password replaces the old one at once (the plugin drops
        connections that used the old one). An account missing from the broker is created."""
        answers = self.client.run(
            [{"command": "setClientPassword", "username": username, "password": password}]
        )
        if answers[0].get("error") == "Client not found":
            self.create_device(username, password, topics)
            return
        check_answers(answers)

    def delete_devices(self, usernames: Iterable[str]) -> None:
        """Delete clients (which disconnects them) and their roles; missing ones are fine."""
        commands: list[Command] = []
        for u in usernames:
            commands += [
                {"command": "deleteClient", "username": u},
                {"command": "deleteRole", "rolename": device_role(u)},
            ]
        check_answers(self.client.run(commands), tolerate=("not found",))

    def state(self) -> BrokerState:
        """Every client (with its roles) and role (with its ACLs), page by page."""
        clients: dict[str, ClientState] = {}
        for c in self._list("listClients", "clients"):
            clients[str(c["username"])] = ClientState(
                username=str(c["username"]),
                roles=tuple(sorted(str(r["rolename"]) for r in c.get("roles", []))),
                groups=tuple(sorted(str(g["groupname"]) for g in c.get("groups", []))),
                disabled=bool(c.get("disabled", False)),
            )
        roles: dict[str, frozenset[Acl]] = {}
        descriptions: dict[str, str | None] = {}
        for r in self._list("listRoles", "roles"):
            roles[str(r["rolename"])] = acl_set(r.get("acls", []))
            descriptions[str(r["rolename"])] = r.get("textdescription")
        return BrokerState(clients, roles, descriptions)

    def _list(self, command: str, key: str) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        while True:
            (answer,) = self.client.run(
                [{"command": command, "verbose": True, "count": LIST_PAGE, "offset": len(out)}]
            )
            check_answers([answer])
            data = answer.get("data", {})
            page = data.get(key, [])
            out += page
            if not page or len(out) >= int(data.get("totalCount", 0)):
                return out


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


def lock_for_change(conn: Conn) -> None:
    """Inside a registry transaction about to change broker accounts: hold off reconciliation
    until it commits or rolls back (see the module docstring)."""
    conn.execute("SELECT pg_advisory_xact_lock_shared(%s)", (REGISTRY_LOCK_KEY,))
