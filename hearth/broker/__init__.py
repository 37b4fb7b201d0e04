"""Device accounts in the MQTT broker, through Mosquitto's dynamic-security plugin.

The plugin keeps clients (a username and a salted PBKDF2-SHA512 password hash), roles (lists of
ACLs) and the links between them in its own JSON file, and changes them while the broker runs
through JSON commands published on ``$CONTROL/dynamic-security/v1``: no password files, no
reloads, no signals.

- :mod:`~hearth.broker.control`: the control-topic client (requests, answers, reconnects);
- :mod:`~hearth.broker.acl`: who may do what (service roles, one role per device);
- :mod:`~hearth.broker.accounts`: creating, rotating and deleting accounts.

One path for every change. A clear password exists only while a device is being registered,
so :mod:`hearth.admin` calls :class:`BrokerAccounts` itself, inside the registration's
transaction: the device can connect from the moment the registration commits, whether it came
from the CLI, ``--batch`` or the HTTP admin API. Retirement and erasure delete the account the
same way, which also disconnects the device. ``python -m collector broker sync [--watch]``
(``collector.broker.sync``) repairs drift: it recreates missing accounts, removes accounts the
registry does not know or has retired, and fixes ACLs. A recreated account has **no password**
(none is kept anywhere): it cannot log in until the device is registered again, which issues a
new one.

Registrations hold a shared advisory lock (:data:`REGISTRY_LOCK_KEY`) from their broker call to
their commit, and a reconciliation holds it exclusively, so it never mistakes an account created
for a registration that has not committed yet for an unknown one. The broker-admin account is
used only through this package.
"""

from hearth.broker.accounts import (
    REGISTRY_LOCK_KEY,
    BrokerAccounts,
    BrokerState,
    ClientState,
    accounts_from_settings,
    lock_for_change,
)
from hearth.broker.acl import (
    BROKER_ADMIN_USERNAME,
    COLLECTOR_USERNAME,
    DEFAULT_ACL_ACCESS,
    DEVICE_ROLE_PREFIX,
    OPERATOR_USERNAME,
    REGISTRY_MARKER_ROLE,
    SERVICE_ACCOUNTS,
    SERVICE_ROLES,
    SERVICE_USERNAME_PREFIX,
    acl_set,
    device_acls,
    device_role,
)
from hearth.broker.control import (
    BrokerError,
    BrokerUnavailable,
    Command,
    DynsecClient,
    check_answers,
)

__all__ = [
    "BROKER_ADMIN_USERNAME",
    "COLLECTOR_USERNAME",
    "DEFAULT_ACL_ACCESS",
    "DEVICE_ROLE_PREFIX",
    "OPERATOR_USERNAME",
    "REGISTRY_LOCK_KEY",
    "REGISTRY_MARKER_ROLE",
    "SERVICE_ACCOUNTS",
    "SERVICE_ROLES",
    "SERVICE_USERNAME_PREFIX",
    "BrokerAccounts",
    "BrokerError",
    "BrokerState",
    "BrokerUnavailable",
    "ClientState",
    "Command",
    "DynsecClient",
    "accounts_from_settings",
    "acl_set",
    "check_answers",
    "device_acls",
    "device_role",
    "lock_for_change",
]
