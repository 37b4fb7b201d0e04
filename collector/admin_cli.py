"""``python -m collector users|devices|consent|retention|broker ...``: the operator's commands.

Thin argument parsing over :mod:`hearth.admin` (the same functions serve the HTTP admin API).
Output is JSON on stdout — one object, or JSON lines for lists and ``--batch`` — so scripts and
the simulator can read it. ``--batch FILE|-`` imports JSON lines in one connection and one
transaction: all lines land or none (the error names the line).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any, TextIO

from hearth import admin
from hearth.admin import AdminError, Conn, PurgeReport
from hearth.db import connect
from hearth.ledger import PURPOSES
from hearth.settings import get_settings
from hearth.signals import PURPOSE_CREDIT_SCORING, Category


def _emit(obj: object, out: TextIO | None = None) -> None:
    print(json.dumps(obj, default=str), file=out or sys.stdout)


def _parse_at(text: str | None, flag: str = "--at") -> datetime | None:
    if text is None:
        return None
    try:
        at = datetime.fromisoformat(text)
    except ValueError:
        raise AdminError(f"{flag} {text!r}: not an RFC 3339 time") from None
    if at.utcoffset() is None:
        raise AdminError(f"{flag} {text!r}: needs a UTC offset (Z or +hh:mm)")
    return at


def _connect() -> Conn:
    return connect(get_settings().database_url, autocommit=True)


def _sync_broker(conn: Conn) -> None:
    """Registry changed: refresh the local broker's password file/ACL when it is ours."""
    from collector.broker_auth import sync_if_configured

    sync_if_configured(conn, get_settings().database_url)


