"""Registry, consent and data-subject operations, shared by the CLI and the HTTP admin API.

- :mod:`~hearth.admin.users`: pseudonymous users and their zones;
- :mod:`~hearth.admin.devices`: registration (MQTT credentials), rotation, retirement;
- :mod:`~hearth.admin.consent`: grants and withdrawals in the ledger;
- :mod:`~hearth.admin.purge`: deleting a category's data and verifying nothing is left;
- :mod:`~hearth.admin.privacy`: data-subject access (export) and erasure;
- :mod:`~hearth.admin.audit`: the audit log, without personal data.

Every function takes a sync psycopg connection and runs in its own transaction (none of its own
inside the caller's, e.g. a ``--batch`` import), so a failure leaves nothing half done. Errors a
caller can fix raise the typed errors of :mod:`hearth.errors` with a one-line message:
:class:`~hearth.errors.NotFound` (an unknown user or device; ``code`` ``unknown_user`` /
``unknown_device``), :class:`~hearth.errors.Conflict` (an id another registration holds),
:class:`~hearth.errors.Invalid` (a bad value), :class:`~hearth.errors.Unavailable` (the broker
a registration needs), :class:`~hearth.admin.purge.PurgeIncomplete` (a purge that left rows).
The CLI and the HTTP layer map them by class.
"""

from hearth.admin.audit import audit_subject, erasure_record
from hearth.admin.consent import (
    consent_history,
    evidence_hash,
    grant_consent,
    purge_withdrawn,
    record_withdrawal,
    withdraw_consent,
)
from hearth.admin.devices import (
    DeviceCredentials,
    DeviceInfo,
    list_devices,
    register_device,
    retire_device,
    revoke_broker_accounts,
)
from hearth.admin.privacy import erase_user, export_document, export_text, export_user
from hearth.admin.purge import PurgeIncomplete, PurgeReport, purge_category_rows
from hearth.admin.users import add_user
from hearth.ledger import ConsentEvent

__all__ = [
    "ConsentEvent",
    "DeviceCredentials",
    "DeviceInfo",
    "PurgeIncomplete",
    "PurgeReport",
    "add_user",
    "audit_subject",
    "consent_history",
    "erase_user",
    "erasure_record",
    "evidence_hash",
    "export_document",
    "export_text",
    "export_user",
    "grant_consent",
    "list_devices",
    "purge_category_rows",
    "purge_withdrawn",
    "record_withdrawal",
    "register_device",
    "retire_device",
    "revoke_broker_accounts",
    "withdraw_consent",
]
