"""Registry, consent and data-subject operations, shared by the CLI and the HTTP admin API.

Every function takes a sync psycopg connection and runs in its own transaction (a savepoint
when the caller already holds one, e.g. a ``--batch`` import), so a failure leaves nothing half
done. Errors a caller can fix (unknown user, bad time zone, duplicate device) raise
:class:`AdminError`, a :class:`hearth.cli.UsageError`, with a one-line message.

Purges (withdrawal, erasure) find their tables through ``information_schema`` instead of a
list: any table with ``user_id`` and ``signal`` columns (raw readings, rollups added later) is
purged by category, any table with a ``user_id`` column is erased, so a new table cannot be
forgotten. Each purge writes an ``audit_log`` record whose subject is a keyed hash of the user
id and whose details are counts per table — no personal data.

A withdrawal or erasure runs in two transactions around the consent gate (hearth.ledger): the
first takes the INGEST gate exclusively and commits the ledger change, so from then on every
collector commit refuses the category (or user); the second takes the DERIVED gate exclusively,
deletes, and runs a final verification query. The audit record says ``complete`` only when
that query finds nothing left; otherwise it lists what is left and :class:`PurgeIncomplete`
is raised (the CLI exits non-zero). Running the command again finishes the job.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import re
import secrets
import time
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any
from uuid import UUID
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

from hearth import ledger
from hearth.broker import (
    SERVICE_USERNAME_PREFIX,
    BrokerAccounts,
    BrokerError,
    BrokerUnavailable,
    accounts_from_settings,
    lock_for_change,
)
from hearth.cli import Incomplete, UsageError
from hearth.ledger import (
    CONSENT_CHANNEL,
    CONSENT_EVENT_COLUMNS,
    CURRENT_NOTICE_VERSION,
    FORMATS,
    GATE_DERIVED,
    GATE_INGEST,
    RESERVED_TOPIC_ROOTS,
    ConsentEvent,
    consent_event_from_row,
    consent_notification,
    device_topics,
    gate_sql,
    shows_features_sql,
    withhold_features_sql,
)
from hearth.ledger import consent_history as _ledger_history
from hearth.pseudonym import DOMAIN_AUDIT_SUBJECT, keyed_hash
from hearth.settings import get_settings
from hearth.signals import PURPOSE_CREDIT_SCORING, SIGNALS, Category

Conn = psycopg.Connection[tuple[Any, ...]]
log = logging.getLogger(__name__)

_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")  # users.user_id / devices.device_id CHECK
_TOPIC_PART = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")  # one topic level of an external id
_KIND = re.compile(r"^[a-z][a-z0-9_]{0,31}$")


class AdminError(UsageError):
    """An admin request that cannot be done as asked; the message is one line."""


# --- Mosquitto password hashes ---------------------------------------------------------------

MOSQUITTO_PBKDF2_ITERATIONS = 101  # mosquitto_passwd 2.0's default


def mosquitto_password_hash(
    password: str, *, salt: bytes | None = None, iterations: int = MOSQUITTO_PBKDF2_ITERATIONS
) -> str:
    """``$7$<iterations>$<salt>$<hash>``: PBKDF2-SHA512 as ``mosquitto_passwd`` 2.0 writes it,
    the same hash the dynamic-security plugin keeps (``broker init`` writes the service accounts
    into the plugin's first file with it). The low iteration count is Mosquitto's own default
    and is safe because every password is 192 random bits (nothing to guess).
    """
    salt = salt if salt is not None else secrets.token_bytes(12)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations)
    b64 = base64.b64encode
    return f"$7${iterations}${b64(salt).decode()}${b64(digest).decode()}"


def verify_mosquitto_password(password: str, stored: str) -> bool:
    parts = stored.split("$")
    if len(parts) != 5 or parts[1] != "7":
        return False
    salt = base64.b64decode(parts[3])
    expected = mosquitto_password_hash(password, salt=salt, iterations=int(parts[2]))
    return secrets.compare_digest(expected, stored)


# --- Users -----------------------------------------------------------------------------------


def _atomic(conn: Conn) -> AbstractContextManager[object]:
    """A transaction of our own, or none inside the caller's: a ``--batch`` import is one
    transaction and rolls back as a whole on any error, so per-item savepoints (two extra
    round trips each) would buy nothing."""
    if conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE:
        return conn.transaction()
    return nullcontext()


def _check_id(what: str, value: str) -> None:
    if not _ID.match(value):
        raise AdminError(f"{what} {value!r}: use 1-64 of A-Z a-z 0-9 . _ : -")


def check_tz(tz: str) -> str:
    try:
        ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError):
        raise AdminError(
            f"unknown IANA time zone {tz!r} (e.g. Europe/Berlin, Asia/Shanghai)"
        ) from None
    return tz


def _user_tz(conn: Conn, user_id: str) -> str | None:
    row = conn.execute("SELECT tz FROM users WHERE user_id = %s", (user_id,)).fetchone()
    return None if row is None else str(row[0])


def _require_user(conn: Conn, user_id: str, *, lock: bool = False) -> None:
    """Unknown user → AdminError. ``lock`` also locks the user's row against other consent
    changes until the transaction ends (FOR NO KEY UPDATE leaves foreign-key checks free)."""
    found = (
        conn.execute(
            "SELECT 1 FROM users WHERE user_id = %s FOR NO KEY UPDATE", (user_id,)
        ).fetchone()
        if lock
        else _user_tz(conn, user_id)
    )
    if found is None:
        raise AdminError(f"unknown user {user_id!r}; add it with `python -m collector users add`")


def add_user(conn: Conn, user_id: str, tz: str = "UTC") -> bool:
    """Register a pseudonymous user with an IANA zone; the same call again is a no-op.

    Returns whether the user was created (False: it existed already, with this zone)."""
    _check_id("user id", user_id)
    check_tz(tz)
    with conn.transaction():
        cur = conn.execute(
            "INSERT INTO users (user_id, tz) VALUES (%s, %s) ON CONFLICT (user_id) DO NOTHING",
            (user_id, tz),
        )
        created = cur.rowcount == 1
        existing = _user_tz(conn, user_id)
    if existing != tz:
        raise AdminError(f"user {user_id!r} already exists with time zone {existing}, not {tz}")
    return created


# --- Devices ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DeviceCredentials:
    """What ``devices add`` hands out once: the password is not stored anywhere in clear."""

    device_id: str
    user_id: str
    kind: str
    format: str
    external_id: str
    mqtt_username: str
    mqtt_password: str
    topics: tuple[str, ...]
    bound_at: datetime | None = None  # readings dated earlier are refused
    rotated: bool = False  # the device was registered already: this is its new password

    def to_json(self) -> dict[str, object]:
        bound = self.bound_at.isoformat() if self.bound_at else None
        return {**asdict(self), "topics": list(self.topics), "bound_at": bound}


@dataclass(frozen=True, slots=True)
class DeviceInfo:
    device_id: str
    user_id: str
    kind: str
    format: str
    external_id: str
    tz: str | None
    mqtt_username: str | None
    registered_at: datetime
    retired_at: datetime | None
    bound_at: datetime | None = None  # readings dated earlier are refused

    @property
    def topics(self) -> tuple[str, ...]:
        return device_topics(self.format, self.external_id, self.device_id)

    def to_json(self) -> dict[str, object]:
        return {
            **asdict(self),
            "registered_at": self.registered_at.isoformat(),
            "retired_at": self.retired_at.isoformat() if self.retired_at else None,
            "bound_at": self.bound_at.isoformat() if self.bound_at else None,
            "topics": list(self.topics),
        }


def _check_external_id(format: str, external_id: str) -> None:
    if format not in FORMATS:
        raise AdminError(f"unknown device format {format!r}; known: {', '.join(FORMATS)}")
    parts = external_id.split("/")
    # OwnTracks devices are named "<user>/<device>" as in their topic; every other format uses
    # one topic level, so no id can be a prefix of another's topics.
    if len(parts) != (2 if format == "owntracks" else 1) or not all(
        _TOPIC_PART.match(p) for p in parts
    ):
        shape = "<user>/<device>" if format == "owntracks" else "one topic level"
        raise AdminError(
            f"external id {external_id!r} for {format}: expected {shape} of A-Z a-z 0-9 . _ : -"
        )
    if format == "shelly" and parts[0] in RESERVED_TOPIC_ROOTS:
        raise AdminError(f"external id {external_id!r} is a reserved topic root")
    if format == "zigbee2mqtt" and external_id == "bridge":
        raise AdminError("external id 'bridge' is Zigbee2MQTT's own topic")


_DEVICE_COLUMNS = (
    "device_id, user_id, kind, format, external_id, tz, mqtt_username, registered_at, retired_at, "
    "bound_at"
)


def _device_info(row: tuple[Any, ...]) -> DeviceInfo:
    return DeviceInfo(*row)


def register_device(
    conn: Conn,
    *,
    user_id: str,
    kind: str,
    format: str,
    external_id: str,
    tz: str | None = None,
    user_tz: str | None = None,
    bound_at: datetime | None = None,
    broker: BrokerAccounts | None = None,
) -> DeviceCredentials:
    """Bind a new device to a user and mint its MQTT credentials (returned once, kept nowhere).

    ``user_tz`` creates the user when absent (the simulator registers a household in one call).
    The canonical ``hearth`` format names the device by its topic, so its device id is its
    external id; other formats get a generated id. The MQTT username is the device id.

    The collector refuses readings dated before ``bound_at`` (default now; earlier for imports
    and simulations of a device the user already had). An external id another user's device
    had is bound no earlier than ``HEARTH_MAX_CLOCK_SKEW_S`` after that device was retired, so
    nothing its first owner could have sent, even with a fast clock, reaches the new owner.

    The same user, format and external id again (a live device) rotates its password instead:
    same device (and binding time), new credentials (``rotated``), an audit record, and the old
    password stops working at once. The broker account (``broker``, default from
    ``HEARTH_BROKER_ADMIN_URL``; none configured: registry only) is created or changed before
    the registration commits, so the device can connect as soon as it has; an unreachable
    broker fails the registration.
    """
    _check_at(bound_at)
    _check_id("user id", user_id)
    if not _KIND.match(kind):
        raise AdminError(f"device kind {kind!r}: use a lower-case word like phone, plug, router")
    _check_external_id(format, external_id)
    if tz is not None:
        check_tz(tz)
    if user_tz is not None:
        check_tz(user_tz)
    if format == "hearth":
        device_id = external_id
        _check_id("device id", device_id)
        if device_id.startswith(SERVICE_USERNAME_PREFIX):
            raise AdminError(f"device id {device_id!r}: the prefix 'hearth-' is reserved")
    else:
        device_id = "d" + secrets.token_hex(8)
    accounts = broker if broker is not None else accounts_from_settings()
    password = secrets.token_urlsafe(24)
    rotated = False
    made: list[str] = []  # the broker account this registration created
    with _unmade_on_rollback(conn, accounts, made), _atomic(conn):
        if user_tz is not None:
            conn.execute(
                "INSERT INTO users (user_id, tz) VALUES (%s, %s) ON CONFLICT (user_id) DO NOTHING",
                (user_id, user_tz),
            )
        else:
            _require_user(conn, user_id)
        # ON CONFLICT without a target covers the primary key, the unique username and the
        # partial "one live device per (format, external id)" index; the SELECT behind it only
        # runs on a conflict. Two statements per device keep --batch imports fast.
        inserted = conn.execute(
            "INSERT INTO devices (device_id, user_id, kind, format, external_id, tz, "
            "mqtt_username, bound_at) VALUES (%(device)s, %(user)s, "
            "%(kind)s, %(format)s, %(external)s, %(tz)s, %(device)s, "
            "greatest(coalesce(%(bound_at)s::timestamptz, now()), "
            "(SELECT max(p.retired_at) FROM devices p WHERE p.format = %(format)s "
            "AND p.external_id = %(external)s AND p.retired_at IS NOT NULL "
            "AND p.user_id <> %(user)s) "
            "+ make_interval(secs => %(skew)s))) "
            "ON CONFLICT DO NOTHING RETURNING device_id, bound_at",
            {
                "device": device_id,
                "user": user_id,
                "kind": kind,
                "format": format,
                "external": external_id,
                "tz": tz,
                "bound_at": bound_at,
                "skew": get_settings().max_clock_skew_s,
            },
        ).fetchone()
        if inserted is not None and bound_at is not None and inserted[1] > bound_at:
            raise AdminError(
                f"{format} device {external_id!r} cannot be bound from {bound_at.isoformat()}: "
                f"another user's device had this id until {inserted[1].isoformat()} "
                "(its retirement plus HEARTH_MAX_CLOCK_SKEW_S)"
            )
        if inserted is None:
            device_id = _registered_again(conn, user_id, kind, format, external_id, device_id)
            rotated = True
            write_audit(conn, "rotate_device_credentials", user_id, {"device_id": device_id})
            inserted = conn.execute(
                "SELECT device_id, bound_at FROM devices WHERE device_id = %s", (device_id,)
            ).fetchone()
            assert inserted is not None
        topics = device_topics(format, external_id, device_id)
        if accounts is not None:
            lock_for_change(conn)
            if rotated:
                accounts.set_device_password(device_id, password, topics)
            else:
                accounts.create_device(device_id, password, topics)
                made.append(device_id)
    return DeviceCredentials(
        device_id=device_id,
        user_id=user_id,
        kind=kind,
        format=format,
        external_id=external_id,
        mqtt_username=device_id,
        mqtt_password=password,
        topics=topics,
        bound_at=inserted[1],
        rotated=rotated,
    )


@contextmanager
def _unmade_on_rollback(
    conn: Conn, accounts: BrokerAccounts | None, made: list[str]
) -> Iterator[None]:
    """If the registration rolls back after its broker account was made, take the account
    away again (a later `broker sync` would, too; its password was never shown to anyone).
    Inside a caller's transaction (``--batch``) the caller does this for all its lines."""
    try:
        yield
    except BaseException:
        if made and conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE:
            revoke_broker_accounts(made, broker=accounts)
        raise


def _registered_again(
    conn: Conn, user_id: str, kind: str, format: str, external_id: str, device_id: str
) -> str:
    """The device id to rotate when (user, format, external id) is this user's live device;
    otherwise why the registration is refused."""
    clash = conn.execute(
        "SELECT device_id, retired_at IS NULL, user_id, kind FROM devices "
        "WHERE (format = %s AND external_id = %s AND retired_at IS NULL) OR device_id = %s "
        "ORDER BY retired_at IS NULL DESC LIMIT 1",
        (format, external_id, device_id),
    ).fetchone()
    if clash is None:  # a random-id collision (2^-64): nothing to explain
        raise AdminError(f"could not register {format} device {external_id!r}; retry")
    existing, live, owner, existing_kind = clash
    if live and owner == user_id:
        if existing_kind != kind:
            raise AdminError(
                f"{format} device {external_id!r} is already registered as a {existing_kind} "
                f"(device {existing}); retire it first to register it as a {kind}"
            )
        return str(existing)
    state = "live" if live else "retired"
    raise AdminError(
        f"{format} device {external_id!r} is already registered ({state} device "
        f"{existing}{'' if owner == user_id else ' of another user'}); retire it first"
        + ("" if live else ", or choose a new id: a device id is never reused")
    )


def revoke_broker_accounts(
    usernames: list[str], *, conn: Conn | None = None, broker: BrokerAccounts | None = None
) -> None:
    """Delete devices' broker accounts, which also disconnects them. Retirement and erasure
    call it inside their transaction (``conn``: it then holds off reconciliation until the
    commit), so a device cannot send anything after its retirement or erasure commits; a
    registration that rolled back calls it to take back the account it made.

    An unreachable broker does not stop the change (the collector already refuses a retired
    device's data): the accounts go at the next ``python -m collector broker sync``, which the
    watcher runs when the broker is back.
    """
    if not usernames:
        return
    try:
        accounts = broker if broker is not None else accounts_from_settings()
        if accounts is None:
            return
        if conn is not None:
            lock_for_change(conn)
        accounts.delete_devices(usernames)
    except (BrokerUnavailable, BrokerError) as exc:
        log.warning(
            "%s; the broker accounts of %s are removed by the next `broker sync`",
            exc,
            ", ".join(usernames),
        )


def retire_device(
    conn: Conn, device_id: str, *, broker: BrokerAccounts | None = None
) -> DeviceInfo:
    """Unbind a device: its messages are rejected and its broker account is deleted, which
    disconnects it (see :func:`revoke_broker_accounts`).

    Its stored data stays (it is the user's, bound by ``user_id``); retiring twice is a no-op
    in the registry and deletes the broker account again if it is still there.
    """
    with conn.transaction():
        row = conn.execute(
            "UPDATE devices SET retired_at = coalesce(retired_at, now()) WHERE device_id = %s "
            f"RETURNING {_DEVICE_COLUMNS}",
            (device_id,),
        ).fetchone()
        if row is not None:
            info = _device_info(row)
            revoke_broker_accounts([info.mqtt_username or info.device_id], conn=conn, broker=broker)
    if row is None:
        raise AdminError(f"unknown device {device_id!r}")
    return info


def list_devices(conn: Conn, user_id: str | None = None) -> list[DeviceInfo]:
    if user_id is not None:
        _require_user(conn, user_id)
    rows = conn.execute(
        f"SELECT {_DEVICE_COLUMNS} FROM devices "
        "WHERE %(user)s::text IS NULL OR user_id = %(user)s ORDER BY user_id, registered_at",
        {"user": user_id},
    ).fetchall()
    return [_device_info(r) for r in rows]


# --- Consent ---------------------------------------------------------------------------------


def _category(value: str) -> Category:
    try:
        return Category(value)
    except ValueError:
        known = ", ".join(c.value for c in Category)
        raise AdminError(f"unknown data category {value!r}; known: {known}") from None


def _purpose(value: str) -> str:
    if value not in ledger.PURPOSES:
        known = ", ".join(sorted(ledger.PURPOSES))
        raise AdminError(f"unknown purpose {value!r}; known: {known}")
    return value


def _check_at(at: datetime | None) -> None:
    """An explicit time needs an offset and may not lie in the future beyond the clock-skew
    allowance (``HEARTH_MAX_CLOCK_SKEW_S``): a future-dated grant would consent ahead of the
    user, a future-dated withdrawal would leave the category collected until then."""
    if at is None:
        return
    if at.utcoffset() is None:
        raise AdminError(f"time {at.isoformat()} has no UTC offset; use RFC 3339 with Z or +hh:mm")
    skew = get_settings().max_clock_skew_s
    if at > datetime.now(UTC) + timedelta(seconds=skew):
        raise AdminError(
            f"time {at.isoformat()} is in the future (beyond HEARTH_MAX_CLOCK_SKEW_S={skew} s)"
        )


def evidence_hash(evidence: object) -> str:
    """SHA-256 of the consent evidence (the signed form, the UI transcript, ...), never the text.

    Bytes and strings are hashed as given; anything else as canonical JSON.
    """
    if isinstance(evidence, bytes):
        data = evidence
    elif isinstance(evidence, str):
        data = evidence.encode()
    else:
        data = json.dumps(evidence, sort_keys=True, separators=(",", ":"), default=str).encode()
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _append_consent_event(
    conn: Conn,
    *,
    user_id: str,
    category: Category,
    purpose: str,
    notice_version: str,
    action: str,
    at: datetime | None,
    evidence: object | None,
) -> ConsentEvent:
    _require_user(conn, user_id, lock=True)  # one append per user at a time (consent_state)
    row = conn.execute(
        "SELECT max(at) FILTER (WHERE action = 'grant'), greatest(max(at), now()) "
        "FROM consent_events WHERE user_id = %s AND purpose = %s AND category = %s",
        (user_id, purpose, category.value),
    ).fetchone()
    assert row is not None
    latest_grant, latest_or_now = row
    if at is None:
        at = latest_or_now  # an undated event is now, and never older than the latest one
    elif action == "withdraw" and latest_grant is not None and at < latest_grant:
        raise AdminError(
            f"withdrawal at {at.isoformat()} is before the latest grant of {category.value} "
            f"({latest_grant.isoformat()}); date it at or after that grant, or leave out the time"
        )
    row = conn.execute(
        "INSERT INTO consent_events (user_id, purpose, category, notice_version, action, at, "
        "evidence_hash) VALUES (%s, %s, %s, %s, %s, %s, %s) "
        f"RETURNING {CONSENT_EVENT_COLUMNS}",
        (
            user_id,
            purpose,
            category.value,
            notice_version,
            action,
            at,
            None if evidence is None else evidence_hash(evidence),
        ),
    ).fetchone()
    assert row is not None
    _notify_consent(conn, action, user_id, category)
    return consent_event_from_row(row)


def _notify_consent(conn: Conn, action: str, user_id: str, category: Category | None) -> None:
    """Tell caches (collectors, feature service) at commit; sent again after each purge."""
    conn.execute(
        "SELECT pg_notify(%s, %s)",
        (CONSENT_CHANNEL, consent_notification(action, user_id, category)),
    )


def grant_consent(
    conn: Conn,
    *,
    user_id: str,
    category: str,
    purpose: str = PURPOSE_CREDIT_SCORING,
    notice_version: str = CURRENT_NOTICE_VERSION,
    at: datetime | None = None,
    evidence: object | None = None,
) -> ConsentEvent:
    """Append a grant. ``at`` (default now) may be in the past for imports of consents given
    elsewhere and for simulations that replay history; "active at T" honours it, so features
    as of an earlier T see the grant only from ``at`` on, and the collector stores readings
    from ``at`` on. ``at`` may not be in the future beyond the clock-skew allowance; without it
    the grant is dated now (or at the category's latest event, if that is later).
    ``evidence`` is stored as a hash."""
    _check_at(at)
    cat = _category(category)
    purpose = _purpose(purpose)
    with _atomic(conn):
        return _append_consent_event(
            conn,
            user_id=user_id,
            category=cat,
            purpose=purpose,
            notice_version=notice_version,
            action="grant",
            at=at,
            evidence=evidence,
        )


def consent_history(conn: Conn, user_id: str) -> list[ConsentEvent]:
    """The user's ledger, oldest first; unknown user → :class:`AdminError`."""
    _require_user(conn, user_id)
    return _ledger_history(conn, user_id)


class PurgeIncomplete(Incomplete):
    """A purge's final verification found rows left; the audit record lists them."""

    def __init__(self, message: str, report: PurgeReport) -> None:
        super().__init__(message)
        self.report = report


@dataclass
class PurgeReport:
    """What a withdrawal or erasure deleted: rows per table (``table`` or ``table.field``).

    ``status`` is ``complete`` (verified: nothing left), ``incomplete`` (``left`` says what
    remains) or ``retained`` (a withdrawal of one purpose while another purpose that uses the
    category, listed in ``retained_for``, keeps an active consent: nothing is deleted).
    """

    action: str  # "purge_category" | "erase_user"
    user_id: str
    category: Category | None
    counts: dict[str, int] = field(default_factory=dict)
    elapsed_s: float = 0.0
    audit_id: int | None = None
    event: ConsentEvent | None = None
    status: str = "pending"
    left: dict[str, int] = field(default_factory=dict)
    retained_for: list[str] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic, repr=False)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def add(self, counts: Mapping[str, int]) -> None:
        for table, n in counts.items():
            self.counts[table] = self.counts.get(table, 0) + n

    def audit_details(self) -> dict[str, object]:
        details: dict[str, object] = {"status": self.status, "counts": self.counts}
        if self.category is not None:
            details["category"] = self.category.value
        if self.event is not None:
            details["purpose"] = self.event.purpose
        if self.left:
            details["left"] = self.left
        if self.retained_for:
            details["retained_for"] = self.retained_for
        return details

    def to_json(self) -> dict[str, object]:
        return {
            "action": self.action,
            "user_id": self.user_id,
            "category": str(self.category) if self.category else None,
            "status": self.status,
            "counts": dict(sorted(self.counts.items())),
            "total": self.total,
            "left": dict(sorted(self.left.items())),
            "retained_for": self.retained_for,
            "elapsed_s": round(self.elapsed_s, 3),
            "audit_id": self.audit_id,
            "event": self.event.to_json() if self.event else None,
        }

    def finish(self, conn: Conn, left: Mapping[str, int]) -> None:
        """Record the verification's result and the audit record (in the caller's
        transaction)."""
        self.left = {t: n for t, n in left.items() if n}
        if self.status != "retained":
            self.status = "incomplete" if self.left else "complete"
        self.elapsed_s = time.monotonic() - self.started
        self.audit_id = write_audit(conn, self.action, self.user_id, self.audit_details())

    def raise_if_incomplete(self) -> None:
        if self.left:
            what = ", ".join(f"{n} in {t}" for t, n in sorted(self.left.items()))
            scope = f" of {self.category.value}" if self.category else ""
            raise PurgeIncomplete(
                f"{self.action}{scope} for user {self.user_id!r} is incomplete: rows left "
                f"({what}); audit record {self.audit_id}. Run the command again",
                self,
            )