def _json_lines(source: str) -> Iterator[tuple[int, dict[str, Any]]]:
    stream = sys.stdin if source == "-" else Path(source).open()  # noqa: SIM115
    try:
        for lineno, line in enumerate(stream, 1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
            except ValueError as exc:
                raise AdminError(f"line {lineno}: not JSON ({exc})") from None
            if not isinstance(item, dict):
                raise AdminError(f"line {lineno}: expected a JSON object")
            yield lineno, item
    except FileNotFoundError:
        raise AdminError(f"--batch: no such file {source!r}") from None
    finally:
        if stream is not sys.stdin:
            stream.close()


def _batch(conn: Conn, source: str, one: Callable[[dict[str, Any]], object]) -> list[object]:
    """Run ``one`` per JSON line inside one transaction; any bad line rolls all back."""
    results: list[object] = []
    with conn.transaction():
        for lineno, item in _json_lines(source):
            try:
                results.append(one(item))
            except AdminError as exc:
                raise AdminError(f"line {lineno}: {exc}") from None
            except (KeyError, TypeError) as exc:
                raise AdminError(f"line {lineno}: missing or bad field {exc}") from None
    return results


@contextlib.contextmanager
def _report_even_if_incomplete() -> Iterator[None]:
    """A purge that left rows still prints its report (with ``left``) before the error."""
    try:
        yield
    except admin.PurgeIncomplete as exc:
        _emit(exc.report.to_json())
        raise


# --- users -----------------------------------------------------------------------------------


def cmd_users(args: argparse.Namespace) -> int:
    with _connect() as conn:
        if args.action == "add":
            admin.add_user(conn, args.user_id, args.tz or "UTC")
            _emit({"user_id": args.user_id, "tz": args.tz or "UTC"})
        elif args.action == "export":
            print(json.dumps(admin.export_user(conn, args.user_id), indent=2, default=str))
        else:
            with _report_even_if_incomplete():
                report = admin.erase_user(conn, args.user_id)
                _sync_broker(conn)
                _emit(report.to_json())
    return 0


# --- devices ---------------------------------------------------------------------------------


def _register(conn: Conn, item: dict[str, Any]) -> dict[str, object]:
    return admin.register_device(
        conn,
        user_id=str(item["user_id"]),
        kind=str(item["kind"]),
        format=str(item["format"]),
        external_id=str(item["external_id"]),
        tz=item.get("tz"),
        user_tz=item.get("user_tz"),
        bound_at=_parse_at(item.get("bound_at"), "--bound-at"),
    ).to_json()


def cmd_devices(args: argparse.Namespace) -> int:
    with _connect() as conn:
        if args.action == "add":
            if args.batch:
                for creds in _batch(conn, args.batch, lambda item: _register(conn, item)):
                    _emit(creds)
            else:
                missing = [
                    f for f in ("user_id", "kind", "format", "external_id") if not getattr(args, f)
                ]
                if missing:
                    flags = ", ".join("--" + m.replace("_", "-") for m in missing)
                    raise AdminError(f"devices add needs {flags} (or --batch FILE)")
                _emit(_register(conn, vars(args) | {"tz": args.tz, "user_tz": args.user_tz}))
            _sync_broker(conn)
        elif args.action == "list":
            for device in admin.list_devices(conn, args.user_id):
                _emit(device.to_json())
        else:
            _emit(admin.retire_device(conn, args.device_id).to_json())
            _sync_broker(conn)
    return 0


# --- consent ---------------------------------------------------------------------------------


def _consent_batch(conn: Conn, args: argparse.Namespace) -> int:
    purpose = args.purpose

    def one(item: dict[str, Any]) -> object:
        at = _parse_at(item.get("at"))
        user_id, category = str(item["user_id"]), str(item["category"])
        item_purpose = str(item.get("purpose", purpose))
        if args.action == "grant":
            return admin.grant_consent(
                conn, user_id=user_id, category=category, purpose=item_purpose, at=at
            ).to_json()
        # Every withdrawal of the batch is recorded in one transaction; the purges follow.
        return admin.record_withdrawal(
            conn, user_id=user_id, category=category, purpose=item_purpose, at=at
        )

    results = _batch(conn, args.batch, one)
    if args.action == "withdraw":
        reports = [admin.purge_withdrawn(conn, r) for r in results if isinstance(r, PurgeReport)]
        results = [r.to_json() for r in reports]
        for r in results:
            _emit(r)
        for report in reports:
            report.raise_if_incomplete()  # after every line's report is out
        return 0
    for r in results:
        _emit(r)
    return 0


def cmd_consent(args: argparse.Namespace) -> int:
    with _connect() as conn:
        if args.batch:
            if args.action == "show":
                raise AdminError("consent show takes --user-id, not --batch")
            return _consent_batch(conn, args)
        if not args.user_id:
            raise AdminError(f"consent {args.action} needs --user-id (or --batch FILE)")
        if args.action == "show":
            events = admin.consent_history(conn, args.user_id)
            if args.category:
                events = [e for e in events if e.category == args.category]
            for event in events:
                _emit(event.to_json())
            return 0
        if not args.category:
            raise AdminError(f"consent {args.action} needs --category")
        at = _parse_at(args.at)
        user_id, category, purpose = args.user_id, args.category, args.purpose
        if args.action == "grant":
            event = admin.grant_consent(
                conn, user_id=user_id, category=category, purpose=purpose, at=at
            )
            _emit(event.to_json())
        else:
            with _report_even_if_incomplete():
                report = admin.withdraw_consent(
                    conn, user_id=user_id, category=category, purpose=purpose, at=at
                )
                _emit(report.to_json())
    return 0


# --- retention, broker -----------------------------------------------------------------------


def cmd_retention(args: argparse.Namespace) -> int:
    from collector.retention import run_retention

    days = args.older_than_days or get_settings().retention_days
    with _connect() as conn:
        _emit(run_retention(conn, days).to_json())
    return 0


def cmd_broker(args: argparse.Namespace) -> int:
    from collector import broker_auth

    settings = get_settings()
    paths = broker_auth.AuthPaths(
        Path(args.state_dir) if args.state_dir else broker_auth.state_dir()
    )
    if args.action == "init":
        try:
            conn: Conn | None = _connect()
        except Exception as exc:  # no database yet: service accounts only, devices on next sync
            print(f"warning: {exc}; writing service accounts only", file=sys.stderr)
            conn = None
        try:
            mqtts = None if args.mqtts_port == 0 else args.mqtts_port
            broker_auth.init_local(
                paths, conn, settings.database_url, mqtt_port=args.mqtt_port, mqtts_port=mqtts
            )
        finally:
            if conn is not None:
                conn.close()
        _emit({"auth_conf": str(paths.auth_conf), "mqtt_url_in": str(paths.root / "hearth.toml")})
        return 0
    if args.watch:
        print(f"watching the registry; syncing {paths.passwd} on changes", file=sys.stderr)
        broker_auth.watch(paths, settings.database_url)
        return 0
    with _connect() as conn:
        result = broker_auth.sync(paths, conn, settings.database_url, reload=not args.no_reload)
    _emit(
        {
            "devices": result.devices,
            "passwd": str(paths.passwd),
            "acl": str(paths.acl),
            "reloaded_pid": result.pid,
        }
    )
    return 0


# --- parser ----------------------------------------------------------------------------------


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the registry, consent, data-subject, retention and broker sub-commands."""
    users = sub.add_parser("users", help="add a user; export or erase everything about one")
    users.add_argument("action", choices=("add", "export", "erase"))
    users.add_argument("--user-id", required=True)
    users.add_argument("--tz", help="IANA time zone (users add; default UTC)")
    users.set_defaults(func=cmd_users)

    devices = sub.add_parser(
        "devices", help="register (prints MQTT credentials as JSON), list or retire devices"
    )
    devices.add_argument("action", choices=("add", "list", "retire"))
    devices.add_argument("--user-id")
    devices.add_argument("--kind", help="phone, router, plug, contact, motion, thermostat, ...")
    devices.add_argument("--format", help="hearth, owntracks, zigbee2mqtt, tasmota, shelly")
    devices.add_argument("--external-id", help="the id the format carries in its topic")
    devices.add_argument("--tz", help="device zone for naive timestamps (default: the user's)")
    devices.add_argument("--user-tz", help="create the user with this zone if absent")
    devices.add_argument(
        "--bound-at",
        help="RFC 3339 time the device has been the user's since (default now); earlier "
        "readings are refused",
    )
    devices.add_argument("--device-id", help="devices retire")
    devices.add_argument(
        "--batch",
        metavar="FILE|-",
        help="JSON lines {user_id, kind, format, external_id, tz?, user_tz?, bound_at?} → "
        "credentials lines",
    )
    devices.set_defaults(func=cmd_devices)

    consent = sub.add_parser("consent", help="grant, withdraw (and purge) or show consent")
    consent.add_argument("action", choices=("grant", "withdraw", "show"))
    consent.add_argument("--user-id")
    consent.add_argument("--category", choices=[c.value for c in Category])
    consent.add_argument("--purpose", default=PURPOSE_CREDIT_SCORING, choices=sorted(PURPOSES))
    consent.add_argument(
        "--at", help="RFC 3339 time of the event (default now; past times for imports/replays)"
    )
    consent.add_argument(
        "--batch", metavar="FILE|-", help="JSON lines {user_id, category, at?, purpose?}"
    )
    consent.set_defaults(func=cmd_consent)

    retention = sub.add_parser("retention", help="drop raw telemetry chunks past retention")
    retention.add_argument("action", choices=("run",))
    retention.add_argument("--older-than-days", type=int, help="default HEARTH_RETENTION_DAYS (90)")
    retention.set_defaults(func=cmd_retention)

    broker = sub.add_parser(
        "broker", help="regenerate the broker's password file and ACL from the registry"
    )
    broker.add_argument("action", choices=("sync", "init"))
    broker.add_argument("--state-dir", help="default HEARTH_STATE_DIR or .hearth")
    broker.add_argument("--no-reload", action="store_true", help="sync: do not SIGHUP the broker")
    broker.add_argument(
        "--watch", action="store_true", help="sync: keep running, re-sync on registry changes"
    )
    broker.add_argument("--mqtt-port", type=int, default=1883, help="init: plain listener port")
    broker.add_argument(
        "--mqtts-port", type=int, default=8883, help="init: TLS listener port (0: none)"
    )
    broker.set_defaults(func=cmd_broker)
