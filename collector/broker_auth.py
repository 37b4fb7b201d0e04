"""Broker identity: Mosquitto password file, ACL and TLS material generated from the registry.

Layout under the state directory (``HEARTH_STATE_DIR``, default ``.hearth``)::

    mqtt-accounts.json          service-account passwords (0600; never inside mosquitto/)
    tls/ca.key                  the local test CA's key (0600)
    mosquitto/auth.d/auth.conf  included by mosquitto.conf: anonymous off, files, TLS listener
    mosquitto/passwd            service accounts + every live device, ``$7$`` PBKDF2 hashes
    mosquitto/acl               per-username topic rules
    mosquitto/tls/{ca,server}.crt, server.key
    mosquitto/sync-source       which database the files were generated from

Devices' hashes live in ``devices.mqtt_password_hash`` in Mosquitto's own format, so both files
can be regenerated from the database at any time (``python -m collector broker sync``) and the
broker reloads them on SIGHUP. Each device may publish only its own topics
(:func:`hearth.ledger.device_topics`); the collector may only read; the operator (bench load
generators, the demo's publisher) may read and write everything; anonymous clients are refused.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import signal
import subprocess
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import psycopg

from hearth.admin import SERVICE_USERNAME_PREFIX, mosquitto_password_hash
from hearth.cli import ServiceUnavailable
from hearth.ledger import REGISTRY_CHANNEL, device_topics

COLLECTOR_USERNAME = f"{SERVICE_USERNAME_PREFIX}collector"
OPERATOR_USERNAME = f"{SERVICE_USERNAME_PREFIX}operator"
SERVICE_ACCOUNTS = (COLLECTOR_USERNAME, OPERATOR_USERNAME)
DEFAULT_MQTTS_PORT = 8883

Conn = psycopg.Connection[tuple[object, ...]]


def state_dir() -> Path:
    """Where ``scripts/services`` keeps local state (same default as the script)."""
    return Path(os.environ.get("HEARTH_STATE_DIR", ".hearth"))


@dataclass(frozen=True)
class AuthPaths:
    root: Path

    @property
    def accounts(self) -> Path:
        return self.root / "mqtt-accounts.json"

    @property
    def ca_key(self) -> Path:
        return self.root / "tls" / "ca.key"

    @property
    def mosquitto(self) -> Path:
        return self.root / "mosquitto"

    @property
    def auth_conf(self) -> Path:
        return self.mosquitto / "auth.d" / "auth.conf"

    @property
    def passwd(self) -> Path:
        return self.mosquitto / "passwd"

    @property
    def acl(self) -> Path:
        return self.mosquitto / "acl"

    @property
    def tls(self) -> Path:
        return self.mosquitto / "tls"

    @property
    def ca_cert(self) -> Path:
        return self.tls / "ca.crt"

    @property
    def sync_source(self) -> Path:
        return self.mosquitto / "sync-source"

    @property
    def pid_file(self) -> Path:
        return self.mosquitto / "mosquitto.pid"


def _write_atomic(path: Path, text: str, mode: int = 0o644) -> None:
    """Write via a temporary file and rename, so the broker never reads half a file.

    Mode 0644 because Mosquitto drops root privileges to its own user before reading them.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


# --- Service accounts ------------------------------------------------------------------------


def ensure_service_accounts(paths: AuthPaths) -> dict[str, str]:
    """The collector's and operator's passwords, generated once and kept (0600)."""
    accounts: dict[str, str] = {}
    if paths.accounts.is_file():
        accounts = json.loads(paths.accounts.read_text())
    changed = False
    for name in SERVICE_ACCOUNTS:
        if name not in accounts:
            accounts[name] = secrets.token_urlsafe(24)
            changed = True
    if changed:
        _write_atomic(paths.accounts, json.dumps(accounts, indent=2) + "\n", mode=0o600)
    return accounts


def mqtt_url(username: str, password: str, host: str, port: int, *, tls: bool = False) -> str:
    scheme = "mqtts" if tls else "mqtt"
    return f"{scheme}://{quote(username, safe='')}:{quote(password, safe='')}@{host}:{port}"


# --- Password file and ACL -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BrokerDevice:
    username: str
    password_hash: str
    topics: tuple[str, ...]


def live_broker_devices(conn: Conn) -> list[BrokerDevice]:
    """Live devices with a credential; an unmigrated database has none (service accounts only)."""
    try:
        rows = conn.execute(
            "SELECT mqtt_username, mqtt_password_hash, format, external_id, device_id "
            "FROM devices WHERE retired_at IS NULL AND mqtt_password_hash IS NOT NULL "
            "AND mqtt_username IS NOT NULL ORDER BY mqtt_username"
        ).fetchall()
    except psycopg.errors.UndefinedTable:
        conn.rollback()
        return []
    out = []
    for username, pw_hash, fmt, external_id, device_id in rows:
        try:
            topics = device_topics(str(fmt), str(external_id), str(device_id))
        except ValueError:
            continue  # a format this version does not know gets no broker access
        out.append(BrokerDevice(str(username), str(pw_hash), topics))
    return out