def withdraw_consent(
    conn: Conn,
    *,
    user_id: str,
    category: str,
    purpose: str = PURPOSE_CREDIT_SCORING,
    at: datetime | None = None,
    settle_s: float = 0.0,
) -> PurgeReport:
    """Append a withdrawal and purge every stored row of that user and category.

    Purges raw readings and any table with ``user_id`` + ``signal`` (rollups), nulls the
    category's features in ``feature_snapshots`` (with a reason), deletes the dead letters of the
    user's devices and notifies caches on CONSENT_CHANNEL. All of the category's data goes,
    whatever ``at`` says (``at`` only dates the ledger event; it may not be before the
    category's latest grant, nor in the future) — unless another purpose that uses the category
    keeps an active consent (``status`` ``retained``). Raises :class:`PurgeIncomplete` when the
    final verification finds rows left. ``settle_s`` is ignored: the consent gate made the old
    settle pass unnecessary.
    """
    del settle_s
    report = record_withdrawal(conn, user_id=user_id, category=category, purpose=purpose, at=at)
    purge_withdrawn(conn, report)
    report.raise_if_incomplete()
    return report


def record_withdrawal(
    conn: Conn,
    *,
    user_id: str,
    category: str,
    purpose: str = PURPOSE_CREDIT_SCORING,
    at: datetime | None = None,
) -> PurgeReport:
    """First half of :func:`withdraw_consent`: append the withdrawal under the exclusive INGEST
    gate. Once it commits, no collector commit stores the category for the user."""
    _check_at(at)
    cat = _category(category)
    purpose = _purpose(purpose)
    report = PurgeReport("purge_category", user_id, cat)
    with _atomic(conn):
        conn.execute(gate_sql(GATE_INGEST, exclusive=True))
        report.event = _append_consent_event(
            conn,
            user_id=user_id,
            category=cat,
            purpose=purpose,
            notice_version=CURRENT_NOTICE_VERSION,
            action="withdraw",
            at=at,
            evidence=None,
        )
    return report


