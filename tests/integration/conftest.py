"""Fixtures of the collector's integration tests (a collector subprocess per replica)."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Broker
from tests.integration.fleet import CollectorFactory
from tests.integration.private_db import private_database


@pytest.fixture
def tag() -> str:
    """A unique prefix: device ids, client ids and share groups of one test."""
    return f"t{secrets.token_hex(3)}"


@pytest.fixture
def make_collector(
    database_url: str, broker: Broker, tag: str, tmp_path: Path
) -> Iterator[CollectorFactory]:
    factory = CollectorFactory(database_url, broker, tag, tmp_path)
    yield factory
    factory.stop_all()


@pytest.fixture
def own_database() -> Iterator[tuple[str, str]]:
    """(URL, name) of a database of the test's own, for tests that alter or break it."""
    with private_database() as created:
        yield created
