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

A withdrawal or erasure runs in two passes. The first deletes everything and commits the ledger
event, whose NOTIFY tells the collectors to stop storing the category. A collector batch that
checked consent just before can still commit afterwards, so after the consent propagation bound
(:data:`CONSENT_PROPAGATION_S`, the collectors' 2 s promise) and once every transaction older
than that has ended, a second pass deletes any such stragglers. ``settle_s=0`` skips the second
pass (simulations and tests with no collector running).
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import re
import secrets
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import asdict, dataclass, field
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any
from uuid import UUID
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

from hearth.broker import (
    SERVICE_USERNAME_PREFIX,
    BrokerAccounts,
    BrokerError,
    BrokerUnavailable,
    accounts_from_settings,
    lock_for_change,
)
from hearth.cli import UsageError
from hearth.ledger import (
    CONSENT_CHANNEL,
    CONSENT_EVENT_COLUMNS,
    CURRENT_NOTICE_VERSION,
    FORMATS,
    RESERVED_TOPIC_ROOTS,
    ConsentEvent,
    consent_event_from_row,
    consent_notification,
    device_topics,
)
from hearth.ledger import consent_history as _ledger_history
from hearth.pseudonym import DOMAIN_AUDIT_SUBJECT, keyed_hash
from hearth.settings import get_settings
from hearth.signals import PURPOSE_CREDIT_SCORING, SIGNALS, Category

Conn = psycopg.Connection[tuple[Any, ...]]
log = logging.getLogger(__name__)

# How long after a consent change every collector replica is guaranteed to honour it (issue 5:
# "within 2 s"); the second purge pass waits this long.
CONSENT_PROPAGATION_S = 2.0
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


def _require_user(conn: Conn, user_id: str) -> None:
    if _user_tz(conn, user_id) is None:
        raise AdminError(f"unknown user {user_id!r}; add it with `python -m collector users add`")


def add_user(conn: Conn, user_id: str, tz: str = "UTC") -> None:
    """Register a pseudonymous user with an IANA zone; the same call again is a no-op."""
    _check_id("user id", user_id)
    check_tz(tz)
    with conn.transaction():
        conn.execute(
            "INSERT INTO users (user_id, tz) VALUES (%s, %s) ON CONFLICT (user_id) DO NOTHING",
            (user_id, tz),
        )
        existing = _user_tz(conn, user_id)
    if existing != tz:
        raise AdminError(f"user {user_id!r} already exists with time zone {existing}, not {tz}")


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
    rotated: bool = False  # the device was registered already: this is its new password

    def to_json(self) -> dict[str, object]:
        return {**asdict(self), "topics": list(self.topics)}


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

    @property
    def topics(self) -> tuple[str, ...]:
        return device_topics(self.format, self.external_id, self.device_id)

    def to_json(self) -> dict[str, object]:
        return {
            **asdict(self),
            "registered_at": self.registered_at.isoformat(),
            "retired_at": self.retired_at.isoformat() if self.retired_at else None,
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
    "device_id, user_id, kind, format, external_id, tz, mqtt_username, registered_at, retired_at"
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
    broker: BrokerAccounts | None = None,
) -> DeviceCredentials:
    """Bind a new device to a user and mint its MQTT credentials (returned once, kept nowhere).

    ``user_tz`` creates the user when absent (the simulator registers a household in one call).
    The canonical ``hearth`` format names the device by its topic, so its device id is its
    external id; other formats get a generated id. The MQTT username is the device id.

    The same user, format and external id again (a live device) rotates its password instead:
    same device, new credentials (``rotated``), an audit record, and the old password stops
    working at once. The broker account (``broker``, default from ``HEARTH_BROKER_ADMIN_URL``;
    none configured: registry only) is created or changed before the registration commits, so
    the device can connect as soon as it has; an unreachable broker fails the registration.
    """
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
            "mqtt_username) VALUES (%s, %s, %s, %s, %s, %s, %s) "
            "ON CONFLICT DO NOTHING RETURNING device_id",
            (device_id, user_id, kind, format, external_id, tz, device_id),
        ).fetchone()
        if inserted is None:
            device_id = _registered_again(conn, user_id, kind, format, external_id, device_id)
            rotated = True
            write_audit(conn, "rotate_device_credentials", user_id, {"device_id": device_id})
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