def purge_withdrawn(conn: Conn, report: PurgeReport) -> PurgeReport:
    """Second half of :func:`withdraw_consent`: under the exclusive DERIVED gate, delete the
    category's rows unless another purpose still uses them, verify, and audit. Does not raise
    on rows left (see :meth:`PurgeReport.raise_if_incomplete`)."""
    category = report.category
    assert category is not None
    with _atomic(conn):
        conn.execute(gate_sql(GATE_DERIVED, exclusive=True))
        report.retained_for = purposes_still_using(conn, report.user_id, category)
        if report.retained_for:
            report.status = "retained"
            left: dict[str, int] = {}
        else:
            report.add(purge_category_rows(conn, report.user_id, category))
            left = category_rows_left(conn, report.user_id, category)
            _notify_consent(conn, "withdraw", report.user_id, category)  # cached vectors
        report.finish(conn, left)
    return report


def purposes_still_using(conn: Conn, user_id: str, category: Category) -> list[str]:
    """Purposes using ``category`` for which the user's consent is active now."""
    using = sorted(p for p, cats in ledger.PURPOSES.items() if category in cats)
    rows = conn.execute(
        "SELECT purpose FROM consent_state WHERE user_id = %s AND category = %s "
        "AND purpose = ANY(%s) AND action = 'grant' AND notice_version = %s ORDER BY purpose",
        (user_id, category.value, using, CURRENT_NOTICE_VERSION),
    ).fetchall()
    return [str(r[0]) for r in rows]


