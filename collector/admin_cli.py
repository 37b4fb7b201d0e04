"""``python -m collector users|devices|consent|retention|broker|sessions ...``: operator commands.

Thin argument parsing over :mod:`hearth.admin` (the same functions serve the HTTP admin API).
Output is JSON on stdout — one object, or JSON lines for lists and ``--batch`` — so scripts and
the simulator can read it. ``--batch FILE|-`` imports JSON lines in one connection and one
transaction: all lines land or none (the error names the line).

Each group's actions are sub-commands of their own (``users add --help`` shows only what
``add`` takes), so argparse itself names a missing or unknown option (exit 2).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO, TypeVar

import psycopg

from collector import sessions
from collector.broker import local_setup
from collector.broker import sync as broker_sync
from collector.retention import run_retention
from hearth import admin
from hearth.admin import PurgeReport
from hearth.db import Conn, connect
from hearth.errors import ConfigError, Invalid
from hearth.formats import FORMATS
from hearth.ledger import PURPOSES
from hearth.notices import notice, notices
from hearth.settings import get_settings
from hearth.signals import DEVICE_KINDS, PURPOSE_CREDIT_SCORING, Category
from hearth.times import parse_rfc3339

T = TypeVar("T")

if TYPE_CHECKING:
    SubParsers = argparse._SubParsersAction[argparse.ArgumentParser]  # noqa: SLF001 - no public name


def _emit(obj: object, out: TextIO | None = None) -> None:
    print(json.dumps(obj, default=str), file=out or sys.stdout)


def _parse_at(text: object, flag: str = "--at") -> datetime | None:
    """An event time given on the command line or in a ``--batch`` line (offset required)."""
    return None if text is None else parse_rfc3339(str(text), what=flag)


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
                raise Invalid(f"line {lineno}: not JSON ({exc})") from None
            if not isinstance(item, dict):
                raise Invalid(f"line {lineno}: expected a JSON object")
            yield lineno, item
    except FileNotFoundError:
        raise Invalid(f"--batch: no such file {source!r}") from None
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
            except Invalid as exc:
                raise exc.within(f"line {lineno}") from None
            except (KeyError, TypeError) as exc:
                raise Invalid(f"line {lineno}: missing or bad field {exc}") from None
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
            print(admin.export_text(conn, args.user_id))
        else:
            with _report_even_if_incomplete():
                _emit(admin.erase_user(conn, args.user_id).to_json())
    return 0


# --- devices ---------------------------------------------------------------------------------


def _check_kind(kind: str) -> str:
    if kind not in DEVICE_KINDS:
        raise Invalid(f"unknown device kind {kind!r}; known: {', '.join(DEVICE_KINDS)}")
    return kind


def _register(conn: Conn, item: dict[str, Any]) -> dict[str, object]:
    _check_kind(str(item["kind"]))
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
                    raise Invalid(f"devices add needs {flags} (or --batch FILE)")
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
    if args.action == "notice":  # the texts need no database
        chosen = [notice(Category(args.category))] if args.category else notices()
        for text in chosen:
            _emit(text.to_json())
        return 0
    with _connect() as conn:
        if args.batch:
            if args.action == "show":
                raise Invalid("consent show takes --user-id, not --batch")
            return _consent_batch(conn, args)
        if not args.user_id:
            raise Invalid(f"consent {args.action} needs --user-id (or --batch FILE)")
        if args.action == "show":
            events = admin.consent_history(conn, args.user_id)
            if args.category:
                events = [e for e in events if e.category == args.category]
            for event in events:
                _emit(event.to_json())
            return 0
        if not args.category:
            raise Invalid(f"consent {args.action} needs --category")
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
    days = args.older_than_days
    if days is None:
        days = get_settings().retention_days
    with _connect() as conn:
        _emit(run_retention(conn, days).to_json())
    return 0


def cmd_broker(args: argparse.Namespace) -> int:
    """``broker init`` prepares the broker's files (before it starts); ``broker sync``
    reconciles its accounts with the registry, ``--watch`` keeps doing so."""
    root = Path(args.state_dir) if args.state_dir else local_setup.state_dir()
    paths = local_setup.AuthPaths(root)
    if args.action == "init":
        _emit(_broker_init(args, paths))
        return 0
    settings = get_settings()
    admin_url = settings.broker_admin_url
    if not admin_url:
        raise ConfigError(
            "HEARTH_BROKER_ADMIN_URL is not set: the broker's dynamic-security admin "
            "(`python -m collector broker init` writes it to .hearth/hearth.toml)"
        )
    # The state directory's service passwords, when this is the machine that made them.
    owned = paths if paths.accounts.is_file() else None
    if args.watch:
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())  # scripts/services down, compose
        broker_sync.watch(
            settings.database_url,
            admin_url,
            paths=owned,
            ca_file=settings.mqtt_ca_file,
            interval_s=args.interval,
            stop=stop,
        )
        return 0
    with _connect() as conn:
        report = broker_sync.sync(
            conn, admin_url, paths=owned, ca_file=settings.mqtt_ca_file, rebind=args.rebind
        )
    _emit(report.to_json())
    return 0


def _broker_init(args: argparse.Namespace, paths: local_setup.AuthPaths) -> dict[str, object]:
    try:
        conn: Conn | None = _connect()
    except Exception:  # no database yet: service accounts only
        conn = None
    try:
        urls = local_setup.init_local(
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
    return {
        "auth_conf": str(paths.auth_conf),
        "dynsec_file": str(paths.dynsec),
        "urls_in": str(paths.root / "hearth.toml"),
        "accounts": sorted(k for k in urls),
    }


# --- sessions --------------------------------------------------------------------------------


def _registry(read: Callable[[], T]) -> T:
    try:
        return read()
    except psycopg.errors.UndefinedTable:
        raise Invalid(
            "no replica registry in this database: run `python -m collector migrate`"
        ) from None


def cmd_sessions(args: argparse.Namespace) -> int:
    settings = get_settings()
    stale_after_s = settings.collector_stale_after_s
    if args.action == "list":
        with _connect() as conn:
            for known in _registry(lambda: sessions.list_sessions(conn, args.group)):
                _emit(known.to_json(stale_after_s))
        return 0
    with _connect() as conn:
        record = _registry(lambda: sessions.get_session(conn, args.client_id))
    sessions.check_not_live(record, stale_after_s, args.force)
    # The drain runs the collector itself (paho, aiohttp, prometheus: about a second to
    # import), which no other operator command needs; collector.drain never imports this
    # module, so the late import hides no cycle.
    from collector import drain

    group = args.group or (record.share_group if record else settings.mqtt_share_group)
    report = asyncio.run(drain.drain_session(settings, args.client_id, group, idle_s=args.idle))
    with _connect() as conn:
        sessions.mark_drained(conn, args.client_id, group)
    _emit(report.to_json())
    return 0


# --- parser ----------------------------------------------------------------------------------


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be more than 0, got {text}")
    return value


def _actions(
    sub: SubParsers, name: str, help: str, func: Callable[[argparse.Namespace], int]
) -> SubParsers:
    """A command group whose actions are sub-commands (each with its own --help)."""
    group = sub.add_parser(name, help=help, description=help)
    group.set_defaults(func=func)
    return group.add_subparsers(dest="action", required=True, metavar="ACTION")


def _batch_arg(p: argparse.ArgumentParser, fields: str) -> None:
    p.add_argument("--batch", metavar="FILE|-", help=f"JSON lines {fields}, one transaction")


def register(sub: SubParsers) -> None:
    """Add the registry, consent, data-subject, retention, broker and sessions sub-commands."""
    _add_users(sub)
    _add_devices(sub)
    _add_consent(sub)
    _add_retention(sub)
    _add_broker(sub)
    _add_sessions(sub)


def _add_users(sub: SubParsers) -> None:
    """``users add|export|erase``."""
    actions = _actions(sub, "users", "add a user; export or erase everything about one", cmd_users)
    p = actions.add_parser("add", help="register a pseudonymous user (idempotent)")
    p.add_argument("--user-id", required=True)
    p.add_argument("--tz", help="IANA time zone, e.g. Europe/Berlin (default UTC)")
    p = actions.add_parser(
        "export",
        help="everything held about a user as JSON (data-subject access); for an erased user "
        '"nothing held" with the erasure\'s audit reference',
    )
    p.add_argument("--user-id", required=True)
    p = actions.add_parser(
        "erase", help="delete everything of a user and revoke their devices' credentials"
    )
    p.add_argument("--user-id", required=True)


def _add_devices(sub: SubParsers) -> None:
    """``devices add|list|retire``."""
    actions = _actions(
        sub,
        "devices",
        "register (prints MQTT credentials as JSON), list or retire devices",
        cmd_devices,
    )
    p = actions.add_parser(
        "add", help="bind a device to a user; prints its MQTT credentials once, as JSON"
    )
    p.add_argument("--user-id")
    p.add_argument("--kind", choices=DEVICE_KINDS, metavar="KIND", help=", ".join(DEVICE_KINDS))
    p.add_argument("--format", choices=FORMATS, metavar="FORMAT", help=", ".join(FORMATS))
    p.add_argument("--external-id", help="the id the format carries in its topic")
    p.add_argument("--tz", help="device zone for naive timestamps (default: the user's)")
    p.add_argument("--user-tz", help="create the user with this zone if absent")
    p.add_argument(
        "--bound-at",
        help="RFC 3339 time the device has been the user's since (default now); earlier "
        "readings are refused",
    )
    _batch_arg(
        p, "{user_id, kind, format, external_id, tz?, user_tz?, bound_at?} → credentials lines"
    )
    p = actions.add_parser("list", help="registered devices (JSON lines), without secrets")
    p.add_argument("--user-id", help="only this user's devices")
    p = actions.add_parser(
        "retire", help="unbind a device and revoke its broker credential (its data stays)"
    )
    p.add_argument("--device-id", required=True)


def _add_consent(sub: SubParsers) -> None:
    """``consent grant|withdraw|show``."""
    actions = _actions(
        sub, "consent", "grant, withdraw (and purge) or show consent; notice texts", cmd_consent
    )
    for action, help in (
        ("grant", "record a consent grant: collection of the category starts"),
        ("withdraw", "record a withdrawal and purge the user's data of the category"),
    ):
        p = actions.add_parser(action, help=help)
        p.add_argument("--user-id")
        p.add_argument("--category", choices=[c.value for c in Category])
        p.add_argument("--purpose", default=PURPOSE_CREDIT_SCORING, choices=sorted(PURPOSES))
        p.add_argument(
            "--at", help="RFC 3339 time of the event (default now; past times for imports/replays)"
        )
        _batch_arg(p, "{user_id, category, at?, purpose?}")
    p = actions.add_parser("show", help="a user's consent history (JSON lines, oldest first)")
    p.add_argument("--user-id")
    p.add_argument("--category", choices=[c.value for c in Category])
    p.set_defaults(batch=None)
    p = actions.add_parser(
        "notice", help="the privacy notice of each category (its own toggle), as JSON lines"
    )
    p.add_argument("--category", choices=[c.value for c in Category])
    p.set_defaults(batch=None)


def _add_retention(sub: SubParsers) -> None:
    """``retention run``."""
    actions = _actions(sub, "retention", "drop raw telemetry chunks past retention", cmd_retention)
    p = actions.add_parser("run", help="drop raw chunks older than the retention age, audited")
    p.add_argument(
        "--older-than-days",
        type=_positive_int,
        metavar="DAYS",
        help="at least 1 (default HEARTH_RETENTION_DAYS, 90)",
    )


def _add_broker(sub: SubParsers) -> None:
    """``broker sync|init``."""
    actions = _actions(
        sub,
        "broker",
        "the broker's device accounts (dynamic-security plugin): init its files, sync them "
        "with the registry",
        cmd_broker,
    )
    p = actions.add_parser(
        "sync", help="reconcile the broker's accounts with the registry (adds, removes, repairs)"
    )
    p.add_argument("--state-dir", help="default HEARTH_STATE_DIR or .hearth")
    p.add_argument(
        "--watch",
        action="store_true",
        help="keep running; reconcile on registry changes, broker reconnects and every "
        "--interval seconds",
    )
    p.add_argument(
        "--interval", type=_positive_float, default=60.0, help="--watch: drift check period (60)"
    )
    p.add_argument(
        "--rebind",
        action="store_true",
        help="take over a broker bound to another registry (after a restore or move)",
    )
    p = actions.add_parser(
        "init", help="service accounts, test CA and the plugin's first file (idempotent)"
    )
    p.add_argument("--state-dir", help="default HEARTH_STATE_DIR or .hearth")
    p.add_argument("--mqtt-host", default="127.0.0.1", help="host in the URLs written")
    p.add_argument("--mqtt-port", type=int, default=1883, help="plain listener port")
    p.add_argument("--mqtts-port", type=int, default=8883, help="TLS listener port (0: none)")
    p.add_argument("--plugin", help="path of mosquitto_dynamic_security.so (default: searched)")


def _add_sessions(sub: SubParsers) -> None:
    """``sessions list|drain``."""
    actions = _actions(
        sub,
        "sessions",
        "collector replicas' broker sessions: list them; drain a retired one (scale-down)",
        cmd_sessions,
    )
    p = actions.add_parser(
        "list",
        help="known replica ids (heartbeat registry) and whether their session may still be "
        "queuing; queued counts are null: Mosquitto 2.0 does not report them",
    )
    p.add_argument("--group", help="only this share group")
    p = actions.add_parser(
        "drain",
        help="store everything queued for a stopped replica's session, then end the session",
    )
    p.add_argument("--client-id", required=True, help="the retired replica's HEARTH_MQTT_CLIENT_ID")
    p.add_argument(
        "--group", help="its share group (default: from the registry, else HEARTH_MQTT_SHARE_GROUP)"
    )
    p.add_argument(
        "--idle",
        type=_positive_float,
        default=3.0,
        metavar="S",
        help="the queue is empty when all is acknowledged and nothing arrived for S seconds "
        "(default %(default)s)",
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="drain even though the registry says the replica is running (it is gone)",
    )