_SAFE_ACL_TOKEN = re.compile(r"^[^\s:#+]+$")


def render_passwd(service_accounts: dict[str, str], devices: Iterable[BrokerDevice]) -> str:
    lines = [f"{n}:{mosquitto_password_hash(pw)}" for n, pw in sorted(service_accounts.items())]
    lines += [
        f"{d.username}:{d.password_hash}" for d in devices if _SAFE_ACL_TOKEN.match(d.username)
    ]
    return "\n".join(lines) + "\n"


def render_acl(devices: Iterable[BrokerDevice]) -> str:
    """Per-username rules. Mosquitto denies anything no rule grants, so a device gets exactly its
    topics, and ``read`` for the collector includes ``$share/<group>/...`` subscriptions."""
    lines = [
        "# Generated by `python -m collector broker sync` from the device registry; do not edit.",
        f"user {COLLECTOR_USERNAME}",
        "topic read #",
        "",
        f"user {OPERATOR_USERNAME}",
        "topic readwrite #",
        "",
    ]
    for d in devices:
        if not _SAFE_ACL_TOKEN.match(d.username):
            continue
        lines.append(f"user {d.username}")
        lines += [f"topic readwrite {t}" for t in d.topics]
        lines.append("")
    return "\n".join(lines)


def render_auth_conf(paths: AuthPaths, *, mqtts_port: int | None) -> str:
    """The snippet ``mosquitto.conf`` includes where its template says ``@AUTH@``."""
    lines = [
        "# Generated by hearth (collector/broker_auth.py); do not edit.",
        "allow_anonymous false",
        f"password_file {paths.passwd.resolve()}",
        f"acl_file {paths.acl.resolve()}",
    ]
    if mqtts_port is not None and (paths.tls / "server.crt").is_file():
        lines += [
            f"listener {mqtts_port} 127.0.0.1",
            f"cafile {paths.ca_cert.resolve()}",
            f"certfile {(paths.tls / 'server.crt').resolve()}",
            f"keyfile {(paths.tls / 'server.key').resolve()}",
            "tls_version tlsv1.2",
        ]
    return "\n".join(lines) + "\n"


def write_auth_conf(paths: AuthPaths, *, mqtts_port: int | None) -> Path:
    _write_atomic(paths.auth_conf, render_auth_conf(paths, mqtts_port=mqtts_port))
    return paths.auth_conf


def database_fingerprint(database_url: str) -> str:
    return hashlib.sha256(database_url.encode()).hexdigest()[:16]


@dataclass(frozen=True, slots=True)
class SyncResult:
    devices: int
    reloaded: bool
    pid: int | None


def write_auth_files(paths: AuthPaths, conn: Conn, database_url: str) -> int:
    """Regenerate password file and ACL from the registry; returns the number of devices."""
    accounts = ensure_service_accounts(paths)
    devices = live_broker_devices(conn)
    _write_atomic(paths.passwd, render_passwd(accounts, devices))
    _write_atomic(paths.acl, render_acl(devices))
    _write_atomic(paths.sync_source, database_fingerprint(database_url) + "\n")
    return len(devices)


def reload_broker(paths: AuthPaths) -> int | None:
    """SIGHUP the broker whose pid file is in the state directory; its pid, or None if down."""
    try:
        pid = int(paths.pid_file.read_text().strip())
        os.kill(pid, signal.SIGHUP)
    except (OSError, ValueError):
        return None
    return pid


def sync(paths: AuthPaths, conn: Conn, database_url: str, *, reload: bool = True) -> SyncResult:
    n = write_auth_files(paths, conn, database_url)
    pid = reload_broker(paths) if reload else None
    return SyncResult(devices=n, reloaded=pid is not None, pid=pid)


def sync_if_configured(conn: Conn, database_url: str, paths: AuthPaths | None = None) -> bool:
    """After a registry change: re-sync the local broker, but only if its files were generated
    from this same database — a test run against a scratch database must never rewrite the
    shared broker's password file."""
    paths = paths or AuthPaths(state_dir())
    try:
        source = paths.sync_source.read_text().strip()
    except OSError:
        return False
    if source != database_fingerprint(database_url):
        return False
    sync(paths, conn, database_url)
    return True


def watch(paths: AuthPaths, database_url: str, *, debounce_s: float = 0.3) -> None:
    """Re-sync on every registry change (NOTIFY on REGISTRY_CHANNEL) until interrupted.

    For devices registered through the HTTP admin API, whose process has no business writing
    broker files. A burst of registrations (a ``--batch`` import) becomes one sync.
    """
    with psycopg.connect(database_url, autocommit=True) as listener:
        listener.execute(f"LISTEN {REGISTRY_CHANNEL}")
        with psycopg.connect(database_url, autocommit=True) as conn:
            sync(paths, conn, database_url)
            while True:
                pending = False
                for _ in listener.notifies(timeout=60.0, stop_after=1):
                    pending = True
                while pending:  # drain the burst, then sync once
                    got = list(listener.notifies(timeout=debounce_s, stop_after=1))
                    if not got:
                        break
                if pending:
                    sync(paths, conn, database_url)


