"""What the broker needs before it starts: ``python -m collector broker init``.

Mosquitto authenticates and authorises through its dynamic-security plugin; the device accounts
themselves are managed at run time by :mod:`hearth.broker` and kept in step by
:mod:`collector.broker.sync`. This module writes the files the broker starts from (idempotent).

Layout under the state directory (``HEARTH_STATE_DIR``, default ``.hearth``)::

    mqtt-accounts.json          service-account passwords (0600; never inside mosquitto/)
    mqtt-operator.url           the operator's URL for publishers acting for any device (0600)
    hearth.toml                 mqtt_url (collector) and broker_admin_url, read by every command
    tls/ca.key                  the local test CA's key (0600)
    mosquitto/auth.d/auth.conf  included by mosquitto.conf: anonymous off, the plugin, TLS
    mosquitto/dynsec/dynamic-security.json
                                the plugin's own state: clients with salted PBKDF2 hashes,
                                roles, ACLs; written once here, then only by the broker
    mosquitto/tls/{ca,server}.crt, server.key
"""

from __future__ import annotations

import glob
import json
import logging
import os
import re
import secrets
import subprocess
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import psycopg

from collector.broker.passwd import mosquitto_password_hash
from hearth.broker import (
    BROKER_ADMIN_USERNAME,
    COLLECTOR_USERNAME,
    DEFAULT_ACL_ACCESS,
    OPERATOR_USERNAME,
    SERVICE_ACCOUNTS,
    SERVICE_ROLES,
    device_acls,
    device_role,
)
from hearth.db import Conn
from hearth.errors import ConfigError, Unavailable
from hearth.formats import UnknownFormat, device_topics

log = logging.getLogger("hearth.broker")

DEFAULT_MQTTS_PORT = 8883
# Where distributions and the eclipse-mosquitto image put the plugin.
PLUGIN_GLOBS = (
    "/usr/lib/*/mosquitto_dynamic_security.so",
    "/usr/lib/mosquitto_dynamic_security.so",
    "/usr/local/lib/mosquitto_dynamic_security.so",
    "/usr/local/lib/*/mosquitto_dynamic_security.so",
)


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
    def dynsec(self) -> Path:
        """The plugin's file; its directory must be the broker's to write (it renames into it)."""
        return self.mosquitto / "dynsec" / "dynamic-security.json"

    @property
    def tls(self) -> Path:
        return self.mosquitto / "tls"

    @property
    def ca_cert(self) -> Path:
        return self.tls / "ca.crt"


def _write_atomic(path: Path, text: str, mode: int = 0o644) -> None:
    """Write via a temporary file and rename, so no reader ever sees half a file.

    Mode 0644 because Mosquitto drops root privileges to its own user before reading its
    configuration.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


# --- Service accounts ------------------------------------------------------------------------


def ensure_service_accounts(paths: AuthPaths) -> dict[str, str]:
    """The collector's, operator's and broker admin's passwords, generated once and kept."""
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


def service_passwords(paths: AuthPaths | None) -> dict[str, str]:
    """What the sync may (re)create service accounts with: only where the state dir is ours."""
    if paths is None or not paths.accounts.is_file():
        return {}
    return {k: v for k, v in json.loads(paths.accounts.read_text()).items() if k in SERVICE_ROLES}


def mqtt_url(username: str, password: str, host: str, port: int, *, tls: bool = False) -> str:
    scheme = "mqtts" if tls else "mqtt"
    return f"{scheme}://{quote(username, safe='')}:{quote(password, safe='')}@{host}:{port}"


# --- The plugin's first file -----------------------------------------------------------------


def find_dynsec_plugin() -> Path:
    for pattern in PLUGIN_GLOBS:
        found = sorted(glob.glob(pattern))
        if found:
            return Path(found[0])
    raise ConfigError(
        "Mosquitto's dynamic-security plugin (mosquitto_dynamic_security.so) not found; install "
        "mosquitto 2.x, or name it with `broker init --plugin PATH`"
    )


def _client_entry(username: str, password_hash: str, role: str) -> dict[str, Any]:
    """A client as the plugin stores it, from a ``$7$`` hash (the same PBKDF2-SHA512)."""
    _, seven, iterations, salt, digest = password_hash.split("$")
    assert seven == "7"
    return {
        "username": username,
        "password": digest,
        "salt": salt,
        "iterations": int(iterations),
        "roles": [{"rolename": role}],
    }


def legacy_device_hashes(conn: Conn | None) -> dict[str, tuple[str, tuple[str, ...]]]:
    """Live devices' ``$7$`` hashes from a registry not yet migrated past 0040 (username →
    (hash, topics)); empty once the column is gone. Lets the first plugin file carry them."""
    if conn is None:
        return {}
    try:
        rows = conn.execute(
            "SELECT mqtt_username, mqtt_password_hash, format, external_id, device_id "
            "FROM devices WHERE retired_at IS NULL AND mqtt_password_hash LIKE '$7$%%' "
            "AND mqtt_username IS NOT NULL"
        ).fetchall()
    except (psycopg.errors.UndefinedColumn, psycopg.errors.UndefinedTable):
        conn.rollback()
        return {}
    out = {}
    for username, pw_hash, fmt, external_id, device_id in rows:
        try:
            topics = device_topics(str(fmt), str(external_id), str(device_id))
        except UnknownFormat:
            continue
        out[str(username)] = (str(pw_hash), topics)
    return out