def _check_at(at: datetime | None) -> None:
    if at is not None and at.utcoffset() is None:
        raise AdminError(f"time {at.isoformat()} has no UTC offset; use RFC 3339 with Z or +hh:mm")


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
    _require_user(conn, user_id)
    row = conn.execute(
        "INSERT INTO consent_events (user_id, purpose, category, notice_version, action, at, "
        "evidence_hash) VALUES (%s, %s, %s, %s, %s, coalesce(%s, now()), %s) "
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
    conn.execute(
        "SELECT pg_notify(%s, %s)",
        (CONSENT_CHANNEL, consent_notification(action, user_id, category)),
    )
    return consent_event_from_row(row)


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
    as of an earlier T see the grant only from ``at`` on. ``evidence`` is stored as a hash."""
    _check_at(at)
    cat = _category(category)
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


@dataclass
class PurgeReport:
    """What a withdrawal or erasure deleted: rows per table (``table`` or ``table.field``)."""

    action: str  # "purge_category" | "erase_user"
    user_id: str
    category: Category | None
    counts: dict[str, int] = field(default_factory=dict)
    elapsed_s: float = 0.0
    audit_id: int | None = None
    event: ConsentEvent | None = None

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def add(self, counts: Mapping[str, int]) -> None:
        for table, n in counts.items():
            self.counts[table] = self.counts.get(table, 0) + n

    def to_json(self) -> dict[str, object]:
        return {
            "action": self.action,
            "user_id": self.user_id,
            "category": str(self.category) if self.category else None,
            "counts": dict(sorted(self.counts.items())),
            "total": self.total,
            "elapsed_s": round(self.elapsed_s, 3),
            "audit_id": self.audit_id,
            "event": self.event.to_json() if self.event else None,
        }


def withdraw_consent(
    conn: Conn,
    *,
    user_id: str,
    category: str,
    purpose: str = PURPOSE_CREDIT_SCORING,
    at: datetime | None = None,
    settle_s: float = CONSENT_PROPAGATION_S,
) -> PurgeReport:
    """Append a withdrawal and purge every stored row of that user and category.

    Purges raw readings and any table with ``user_id`` + ``signal`` (rollups), strips the
    category's features from ``feature_snapshots`` and notifies caches on CONSENT_CHANNEL. All
    of the category's data goes, whatever ``at`` says (``at`` only dates the ledger event).
    """
    _check_at(at)
    cat = _category(category)
    started = time.monotonic()
    report = PurgeReport("purge_category", user_id, cat)
    with conn.transaction():
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
        report.add(purge_category_rows(conn, user_id, cat))
    if settle_s > 0 and _can_commit_between(conn):
        wait_for_older_transactions(conn, settle_s)
        with conn.transaction():
            report.add(purge_category_rows(conn, user_id, cat))
    report.elapsed_s = time.monotonic() - started
    with conn.transaction():
        report.audit_id = write_audit(
            conn, "purge_category", user_id, {"category": cat.value, "counts": report.counts}
        )
    return report


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
_NOT_CATEGORY_DATA = frozenset({"consent_events", "users", "devices"})


def purge_category_rows(conn: Conn, user_id: str, category: Category) -> dict[str, int]:
    """Delete the user's data of one category everywhere; rows deleted (or changed) per table."""
    counts: dict[str, int] = {}
    signals = category_signals(category)
    devices = _user_device_ids(conn, user_id)
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
        cur = conn.execute(
            sql.SQL("DELETE FROM {} WHERE {}").format(_ident(table), where),
            {"user": user_id, "signals": signals, "category": category.value, "devices": devices},
        )
        counts[table] = cur.rowcount
    cur = conn.execute(
        """
        UPDATE feature_snapshots s
           SET vector = s.vector - names.list
          FROM (SELECT feature_set_version, array_agg(name) AS list
                  FROM feature_definitions WHERE category = %(category)s
                 GROUP BY feature_set_version) names
         WHERE s.user_id = %(user)s
           AND s.feature_set_version = names.feature_set_version
           AND s.vector ?| names.list
        """,
        {"user": user_id, "category": category.value},
    )
    counts["feature_snapshots.features"] = cur.rowcount
    return counts


def _can_commit_between(conn: Conn) -> bool:
    """True when no caller transaction is open, so our first pass is already committed."""
    return conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE


def wait_for_older_transactions(conn: Conn, settle_s: float, deadline_s: float = 30.0) -> None:
    """Wait ``settle_s`` (collectors' reaction bound), then until every transaction of this
    database that began before that moment has ended: its rows are visible to the next purge."""
    time.sleep(settle_s)  # a time bound, not a sync point: replicas promise ≤ settle_s
    cutoff = conn.execute("SELECT clock_timestamp()").fetchone()
    assert cutoff is not None
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND pid <> pg_backend_pid() AND xact_start < %s "
            "AND backend_type = 'client backend'",
            (cutoff[0],),
        ).fetchone()
        if row is not None and row[0] == 0:
            return
        time.sleep(0.05)


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