# --- Purge machinery -------------------------------------------------------------------------

_SKIP_SCHEMAS = ("pg_catalog", "information_schema")


def user_tables(conn: Conn) -> dict[str, set[str]]:
    """Every base table of the database (schema-qualified) → its column names.

    Hypertable chunks (in TimescaleDB's internal schemas) are left out: deleting from the
    hypertable reaches them.
    """
    rows = conn.execute(
        """
        SELECT c.table_schema, c.table_name, c.column_name
          FROM information_schema.columns c
          JOIN information_schema.tables t USING (table_schema, table_name)
         WHERE t.table_type = 'BASE TABLE'
           AND c.table_schema <> ALL (%s)
           AND c.table_schema NOT LIKE '\\_timescaledb%%'
           AND c.table_schema NOT LIKE 'timescaledb%%'
           AND c.table_schema NOT LIKE 'pg\\_%%'
        """,
        (list(_SKIP_SCHEMAS),),
    ).fetchall()
    tables: dict[str, set[str]] = {}
    for schema, table, column in rows:
        name = table if schema == "public" else f"{schema}.{table}"
        tables.setdefault(name, set()).add(str(column))
    return tables


def _ident(name: str) -> sql.Identifier:
    return sql.Identifier(*name.split(".", 1))


def _user_device_ids(conn: Conn, user_id: str) -> list[str]:
    rows = conn.execute("SELECT device_id FROM devices WHERE user_id = %s", (user_id,)).fetchall()
    return [str(r[0]) for r in rows]


