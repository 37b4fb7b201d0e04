"""Shared fixtures: a fresh, migrated TimescaleDB database and a private Mosquitto per test session.

Each pytest session gets its own database (``hearth_test_<random>``, dropped at the end) on the
PostgreSQL that ``scripts/services up`` runs, and its own Mosquitto on a free loopback port
rendered from the shipped ``config/mosquitto/mosquitto.conf``. So sessions running side by side
never see each other's rows or messages, and tests run against the real services, not mocks.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest

from hearth.migrate import migrate
from tests.support.database import drop_database as drop_throwaway_database

ROOT = Path(__file__).resolve().parent.parent
BASE_DATABASE_URL = os.environ.get(
    "HEARTH_TEST_DATABASE_URL", "postgresql://hearth:hearth@127.0.0.1:5432/hearth"
)
TEST_PSEUDONYM_KEY = "test-pseudonym-key-0123456789abcdef"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "integration" in item.path.parts:
            item.add_marker(pytest.mark.integration)


def _with_dbname(url: str, dbname: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path=f"/{dbname}"))


@pytest.fixture(scope="session", autouse=True)
def _test_environment() -> Iterator[None]:
    """Tests never read the developer's .hearth/hearth.toml or environment secrets."""
    saved = dict(os.environ)
    os.environ["HEARTH_PSEUDONYM_KEY"] = TEST_PSEUDONYM_KEY
    os.environ["HEARTH_CONFIG"] = str(ROOT / "tests" / "empty.toml")
    from hearth.settings import get_settings

    get_settings.cache_clear()
    yield
    os.environ.clear()
    os.environ.update(saved)
    get_settings.cache_clear()


@pytest.fixture(scope="session")
def database_url() -> Iterator[str]:
    """URL of a fresh database with the whole schema migrated; dropped after the session."""
    with fresh_database("hearth_test") as url:
        yield url


@contextmanager
def fresh_database(prefix: str) -> Iterator[str]:
    """A new database cloned from ``hearth_template`` and migrated; dropped on exit."""
    name = f"{prefix}_{secrets.token_hex(4)}"
    try:
        admin = psycopg.connect(BASE_DATABASE_URL, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        pytest.fail(f"PostgreSQL not reachable ({exc}); run scripts/services up", pytrace=False)
    with admin:
        admin.execute(f'CREATE DATABASE "{name}" TEMPLATE hearth_template')
    url = _with_dbname(BASE_DATABASE_URL, name)
    with psycopg.connect(url, autocommit=True) as conn:
        migrate(conn)
    yield url
    drop_database(name)


def drop_database(name: str) -> None:
    """Drop a test database of the session's server (tests.support.database)."""
    drop_throwaway_database(name, BASE_DATABASE_URL)


@pytest.fixture
def db(database_url: str) -> Iterator[psycopg.Connection[tuple[object, ...]]]:
    """An autocommit connection to the session's test database."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        yield conn


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Broker:
    host: str
    port: int
    state_dir: Path
    process: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"


def wait_for_port(port: int, deadline_s: float = 10.0) -> None:
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port} after {deadline_s}s")


def start_broker(
    state_dir: Path, auth: str = "allow_anonymous true", port: int | None = None
) -> Broker:
    """A private Mosquitto from the shipped configuration template, in the foreground (on
    ``port`` again to restart one)."""
    if shutil.which("mosquitto") is None:
        pytest.fail("mosquitto not installed; run scripts/services up", pytrace=False)
    port = port or free_port()
    (state_dir / "mosquitto" / "data").mkdir(parents=True, exist_ok=True)
    template = (ROOT / "config" / "mosquitto" / "mosquitto.conf").read_text()
    conf = (
        template.replace("@STATE_DIR@", str(state_dir))
        .replace("@MQTT_PORT@", str(port))
        .replace("@AUTH@", auth)
    )
    if os.geteuid() == 0:
        # Mosquitto started as root switches to the `mosquitto` user, which cannot write into
        # pytest's private (0700) temp dirs; stay root for this throwaway broker.
        conf += "\nuser root\n"
    conf_path = state_dir / "mosquitto" / "mosquitto.conf"
    conf_path.write_text(conf)
    proc = subprocess.Popen(
        ["mosquitto", "-c", str(conf_path)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    wait_for_port(port)
    return Broker("127.0.0.1", port, state_dir, proc)


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    """A private Mosquitto for this test session (persistence on, shipped tuning)."""
    b = start_broker(tmp_path_factory.mktemp("broker"))
    yield b
    b.process.terminate()
    b.process.wait(timeout=10)