def _topic_filters_sql(filters: Iterable[str]) -> tuple[sql.Composed, list[str]]:
    """A WHERE clause matching ``topic`` against MQTT filters ending in ``/#`` or exact."""
    clauses: list[sql.Composable] = []
    params: list[str] = []
    for f in filters:
        if f.endswith("/#"):
            base = f[:-2]
            escaped = base.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            clauses.append(sql.SQL("topic = %s OR topic LIKE %s"))
            params += [base, escaped + "/%"]
        else:
            clauses.append(sql.SQL("topic = %s"))
            params.append(f)
    if not clauses:
        return sql.Composed([sql.SQL("false")]), []
    return sql.SQL(" OR ").join(sql.SQL("(") + c + sql.SQL(")") for c in clauses), params


def _device_topic_filters(devices: list[DeviceInfo]) -> list[str]:
    return [t for d in devices for t in d.topics]


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
    user's id or their devices' ids; ``dead_letters`` the quarantined messages on their
    devices' topics; ``audit`` the purge records about them (found by their keyed hash).
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
        where, params = _topic_filters_sql(_device_topic_filters(devices))
        dead = _rows(
            conn, sql.SQL("SELECT * FROM dead_letters WHERE {} ORDER BY id").format(where), params
        )
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
        if table in ("users", "devices", "consent_events"):
            continue
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


def erase_user(
    conn: Conn,
    user_id: str,
    *,
    settle_s: float = CONSENT_PROPAGATION_S,
    broker: BrokerAccounts | None = None,
) -> PurgeReport:
    """Delete every row of the user: data in any table with their id or their devices' ids,
    dead letters on their devices' topics, devices, consent history and the user itself; the
    devices' broker accounts go before the deletion commits (disconnecting them).

    The audit record keeps only the keyed-hash subject and counts.
    """
    started = time.monotonic()
    report = PurgeReport("erase_user", user_id, None)
    with conn.transaction():
        _require_user(conn, user_id)
        devices = list_devices(conn, user_id)
        device_ids = [d.device_id for d in devices]
        report.add(_erase_rows(conn, user_id, device_ids))
        where, params = _topic_filters_sql(_device_topic_filters(devices))
        cur = conn.execute(sql.SQL("DELETE FROM dead_letters WHERE {}").format(where), params)
        report.add({"dead_letters": cur.rowcount})
        conn.execute("SELECT set_config('hearth.erasing', 'on', true)")  # ledger may be deleted
        for table in ("consent_events", "devices", "users"):
            cur = conn.execute(
                sql.SQL("DELETE FROM {} WHERE user_id = %s").format(sql.Identifier(table)),
                (user_id,),
            )
            report.add({table: cur.rowcount})
        conn.execute("SELECT set_config('hearth.erasing', '', true)")
        conn.execute(
            "SELECT pg_notify(%s, %s)",
            (CONSENT_CHANNEL, consent_notification("erase", user_id, None)),
        )
        usernames = [d.mqtt_username or d.device_id for d in devices]
        revoke_broker_accounts(usernames, conn=conn, broker=broker)
    if settle_s > 0 and _can_commit_between(conn):
        # Rows a collector batch committed after the first pass (it had identified the device
        # before the registry NOTIFY) carry the user id; delete them too.
        wait_for_older_transactions(conn, settle_s)
        with conn.transaction():
            report.add(_erase_rows(conn, user_id, device_ids))
    report.elapsed_s = time.monotonic() - started
    with conn.transaction():
        report.audit_id = write_audit(conn, "erase_user", user_id, {"counts": report.counts})
    return report


__all__ = [
    "CONSENT_PROPAGATION_S",
    "AdminError",
    "ConsentEvent",
    "DeviceCredentials",
    "DeviceInfo",
    "PurgeReport",
    "add_user",
    "consent_history",
    "erase_user",
    "export_user",
    "grant_consent",
    "list_devices",
    "register_device",
    "retire_device",
    "revoke_broker_accounts",
    "withdraw_consent",
]
