"""``python -m collector users|devices|consent|retention|broker ...``: the operator's commands.

Thin argument parsing over :mod:`hearth.admin` (the same functions serve the HTTP admin API).
Output is JSON on stdout — one object, or JSON lines for lists and ``--batch`` — so scripts and
the simulator can read it. ``--batch FILE|-`` imports JSON lines in one connection and one
transaction: all lines land or none (the error names the line).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any, TextIO

from hearth import admin
from hearth.admin import AdminError, Conn, PurgeReport
from hearth.db import connect
from hearth.settings import ConfigError, get_settings
from hearth.signals import PURPOSE_CREDIT_SCORING, Category


def _emit(obj: object, out: TextIO | None = None) -> None:
    print(json.dumps(obj, default=str), file=out or sys.stdout)


def _parse_at(text: str | None) -> datetime | None:
    if text is None:
        return None
    try:
        at = datetime.fromisoformat(text)
    except ValueError:
        raise AdminError(f"--at {text!r}: not an RFC 3339 time") from None
    if at.utcoffset() is None:
        raise AdminError(f"--at {text!r}: needs a UTC offset (Z or +hh:mm)")
    return at


def _connect() -> Conn:
    return connect(get_settings().database_url, autocommit=True)


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


# --- users -----------------------------------------------------------------------------------


def cmd_users(args: argparse.Namespace) -> int:
    with _connect() as conn:
        if args.action == "add":
            admin.add_user(conn, args.user_id, args.tz or "UTC")
            _emit({"user_id": args.user_id, "tz": args.tz or "UTC"})
        elif args.action == "export":
            print(json.dumps(admin.export_user(conn, args.user_id), indent=2, default=str))
        else:
            _emit(admin.erase_user(conn, args.user_id).to_json())
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
    ).to_json()


def _register_batch(conn: Conn, source: str) -> list[object]:
    """All lines in one transaction; if it rolls back, the broker accounts its lines already
    made go too (their passwords were never shown). Lines that rotated an existing device's
    password cannot be undone (the old password is not kept): run the batch again."""
    made: list[str] = []

    def one(item: dict[str, Any]) -> object:
        creds = _register(conn, item)
        if not creds["rotated"]:
            made.append(str(creds["mqtt_username"]))
        return creds

    try:
        return _batch(conn, source, one)
    except BaseException:
        admin.revoke_broker_accounts(made)
        raise


def cmd_devices(args: argparse.Namespace) -> int:
    with _connect() as conn:
        if args.action == "add":
            if args.batch:
                for creds in _register_batch(conn, args.batch):
                    _emit(creds)
            else:
                missing = [
                    f for f in ("user_id", "kind", "format", "external_id") if not getattr(args, f)
                ]
                if missing:
                    flags = ", ".join("--" + m.replace("_", "-") for m in missing)
                    raise AdminError(f"devices add needs {flags} (or --batch FILE)")
                _emit(_register(conn, vars(args) | {"tz": args.tz, "user_tz": args.user_tz}))
        elif args.action == "list":
            for device in admin.list_devices(conn, args.user_id):
                _emit(device.to_json())
        else:
            _emit(admin.retire_device(conn, args.device_id).to_json())
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
        # One settle for the whole batch (below), not one per line.
        return admin.withdraw_consent(
            conn, user_id=user_id, category=category, purpose=item_purpose, at=at, settle_s=0
        )

    results = _batch(conn, args.batch, one)
    if args.action == "withdraw":
        reports = [r for r in results if isinstance(r, PurgeReport)]
        _settle_batch_withdrawals(conn, reports)
        results = [r.to_json() for r in reports]
    for r in results:
        _emit(r)
    return 0


def _settle_batch_withdrawals(conn: Conn, reports: list[PurgeReport]) -> None:
    """Second purge pass for a batch (see hearth.admin): stragglers a collector committed."""
    if not reports:
        return
    admin.wait_for_older_transactions(conn, admin.CONSENT_PROPAGATION_S)
    with conn.transaction():
        for report in reports:
            assert report.category is not None
            late = admin.purge_category_rows(conn, report.user_id, report.category)
            if any(late.values()):
                report.add(late)
                admin.write_audit(
                    conn,
                    "purge_category",
                    report.user_id,
                    {"category": report.category.value, "counts": late, "pass": "settle"},
                )


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
    """``broker init`` prepares the broker's files (before it starts); ``broker sync``
    reconciles its accounts with the registry, ``--watch`` keeps doing so."""
    from collector import broker_auth

    settings = get_settings()
    root = Path(args.state_dir) if args.state_dir else broker_auth.state_dir()
    paths = broker_auth.AuthPaths(root)
    if args.action == "init":
        try:
            conn: Conn | None = _connect()
        except Exception:  # no database yet: service accounts only
            conn = None
        try:
            urls = broker_auth.init_local(
                paths,
                conn,
                mqtt_host=args.mqtt_host,
                mqtt_port=args.mqtt_port,
                mqtts_port=None if args.mqtts_port == 0 else args.mqtts_port,
                plugin=Path(args.plugin) if args.plugin else None,
            )
        finally:
            if conn is not None:
                conn.close()
        _emit(
            {
                "auth_conf": str(paths.auth_conf),
                "dynsec_file": str(paths.dynsec),
                "urls_in": str(paths.root / "hearth.toml"),
                "accounts": sorted(k for k in urls),
            }
        )
        return 0
    admin_url = settings.broker_admin_url
    if not admin_url:
        raise ConfigError(
            "HEARTH_BROKER_ADMIN_URL is not set: the broker's dynamic-security admin "
            "(`python -m collector broker init` writes it to .hearth/hearth.toml)"
        )
    # The state directory's service passwords, when this is the machine that made them.
    owned = paths if paths.accounts.is_file() else None
    if args.watch:
        import signal
        import threading

        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())  # scripts/services down, compose
        broker_auth.watch(
            settings.database_url,
            admin_url,
            paths=owned,
            ca_file=settings.mqtt_ca_file,
            interval_s=args.interval,
            stop=stop,
        )
        return 0
    with _connect() as conn:
        report = broker_auth.sync(
            conn, admin_url, paths=owned, ca_file=settings.mqtt_ca_file, rebind=args.rebind
        )
    _emit(report.to_json())
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
    devices.add_argument("--device-id", help="devices retire")
    devices.add_argument(
        "--batch",
        metavar="FILE|-",
        help="JSON lines {user_id, kind, format, external_id, tz?, user_tz?} → credentials lines",
    )
    devices.set_defaults(func=cmd_devices)

    consent = sub.add_parser("consent", help="grant, withdraw (and purge) or show consent")
    consent.add_argument("action", choices=("grant", "withdraw", "show"))
    consent.add_argument("--user-id")
    consent.add_argument("--category", choices=[c.value for c in Category])
    consent.add_argument("--purpose", default=PURPOSE_CREDIT_SCORING)
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
        "broker",
        help="the broker's device accounts (dynamic-security plugin): init its files, sync them "
        "with the registry",
    )
    broker.add_argument("action", choices=("sync", "init"))
    broker.add_argument("--state-dir", help="default HEARTH_STATE_DIR or .hearth")
    broker.add_argument(
        "--watch",
        action="store_true",
        help="sync: keep running; reconcile on registry changes, broker reconnects and every "
        "--interval seconds",
    )
    broker.add_argument(
        "--interval", type=float, default=60.0, help="sync --watch: drift check period (60)"
    )
    broker.add_argument(
        "--rebind",
        action="store_true",
        help="sync: take over a broker bound to another registry (after a restore or move)",
    )
    broker.add_argument("--mqtt-host", default="127.0.0.1", help="init: host in the URLs written")
    broker.add_argument("--mqtt-port", type=int, default=1883, help="init: plain listener port")
    broker.add_argument(
        "--mqtts-port", type=int, default=8883, help="init: TLS listener port (0: none)"
    )
    broker.add_argument(
        "--plugin", help="init: path of mosquitto_dynamic_security.so (default: searched)"
    )
    broker.set_defaults(func=cmd_broker)