def category_signals(category: Category) -> list[str]:
    return sorted(s.name for s in SIGNALS.values() if s.category == category)


# Tables whose user_id/category columns are the consent record itself, not data of a category.
_NOT_CATEGORY_DATA = frozenset({"consent_events", "consent_state", "users", "devices"})


def _category_row_filters(conn: Conn) -> Iterator[tuple[str, sql.Composable]]:
    """(table, WHERE) for every table holding data of one category of one user. Parameters:
    user, signals, category, devices."""
    for table, columns in sorted(user_tables(conn).items()):
        if "user_id" not in columns or table in _NOT_CATEGORY_DATA:
            continue
        where: sql.Composable
        if "signal" in columns:
            where = sql.SQL("user_id = %(user)s AND signal = ANY(%(signals)s)")
        elif "category" in columns:
            where = sql.SQL("user_id = %(user)s AND category = %(category)s")
        else:
            continue
        if "device_id" in columns:  # lets the (device_id, signal, time) key index serve it
            where = sql.SQL("device_id = ANY(%(devices)s) AND ") + where
        yield table, where


def _category_params(conn: Conn, user_id: str, category: Category) -> dict[str, object]:
    return {
        "user": user_id,
        "signals": category_signals(category),
        "category": category.value,
        "devices": _user_device_ids(conn, user_id),
    }


