"""Devices: registration (with MQTT credentials), rotation, retirement, listing.

A device is bound to one user and known by (format, external id); its broker account is made,
changed or deleted in the same transaction as its registry row (:mod:`hearth.broker`), so it can
connect exactly while the registry says it is live.
"""

from __future__ import annotations

import logging
import re
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Final

import psycopg
from psycopg.rows import class_row

from hearth.admin.audit import write_audit
from hearth.admin.common import atomic, check_at, check_tz
from hearth.admin.users import require_user
from hearth.broker import (
    SERVICE_USERNAME_PREFIX,
    BrokerAccounts,
    BrokerError,
    BrokerUnavailable,
    accounts_from_settings,
    lock_for_change,
)
from hearth.db import Conn
from hearth.errors import Conflict, Invalid, NotFound
from hearth.formats import DeviceFormat, device_format, device_topics
from hearth.ids import check_id
from hearth.settings import get_settings

log = logging.getLogger(__name__)

_KIND: Final = re.compile(r"[a-z][a-z0-9_]{0,31}")

DEVICE_COLUMNS = (
    "device_id, user_id, kind, format, external_id, tz, mqtt_username, registered_at, retired_at, "
    "bound_at"
)


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
    spec = _check_registration(user_id, kind, format, external_id, tz, user_tz, bound_at)
    device_id = _new_device_id(spec, external_id)
    accounts = broker if broker is not None else accounts_from_settings()
    password = secrets.token_urlsafe(24)
    made: list[str] = []  # the broker account this registration created
    with _unmade_on_rollback(conn, accounts, made), atomic(conn):
        if user_tz is not None:
            conn.execute(
                "INSERT INTO users (user_id, tz) VALUES (%s, %s) ON CONFLICT (user_id) DO NOTHING",
                (user_id, user_tz),
            )
        else:
            require_user(conn, user_id)
        inserted = _insert_device(conn, device_id, user_id, kind, spec, external_id, tz, bound_at)
        rotated = inserted is None
        if inserted is None:
            device_id = _registered_again(conn, user_id, kind, format, external_id, device_id)
            write_audit(conn, "rotate_device_credentials", user_id, {"device_id": device_id})
            inserted = _bound_at(conn, device_id)
        topics = spec.device_topics(external_id, device_id)
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
        bound_at=inserted,
        rotated=rotated,
    )


def _check_registration(
    user_id: str,
    kind: str,
    format: str,
    external_id: str,
    tz: str | None,
    user_tz: str | None,
    bound_at: datetime | None,
) -> DeviceFormat:
    """The format's spec, once every value of a registration is valid (:class:`Invalid`)."""
    check_at(bound_at)
    check_id("user id", user_id)
    if not _KIND.fullmatch(kind):
        raise Invalid(f"device kind {kind!r}: use a lower-case word like phone, plug, router")
    spec = device_format(format)
    spec.check_external_id(external_id)
    if tz is not None:
        check_tz(tz)
    if user_tz is not None:
        check_tz(user_tz)
    return spec


def _new_device_id(spec: DeviceFormat, external_id: str) -> str:
    """The id of a device about to be registered: its external id where the format names
    devices by their topic, else a random one (also its MQTT username)."""
    if not spec.external_id_is_device_id:
        return "d" + secrets.token_hex(8)
    device_id = check_id("device id", external_id)
    if device_id.startswith(SERVICE_USERNAME_PREFIX):
        raise Invalid(f"device id {device_id!r}: the prefix 'hearth-' is reserved")
    return device_id


def _insert_device(
    conn: Conn,
    device_id: str,
    user_id: str,
    kind: str,
    spec: DeviceFormat,
    external_id: str,
    tz: str | None,
    bound_at: datetime | None,
) -> datetime | None:
    """The new device's binding time, or None when (format, external id) or the id is taken.

    ON CONFLICT without a target covers the primary key, the unique username and the partial
    "one live device per (format, external id)" index; the SELECT behind it only runs on a
    conflict. Two statements per device keep --batch imports fast.
    """
    row = conn.execute(
        "INSERT INTO devices (device_id, user_id, kind, format, external_id, tz, "
        "mqtt_username, bound_at) VALUES (%(device)s, %(user)s, "
        "%(kind)s, %(format)s, %(external)s, %(tz)s, %(device)s, "
        "greatest(coalesce(%(bound_at)s::timestamptz, now()), "
        "(SELECT max(p.retired_at) FROM devices p WHERE p.format = %(format)s "
        "AND p.external_id = %(external)s AND p.retired_at IS NOT NULL "
        "AND p.user_id <> %(user)s) "
        "+ make_interval(secs => %(skew)s))) "
        "ON CONFLICT DO NOTHING RETURNING bound_at",
        {
            "device": device_id,
            "user": user_id,
            "kind": kind,
            "format": spec.name,
            "external": external_id,
            "tz": tz,
            "bound_at": bound_at,
            "skew": get_settings().max_clock_skew_s,
        },
    ).fetchone()
    if row is None:
        return None
    bound = row[0]
    assert isinstance(bound, datetime)
    if bound_at is not None and bound > bound_at:
        raise Invalid(
            f"{spec.name} device {external_id!r} cannot be bound from {bound_at.isoformat()}: "
            f"another user's device had this id until {bound.isoformat()} "
            "(its retirement plus HEARTH_MAX_CLOCK_SKEW_S)"
        )
    return bound


def _bound_at(conn: Conn, device_id: str) -> datetime:
    row = conn.execute("SELECT bound_at FROM devices WHERE device_id = %s", (device_id,)).fetchone()
    assert row is not None and isinstance(row[0], datetime)  # NOT NULL (migration 0036)
    return row[0]


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
        raise Invalid(f"could not register {format} device {external_id!r}; retry")
    existing, live, owner, existing_kind = clash
    if live and owner == user_id:
        if existing_kind != kind:
            raise Conflict(
                f"{format} device {external_id!r} is already registered as a {existing_kind} "
                f"(device {existing}); retire it first to register it as a {kind}"
            )
        return str(existing)
    state = "live" if live else "retired"
    raise Conflict(
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
    with conn.transaction(), conn.cursor(row_factory=class_row(DeviceInfo)) as cur:
        info = cur.execute(
            "UPDATE devices SET retired_at = coalesce(retired_at, now()) WHERE device_id = %s "
            f"RETURNING {DEVICE_COLUMNS}",
            (device_id,),
        ).fetchone()
        if info is not None:
            revoke_broker_accounts([info.mqtt_username or info.device_id], conn=conn, broker=broker)
    if info is None:
        raise NotFound(f"unknown device {device_id!r}", code="unknown_device")
    return info


def list_devices(conn: Conn, user_id: str | None = None) -> list[DeviceInfo]:
    if user_id is not None:
        require_user(conn, user_id)
    with conn.cursor(row_factory=class_row(DeviceInfo)) as cur:
        return cur.execute(
            f"SELECT {DEVICE_COLUMNS} FROM devices "
            "WHERE %(user)s::text IS NULL OR user_id = %(user)s ORDER BY user_id, registered_at",
            {"user": user_id},
        ).fetchall()