# --- TLS test CA -----------------------------------------------------------------------------


def _openssl(*args: str) -> None:
    try:
        subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)
    except FileNotFoundError:
        raise ServiceUnavailable("openssl not found; install it to generate the test CA") from None
    except subprocess.CalledProcessError as exc:
        first = (exc.stderr or b"").decode(errors="replace").strip().splitlines()[:1]
        raise ServiceUnavailable(f"openssl {args[0]} failed: {' '.join(first)}") from None


def ensure_test_ca(paths: AuthPaths, hostnames: tuple[str, ...] = ("localhost",)) -> Path:
    """A local CA and a server certificate for 127.0.0.1/localhost (idempotent).

    For trials and tests only: a deployment uses certificates from its own PKI. Clients trust
    ``mosquitto/tls/ca.crt`` (``HEARTH_MQTT_CA_FILE``). EC P-256 keys, so generating is instant.
    """
    tls = paths.tls
    if (tls / "server.crt").is_file() and paths.ca_cert.is_file():
        return paths.ca_cert
    tls.mkdir(parents=True, exist_ok=True)
    paths.ca_key.parent.mkdir(parents=True, exist_ok=True)
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    _openssl(
        "req", "-x509", *ec, "-keyout", str(paths.ca_key), "-out", str(paths.ca_cert),
        "-days", "3650", "-subj", "/CN=Hearth local test CA",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
    )  # fmt: skip
    os.chmod(paths.ca_key, 0o600)
    csr = tls / "server.csr"
    _openssl(
        "req", *ec, "-keyout", str(tls / "server.key"), "-out", str(csr),
        "-subj", "/CN=localhost",
    )  # fmt: skip
    san = ",".join([*(f"DNS:{h}" for h in hostnames), "IP:127.0.0.1"])
    ext = tls / "server.ext"
    ext.write_text(
        f"subjectAltName={san}\nbasicConstraints=CA:FALSE\n"
        "keyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n"
    )
    _openssl(
        "x509", "-req", "-in", str(csr), "-CA", str(paths.ca_cert), "-CAkey", str(paths.ca_key),
        "-CAcreateserial", "-out", str(tls / "server.crt"), "-days", "825",
        "-extfile", str(ext),
    )  # fmt: skip
    csr.unlink()
    ext.unlink()
    # The broker drops root privileges to its own user before reading the key: a local test
    # key, so world-readable is acceptable here (never do this with a real certificate).
    for name in ("server.key", "server.crt", "ca.crt"):
        os.chmod(tls / name, 0o644)
    return paths.ca_cert


# --- Local setup (scripts/services) ----------------------------------------------------------


def set_toml_key(toml_path: Path, key: str, value: str) -> None:
    """Set ``key = "value"`` in a flat TOML file, keeping every other line (0600)."""
    lines = toml_path.read_text().splitlines() if toml_path.is_file() else []
    entry = f"{key} = {json.dumps(value)}"
    pattern = re.compile(rf"^\s*{re.escape(key)}\s*=")
    replaced = False
    for i, line in enumerate(lines):
        if pattern.match(line):
            lines[i] = entry
            replaced = True
    if not replaced:
        lines.append(entry)
    _write_atomic(toml_path, "\n".join(lines) + "\n", mode=0o600)


def init_local(
    paths: AuthPaths,
    conn: Conn | None,
    database_url: str,
    *,
    mqtt_port: int,
    mqtts_port: int | None = DEFAULT_MQTTS_PORT,
) -> dict[str, str]:
    """Everything ``scripts/services up`` needs for an authenticated broker.

    Service accounts, test CA, password file/ACL (devices only when the database is reachable
    and migrated), the include snippet, the collector's URL in ``hearth.toml`` (``mqtt_url``),
    and ``mqtt-operator.url`` for publishers that act for any device (bench, demo loadgen).
    Returns the URLs written.
    """
    accounts = ensure_service_accounts(paths)
    if mqtts_port is not None:
        ensure_test_ca(paths)
    devices = live_broker_devices(conn) if conn is not None else []
    _write_atomic(paths.passwd, render_passwd(accounts, devices))
    _write_atomic(paths.acl, render_acl(devices))
    if conn is not None:
        _write_atomic(paths.sync_source, database_fingerprint(database_url) + "\n")
    write_auth_conf(paths, mqtts_port=mqtts_port)
    collector = mqtt_url(COLLECTOR_USERNAME, accounts[COLLECTOR_USERNAME], "127.0.0.1", mqtt_port)
    operator = mqtt_url(OPERATOR_USERNAME, accounts[OPERATOR_USERNAME], "127.0.0.1", mqtt_port)
    set_toml_key(paths.root / "hearth.toml", "mqtt_url", collector)
    _write_atomic(paths.root / "mqtt-operator.url", operator + "\n", mode=0o600)
    return {"collector": collector, "operator": operator}