_SNAPSHOT_CATEGORY = "ARRAY[%(category)s]::text[]"


def purge_category_rows(conn: Conn, user_id: str, category: Category) -> dict[str, int]:
    """Delete the user's data of one category everywhere; rows deleted (or changed) per table."""
    counts: dict[str, int] = {}
    params = _category_params(conn, user_id, category)
    for table, where in _category_row_filters(conn):
        cur = conn.execute(sql.SQL("DELETE FROM {} WHERE {}").format(_ident(table), where), params)
        counts[table] = cur.rowcount
    # A dead letter has no category (it may be any part of a message): a withdrawal removes
    # every one of the user's devices, matched by device id (issue 11 §4).
    cur = conn.execute("DELETE FROM dead_letters WHERE device_id = ANY(%(devices)s)", params)
    counts["dead_letters"] = cur.rowcount
    # Snapshots keep every feature (one schema for clients): the category's cells become null
    # with a reason (hearth.vectors), instead of losing their keys.
    withheld = withhold_features_sql("s.vector", "s.feature_set_version", _SNAPSHOT_CATEGORY)
    shows = shows_features_sql("s.vector", "s.feature_set_version", _SNAPSHOT_CATEGORY)
    cur = conn.execute(
        f"UPDATE feature_snapshots s SET vector = {withheld} "
        f"WHERE s.user_id = %(user)s AND {shows}",
        params,
    )
    counts["feature_snapshots.features"] = cur.rowcount
    return counts


