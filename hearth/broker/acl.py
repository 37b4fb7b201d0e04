"""Who may do what in the broker: the service accounts' roles and each device's role.

Every device has one role, ``device-<username>``, granting exactly its topics
(:meth:`hearth.formats.DeviceFormat.device_topics`): publish, and subscribe for its own command
topics. The collector (``hearth-collector``) may subscribe to everything (``$share/…``
included) and publish nothing; the operator (``hearth-operator``: bench and demo publishers) may
do both; the broker-admin account (``hearth-broker-admin``) may only talk to the plugin.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

SERVICE_USERNAME_PREFIX = "hearth-"  # device usernames may not take it
COLLECTOR_USERNAME = f"{SERVICE_USERNAME_PREFIX}collector"
OPERATOR_USERNAME = f"{SERVICE_USERNAME_PREFIX}operator"
BROKER_ADMIN_USERNAME = f"{SERVICE_USERNAME_PREFIX}broker-admin"
SERVICE_ACCOUNTS = (COLLECTOR_USERNAME, OPERATOR_USERNAME, BROKER_ADMIN_USERNAME)
DEVICE_ROLE_PREFIX = "device-"
# A role no client holds; its description names the registry whose accounts this broker keeps.
REGISTRY_MARKER_ROLE = f"{SERVICE_USERNAME_PREFIX}registry"

# Anything no ACL grants: devices publish nothing and subscribe to nothing but their topics.
DEFAULT_ACL_ACCESS = {
    "publishClientSend": False,
    "publishClientReceive": True,
    "subscribe": False,
    "unsubscribe": True,
}

Acl = tuple[str, str, bool]  # (acltype, topic, allow)


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


def acl_set(acls: Iterable[Mapping[str, Any]]) -> frozenset[Acl]:
    return frozenset(
        (str(a["acltype"]), str(a["topic"]), bool(a.get("allow", False))) for a in acls
    )