def initial_dynsec_config(
    accounts: Mapping[str, str], devices: Mapping[str, tuple[str, tuple[str, ...]]] | None = None
) -> dict[str, Any]:
    """What ``mosquitto_ctrl dynsec init`` writes, with Hearth's service accounts and roles
    (and any devices carried over from a password-file setup)."""
    clients = [
        _client_entry(name, mosquitto_password_hash(accounts[name]), name) for name in SERVICE_ROLES
    ]
    roles = [{"rolename": name, "acls": acls} for name, acls in SERVICE_ROLES.items()]
    for username, (pw_hash, topics) in sorted((devices or {}).items()):
        clients.append(_client_entry(username, pw_hash, device_role(username)))
        roles.append({"rolename": device_role(username), "acls": device_acls(topics)})
    return {
        "defaultACLAccess": DEFAULT_ACL_ACCESS,
        "clients": clients,
        "groups": [],
        "roles": roles,
    }


def write_dynsec_config(paths: AuthPaths, accounts: dict[str, str], conn: Conn | None) -> bool:
    """The plugin's first file, if there is none yet (afterwards only the broker writes it).

    Returns True when written. Mode 0600 in a 0700 directory: it holds the password hashes.
    """
    if paths.dynsec.is_file():
        return False
    devices = legacy_device_hashes(conn)
    paths.dynsec.parent.mkdir(parents=True, exist_ok=True)
    os.chmod(paths.dynsec.parent, 0o700)
    text = json.dumps(initial_dynsec_config(accounts, devices), indent=1) + "\n"
    _write_atomic(paths.dynsec, text, mode=0o600)
    if devices:
        log.info("broker init: carried %d device accounts over into the plugin", len(devices))
    return True


def render_auth_conf(paths: AuthPaths, *, mqtts_port: int | None, plugin: Path) -> str:
    """The snippet ``mosquitto.conf`` includes where its template says ``@AUTH@``."""
    lines = [
        "# Generated by hearth (collector/broker/local_setup.py); do not edit.",
        "allow_anonymous false",
        f"plugin {plugin}",
        f"plugin_opt_config_file {paths.dynsec.resolve()}",
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


def write_auth_conf(
    paths: AuthPaths, *, mqtts_port: int | None, plugin: Path | None = None
) -> Path:
    text = render_auth_conf(paths, mqtts_port=mqtts_port, plugin=plugin or find_dynsec_plugin())
    _write_atomic(paths.auth_conf, text)
    return paths.auth_conf


# --- TLS test CA -----------------------------------------------------------------------------


def _openssl(*args: str) -> None:
    try:
        subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)
    except FileNotFoundError:
        raise Unavailable("openssl not found; install it to generate the test CA") from None
    except subprocess.CalledProcessError as exc:
        first = (exc.stderr or b"").decode(errors="replace").strip().splitlines()[:1]
        raise Unavailable(f"openssl {args[0]} failed: {' '.join(first)}") from None


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


# --- Local setup (scripts/services, compose) -------------------------------------------------


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
    *,
    mqtt_host: str = "127.0.0.1",
    mqtt_port: int,
    mqtts_port: int | None = DEFAULT_MQTTS_PORT,
    plugin: Path | None = None,
) -> dict[str, str]:
    """Everything a broker with the dynamic-security plugin needs before it starts (idempotent).

    Service-account passwords, the test CA, the plugin's first file (service accounts, their
    roles, and the devices of a registry that still has password hashes), the include snippet,
    ``mqtt_url`` (collector) and ``broker_admin_url`` in ``hearth.toml``, and
    ``mqtt-operator.url`` for publishers that act for any device. Returns the URLs written.
    """
    accounts = ensure_service_accounts(paths)
    if mqtts_port is not None:
        ensure_test_ca(paths)
    write_dynsec_config(paths, accounts, conn)
    write_auth_conf(paths, mqtts_port=mqtts_port, plugin=plugin)
    urls = {
        "collector": mqtt_url(
            COLLECTOR_USERNAME, accounts[COLLECTOR_USERNAME], mqtt_host, mqtt_port
        ),
        "operator": mqtt_url(OPERATOR_USERNAME, accounts[OPERATOR_USERNAME], mqtt_host, mqtt_port),
        "admin": mqtt_url(
            BROKER_ADMIN_USERNAME, accounts[BROKER_ADMIN_USERNAME], mqtt_host, mqtt_port
        ),
    }
    toml = paths.root / "hearth.toml"
    set_toml_key(toml, "mqtt_url", urls["collector"])
    set_toml_key(toml, "broker_admin_url", urls["admin"])
    _write_atomic(paths.root / "mqtt-operator.url", urls["operator"] + "\n", mode=0o600)
    return urls
