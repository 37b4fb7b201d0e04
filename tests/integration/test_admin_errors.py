"""Admin errors by type (issue 14): the same typed error becomes a status and code over HTTP
(without the CLI's hint) and an exit code and one line (with the hint) at the terminal."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio
from aiohttp.test_utils import TestClient, TestServer

from collector.cli import main
from features.service.app import create_app
from hearth import admin
from hearth.cli import run_main
from hearth.db import Conn
from hearth.errors import EXIT_USAGE, Conflict, NotFound
from hearth.settings import get_settings, load_settings
from tests.integration.consent_fixtures import unique

ADMIN = "errors-admin-token-0123456789"
H_ADMIN = {"Authorization": f"Bearer {ADMIN}"}
HINT = "add it with `python -m collector users add`"

Client = TestClient[Any, Any]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def client(database_url: str) -> AsyncIterator[Client]:
    settings = load_settings(database_url=database_url, api_tokens=json.dumps({ADMIN: ["admin"]}))
    async with TestClient(TestServer(create_app(settings))) as c:
        yield c


def test_the_domain_raises_typed_errors(db: Conn) -> None:
    ghost = unique("ghost")
    with pytest.raises(NotFound) as unknown:
        admin.register_device(db, user_id=ghost, kind="plug", format="tasmota", external_id="x")
    assert unknown.value.code == "unknown_user" and unknown.value.hint == HINT
    assert unknown.value.message == f"unknown user {ghost!r}"
    with pytest.raises(NotFound) as device:
        admin.retire_device(db, unique("no-such-device"))
    assert device.value.code == "unknown_device"
    user = unique("tz")
    admin.add_user(db, user, "UTC")
    with pytest.raises(Conflict, match="already exists with time zone UTC"):
        admin.add_user(db, user, "Asia/Shanghai")


@pytest.mark.asyncio(loop_scope="module")
async def test_http_bodies_carry_the_code_never_the_hint(client: Client) -> None:
    ghost = unique("ghost")
    device = {"user_id": ghost, "kind": "plug", "format": "tasmota", "external_id": "x"}
    resp = await client.post("/v1/admin/devices", json=device, headers=H_ADMIN)
    assert resp.status == 404
    error = (await resp.json())["error"]
    assert error["code"] == "unknown_user" and error["message"] == f"unknown user {ghost!r}"
    assert "python -m collector" not in await resp.text()


def test_the_cli_prints_the_hint_on_the_same_line(
    database_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("HEARTH_DATABASE_URL", database_url)
    get_settings.cache_clear()
    ghost = unique("ghost")
    args = ["devices", "add", "--user-id", ghost, "--kind", "plug", "--format", "tasmota"]
    with pytest.raises(SystemExit) as exited:
        run_main(lambda: main([*args, "--external-id", "x"]))
    get_settings.cache_clear()
    assert exited.value.code == EXIT_USAGE
    assert capsys.readouterr().err == f"error: unknown user {ghost!r}; {HINT}\n"