def category_rows_left(conn: Conn, user_id: str, category: Category) -> dict[str, int]:
    """The final verification of a withdrawal: rows of the category still held, per table
    (the same tables and snapshot features :func:`purge_category_rows` deletes)."""
    params = _category_params(conn, user_id, category)
    left = {
        table: _count(conn, sql.SQL("SELECT count(*) FROM {} WHERE {}"), table, where, params)
        for table, where in _category_row_filters(conn)
    }
    shows = shows_features_sql("s.vector", "s.feature_set_version", _SNAPSHOT_CATEGORY)
    row = conn.execute(
        f"SELECT count(*) FROM feature_snapshots s WHERE s.user_id = %(user)s AND {shows}",
        params,
    ).fetchone()
    assert row is not None
    left["feature_snapshots.features"] = int(row[0])
    return left


def _count(
    conn: Conn, query: sql.SQL, table: str, where: sql.Composable, params: Mapping[str, object]
) -> int:
    row = conn.execute(query.format(_ident(table), where), params).fetchone()
    assert row is not None
    return int(row[0])


def audit_subject(user_id: str) -> str:
    """The audit log's reference to a user: a keyed hash, so the log holds no personal data."""
    return keyed_hash(get_settings().require_pseudonym_key(), DOMAIN_AUDIT_SUBJECT, user_id)


def write_audit(conn: Conn, action: str, user_id: str | None, details: Mapping[str, object]) -> int:
    row = conn.execute(
        "INSERT INTO audit_log (action, subject_ref, details) VALUES (%s, %s, %s) RETURNING id",
        (action, audit_subject(user_id) if user_id else None, json.dumps(details)),
    ).fetchone()
    assert row is not None
    return int(row[0])


# --- Data-subject access and erasure --------------------------------------------------------


def _jsonable(value: object) -> object:
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, bytes | memoryview):
        return base64.b64encode(bytes(value)).decode()
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, UUID | timedelta):
        return str(value)
    return value


def _rows(conn: Conn, query: sql.Composed | sql.SQL, params: Any) -> list[dict[str, object]]:
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(query, params)
        return [{k: _jsonable(v) for k, v in r.items()} for r in cur.fetchall()]


def export_user(conn: Conn, user_id: str) -> dict[str, object]:
    """Everything held about a user (data-subject access), as JSON-ready data.

    Devices come without password hashes; ``tables`` has the rows of every table holding the
    user's id or their devices' ids; ``dead_letters`` the quarantined messages of their
    devices (by device id); ``audit`` the purge records about them (found by their keyed hash).
    """
    with conn.transaction():
        user = _rows(conn, sql.SQL("SELECT * FROM users WHERE user_id = %s"), (user_id,))
        if not user:
            raise AdminError(f"unknown user {user_id!r}")
        devices = list_devices(conn, user_id)
        device_ids = [d.device_id for d in devices]
        tables: dict[str, list[dict[str, object]]] = {}
        for table, where in _user_row_filters(conn):
            rows = _rows(
                conn,
                sql.SQL("SELECT * FROM {} WHERE {}").format(_ident(table), where),
                {"user": user_id, "devices": device_ids},
            )
            if rows:
                tables[table] = rows
        dead = sorted(tables.pop("dead_letters", []), key=lambda r: int(str(r["id"])))
        audit = _rows(
            conn,
            sql.SQL("SELECT * FROM audit_log WHERE subject_ref = %s ORDER BY id"),
            (audit_subject(user_id),),
        )
    return {
        "user": user[0],
        "devices": [d.to_json() for d in devices],
        "consent_history": [e.to_json() for e in _ledger_history(conn, user_id)],
        "tables": tables,
        "dead_letters": dead,
        "audit": audit,
        "exported_at": datetime.now().astimezone().isoformat(),
    }


def _user_row_filters(conn: Conn) -> Iterator[tuple[str, sql.Composable]]:
    """(table, WHERE) for every table holding rows of a user or of the user's devices, beside
    the registry itself. Export reads and erasure deletes exactly these rows, so an export
    before erasure returns everything the erasure removes. Parameters: user, devices."""
    for table, columns in sorted(user_tables(conn).items()):
        if table in ("users", "devices", "consent_events", "consent_state"):
            continue  # the registry and the ledger: exported as such, erased last
        if "user_id" in columns and "device_id" in columns:
            yield table, sql.SQL("(device_id = ANY(%(devices)s) OR user_id = %(user)s)")
        elif "user_id" in columns:
            yield table, sql.SQL("user_id = %(user)s")
        elif "device_id" in columns:
            yield table, sql.SQL("device_id = ANY(%(devices)s)")


def _erase_rows(conn: Conn, user_id: str, device_ids: list[str]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for table, where in _user_row_filters(conn):
        cur = conn.execute(
            sql.SQL("DELETE FROM {} WHERE {}").format(_ident(table), where),
            {"user": user_id, "devices": device_ids},
        )
        counts[table] = cur.rowcount
    return counts


def _erase_rows_left(conn: Conn, user_id: str, devices: list[DeviceInfo]) -> dict[str, int]:
    """The final verification of an erasure: rows still held per table (what
    :func:`_erase_rows` reaches, dead letters included by device id)."""
    params = {"user": user_id, "devices": [d.device_id for d in devices]}
    query = sql.SQL("SELECT count(*) FROM {} WHERE {}")
    return {t: _count(conn, query, t, where, params) for t, where in _user_row_filters(conn)}


def erase_user(
    conn: Conn, user_id: str, *, settle_s: float = 0.0, broker: BrokerAccounts | None = None
) -> PurgeReport:
    """Delete every row of the user: data in any table with their id or their devices' ids
    (dead letters included, by device id), devices, consent history and the user itself.

    First, under the exclusive INGEST gate, the user's consent state is cleared (no collector
    commit stores anything of theirs from then on) and the devices' broker accounts are deleted
    before that commits (which disconnects them; ``broker`` as for :func:`register_device`);
    then, under the exclusive DERIVED gate,
    everything is deleted and verified. The registry, ledger and user go only when nothing is
    left, so an incomplete erasure (:class:`PurgeIncomplete`) can simply be run again. The
    audit record keeps only the keyed-hash subject, counts and status. ``settle_s`` is ignored.
    """
    del settle_s
    report = PurgeReport("erase_user", user_id, None)
    with _atomic(conn):
        conn.execute(gate_sql(GATE_INGEST, exclusive=True))
        _require_user(conn, user_id, lock=True)
        conn.execute("DELETE FROM consent_state WHERE user_id = %s", (user_id,))
        _notify_consent(conn, "erase", user_id, None)
        usernames = [d.mqtt_username or d.device_id for d in list_devices(conn, user_id)]
        revoke_broker_accounts(usernames, conn=conn, broker=broker)
    with _atomic(conn):
        conn.execute(gate_sql(GATE_DERIVED, exclusive=True))
        _require_user(conn, user_id, lock=True)
        devices = list_devices(conn, user_id)
        report.add(_erase_rows(conn, user_id, [d.device_id for d in devices]))
        left = _erase_rows_left(conn, user_id, devices)
        if not any(left.values()):
            conn.execute("SELECT set_config('hearth.erasing', 'on', true)")  # ledger may go
            for table in ("consent_events", "devices", "users"):
                cur = conn.execute(
                    sql.SQL("DELETE FROM {} WHERE user_id = %s").format(sql.Identifier(table)),
                    (user_id,),
                )
                report.add({table: cur.rowcount})
            conn.execute("SELECT set_config('hearth.erasing', '', true)")
        _notify_consent(conn, "erase", user_id, None)  # cached vectors
        report.finish(conn, left)
    report.raise_if_incomplete()
    return report


__all__ = [
    "AdminError",
    "ConsentEvent",
    "DeviceCredentials",
    "DeviceInfo",
    "PurgeIncomplete",
    "PurgeReport",
    "add_user",
    "consent_history",
    "erase_user",
    "export_user",
    "grant_consent",
    "list_devices",
    "purge_withdrawn",
    "record_withdrawal",
    "register_device",
    "retire_device",
    "revoke_broker_accounts",
    "withdraw_consent",
]
